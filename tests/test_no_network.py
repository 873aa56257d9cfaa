"""Without a network the Hub is asked once, briefly, and the (good) message comes within seconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# huggingface_hub is imported before the clock starts: importing it takes seconds on a loaded
# machine, and the app has imported it long before anyone presses Reconstruct.
CODE = """
import time
import huggingface_hub
from vggt_core import load_model
started = time.perf_counter()
try:
    load_model('facebook/VGGT-1B', device='cpu')
except Exception as error:
    print('TYPE', type(error).__name__)
    print(error)
print('SECONDS', time.perf_counter() - started)
"""


def run_without_hub(tmp_path: Path, endpoint: str) -> tuple[str, float]:
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty-hf"), "HF_ENDPOINT": endpoint,
           "PYTHONPATH": str(REPO_ROOT)}
    for name in ("HF_HUB_OFFLINE", "HF_HUB_CACHE"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout, float(result.stdout.split("SECONDS")[1])


@pytest.fixture()
def silent_server():
    """A port that accepts connections and never answers: what a black-holing firewall looks like."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def closed_port() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens once the probe is closed


def test_a_hub_that_never_answers_fails_within_seconds(tmp_path, silent_server):
    output, seconds = run_without_hub(tmp_path, silent_server)
    assert "TYPE WeightsUnavailableError" in output
    assert "did not answer within 3 s" in output and "local file" in output and "--checkpoint" in output
    assert seconds < 6.0, seconds  # one 3 s reachability check, not huggingface_hub's retries


def test_a_closed_port_fails_at_once(tmp_path):
    output, seconds = run_without_hub(tmp_path, closed_port())
    assert "TYPE WeightsUnavailableError" in output and "did not answer" in output
    assert seconds < 3.0, seconds
