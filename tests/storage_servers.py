"""Storage back ends for the tests: a folder, fsspec's in-memory store, and a real S3-compatible
server (moto's standalone server) started on 127.0.0.1 for the session."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def s3_server():
    """A moto S3 server on 127.0.0.1; yields its endpoint URL. Stopped on exit."""
    pytest.importorskip("s3fs")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto S3 server did not start")
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def make_bucket(endpoint: str) -> str:
    """A new empty bucket on the server; returns its name."""
    import s3fs

    name = f"vggt-{secrets.token_hex(4)}"
    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(name)
    return name


@pytest.fixture(scope="session")
def s3_endpoint():
    saved = {key: os.environ.get(key) for key in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    try:
        with s3_server() as endpoint:
            yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(params=["folder", "memory", "s3"])
def storage_url(request, tmp_path):
    """One storage location per back end, each new and empty; with ``storage_options``."""
    if request.param == "folder":
        return str(tmp_path / "store"), {}
    if request.param == "memory":
        return f"memory://vggt-tests-{secrets.token_hex(4)}/entries", {}
    endpoint = request.getfixturevalue("s3_endpoint")
    return f"s3://{make_bucket(endpoint)}/share", {"endpoint_url": endpoint}
