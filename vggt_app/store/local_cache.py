"""A bounded local disk cache in front of a remote entry storage.

Opening a share link reads the entry's arrays, tens to hundreds of megabytes; from an object
store or the Hub that takes seconds. An entry's files never change once its manifest is
written (a changed scene is stored as a new entry), so a server may keep what it read on its own
disk and serve the next open of the same link from there. Only the manifest is always read from
the remote storage: it is what says the entry still exists, so an entry that expired (on any
server) is never served from a stale copy.

The cache lives in one folder, is bounded by ``max_bytes`` (least recently used files go first)
and is safe to lose: it is emptied at start and rebuilt on demand.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from vggt_core.atomic_files import atomic_write_bytes
from .storage import EntryFile, EntryStorage

logger = logging.getLogger(__name__)

__all__ = ["CachedEntryStorage"]


class CachedEntryStorage:
    """An :class:`~vggt_app.store.storage.EntryStorage` that keeps recently read files of ``remote``
    in ``folder`` (at most ``max_bytes``). Files named in ``uncached`` (the manifest) are always
    read from ``remote``; every write and delete goes to ``remote`` first.
    """

    def __init__(self, remote: EntryStorage, folder: str | os.PathLike, *, max_bytes: int,
                 uncached: tuple[str, ...] = ("metadata.json",)):
        self.remote = remote
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self.uncached = frozenset(uncached)
        self._lock = threading.Lock()
        self._sizes: OrderedDict[tuple[str, str], int] = OrderedDict()  # least recently used first
        self._total = 0
        shutil.rmtree(self.folder, ignore_errors=True)  # a previous run's copies may be stale
        self.folder.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"CachedEntryStorage({self.remote!r}, {str(self.folder)!r})"

    @property
    def cached_bytes(self) -> int:
        return self._total

    def _cache_path(self, entry_id: str, name: str) -> Path:
        # Hashed names: the cache never trusts ids or names as paths.
        return self.folder / hashlib.sha256(f"{entry_id}\0{name}".encode()).hexdigest()

    # ---- reading

    def read_bytes(self, entry_id: str, name: str) -> bytes:
        if name in self.uncached:
            return self.remote.read_bytes(entry_id, name)
        key = (entry_id, name)
        path = self._cache_path(entry_id, name)
        with self._lock:
            known = key in self._sizes
            if known:
                self._sizes.move_to_end(key)
        if known:
            try:
                return path.read_bytes()
            except OSError:  # evicted meanwhile, or the local disk erred: ask the remote
                self._forget(key)
        data = self.remote.read_bytes(entry_id, name)
        self._remember(key, path, data)
        return data

    def _remember(self, key: tuple[str, str], path: Path, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        try:
            atomic_write_bytes(path, data, durable=False)
        except OSError as error:  # a full local disk must not fail the read itself
            logger.warning("could not cache %s/%s locally (%s)", *key, error)
            return
        with self._lock:
            if key in self._sizes:
                self._total -= self._sizes.pop(key)
            self._sizes[key] = len(data)
            self._total += len(data)
            while self._total > self.max_bytes and self._sizes:
                old_key, size = self._sizes.popitem(last=False)
                self._total -= size
                with contextlib.suppress(OSError):
                    self._cache_path(*old_key).unlink()

    def _forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            size = self._sizes.pop(key, None)
            if size is not None:
                self._total -= size
        with contextlib.suppress(OSError):
            self._cache_path(*key).unlink()

    def _forget_entry(self, entry_id: str) -> None:
        with self._lock:
            keys = [key for key in self._sizes if key[0] == entry_id]
        for key in keys:
            self._forget(key)

    # ---- everything else goes to the remote storage

    def write_bytes(self, entry_id: str, name: str, data: bytes) -> None:
        self.remote.write_bytes(entry_id, name, data)
        self._forget((entry_id, name))

    @contextlib.contextmanager
    def open_write(self, entry_id: str, name: str) -> Iterator[BinaryIO]:
        with self.remote.open_write(entry_id, name) as handle:
            yield handle
        self._forget((entry_id, name))

    def exists(self, entry_id: str, name: str) -> bool:
        return self.remote.exists(entry_id, name)

    def list_files(self, entry_id: str) -> dict[str, EntryFile]:
        return self.remote.list_files(entry_id)

    def delete_entry(self, entry_id: str) -> None:
        self.remote.delete_entry(entry_id)
        self._forget_entry(entry_id)

    def compact_history(self) -> None:
        compact = getattr(self.remote, "compact_history", None)
        if compact is not None:
            compact()

    def entry_ids(self) -> list[str]:
        return self.remote.entry_ids()

    def local_path(self, entry_id: str, name: str) -> Path | None:
        return None  # the cached copy may be evicted at any moment: callers copy the bytes
