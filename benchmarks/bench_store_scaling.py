"""Save time against the store's size, and link opens while a prune deletes, on a local S3 server.

Before issue #19 every save pruned the whole store inside its own write (41 remote entries: a
2.14 s save, 2.11 s of it pruning), and pruning held the readers' lock through every delete. Now
saves never prune and deletes run outside that lock. This measures, on moto's S3 server started
here on 127.0.0.1:

- the median time of a save with 1 entry in the store and with ``--entries`` (500) entries, and
  for comparison a save followed by a full prune, which is what a save cost before;
- the p50/p95/max time to open a live link (manifest and arrays read from S3, nothing in memory)
  while a prune deletes ``--prune`` (100) expired entries.

Run: ``python benchmarks/bench_store_scaling.py [--entries 500 --prune 100 --json
benchmarks/results/store-scaling.json]``. The scenes are tiny (2 views of 56x42), so the times are
those of the store's remote calls, not of the arrays.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from storage_servers import S3_CREDENTIALS, make_bucket, s3_server  # noqa: E402
from vggt_app.store.backends import open_entry_storage  # noqa: E402
from vggt_app.store.entries import ReconstructionStore  # noqa: E402
from vggt_core.reconstruction import reconstruction_from_synthetic_scene  # noqa: E402
from vggt_core.synthetic import render_scene  # noqa: E402


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def open_store(url: str, endpoint: str, clock: Clock, ttl_seconds: float = 3600.0) -> ReconstructionStore:
    storage = open_entry_storage(url, storage_options={"endpoint_url": endpoint})
    return ReconstructionStore(storage=storage, ttl_seconds=ttl_seconds, max_bytes=10**12,
                               memory_cache_size=0, clock=clock)


def save_times(store: ReconstructionStore, recon, saves: int, prune_too: bool = False) -> list[float]:
    times = []
    for _ in range(saves):
        began = time.perf_counter()
        store.save(recon)
        if prune_too:
            store.prune()
        times.append(time.perf_counter() - began)
    return times


def raw_write_times(store: ReconstructionStore, recon, saves: int) -> list[float]:
    """The same bytes as one save written straight through the storage back end (no store
    logic): what the S3 server itself costs per entry at the store's current size."""
    import io
    import secrets

    buffer = io.BytesIO()
    recon.at_stored_precision().save(buffer)
    payload, times = buffer.getvalue(), []
    for _ in range(saves):
        entry = "raw-" + secrets.token_hex(8)
        began = time.perf_counter()
        store.storage.write_bytes(entry, ReconstructionStore.RECONSTRUCTION_FILE, payload)
        store.storage.write_bytes(entry, ReconstructionStore.METADATA_FILE, b"{}")
        times.append(time.perf_counter() - began)
        store.storage.delete_entry(entry)
    return times


def measure(endpoint: str, *, entries: int, prune_entries: int, saves: int = 10, opens_per_s: float = 20.0) -> dict:
    """The numbers of one run against the S3 server at ``endpoint`` (credentials in the environment)."""
    recon = reconstruction_from_synthetic_scene(render_scene("table", num_views=2, width=56, height=42))
    clock = Clock()
    results: dict = {"entries": entries, "prune_entries": prune_entries, "saves": saves}

    # Save time with 1 entry and with `entries` entries in the store.
    store = open_store(f"s3://{make_bucket(endpoint)}/links", endpoint, clock)
    store.save(recon)
    save_times(store, recon, 3)  # warm-up: connections, imports
    for recon_id in store.storage.entry_ids()[1:]:
        store.storage.delete_entry(recon_id)  # back to 1 entry
    small = save_times(store, recon, saves)
    raw_small = raw_write_times(store, recon, saves)
    while len(store.storage.entry_ids()) < entries:
        store.save(recon)
    large = save_times(store, recon, saves)
    raw_large = raw_write_times(store, recon, saves)
    old_way = save_times(store, recon, max(2, saves // 5), prune_too=True)
    results["save_s"] = {"with_1_entry_median": statistics.median(small),
                         f"with_{entries}_entries_median": statistics.median(large),
                         "ratio": statistics.median(large) / statistics.median(small),
                         # The S3 server's own cost of the same two writes, without the store:
                         # any growth here is the server's, not the store's.
                         "raw_backend_with_1_entry_median": statistics.median(raw_small),
                         f"raw_backend_with_{entries}_entries_median": statistics.median(raw_large),
                         "raw_backend_ratio": statistics.median(raw_large) / statistics.median(raw_small),
                         "store_overhead_with_1_entry_median": statistics.median(small) - statistics.median(raw_small),
                         f"store_overhead_with_{entries}_entries_median":
                             statistics.median(large) - statistics.median(raw_large),
                         f"save_then_full_prune_with_{entries}_entries_median": statistics.median(old_way)}
    store.close()

    # Link opens while a prune deletes `prune_entries` expired entries.
    url = f"s3://{make_bucket(endpoint)}/links"
    writer = open_store(url, endpoint, clock, ttl_seconds=600)
    for _ in range(prune_entries):
        writer.save(recon)
    clock.now += 700  # those are expired now
    live = [writer.save(recon) for _ in range(5)]
    reader = open_store(url, endpoint, clock, ttl_seconds=600)
    pruner = open_store(url, endpoint, clock, ttl_seconds=600)
    for recon_id in live:  # the reader's connections are open before the timing starts
        reader.load(recon_id)
    pruned: list[str] = []
    began = time.perf_counter()
    pruning = threading.Thread(target=lambda: pruned.extend(pruner.prune()))
    pruning.start()
    opens = []
    while pruning.is_alive():
        for recon_id in live:
            started = time.perf_counter()
            reader.load(recon_id)
            opens.append(time.perf_counter() - started)
            time.sleep(1.0 / opens_per_s)
    pruning.join()
    prune_s = time.perf_counter() - began
    # Reference: the same opens with nothing being deleted.
    quiet = []
    for _ in range(max(10, len(opens) // 4)):
        started = time.perf_counter()
        reader.load(live[len(quiet) % len(live)])
        quiet.append(time.perf_counter() - started)
    results["open_during_prune_s"] = {"prune_deleted": len(pruned), "prune_took_s": prune_s, "opens": len(opens),
                                      "p50": statistics.median(opens), "p95": percentile(opens, 0.95),
                                      "max": max(opens)}
    results["open_quiet_s"] = {"opens": len(quiet), "p50": statistics.median(quiet),
                               "p95": percentile(quiet, 0.95), "max": max(quiet)}
    for each in (writer, reader, pruner):
        each.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=500)
    parser.add_argument("--prune", type=int, default=100)
    parser.add_argument("--saves", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    os.environ.update(S3_CREDENTIALS)
    with s3_server() as endpoint:
        results = measure(endpoint, entries=args.entries, prune_entries=args.prune, saves=args.saves)
    results["machine"] = f"{os.cpu_count()} CPU cores, moto S3 server on 127.0.0.1"
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
