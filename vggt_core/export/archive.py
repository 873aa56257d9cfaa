"""Zip archives of export folders: the one download file of a format that is a folder of files.

Kept apart from the exporters' package ``__init__`` so that any exporter (the splatting bundle)
and the registry can zip without importing every other exporter.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..atomic_files import TEMPORARY_PREFIX, atomic_writer

__all__ = ["write_zipped_folder", "zip_folder"]


def zip_folder(folder: str | os.PathLike, path: str | os.PathLike, *, durable: bool = True) -> Path:
    """Zip everything under ``folder`` (names relative to it) into ``path``, atomically."""
    source, target = Path(folder), Path(path)
    with atomic_writer(target, durable=durable) as handle:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(source.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(source).as_posix())
    return target


def write_zipped_folder(path: str | os.PathLike, fill: Callable[[Path], object], *, durable: bool = True) -> Path:
    """Write a zip at ``path`` (atomically) of a folder that ``fill(folder)`` writes.

    The folder is temporary, beside ``path`` (same file system, named like every temporary file
    so that cleaners recognise it) and removed afterwards, also when ``fill`` fails. ``fill``
    need not write durably: only the zip is kept.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}folder-", dir=target.parent))
    try:
        fill(folder)
        return zip_folder(folder, target, durable=durable)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
