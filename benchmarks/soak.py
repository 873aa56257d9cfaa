"""Soak / load test of the app: simulated users through gradio_client, on 127.0.0.1 only.

    python benchmarks/soak.py --users 8 --minutes 10            # starts its own random-tiny server
    python benchmarks/soak.py --users 4 --minutes 2 --url http://127.0.0.1:7860/

Each user loops: upload photos → reconstruct → several view changes → prepare downloads →
open its own share link → open links other users made. The run is bounded in time
(``--minutes``) and in rounds per user (``--rounds``). Every ``--sample-s`` seconds it prints
the disk used by the storage and Gradio cache folders and the server's RSS and thread count;
at the end, p50/p95/max latency and errors per endpoint. With ``--json`` the numbers are also
written to a file. The server it starts runs ``--checkpoint random-tiny`` (results are
meaningless; every code path of a real run is exercised) with its own temporary folders.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

from vggt_core.synthetic import render_scene  # noqa: E402

DEFAULT_MAX_POINTS = 1_000_000


def view(confidence: float, max_points: int = DEFAULT_MAX_POINTS, branch: str = "depth") -> list:
    return [confidence, branch, "All", True, False, False, max_points]


class Recorder:
    def __init__(self):
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.lock = threading.Lock()

    def call(self, endpoint: str, function, *args, **kwargs):
        started = time.perf_counter()
        try:
            result = function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - every failure is a data point
            with self.lock:
                self.errors[endpoint].append(f"{type(error).__name__}: {str(error)[:160]}")
            return None
        finally:
            elapsed = time.perf_counter() - started
            with self.lock:
                self.latencies[endpoint].append(elapsed)
        return result


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def process_stats(pid: int) -> tuple[float, int]:
    """(RSS in MB, thread count) of a Linux process, from /proc."""
    rss_kb, threads = 0, 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    except OSError:
        pass
    return rss_kb / 1024, threads


def make_photo_sets(folder: Path, count: int, num_views: int | None = None) -> list[list[str]]:
    """``count`` sets of synthetic photos (320x240) of ``num_views`` each (default 3 to 5)."""
    sets = []
    for index in range(count):
        views = num_views or 3 + index % 3
        scene = render_scene(("room", "table")[index % 2], num_views=views, width=320, height=240, seed=index)
        paths = []
        for view_index, pixels in enumerate(scene.images):
            path = folder / f"set{index}_{views}_view{view_index}.jpg"
            Image.fromarray(np.asarray(pixels)).save(path, quality=90)
            paths.append(str(path))
        sets.append(paths)
    return sets


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


UNLIMITED_CLIENT_ARGS = ["--client-share", "100", "--client-runs-per-hour", "1000000",
                         "--client-derived-per-hour", "1000000"]


def start_server(port: int, storage: Path, gradio_cache: Path, cache_max_mb: float, log,
                 extra_args: list[str] = ()) -> subprocess.Popen:
    environ = dict(os.environ, GRADIO_TEMP_DIR=str(gradio_cache))
    server = subprocess.Popen(
        [sys.executable, "app.py", "--checkpoint", "random-tiny", "--host", "127.0.0.1", "--port", str(port),
         "--storage-dir", str(storage), "--cache-max-mb", str(cache_max_mb), "--max-frames", "8",
         # Every simulated user connects from 127.0.0.1, i.e. as one client: lift the per-client
         # share and rate limits, which would otherwise measure themselves.
         *UNLIMITED_CLIENT_ARGS, *extra_args],
        cwd=REPO_ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server exited while starting; see its log")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not start within 180 s")


def fetch_files(http: httpx.Client, value) -> int:
    """Download every file a result refers to, as the browser would (bytes fetched)."""
    total = 0
    if isinstance(value, dict) and value.get("url"):
        response = http.get(value["url"], timeout=60)
        response.raise_for_status()
        total += len(response.content)
    elif isinstance(value, dict):
        for item in value.values():
            total += fetch_files(http, item) if isinstance(item, (dict, list, tuple)) else 0
    elif isinstance(value, (list, tuple)):
        for item in value:
            total += fetch_files(http, item)
    return total


def user_loop(index: int, url: str, photo_sets, recorder: Recorder, links: list[str], links_lock,
              stop_at: float, rounds: int, view_changes: int, download_folder: Path) -> None:
    rng = random.Random(index)
    http = httpx.Client()
    # Results come back as file references; the 3-D viewer's GLB is then fetched like a browser
    # does, and counted in the endpoint's time. Downloads are fetched in full.
    client = recorder.call("connect", Client, url, verbose=False, download_files=False)
    if client is None:
        return

    def predict_and_fetch(*args, glb_only: bool = True, **kwargs):
        result = client.predict(*args, **kwargs)
        fetch_files(http, result[0] if glb_only else result)
        return result

    for _ in range(rounds):
        if time.monotonic() > stop_at:
            return
        files = [handle_file(path) for path in photo_sets[rng.randrange(len(photo_sets))]]
        outputs = recorder.call("reconstruct", predict_and_fetch, files, 1.0, *view(50), api_name="/reconstruct")
        if not outputs:
            continue
        recon_id = outputs[4]
        with links_lock:
            links.append(recon_id)
        for _ in range(view_changes):
            if time.monotonic() > stop_at:
                return
            settings = view(rng.choice([0, 10, 25, 50, 75, 90]), rng.choice([20_000, 100_000, DEFAULT_MAX_POINTS]),
                            rng.choice(["depth", "point"]))
            recorder.call("update_view", predict_and_fetch, recon_id, *settings, api_name="/update_view")
        recorder.call("export", predict_and_fetch, recon_id, *view(50), glb_only=False, api_name="/export")
        recorder.call("open_own_link", predict_and_fetch, recon_id, *view(50), api_name="/open_shared")
        with links_lock:
            others = [link for link in links if link != recon_id]
        for other in rng.sample(others, min(2, len(others))):
            recorder.call("open_others_link", predict_and_fetch, other, *view(50), api_name="/open_shared")


def viewer_loop(index: int, url: str, recorder: Recorder, links: list[str], links_lock, stop_at: float) -> None:
    """A visitor who only opens share links and changes their view (no reconstructions)."""
    rng = random.Random(1000 + index)
    http = httpx.Client()
    client = recorder.call("connect", Client, url, verbose=False, download_files=False)
    if client is None:
        return
    while time.monotonic() < stop_at:
        with links_lock:
            known = list(links)
        if not known:
            time.sleep(0.5)
            continue
        link = rng.choice(known)
        result = recorder.call("viewer_open_link", lambda: client.predict(link, *view(50), api_name="/open_shared"))
        if result:
            fetch_files(http, result[0])
        settings = view(rng.choice([0, 25, 75, 90]), rng.choice([20_000, 100_000, DEFAULT_MAX_POINTS]))
        recorder.call("viewer_update_view",
                      lambda: fetch_files(http, client.predict(link, *settings, api_name="/update_view")[0]))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=1000, help="most rounds per user")
    parser.add_argument("--view-changes", type=int, default=4)
    parser.add_argument("--viewers", type=int, default=0,
                        help="extra users who only open links and change views while the others reconstruct")
    parser.add_argument("--sample-s", type=float, default=30.0, help="seconds between resource samples")
    parser.add_argument("--cache-max-mb", type=float, default=1024.0, help="for the server this script starts")
    parser.add_argument("--url", help="an app already running on 127.0.0.1 (default: start one)")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, for RSS and threads")
    parser.add_argument("--storage-dir", type=Path, help="with --url: its storage folder, for disk use")
    parser.add_argument("--gradio-cache", type=Path, help="with --url: its GRADIO_TEMP_DIR, for disk use")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="vggt-soak-"))
    server = None
    if args.url:
        host = urlsplit(args.url).hostname
        if host not in ("127.0.0.1", "localhost"):
            raise SystemExit("the soak test only runs against 127.0.0.1")
        url, pid = args.url, args.server_pid
        storage, gradio_cache = args.storage_dir, args.gradio_cache
    else:
        port = free_port()
        storage, gradio_cache = work / "storage", work / "gradio-cache"
        log = open(work / "server.log", "wb")
        print(f"starting the server (log: {work / 'server.log'})", flush=True)
        server = start_server(port, storage, gradio_cache, args.cache_max_mb, log)
        url, pid = f"http://127.0.0.1:{port}/", server.pid

    photo_sets = make_photo_sets(work, 4)
    recorder = Recorder()
    links: list[str] = []
    links_lock = threading.Lock()
    started = time.monotonic()
    stop_at = started + args.minutes * 60
    samples = []

    def sample() -> dict:
        rss, threads = process_stats(pid) if pid else (0.0, 0)
        row = {"t_s": round(time.monotonic() - started, 1), "rss_mb": round(rss, 1), "threads": threads,
               "storage_mb": round(folder_bytes(storage) / 1e6, 1) if storage else None,
               "gradio_cache_mb": round(folder_bytes(gradio_cache) / 1e6, 1) if gradio_cache else None,
               "calls": sum(len(v) for v in recorder.latencies.values()),
               "errors": sum(len(v) for v in recorder.errors.values())}
        samples.append(row)
        print("  ".join(f"{key}={value}" for key, value in row.items()), flush=True)
        return row

    sample()
    users = [threading.Thread(target=user_loop, daemon=True,
                              args=(index, url, photo_sets, recorder, links, links_lock, stop_at, args.rounds,
                                    args.view_changes, work / f"downloads-{index}"))
             for index in range(args.users)]
    users += [threading.Thread(target=viewer_loop, daemon=True,
                               args=(index, url, recorder, links, links_lock, stop_at))
              for index in range(args.viewers)]
    for user in users:
        user.start()
    try:
        while any(user.is_alive() for user in users):
            for user in users:
                user.join(timeout=max(0.1, args.sample_s / len(users)))
            if time.monotonic() - started >= samples[-1]["t_s"] + args.sample_s:
                sample()
        final = sample()
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()

    print(f"\n{args.users} users (+{args.viewers} viewers) for {(time.monotonic() - started) / 60:.1f} min against {url}")
    print(f"{'endpoint':18s} {'calls':>6s} {'errors':>6s} {'p50 s':>7s} {'p95 s':>7s} {'max s':>7s}")
    summary = {}
    for endpoint in sorted(set(recorder.latencies) | set(recorder.errors)):
        values = recorder.latencies.get(endpoint, [])
        errors = recorder.errors.get(endpoint, [])
        stats = {"calls": len(values), "errors": len(errors),
                 "p50_s": percentile(values, 0.5) if values else None,
                 "p95_s": percentile(values, 0.95) if values else None,
                 "max_s": max(values) if values else None,
                 "error_messages": sorted(set(errors))[:5]}
        summary[endpoint] = stats
        print(f"{endpoint:18s} {stats['calls']:6d} {stats['errors']:6d} "
              f"{stats['p50_s'] or 0:7.2f} {stats['p95_s'] or 0:7.2f} {stats['max_s'] or 0:7.2f}")
    for endpoint, errors in recorder.errors.items():
        for message in sorted(set(errors))[:5]:
            print(f"  {endpoint}: {message}")
    if args.json:
        args.json.write_text(json.dumps({"users": args.users, "minutes": args.minutes, "endpoints": summary,
                                         "samples": samples, "final": final}, indent=1))


if __name__ == "__main__":
    main()
