"""SIGTERM (a Space restart, ``kill``) stops the app cleanly: exit code 0, no glog "*** Aborted"
stack trace from pycolmap, and every reconstruction whose link was shown is complete on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gradio_client import Client, handle_file

import app
from app_fixtures import free_port, synthetic_photos  # noqa: F401 (fixtures)
from vggt_core.reconstruction import Reconstruction

APP_FILE = Path(app.__file__)
VIEW = [50, "depth", "All", True, False, False, app.DEFAULT_MAX_POINTS, False]


def test_importing_the_app_does_not_import_pycolmap():
    # pycolmap's glog replaces the SIGTERM handler when imported; the app imports it on purpose
    # in main() only, before installing its own handler (see app.exit_cleanly_on_sigterm).
    code = "import sys, app; print('pycolmap' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=APP_FILE.parent, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    assert result.stdout.strip() == "False", result.stderr


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


def test_sigterm_finishes_the_saves_and_exits_cleanly(tmp_path, synthetic_photos):  # noqa: F811
    port, storage = free_port(), tmp_path / "storage"
    log = (tmp_path / "app.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, str(APP_FILE), "--checkpoint", app.RANDOM_TINY_CHECKPOINT, "--host", "127.0.0.1",
         "--port", str(port), "--storage-dir", str(storage), "--max-frames", "6"],
        cwd=APP_FILE.parent, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, process)
        client = Client(url, verbose=False)
        outputs = client.predict([handle_file(str(p)) for p in synthetic_photos], 1.0, *VIEW, api_name="/reconstruct")
        recon_id, link = outputs[4], outputs[5]["value"]
        assert recon_id in link
        # Downloads include the COLMAP model: pycolmap is in use when the signal comes.
        assert any(name.endswith("colmap.zip") for name in client.predict(recon_id, *VIEW, api_name="/export"))
        process.send_signal(signal.SIGTERM)
        return_code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log.seek(0)
    output = log.read()
    assert return_code == 0, output[-3000:]
    assert "Aborted" not in output and "stack trace" not in output, output[-3000:]
    assert "every reconstruction in flight is saved" in output
    entry = storage / recon_id
    metadata = json.loads((entry / "metadata.json").read_text())
    assert metadata["num_frames"] == 3
    assert Reconstruction.load(entry / "reconstruction.npz").num_frames == 3
