"""Atomic file writes: every file the project writes goes through here.

A file is written under a hidden temporary name in its destination folder, flushed, and
renamed over the destination in one step (``os.replace``), so a reader, a pruner or a crash
never sees half a file: either the old content or the whole new one. With ``durable=True``
(the default) the data and then the folder entry are also ``fsync``-ed, so the file survives a
power cut or ``kill -9`` once the call returns; derived files that are rebuilt after a restart
anyway (views, download bundles) pass ``durable=False`` and skip the two ``fsync`` calls.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["TEMPORARY_PREFIX", "atomic_writer", "atomic_write_bytes", "atomic_path", "atomic_directory",
           "fsync_directory", "is_temporary_name"]

# Temporary names start with this, so cleaners can recognise (and skip or remove) them.
TEMPORARY_PREFIX = ".partial-"


def is_temporary_name(name: str) -> bool:
    return name.startswith(TEMPORARY_PREFIX)


def _temporary_sibling(target: Path) -> Path:
    # The suffix is kept: libraries that pick a format from the name (trimesh, PIL) still work.
    return target.with_name(f"{TEMPORARY_PREFIX}{secrets.token_hex(6)}-{target.name}")


def fsync_directory(folder: str | os.PathLike) -> None:
    """Make a rename or new file in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename itself is still atomic
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True, optional: bool = False) -> Iterator[Path]:
    """A temporary path to write by name; it becomes ``path`` when the block ends without error.

    For libraries that write files themselves (``trimesh``, ``PIL``); the temporary file is
    removed if the block raises. With ``optional``, a block that wrote nothing leaves ``path``
    as it was.
    """
    target = Path(path)
    temporary = _temporary_sibling(target)
    try:
        yield temporary
        if optional and not temporary.exists():
            return
        if durable:
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if durable:
        fsync_directory(target.parent)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` when the block ends without error."""
    with atomic_path(path, durable=False) as temporary:
        with open(temporary, "wb") as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
    if durable:
        fsync_directory(Path(path).parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically; returns ``path`` as a :class:`Path`."""
    with atomic_writer(path, durable=durable) as handle:
        handle.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """A temporary folder that replaces the folder ``path`` when the block ends without error.

    A folder cannot be renamed over a non-empty one, so an existing ``path`` is first renamed
    aside and deleted after the swap; a reader sees the old folder, then the new one (for an
    instant, none).
    """
    target = Path(path)
    temporary = _temporary_sibling(target)
    temporary.mkdir(parents=True)
    try:
        yield temporary
        if durable:
            for file in temporary.rglob("*"):
                if file.is_file():
                    with open(file, "rb+") as handle:
                        os.fsync(handle.fileno())
        old = None
        if target.exists():
            old = _temporary_sibling(target)
            os.replace(target, old)
        os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if durable:
        fsync_directory(target.parent)
