"""Time to open a share link on a second server, from a remote store.

A 50-frame synthetic scene at 518x392 is stored on an S3-compatible server (moto, started here on
127.0.0.1) by one app service; a second service (its own storage client, empty caches) opens the
link: from the entry's first view, then (for comparison) with the first view ignored, which reads
the full arrays. Run: ``python benchmarks/bench_open_link.py [--frames 50]``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import app  # noqa: E402
import vggt_app.renderer  # noqa: E402
import vggt_app.service  # noqa: E402
import vggt_app.share_links  # noqa: E402
from storage_servers import S3_CREDENTIALS, make_bucket, s3_server  # noqa: E402
from vggt_core.reconstruction import reconstruction_from_synthetic_scene  # noqa: E402
from vggt_app.store.backends import open_entry_storage  # noqa: E402
from vggt_app.store.entries import ReconstructionStore  # noqa: E402
from vggt_core.synthetic import render_scene  # noqa: E402


def service_on(url: str, endpoint: str, folder: Path) -> vggt_app.service.ReconstructionService:
    storage = open_entry_storage(url, storage_options={"endpoint_url": endpoint})
    store = ReconstructionStore(storage=storage, ttl_seconds=3600, max_bytes=10**12, memory_cache_size=0)
    return vggt_app.service.ReconstructionService(app.AppSettings(), store, vggt_app.renderer.ViewRenderer(folder / secrets.token_hex(3)), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(S3_CREDENTIALS)
    started = time.perf_counter()
    recon = reconstruction_from_synthetic_scene(render_scene("room", num_views=args.frames, width=518, height=392))
    print(f"scene: {args.frames} frames at 518x392 ({time.perf_counter() - started:.1f} s to render)")
    with s3_server() as endpoint, tempfile.TemporaryDirectory() as scratch:
        url = f"s3://{make_bucket(endpoint)}/links"
        first = service_on(url, endpoint, Path(scratch))
        recon_id = first.store.save(recon)
        shown = first.scene_view(recon_id, vggt_app.share_links.DEFAULT_VIEW_SETTINGS, "http://first/")
        first.save_first_view(recon_id, vggt_app.share_links.DEFAULT_VIEW_SETTINGS)
        link_query = vggt_app.share_links.share_link_query(shown.share_link)
        files = first.store.storage.list_files(recon_id)
        for name, file in sorted(files.items()):
            print(f"  stored {name}: {file.size / 1e6:.1f} MB")

        timings: dict[str, list[float]] = {"first view": [], "full arrays": []}
        for _ in range(args.repeats):
            for label in timings:
                second = service_on(url, endpoint, Path(scratch))
                second._prefetch = lambda recon_id: None
                if label == "full arrays":
                    second._first_view_outputs = lambda *a, **k: None
                began = time.perf_counter()
                second.scene_view(recon_id, vggt_app.share_links.DEFAULT_VIEW_SETTINGS, "http://second/", link_query)
                timings[label].append(time.perf_counter() - began)
        for label, values in timings.items():
            print(f"open a link ({label}): median {statistics.median(values):.2f} s over {len(values)} "
                  f"(min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
