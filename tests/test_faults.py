"""The app under faults and load: ``kill -9`` right after links were shown, upload caps, page
loads that do not queue behind each other, storage errors reaching the user as a message.

The crash test runs the real server (``python app.py --checkpoint random-tiny``) as a child
process with its own storage and Gradio cache folders.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
import gradio
import vggt_app.errors
import vggt_app.renderer
import vggt_app.service
import vggt_app.share_links
import vggt_core
from app_fixtures import free_port, launch_test_app, synthetic_photos  # noqa: F401 (fixture)
from vggt_app.store.entries import ReconstructionStore

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VIEW = [50, "depth", "All", True, False, False, vggt_app.share_links.DEFAULT_MAX_POINTS]


def start_server(storage: Path, gradio_cache: Path, port: int, *extra: str) -> subprocess.Popen:
    environ = dict(os.environ, GRADIO_TEMP_DIR=str(gradio_cache), GRADIO_ANALYTICS_ENABLED="False")
    server = subprocess.Popen(
        [sys.executable, "app.py", "--checkpoint", vggt_core.RANDOM_TINY_CHECKPOINT, "--port", str(port),
         "--storage-dir", str(storage), "--max-frames", "6", *extra],
        cwd=REPO_ROOT, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.kill()
    raise AssertionError("server did not start in 120 s")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.kill()
    server.wait(30)


def test_links_shown_before_a_kill_9_open_after_the_restart(tmp_path, synthetic_photos):  # noqa: F811
    storage, cache, port = tmp_path / "storage", tmp_path / "gradio", free_port()
    files = [handle_file(str(path)) for path in synthetic_photos]
    server = start_server(storage, cache, port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        ids = []
        for _ in range(2):
            outputs = client.predict(files, 1.0, *DEFAULT_VIEW, api_name="/reconstruct")
            ids.append(outputs[4])
        assert all(f"?r={recon_id}" in client.predict(recon_id, *DEFAULT_VIEW, api_name="/open_shared")[5]["value"]
                   for recon_id in ids)
        os.kill(server.pid, signal.SIGKILL)  # at once after the last link was shown
        server.wait(30)
    finally:
        stop(server)
    derived = cache / "vggt-derived"
    assert any(derived.iterdir())  # the killed server's views were left behind ...

    server = start_server(storage, cache, port)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for recon_id in ids:
            outputs = client.predict(recon_id, *DEFAULT_VIEW, api_name="/open_shared")
            assert outputs[4] == recon_id and "points shown" in outputs[1]
        # ... and removed by the new one, which keeps only its own folder.
        assert len([folder for folder in derived.iterdir() if folder.is_dir()]) == 1
    finally:
        stop(server)


def test_uploads_over_the_caps_are_refused_naming_the_limit(tmp_path):
    storage, cache, port = tmp_path / "storage", tmp_path / "gradio", free_port()
    rng = np.random.default_rng(0)
    photos = []
    for index in range(3):  # incompressible noise: ~0.6 MB each as PNG
        path = tmp_path / f"noise_{index}.png"
        Image.fromarray(rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)).save(path)
        photos.append(path)
    big = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 256, (800, 800, 3), dtype=np.uint8)).save(big)  # ~1.9 MB
    server = start_server(storage, cache, port, "--max-upload-mb", "1", "--max-total-upload-mb", "1.5")
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(Exception, match=r"(?i)too large|exceed|1 ?MB|maximum"):
            client.predict([handle_file(str(big))], 1.0, *DEFAULT_VIEW, api_name="/reconstruct")
        with pytest.raises(Exception, match=r"over the limit of 1\.5 MB per reconstruction"):
            client.predict([handle_file(str(p)) for p in photos], 1.0, *DEFAULT_VIEW, api_name="/reconstruct")
        gallery, status = client.predict([handle_file(str(p)) for p in photos], 1.0, api_name="/preview")
        assert gallery == [] and "over the limit of 1.5 MB" in status
    finally:
        stop(server)
    assert not storage.exists() or not any(storage.iterdir())


def test_upload_size_check_names_the_file_and_the_limit(tmp_path):
    from vggt_core.errors import InputError
    from vggt_app.store.upload_limits import UploadLimits, check_upload_sizes

    small, large = tmp_path / "a.jpg", tmp_path / "b.jpg"
    small.write_bytes(b"x" * 400_000)
    large.write_bytes(b"x" * 1_200_000)
    limits = UploadLimits(max_file_mb=1, max_total_mb=1)
    assert check_upload_sizes([small], limits) == 400_000
    with pytest.raises(InputError, match=r"b\.jpg is 1\.2 MB, over the limit of 1 MB per file"):
        check_upload_sizes([small, large], limits)
    with pytest.raises(InputError, match=r"add up to 1\.2 MB, over the limit of 1 MB per reconstruction"):
        check_upload_sizes([small, small, small], limits)


SCENE_BUILD_SPANS: list[tuple[float, float]] = []  # (start, end) of each slowed scene build


@pytest.fixture(scope="module")
def slow_app(tmp_path_factory):
    """An in-process app whose scene building takes 1 s more, to see what waits for what."""
    original = vggt_app.service.ReconstructionService.scene_view

    def slow_scene_view(self, *args, **kwargs):
        started = time.monotonic()
        time.sleep(1.0)
        try:
            return original(self, *args, **kwargs)
        finally:
            SCENE_BUILD_SPANS.append((started, time.monotonic()))

    vggt_app.service.ReconstructionService.scene_view = slow_scene_view
    server = launch_test_app(tmp_path_factory.mktemp("slow-storage"))
    try:
        yield server
    finally:
        server.demo.close()
        vggt_app.service.ReconstructionService.scene_view = original


def test_four_link_opens_at_once_do_not_queue_behind_each_other(slow_app, small_reconstruction):
    store = ReconstructionStore(slow_app.settings.storage_dir, ttl_seconds=3600, max_bytes=10**9)
    recon_id = store.save(small_reconstruction)
    clients = [Client(slow_app.url, verbose=False) for _ in range(4)]
    errors = []
    SCENE_BUILD_SPANS.clear()

    def open_link(client):
        try:
            client.predict(recon_id, *DEFAULT_VIEW, api_name="/open_shared")
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=open_link, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and len(SCENE_BUILD_SPANS) == 4
    # All four ran at the same time: each had started before any had finished (queued ones
    # would start only after one ended), however slow a loaded machine makes each of them.
    assert max(start for start, _ in SCENE_BUILD_SPANS) < min(end for _, end in SCENE_BUILD_SPANS)
    # Page loads (which open ?r= links) use their own group with the same room.
    load_events = [fn for fn in slow_app.demo.fns.values() if fn.name == "open_from_page_url"]
    assert load_events and all((fn.concurrency_limit or 0) >= 4 for fn in load_events)


def test_a_storage_error_reaches_the_user_as_a_message_and_keeps_the_entry(tmp_path, small_reconstruction,
                                                                          monkeypatch):
    store = ReconstructionStore(tmp_path, ttl_seconds=3600, max_bytes=10**9)
    recon_id = store.save(small_reconstruction)
    fresh = ReconstructionStore(tmp_path, ttl_seconds=3600, max_bytes=10**9)
    original = fresh.storage.read_bytes

    def too_many_open_files(entry_id, name):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(fresh.storage, "read_bytes", too_many_open_files)
    service = vggt_app.service.ReconstructionService(app.AppSettings(storage_dir=tmp_path), fresh,
                                        vggt_app.renderer.ViewRenderer(tmp_path.parent / f"{tmp_path.name}-views"), None)

    @vggt_app.errors.show_user_errors
    def open_shared(link):
        return service.scene_view(link, vggt_app.share_links.DEFAULT_VIEW_SETTINGS, "http://x/")

    with pytest.raises(gradio.Error, match="too many open files.*try again"):
        open_shared(recon_id)
    monkeypatch.setattr(fresh.storage, "read_bytes", original)
    assert open_shared(recon_id).id == recon_id
