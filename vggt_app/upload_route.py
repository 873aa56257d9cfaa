"""Upload caps enforced on Gradio's upload route while the bytes stream in.

Gradio checks only each file's size (``max_file_size``) and accepts any number of files per
request, so a request's total and its file count were checked after every byte had landed on
disk. :class:`UploadCapMiddleware` (an ASGI middleware, installed by ``main`` through
``demo.launch(app_kwargs=...)``) watches ``POST …/upload``:

- a ``Content-Length`` over the cap is answered 413 before a byte is read;
- otherwise it counts the body's bytes and multipart parts as they arrive, and on passing the
  total cap or the file count it raises Gradio's own ``MultiPartException`` from the body
  stream: Gradio's parser then closes and deletes the files it had started (it does that only
  for that exception) and answers 413 with our message, which the page shows.

So disk never holds more than one cap's worth (plus one network chunk) per request.
"""

from __future__ import annotations

import logging
from typing import Any

from .store.upload_limits import UploadLimits

logger = logging.getLogger(__name__)

# Multipart framing (boundaries, part headers) is not file content: allowed on top of the cap.
FRAMING_ALLOWANCE_BYTES = 64 * 1024
FRAMING_BYTES_PER_PART = 1024


def _multipart_boundary(headers: dict[bytes, bytes]) -> bytes | None:
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.strip().partition("=")
        if name.lower() == "boundary" and value:
            return b"--" + value.strip('"').encode("latin-1")
    return None


class UploadCapMiddleware:
    """Refuse upload requests over ``max_total_bytes`` or ``max_files`` while they stream."""

    def __init__(self, app: Any, *, max_total_bytes: int, max_files: int, path_suffix: str = "/upload"):
        self.app = app
        self.max_total_bytes = int(max_total_bytes)
        self.max_files = int(max_files)
        self.path_suffix = path_suffix

    def too_large_message(self) -> str:
        return (f"The upload is over the maximum allowed size of {self.max_total_bytes / 1e6:g} MB per "
                "reconstruction; please choose fewer or smaller files.")

    def too_many_message(self) -> str:
        return (f"The upload has more than {self.max_files} files, over the maximum allowed size of one "
                "request; please choose fewer files.")

    def body_cap(self, parts: int) -> int:
        return self.max_total_bytes + FRAMING_ALLOWANCE_BYTES + FRAMING_BYTES_PER_PART * parts

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith(self.path_suffix):
            return await self.app(scope, receive, send)
        headers = {key.lower(): value for key, value in scope.get("headers", [])}
        try:
            declared = int(headers.get(b"content-length", b"-1"))
        except ValueError:
            declared = -1
        if declared > self.body_cap(self.max_files):
            return await self._refuse(send, self.too_large_message())
        boundary = _multipart_boundary(headers)
        counted = {"bytes": 0, "delimiters": 0, "tail": b""}

        async def counting_receive():
            message = await receive()
            if message.get("type") == "http.request":
                body = message.get("body", b"")
                counted["bytes"] += len(body)
                if boundary is not None:
                    # A delimiter may straddle two chunks: search the previous chunk's tail too.
                    window = counted["tail"] + body
                    counted["delimiters"] += window.count(boundary) - counted["tail"].count(boundary)
                    counted["tail"] = window[-(len(boundary) - 1):] if len(boundary) > 1 else b""
                parts = max(0, counted["delimiters"] - 1)  # the last delimiter closes the body
                if parts > self.max_files:
                    self._fail(self.too_many_message())
                if counted["bytes"] > self.body_cap(parts):
                    self._fail(self.too_large_message())
            return message

        return await self.app(scope, counting_receive, send)

    @staticmethod
    def _fail(message: str) -> None:
        # Gradio's parser deletes its partial files only for its own exception, and its route
        # answers 413 for one whose text says "maximum allowed size" (both messages do).
        from gradio.route_utils import MultiPartException

        logger.info("refused an upload while it streamed: %s", message)
        raise MultiPartException(message)

    @staticmethod
    async def _refuse(send, message: str) -> None:
        body = message.encode("utf-8")
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def upload_cap_app_kwargs(limits: UploadLimits, max_files: int) -> dict[str, Any]:
    """``demo.launch(app_kwargs=...)`` that installs :class:`UploadCapMiddleware`."""
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(UploadCapMiddleware, max_total_bytes=int(limits.max_total_bytes),
                                      max_files=int(max_files))]}


__all__ = ["UploadCapMiddleware", "upload_cap_app_kwargs"]
