"""Caps on what one request may upload: per file and in total.

The web server refuses a single file over the per-file cap while it is being uploaded (Gradio's
``max_file_size``); :func:`check_upload_sizes` checks both caps again before any file is
decoded, so the message names the limit and the file whatever client sent them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vggt_core.errors import InputError

__all__ = ["UploadLimits", "check_upload_sizes"]


@dataclass(frozen=True)
class UploadLimits:
    """``max_file_mb`` per uploaded file and ``max_total_mb`` for one request (megabytes, 10⁶ bytes)."""

    max_file_mb: float = 200.0
    max_total_mb: float = 500.0

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1e6)

    @property
    def max_total_bytes(self) -> int:
        return int(self.max_total_mb * 1e6)


def check_upload_sizes(paths: Sequence[str | os.PathLike], limits: UploadLimits) -> int:
    """Total bytes of ``paths``.

    Raises:
        InputError: a file is over ``limits.max_file_mb`` or all together are over
            ``limits.max_total_mb``; the message names the file, its size and the limit.
    """
    total = 0
    for path in paths:
        try:
            size = Path(path).stat().st_size
        except OSError:
            continue  # a missing file is reported by whoever opens it, by name
        if size > limits.max_file_bytes:
            raise InputError(f"{Path(path).name} is {size / 1e6:.1f} MB, over the limit of "
                             f"{limits.max_file_mb:g} MB per file.")
        total += size
    if total > limits.max_total_bytes:
        raise InputError(f"The files add up to {total / 1e6:.1f} MB, over the limit of "
                         f"{limits.max_total_mb:g} MB per reconstruction. Use fewer or smaller files.")
    return total
