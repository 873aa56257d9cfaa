"""Reconstructions stored on disk under unguessable ids, for share links.

One folder per id, ``<root>/<id>/reconstruction.npz`` and ``metadata.json``. Entries expire a
fixed time after they were made, and the oldest go first when the folder outgrows its size
limit. Nothing lists the entries: the id is the only key and the secret part of a share link.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .reconstruction import Reconstruction

logger = logging.getLogger(__name__)


# token_urlsafe(18) gives 24 characters of [A-Za-z0-9_-] (144 random bits). Anything else is
# rejected before it gets near the file system, which rules out path traversal.
RECONSTRUCTION_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22,64}")
RECONSTRUCTION_ID_BYTES = 18
_INCOMING_PREFIX = ".incoming-"
_STALE_INCOMING_SECONDS = 3600


class ReconstructionNotFoundError(LookupError):
    """The id is malformed, unknown or expired; ``str()`` is the message for the user."""


def is_valid_reconstruction_id(text: object) -> bool:
    return isinstance(text, str) and RECONSTRUCTION_ID_PATTERN.fullmatch(text) is not None


@dataclass(frozen=True)
class StoredReconstruction:
    id: str
    reconstruction: Reconstruction
    metadata: dict[str, Any]

    @property
    def created_at(self) -> float:
        return float(self.metadata.get("created_at", 0.0))


class ReconstructionStore:
    """Reconstructions on disk, one folder per id: ``<root>/<id>/reconstruction.npz`` and
    ``metadata.json``, plus the few most recently used ones in memory.

    Entries expire ``ttl_seconds`` after they were created, and the oldest are deleted first
    whenever the folder grows over ``max_bytes`` (the newest entry is always kept, so a fresh
    share link never breaks at once). There is deliberately no way to list the entries: an id is
    the only key, and it is the secret part of a share link.
    """

    RECONSTRUCTION_FILE = "reconstruction.npz"
    METADATA_FILE = "metadata.json"

    def __init__(self, root: str | os.PathLike, *, ttl_seconds: float, max_bytes: int,
                 memory_cache_size: int = 4, clock: Callable[[], float] = time.time):
        self.root = Path(root)
        self.ttl_seconds = float(ttl_seconds)
        self.max_bytes = int(max_bytes)
        self.memory_cache_size = memory_cache_size
        self.clock = clock
        self._cache: OrderedDict[str, StoredReconstruction] = OrderedDict()
        # Saved but not yet on disk: id -> (reconstruction, set once the write has ended).
        self._pending: dict[str, tuple[StoredReconstruction, threading.Event]] = {}
        self._lock = threading.RLock()
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- writing

    def save(self, reconstruction: Reconstruction, metadata: Mapping[str, Any] | None = None, *,
             background: bool = False) -> str:
        """Store a reconstruction under a new random id and return the id.

        With ``background``, the (compressed, so slow: seconds for 50 frames) file is written by a
        thread and the id is usable at once: until the file exists, :meth:`load` serves the
        reconstruction from memory and :meth:`npz_path` waits for it.
        """
        recon_id = secrets.token_urlsafe(RECONSTRUCTION_ID_BYTES)
        info = dict(metadata or {})
        info["created_at"] = self.clock()
        stored = StoredReconstruction(recon_id, reconstruction, info)
        written = threading.Event()
        with self._lock:
            self._pending[recon_id] = (stored, written)
            self._remember(stored)
        if background:
            threading.Thread(target=self._write_logging_errors, args=(stored, written),
                             name=f"store-{recon_id[:6]}", daemon=True).start()
        else:
            self._write(stored, written)
        return recon_id

    def _write(self, stored: StoredReconstruction, written: threading.Event) -> None:
        # Written under a hidden name and renamed, so no reader (or pruner) sees half an entry.
        incoming = self.root / f"{_INCOMING_PREFIX}{stored.id}"
        try:
            incoming.mkdir()
            stored.reconstruction.save(incoming / self.RECONSTRUCTION_FILE)
            (incoming / self.METADATA_FILE).write_text(json.dumps(stored.metadata, indent=1), encoding="utf-8")
            os.replace(incoming, self.root / stored.id)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        finally:
            with self._lock:
                self._pending.pop(stored.id, None)
            written.set()
        self.prune(keep=stored.id)

    def _write_logging_errors(self, stored: StoredReconstruction, written: threading.Event) -> None:
        try:
            self._write(stored, written)
        except Exception:  # a full disk, say: the scene stays viewable while it is in memory
            logger.exception("could not store reconstruction %s", stored.id)

    # ---- reading

    def load(self, recon_id: str) -> StoredReconstruction:
        """The stored reconstruction, from memory when it was used recently.

        Raises:
            ReconstructionNotFoundError: malformed, unknown or expired id.
        """
        if not is_valid_reconstruction_id(recon_id):
            raise ReconstructionNotFoundError(self.not_found_message())
        with self._lock:
            stored = self._cache.get(recon_id)
            if stored is None and recon_id in self._pending:
                stored = self._pending[recon_id][0]
        if stored is None:
            stored = self._read(recon_id)  # outside the lock: large files take seconds
        with self._lock:
            if self._is_expired(stored.created_at):
                self._delete(recon_id)
                raise ReconstructionNotFoundError(self.not_found_message())
            self._remember(stored)
        return stored

    def npz_path(self, recon_id: str, timeout_s: float = 300.0) -> Path:
        """The stored ``.npz`` of an id, once it is written.

        Raises:
            ReconstructionNotFoundError: malformed, unknown or expired id, or the file could not be written.
        """
        if not is_valid_reconstruction_id(recon_id):
            raise ReconstructionNotFoundError(self.not_found_message())
        with self._lock:
            pending = self._pending.get(recon_id)
        if pending is not None:
            pending[1].wait(timeout_s)
        path = self.root / recon_id / self.RECONSTRUCTION_FILE
        if not path.is_file():
            raise ReconstructionNotFoundError(self.not_found_message())
        return path

    def expires_at(self, stored: StoredReconstruction) -> float:
        return stored.created_at + self.ttl_seconds

    def not_found_message(self) -> str:
        return ("This reconstruction link is invalid or has expired (reconstructions are kept for "
                f"{self.ttl_seconds / 3600:g} hours). Please upload the photos or video again.")

    def _read(self, recon_id: str) -> StoredReconstruction:
        folder = self.root / recon_id
        if not (folder / self.RECONSTRUCTION_FILE).is_file():
            raise ReconstructionNotFoundError(self.not_found_message())
        metadata = self._read_metadata(folder)
        try:
            reconstruction = Reconstruction.load(folder / self.RECONSTRUCTION_FILE)
        except InputError as error:
            logger.warning("stored reconstruction %s is unreadable (%s); deleting it", recon_id, error)
            self._delete(recon_id)
            raise ReconstructionNotFoundError(self.not_found_message()) from error
        return StoredReconstruction(recon_id, reconstruction, metadata)

    def _read_metadata(self, folder: Path) -> dict[str, Any]:
        """The entry's metadata; a missing or damaged file counts as created at time 0 (expired)."""
        try:
            metadata = json.loads((folder / self.METADATA_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"created_at": 0.0}
        if not isinstance(metadata, dict) or not isinstance(metadata.get("created_at"), (int, float)):
            return {"created_at": 0.0}
        return metadata

    def _remember(self, stored: StoredReconstruction) -> None:
        self._cache[stored.id] = stored
        self._cache.move_to_end(stored.id)
        while len(self._cache) > self.memory_cache_size:
            self._cache.popitem(last=False)

    # ---- expiry and size

    def _is_expired(self, created_at: float) -> bool:
        return self.clock() - created_at > self.ttl_seconds

    def prune(self, keep: str | None = None) -> list[str]:
        """Delete expired entries, then the oldest ones until the total fits in ``max_bytes``.

        ``keep`` (the entry just saved) is never deleted for size. Returns the deleted ids.
        """
        with self._lock:
            self._remove_stale_incoming()
            entries = []  # (created_at, id, bytes)
            for folder in self.root.iterdir():
                if folder.is_dir() and is_valid_reconstruction_id(folder.name):
                    created_at = float(self._read_metadata(folder)["created_at"])
                    entries.append((created_at, folder.name, _folder_bytes(folder)))
            entries.sort()

            removed = [recon_id for created_at, recon_id, _ in entries
                       if recon_id != keep and self._is_expired(created_at)]
            remaining = [entry for entry in entries if entry[1] not in removed]
            total = sum(size for _, _, size in remaining)
            for _, recon_id, size in remaining:
                if total <= self.max_bytes:
                    break
                if recon_id != keep:
                    removed.append(recon_id)
                    total -= size
            for recon_id in removed:
                self._delete(recon_id)
            if removed:
                logger.info("pruned %d stored reconstruction(s); %.1f MB left", len(removed), total / 1e6)
            return removed

    def total_bytes(self) -> int:
        return sum(_folder_bytes(folder) for folder in self.root.iterdir()
                   if folder.is_dir() and is_valid_reconstruction_id(folder.name))

    def _remove_stale_incoming(self) -> None:
        # Left behind only by a crash in the middle of save().
        for folder in self.root.glob(f"{_INCOMING_PREFIX}*"):
            try:
                if time.time() - folder.stat().st_mtime > _STALE_INCOMING_SECONDS:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass

    def _delete(self, recon_id: str) -> None:
        self._cache.pop(recon_id, None)
        shutil.rmtree(self.root / recon_id, ignore_errors=True)

    # ---- attachments (minimal version; the store's rewrite provides the full one)

    ATTACHMENT_NAME_PATTERN = re.compile(r"[a-z0-9_.-]+")
    ATTACHMENTS_DIR = "attachments"

    def _attachment_path(self, recon_id: str, name: str) -> Path:
        if not is_valid_reconstruction_id(recon_id):
            raise ReconstructionNotFoundError(self.not_found_message())
        if not self.ATTACHMENT_NAME_PATTERN.fullmatch(name) or name.strip(".") == "":
            raise ValueError(f"invalid attachment name {name!r}")
        return self.root / recon_id / self.ATTACHMENTS_DIR / name

    def save_attachment(self, recon_id: str, name: str, data: bytes) -> None:
        """Store ``data`` with an entry (written aside and renamed; inside the entry's folder, so
        counted in its size and deleted with it)."""
        path = self._attachment_path(recon_id, name)
        self.npz_path(recon_id)  # waits for a background write; raises for unknown ids
        path.parent.mkdir(exist_ok=True)
        partial = path.with_name(f".{name}.{secrets.token_hex(4)}")
        partial.write_bytes(data)
        os.replace(partial, path)

    def load_attachment(self, recon_id: str, name: str) -> bytes | None:
        """The bytes saved under ``name`` for the entry, or None if absent."""
        path = self._attachment_path(recon_id, name)
        try:
            return path.read_bytes()
        except OSError:
            return None


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:  # deleted meanwhile
            pass
    return total
