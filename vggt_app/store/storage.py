"""Where the store's bytes live: the few file operations :mod:`vggt_app.store.entries` needs.

:class:`ReconstructionStore <vggt_app.store.entries.ReconstructionStore>` never touches files
itself; it goes through an :class:`EntryStorage`. Each entry is a flat set of named files
under an id (``reconstruction.npz``, ``metadata.json``, ``attachments/<name>``).
:class:`LocalFolderStorage` keeps them in ``<root>/<id>/``; another backend (object storage,
say) only has to provide the same methods. Writes must be atomic: a reader sees either no
file or the whole file.

Errors: a missing file raises :class:`FileNotFoundError`; anything else the backend cannot do
right now (too many open files, a full disk, a network hiccup) raises another
:class:`OSError`, which the store treats as transient and never as a reason to delete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from vggt_core.atomic_files import atomic_write_bytes, atomic_writer, is_temporary_name

__all__ = ["EntryFile", "EntryStorage", "LocalFolderStorage"]


@dataclass(frozen=True)
class EntryFile:
    size: int
    modified_at: float  # seconds since the epoch


class EntryStorage(Protocol):
    """The store's storage interface. ``name`` is a relative file name inside one entry,
    possibly with one ``/`` (``attachments/sky.png``); the store validates both id and name."""

    def read_bytes(self, entry_id: str, name: str) -> bytes: ...

    def write_bytes(self, entry_id: str, name: str, data: bytes) -> None:
        """Atomically create or replace one file, durably (it survives a crash once this returns)."""

    def open_write(self, entry_id: str, name: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """Like :meth:`write_bytes`, streamed: the file appears when the block ends without error."""

    def exists(self, entry_id: str, name: str) -> bool: ...

    def list_files(self, entry_id: str) -> dict[str, EntryFile]:
        """The entry's complete files (no temporaries); empty when the entry does not exist."""

    def delete_entry(self, entry_id: str) -> None:
        """Remove the entry and all its files; deleting a missing entry is not an error."""

    def entry_ids(self) -> list[str]:
        """Every entry id, for expiry only (never shown to users)."""

    def local_path(self, entry_id: str, name: str) -> Path | None:
        """The file on the local disk, if the backend keeps one there (lets downloads link it)."""


class LocalFolderStorage:
    """Entries as folders ``<root>/<id>/`` on a local (or mounted) file system."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, entry_id: str, name: str) -> Path:
        return self.root / entry_id / name

    def read_bytes(self, entry_id: str, name: str) -> bytes:
        return self._path(entry_id, name).read_bytes()

    def write_bytes(self, entry_id: str, name: str, data: bytes) -> None:
        path = self._path(entry_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)

    @contextlib.contextmanager
    def open_write(self, entry_id: str, name: str) -> Iterator[BinaryIO]:
        path = self._path(entry_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as handle:
            yield handle

    def exists(self, entry_id: str, name: str) -> bool:
        return self._path(entry_id, name).is_file()

    def list_files(self, entry_id: str) -> dict[str, EntryFile]:
        folder = self.root / entry_id
        files: dict[str, EntryFile] = {}
        if not folder.is_dir():
            return files
        for path in folder.rglob("*"):
            if is_temporary_name(path.name):
                continue
            try:
                status = path.stat()
            except FileNotFoundError:  # deleted meanwhile
                continue
            if path.is_file():
                files[path.relative_to(folder).as_posix()] = EntryFile(status.st_size, status.st_mtime)
        return files

    def delete_entry(self, entry_id: str) -> None:
        folder = self.root / entry_id
        if folder.exists():
            shutil.rmtree(folder)

    def entry_ids(self) -> list[str]:
        return [path.name for path in self.root.iterdir() if path.is_dir()]

    def local_path(self, entry_id: str, name: str) -> Path | None:
        return self._path(entry_id, name)
