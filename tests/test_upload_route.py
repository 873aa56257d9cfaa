"""Upload caps at Gradio's upload route (issue #19): a request over the total cap or the file
count is refused with a 413 while it streams, and leaves no file behind."""

from __future__ import annotations

import socket
from pathlib import Path

import gradio as gr
import httpx
import pytest
from gradio.utils import get_upload_folder

from vggt_app.store.upload_limits import UploadLimits
from vggt_app.upload_route import upload_cap_app_kwargs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def capped_server():
    """A page with a file input, its uploads capped at 1 MB in all and 3 files per request."""
    with gr.Blocks() as demo:
        gr.File(file_count="multiple")
    limits = UploadLimits(max_file_mb=0.8, max_total_mb=1.0)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                            quiet=True, max_file_size=int(limits.max_file_bytes),
                            app_kwargs=upload_cap_app_kwargs(limits, max_files=3))
    yield url.rstrip("/")
    demo.close()


def uploaded_files() -> set[Path]:
    folder = Path(get_upload_folder())
    return {path for path in folder.rglob("*") if path.is_file()} if folder.exists() else set()


def multipart(files: list[tuple[str, bytes]], boundary: str = "capboundary42") -> tuple[bytes, dict]:
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                    for name, data in files) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def chunked(body: bytes, size: int = 64 * 1024):
    """The body without a Content-Length, so only the streamed count can refuse it."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


def test_an_upload_within_the_caps_is_accepted(capped_server):
    body, headers = multipart([("a.jpg", b"a" * 300_000), ("b.jpg", b"b" * 300_000)])
    answer = httpx.post(f"{capped_server}/gradio_api/upload", content=body, headers=headers, timeout=30)
    assert answer.status_code == 200 and len(answer.json()) == 2


@pytest.mark.parametrize("declared_length", [True, False])
def test_an_upload_over_the_total_is_refused_while_streaming_and_leaves_no_file(capped_server, declared_length):
    before = uploaded_files()
    # Each file is under the 0.8 MB per-file cap that Gradio checks; together 2.1 MB.
    body, headers = multipart([(f"{n}.jpg", bytes([n]) * 700_000) for n in range(3)])
    content = body if declared_length else chunked(body)
    answer = httpx.post(f"{capped_server}/gradio_api/upload", content=content, headers=headers, timeout=30)
    assert answer.status_code == 413
    assert "maximum allowed size of 1 MB per reconstruction" in answer.text
    assert uploaded_files() == before


def test_an_upload_with_too_many_files_is_refused_and_leaves_no_file(capped_server):
    before = uploaded_files()
    body, headers = multipart([(f"{n}.jpg", b"x" * 1000) for n in range(5)])
    answer = httpx.post(f"{capped_server}/gradio_api/upload", content=chunked(body, 700), headers=headers, timeout=30)
    assert answer.status_code == 413 and "more than 3 files" in answer.text
    assert uploaded_files() == before
