"""Several app servers on one store: a link made on one opens on another, and expiry running in
several processes at once deletes exactly the expired entries. Run on a shared folder and on a
real S3-compatible server (moto, 127.0.0.1)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

import app
import vggt_app.share_links
import vggt_core
from app_fixtures import free_port, synthetic_photos  # noqa: F401 (fixture)
from storage_servers import S3_CREDENTIALS, make_bucket, s3_endpoint  # noqa: F401 (fixture)
from vggt_app.store.backends import open_entry_storage
from vggt_app.store.entries import ReconstructionStore

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VIEW = [50, "depth", "All", True, False, False, vggt_app.share_links.DEFAULT_MAX_POINTS]


def start_server(storage: str, workdir: Path, port: int, endpoint: str | None) -> subprocess.Popen:
    environ = dict(os.environ, GRADIO_TEMP_DIR=str(workdir / f"gradio-{port}"), GRADIO_ANALYTICS_ENABLED="False",
                   **S3_CREDENTIALS)
    if endpoint:
        environ["AWS_ENDPOINT_URL"] = endpoint
    return subprocess.Popen(
        [sys.executable, "app.py", "--checkpoint", vggt_core.RANDOM_TINY_CHECKPOINT, "--port", str(port),
         "--storage", storage, "--max-frames", "6"],
        cwd=REPO_ROOT, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_until_up(server: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited: {server.stderr.read()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("server did not start in 180 s")


@pytest.fixture(params=["folder", "s3"])
def shared_storage(request, tmp_path):
    """(storage location, S3 endpoint or None) shared by the servers of one test."""
    if request.param == "folder":
        return str(tmp_path / "shared-store"), None
    endpoint = request.getfixturevalue("s3_endpoint")
    return f"s3://{make_bucket(endpoint)}/links", endpoint


def test_a_link_made_on_one_server_opens_on_another(shared_storage, tmp_path, synthetic_photos):  # noqa: F811
    storage, endpoint = shared_storage
    ports = [free_port(), free_port()]
    servers = [start_server(storage, tmp_path, port, endpoint) for port in ports]
    try:
        for server, port in zip(servers, ports):
            wait_until_up(server, port)
        first, second = (Client(f"http://127.0.0.1:{port}/", verbose=False) for port in ports)
        files = [handle_file(str(path)) for path in synthetic_photos]
        made = first.predict(files, 1.0, *DEFAULT_VIEW, api_name="/reconstruct")
        recon_id, link = made[4], made[5]["value"]
        assert f"?r={recon_id}" in link
        opened = second.predict(link, *DEFAULT_VIEW, api_name="/open_shared")
        assert opened[4] == recon_id and Path(opened[0]).stat().st_size > 0
        assert "frames" in opened[1]  # the summary of the scene the first server made
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


_PRUNE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[3])
    from vggt_app.store.backends import open_entry_storage
    from vggt_app.store.entries import ReconstructionStore

    options = {"endpoint_url": sys.argv[2]} if sys.argv[2] else None
    store = ReconstructionStore(storage=open_entry_storage(sys.argv[1], storage_options=options),
                                ttl_seconds=3600, max_bytes=10**12)
    sys.stdin.readline()  # start together
    print(json.dumps(store.prune()), flush=True)
""")


def test_expiry_in_several_processes_at_once_deletes_exactly_the_expired(shared_storage, small_reconstruction):
    storage, endpoint = shared_storage
    options = {"endpoint_url": endpoint} if endpoint else None
    two_hours_ago = time.time() - 7200
    old_store = ReconstructionStore(storage=open_entry_storage(storage, storage_options=options),
                                    ttl_seconds=10**9, max_bytes=10**12, clock=lambda: two_hours_ago)
    expired = {old_store.save(small_reconstruction) for _ in range(3)}
    live_store = ReconstructionStore(storage=open_entry_storage(storage, storage_options=options),
                                     ttl_seconds=10**9, max_bytes=10**12)
    live = {live_store.save(small_reconstruction) for _ in range(2)}

    environ = dict(os.environ, **S3_CREDENTIALS)
    workers = [subprocess.Popen([sys.executable, "-c", _PRUNE, storage, endpoint or "", str(REPO_ROOT)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=environ) for _ in range(3)]
    time.sleep(2)  # let them import and open the storage

    def run(worker):
        out, err = worker.communicate("go\n", timeout=120)
        assert worker.returncode == 0, err[-2000:]
        return set(__import__("json").loads(out.strip().splitlines()[-1]))

    with ThreadPoolExecutor(len(workers)) as pool:
        results = list(pool.map(run, workers))
    assert set().union(*results) == expired
    remaining = set(open_entry_storage(storage, storage_options=options).entry_ids())
    assert remaining == live
    for recon_id in live:
        assert live_store.load(recon_id).reconstruction.num_frames == small_reconstruction.num_frames
