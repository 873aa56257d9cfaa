"""SIGTERM (a Space restart, ``kill``) stops the app cleanly: exit code 0, no glog "*** Aborted"
stack trace from pycolmap, and every reconstruction whose link was shown is complete on disk."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

# The app runs in its own process: this one does not import it (nor torch), which halves the
# CPU time of the test.
APP_FILE = Path(__file__).resolve().parent.parent / "app.py"
VIEW = [50, "depth", "All", True, False, False, 1_000_000, False]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def noise_photos(folder: Path, count: int = 3) -> list[Path]:
    paths = []
    for index in range(count):
        path = folder / f"photo_{index}.png"
        pixels = np.random.default_rng(index).integers(0, 256, (196, 252, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def wait_until_serving(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the app exited while starting"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not answer at {url} within {timeout_s} s")


# app.main, as `python app.py` runs it, after two test hooks: it says whether importing the app
# imported pycolmap (whose glog would replace the SIGTERM handler; main imports it on purpose,
# first), and once the file SLOW_WRITES_FLAG exists each store write first sleeps 3 s, so that the
# signal comes while a save is in flight.
STARTER = """
import os, sys, time
import app
import vggt_app.store.entries
print('pycolmap imported by import app:', 'pycolmap' in sys.modules, flush=True)
write = vggt_app.store.entries.ReconstructionStore._write
def slow_write(self, stored, *args, **kwargs):
    if os.path.exists(os.environ['SLOW_WRITES_FLAG']):
        time.sleep(3)
    write(self, stored, *args, **kwargs)
vggt_app.store.entries.ReconstructionStore._write = slow_write
app.main()
"""


def wait_for_log(log, text: str, count: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the app exited early"
        log.seek(0)
        if log.read().count(text) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} did not appear {count} times in the app's log within {timeout_s} s")


@contextlib.contextmanager
def app_process(arguments: list[str], log, **environment: str):
    """The app started with ``arguments`` (after the Python executable), its output in ``log``;
    killed on the way out if the test left it running."""
    process = subprocess.Popen(
        [sys.executable, *arguments], cwd=APP_FILE.parent, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **environment})
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_finishes_the_saves_and_exits_cleanly(tmp_path):
    port, storage, photos = free_port(), tmp_path / "storage", noise_photos(tmp_path)
    slow_writes = tmp_path / "slow-writes"
    log = (tmp_path / "app.log").open("w+")
    with app_process(["-c", STARTER, "--checkpoint", "random-tiny", "--host", "127.0.0.1", "--port", str(port),
                      "--storage-dir", str(storage), "--max-frames", "6"], log,
                     SLOW_WRITES_FLAG=str(slow_writes)) as process:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, process)
        client = Client(url, verbose=False)
        files = [handle_file(str(p)) for p in photos]
        outputs = client.predict(files, 1.0, *VIEW, api_name="/reconstruct")
        recon_id, link = outputs[4], outputs[5]["value"]
        assert recon_id in link
        # Downloads include the COLMAP model: pycolmap is in use when the signal comes.
        assert any(name.endswith("colmap.zip") for name in client.predict(recon_id, *VIEW, api_name="/export"))
        # A second reconstruction whose save is still being written when the signal comes.
        slow_writes.touch()
        client.submit(files, 1.0, *VIEW, api_name="/reconstruct")
        wait_for_log(log, "reconstructed 3 frames", 2, process)  # logged once handed to the writers
        process.send_signal(signal.SIGTERM)
        return_code = process.wait(timeout=60)
    log.seek(0)
    output = log.read()
    assert "pycolmap imported by import app: False" in output
    assert return_code == 0, output[-3000:]
    assert "Aborted" not in output and "stack trace" not in output, output[-3000:]
    assert "every reconstruction in flight is saved" in output
    # The app says where it runs, and not Gradio's advice to "set share=True" (its flag is --share).
    assert "* Running on http://" in output and "share=True" not in output
    entries = sorted(path.name for path in storage.iterdir())
    assert len(entries) == 2 and recon_id in entries
    for entry in entries:  # the one whose link was shown, and the one in flight: both complete
        metadata = json.loads((storage / entry / "metadata.json").read_text())
        assert metadata["num_frames"] == 3
        with np.load(storage / entry / "reconstruction.npz", allow_pickle=False) as arrays:
            assert arrays["images"].shape[0] == 3 and arrays["depth"].shape[0] == 3


def worker_pids(app_pid: int) -> list[int]:
    """The app's device-group workers: its children started by multiprocessing's spawn (not its
    resource tracker)."""
    workers = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except (OSError, NotADirectoryError):
            continue  # not a process, or gone meanwhile
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (name) state"
        if parent == app_pid and b"multiprocessing.spawn" in command and b"resource_tracker" not in command:
            workers.append(int(entry.name))
    return workers


def test_sigterm_stops_the_device_group_workers(tmp_path):
    port, photos = free_port(), noise_photos(tmp_path)
    log = (tmp_path / "app.log").open("w+")
    with app_process([str(APP_FILE), "--checkpoint", "random-tiny", "--devices", "cpu,cpu", "--host", "127.0.0.1",
                      "--port", str(port), "--storage-dir", str(tmp_path / "storage"), "--max-frames", "6"],
                     log) as process:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, process)
        outputs = Client(url, verbose=False).predict([handle_file(str(p)) for p in photos], 1.0, *VIEW,
                                                     api_name="/reconstruct")
        assert "**3 frames**" in outputs[1]
        workers = worker_pids(process.pid)
        assert len(workers) == 2, workers
        process.send_signal(signal.SIGTERM)
        return_code = process.wait(timeout=60)
    log.seek(0)
    output = log.read()
    assert return_code == 0, output[-3000:]
    assert "stopped the device group's workers on cpu, cpu" in output, output[-3000:]
    deadline = time.monotonic() + 10  # once the app is gone, init reaps what it had not
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
