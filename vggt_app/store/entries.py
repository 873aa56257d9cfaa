"""Reconstructions stored under unguessable ids, for share links.

Each entry is a few files under its id (see :mod:`vggt_app.store.storage` for where they live):
``reconstruction.npz``, any ``attachments/<name>``, and ``metadata.json``, written LAST: it
is the entry's manifest, and an entry without one is invisible (a save that has not finished,
or was interrupted by a crash). Entries expire a fixed time after they were made, and the
oldest go first when the store outgrows its size limit. Nothing else ever deletes one: a
transient error (too many open files, a full disk) is reported to the user and the entry
stays. Nothing lists the entries: the id is the only key and the secret part of a share link.
See docs/store.md for the guarantees and the reasons behind them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vggt_core.atomic_files import atomic_path
from vggt_core.errors import InputError
from vggt_core.reconstruction import Reconstruction
from .storage import EntryStorage, LocalFolderStorage

logger = logging.getLogger(__name__)


# token_urlsafe(18) gives 24 characters of [A-Za-z0-9_-] (144 random bits). Anything else is
# rejected before it gets near the file system, which rules out path traversal.
RECONSTRUCTION_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22,64}")
RECONSTRUCTION_ID_BYTES = 18
ATTACHMENT_NAME_PATTERN = re.compile(r"[a-z0-9_.-]+")
# An entry without a manifest this old was left by a crash mid-save, and is removed.
INCOMPLETE_ENTRY_GRACE_SECONDS = 3600.0


class StoreError(Exception):
    """Base of the store's errors; ``str()`` is a message for the user."""


class ReconstructionNotFoundError(StoreError, LookupError):
    """The id is malformed, unknown or expired."""


class StoreUnavailableError(StoreError):
    """The storage could not be read or written just now (a transient error); nothing was
    deleted, and the same request may succeed a moment later."""


class StoreBusyError(StoreUnavailableError):
    """Too many saves are waiting for the writers (back-pressure)."""


def is_valid_reconstruction_id(text: object) -> bool:
    return isinstance(text, str) and RECONSTRUCTION_ID_PATTERN.fullmatch(text) is not None


def check_attachment_name(name: object) -> str:
    """``name`` if it is a valid attachment name (``[a-z0-9_.-]+``, not ``.`` or ``..``)."""
    if not isinstance(name, str) or ATTACHMENT_NAME_PATTERN.fullmatch(name) is None or name in (".", ".."):
        raise ValueError(f"attachment names must match [a-z0-9_.-]+, got {name!r}")
    return name


@dataclass(frozen=True)
class StoredReconstruction:
    id: str
    reconstruction: Reconstruction
    metadata: dict[str, Any]

    @property
    def created_at(self) -> float:
        return float(self.metadata.get("created_at", 0.0))


@dataclass(frozen=True)
class PendingSave:
    """A save handed to the writer pool; :meth:`wait` until the entry is durable."""

    id: str
    future: Future

    def wait(self, timeout_s: float | None = None) -> str:
        """The id, once every file (manifest last) is durably written.

        Raises:
            StoreUnavailableError: the write failed after its retries (the message says why).
        """
        self.future.result(timeout_s)
        return self.id

    @property
    def done(self) -> bool:
        return self.future.done()


class ReconstructionStore:
    """Reconstructions in an :class:`EntryStorage` (by default folders under ``root``), plus the
    few most recently used ones in memory.

    Entries expire ``ttl_seconds`` after they were created, and the oldest are deleted first
    whenever the store grows over ``max_bytes`` (the entry just saved is always kept, so a fresh
    share link never breaks at once). An entry being read is never deleted (readers hold a
    lease, see :meth:`reading`). Saves run on ``writer_threads`` threads; at most
    ``max_queued_saves`` may wait for them, after which :meth:`save` waits up to
    ``queue_timeout_s`` and then raises :class:`StoreBusyError`. A failed write is retried
    ``write_attempts`` times in all before its error reaches the caller.
    """

    RECONSTRUCTION_FILE = "reconstruction.npz"
    METADATA_FILE = "metadata.json"
    ATTACHMENTS_FOLDER = "attachments"

    def __init__(self, root: str | os.PathLike | None = None, *, ttl_seconds: float, max_bytes: int,
                 memory_cache_size: int = 4, clock: Callable[[], float] = time.time,
                 storage: EntryStorage | None = None, writer_threads: int = 2, max_queued_saves: int = 4,
                 queue_timeout_s: float = 60.0, write_attempts: int = 3, retry_delay_s: float = 0.5):
        if storage is None:
            if root is None:
                raise ValueError("give a root folder or a storage")
            storage = LocalFolderStorage(root)
        self.storage = storage
        self.root = Path(root) if root is not None else None
        self.ttl_seconds = float(ttl_seconds)
        self.max_bytes = int(max_bytes)
        self.memory_cache_size = memory_cache_size
        self.clock = clock
        self.write_attempts = max(1, int(write_attempts))
        self.retry_delay_s = float(retry_delay_s)
        self.queue_timeout_s = float(queue_timeout_s)
        self._cache: OrderedDict[str, StoredReconstruction] = OrderedDict()
        # Saved but not yet durable: id -> (reconstruction, its write).
        self._pending: dict[str, tuple[StoredReconstruction, Future]] = {}
        self._leases: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._writers = ThreadPoolExecutor(max_workers=max(1, writer_threads), thread_name_prefix="store-writer")
        self._queue_slots = threading.BoundedSemaphore(max(1, writer_threads) + max(0, max_queued_saves))

    def close(self) -> None:
        """Finish the queued writes and stop the writer threads."""
        self._writers.shutdown(wait=True)

    # ---- writing

    def save(self, reconstruction: Reconstruction, metadata: Mapping[str, Any] | None = None, *,
             background: bool = False) -> str:
        """Store a reconstruction under a new random id; returns the id once it is durable
        (with ``background``, at once, as :meth:`save_async` does).

        Raises:
            StoreUnavailableError: the storage refused the write (after retries); nothing kept.
            StoreBusyError: the writers stayed busy for ``queue_timeout_s``.
        """
        pending = self.save_async(reconstruction, metadata)
        return pending.id if background else pending.wait()

    def save_async(self, reconstruction: Reconstruction,
                   metadata: Mapping[str, Any] | None = None) -> PendingSave:
        """Hand a reconstruction to the writer pool and return at once (unless the queue is full).

        The id is usable right away: :meth:`load` serves it from memory until its files exist.
        Do not show it as a share link before :meth:`PendingSave.wait` returns.
        """
        if not self._queue_slots.acquire(timeout=self.queue_timeout_s):
            raise StoreBusyError("The server is busy saving other reconstructions; please try again "
                                 "in a minute.")
        recon_id = secrets.token_urlsafe(RECONSTRUCTION_ID_BYTES)
        info = dict(metadata or {})
        info["created_at"] = self.clock()
        # What a reload will give back, so the scene looks the same before and after.
        stored = StoredReconstruction(recon_id, reconstruction.at_stored_precision(), info)
        try:
            with self._lock:
                future = self._writers.submit(self._write_with_retries, stored)
                self._pending[recon_id] = (stored, future)
                self._remember(stored)
        except BaseException:
            self._queue_slots.release()
            raise
        future.add_done_callback(lambda _: self._queue_slots.release())
        return PendingSave(recon_id, future)

    def _write_with_retries(self, stored: StoredReconstruction) -> None:
        try:
            for attempt in range(1, self.write_attempts + 1):
                try:
                    self._write(stored)
                    break
                except OSError as error:
                    if attempt == self.write_attempts:
                        logger.error("could not store reconstruction %s after %d attempts: %s",
                                     stored.id, attempt, error)
                        raise StoreUnavailableError(
                            f"The reconstruction could not be saved on the server ({_describe(error)}). "
                            "Please try again later.") from error
                    logger.warning("storing reconstruction %s failed (%s); retrying", stored.id, error)
                    time.sleep(self.retry_delay_s * attempt)
        except BaseException:
            # Never shown as a link: forget it, and remove what the failed attempt left.
            with self._lock:
                self._cache.pop(stored.id, None)
                self._pending.pop(stored.id, None)
                self._delete(stored.id)
            raise
        with self._lock:
            self._pending.pop(stored.id, None)
        try:
            self.prune(keep=stored.id)
        except Exception:  # pruning is housekeeping: the save itself succeeded
            logger.exception("pruning after saving %s failed", stored.id)

    def _write(self, stored: StoredReconstruction) -> None:
        # The manifest (metadata) goes last: until it exists the entry is invisible.
        with self.storage.open_write(stored.id, self.RECONSTRUCTION_FILE) as handle:
            stored.reconstruction.save(handle)
        self.storage.write_bytes(stored.id, self.METADATA_FILE,
                                 json.dumps(stored.metadata, indent=1).encode("utf-8"))

    # ---- attachments

    def save_attachment(self, recon_id: str, name: str, data: bytes) -> None:
        """Store ``data`` beside an entry (atomically); it counts towards the entry's size and
        is deleted with it.

        Raises:
            ValueError: ``name`` does not match ``[a-z0-9_.-]+``.
            ReconstructionNotFoundError: unknown or expired id.
            StoreUnavailableError: the storage refused the write.
        """
        check_attachment_name(name)
        with self.reading(recon_id):
            self._require_live(recon_id)
            try:
                self.storage.write_bytes(recon_id, f"{self.ATTACHMENTS_FOLDER}/{name}", bytes(data))
            except OSError as error:
                raise StoreUnavailableError(f"The file could not be saved on the server ({_describe(error)}).") from error

    def load_attachment(self, recon_id: str, name: str) -> bytes | None:
        """An attachment's bytes, or None if the entry has none of that name.

        Raises:
            ValueError: ``name`` does not match ``[a-z0-9_.-]+``.
            ReconstructionNotFoundError: unknown or expired id.
            StoreUnavailableError: the storage could not be read just now.
        """
        check_attachment_name(name)
        with self.reading(recon_id):
            self._require_live(recon_id)
            try:
                return self.storage.read_bytes(recon_id, f"{self.ATTACHMENTS_FOLDER}/{name}")
            except FileNotFoundError:
                return None
            except OSError as error:
                raise StoreUnavailableError(self.unavailable_message(error)) from error

    def _require_live(self, recon_id: str) -> None:
        """Raise unless ``recon_id`` names a complete (or being saved), unexpired entry."""
        with self._lock:
            known = self._cache.get(recon_id) or (self._pending[recon_id][0] if recon_id in self._pending else None)
        created_at = known.created_at if known is not None else self._read_metadata(recon_id)["created_at"]
        if self._is_expired(created_at):
            raise ReconstructionNotFoundError(self.not_found_message())

    # ---- reading

    @contextlib.contextmanager
    def reading(self, recon_id: str) -> Iterator[None]:
        """Hold a lease on an entry: while the block runs, expiry and the size bound skip it.

        Raises:
            ReconstructionNotFoundError: malformed id (checked before any file is touched).
        """
        if not is_valid_reconstruction_id(recon_id):
            raise ReconstructionNotFoundError(self.not_found_message())
        with self._lock:
            self._leases[recon_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._leases[recon_id] -= 1
                if self._leases[recon_id] <= 0:
                    del self._leases[recon_id]

    def metadata(self, recon_id: str) -> dict[str, Any]:
        """The entry's manifest alone (a few hundred bytes), without its arrays.

        Raises:
            ReconstructionNotFoundError: malformed, unknown or expired id.
            StoreUnavailableError: a transient storage error.
        """
        with self.reading(recon_id):
            with self._lock:
                known = self._cache.get(recon_id) or (
                    self._pending[recon_id][0] if recon_id in self._pending else None)
            metadata = dict(known.metadata) if known is not None else self._read_metadata(recon_id)
            if self._is_expired(float(metadata.get("created_at", 0.0))):
                raise ReconstructionNotFoundError(self.not_found_message())
            return metadata

    def load(self, recon_id: str) -> StoredReconstruction:
        """The stored reconstruction, from memory when it was used recently.

        Raises:
            ReconstructionNotFoundError: malformed, unknown or expired id, or a damaged entry.
            StoreUnavailableError: a transient storage error; the entry is kept.
        """
        with self.reading(recon_id):
            with self._lock:
                stored = self._cache.get(recon_id)
                if stored is None and recon_id in self._pending:
                    stored = self._pending[recon_id][0]
            if stored is None:
                stored = self._read(recon_id)  # outside the lock: large files take a while
            if self._is_expired(stored.created_at):
                with self._lock:
                    self._cache.pop(recon_id, None)
                raise ReconstructionNotFoundError(self.not_found_message())
            with self._lock:
                self._remember(stored)
        return stored

    def copy_npz(self, recon_id: str, destination: str | os.PathLike, timeout_s: float = 30.0) -> Path:
        """Put the entry's ``.npz`` at ``destination`` (a hard link when the storage is on the
        same disk, else a copy), waiting up to ``timeout_s`` for a save in progress.

        Raises:
            ReconstructionNotFoundError: malformed, unknown or expired id.
            StoreUnavailableError: the save is still running, failed, or the storage erred.
        """
        target = Path(destination)
        with self.reading(recon_id):
            self._wait_until_written(recon_id, timeout_s)
            local = self.storage.local_path(recon_id, self.RECONSTRUCTION_FILE)
            try:
                with atomic_path(target, durable=False) as temporary:
                    if local is not None:
                        try:
                            os.link(local, temporary)
                        except OSError:
                            shutil.copyfile(local, temporary)
                    else:
                        temporary.write_bytes(self.storage.read_bytes(recon_id, self.RECONSTRUCTION_FILE))
            except FileNotFoundError as error:
                raise ReconstructionNotFoundError(self.not_found_message()) from error
            except OSError as error:
                raise StoreUnavailableError(self.unavailable_message(error)) from error
        return target

    def _wait_until_written(self, recon_id: str, timeout_s: float) -> None:
        """Wait for a save of ``recon_id`` still in progress; its failure raises a StoreError."""
        with self._lock:
            pending = self._pending.get(recon_id)
        if pending is not None:
            try:
                pending[1].result(timeout_s)
            except TimeoutError as error:
                raise StoreUnavailableError("The reconstruction is still being saved; please try "
                                            "again in a few seconds.") from error

    def npz_path(self, recon_id: str, timeout_s: float = 30.0) -> Path:
        """The stored ``.npz`` of an id on the local disk, once it is written (waits at most
        ``timeout_s``). Prefer :meth:`copy_npz`, which also holds the entry while copying.

        Raises:
            ReconstructionNotFoundError: malformed, unknown or expired id.
            StoreUnavailableError: the save is still running or failed.
        """
        with self.reading(recon_id):
            self._wait_until_written(recon_id, timeout_s)
            path = self.storage.local_path(recon_id, self.RECONSTRUCTION_FILE)
            if path is None or not path.is_file():
                raise ReconstructionNotFoundError(self.not_found_message())
            return path

    def expires_at(self, stored: StoredReconstruction) -> float:
        return stored.created_at + self.ttl_seconds

    def not_found_message(self) -> str:
        return ("This reconstruction link is invalid or has expired (reconstructions are kept for "
                f"{self.ttl_seconds / 3600:g} hours). Please upload the photos or video again.")

    @staticmethod
    def unavailable_message(error: OSError) -> str:
        return (f"The server could not read this reconstruction just now ({_describe(error)}). "
                "Nothing was lost: please try again in a moment.")

    def _read(self, recon_id: str) -> StoredReconstruction:
        metadata = self._read_metadata(recon_id)
        try:
            data = self.storage.read_bytes(recon_id, self.RECONSTRUCTION_FILE)
        except FileNotFoundError as error:
            raise ReconstructionNotFoundError(self.not_found_message()) from error
        except OSError as error:
            raise StoreUnavailableError(self.unavailable_message(error)) from error
        try:
            reconstruction = Reconstruction.from_bytes(data, self.RECONSTRUCTION_FILE)
        except InputError as error:
            # Written atomically, so this is real damage (or a foreign file), not a half write.
            # Kept all the same: only expiry and the size bound delete.
            logger.error("stored reconstruction %s is unreadable: %s", recon_id, error)
            raise ReconstructionNotFoundError("This reconstruction's stored file is damaged and cannot "
                                              "be shown. Please upload the photos or video again.") from error
        return StoredReconstruction(recon_id, reconstruction, metadata)

    def _read_metadata(self, recon_id: str) -> dict[str, Any]:
        """The entry's manifest.

        Raises:
            ReconstructionNotFoundError: no manifest (unknown id, or a save not finished).
            StoreUnavailableError: a transient error while reading it.
        """
        try:
            text = self.storage.read_bytes(recon_id, self.METADATA_FILE)
        except FileNotFoundError as error:
            raise ReconstructionNotFoundError(self.not_found_message()) from error
        except OSError as error:
            raise StoreUnavailableError(self.unavailable_message(error)) from error
        metadata = _parse_metadata(text)
        if metadata is None:
            # Damaged manifest: age it by its files' time instead of deleting the entry.
            logger.error("stored reconstruction %s has unreadable metadata; using its file time", recon_id)
            metadata = {"created_at": self._newest_file_time(recon_id)}
        return metadata

    def _newest_file_time(self, recon_id: str) -> float:
        try:
            files = self.storage.list_files(recon_id)
        except OSError as error:
            raise StoreUnavailableError(self.unavailable_message(error)) from error
        return max((file.modified_at for file in files.values()), default=0.0)

    def _remember(self, stored: StoredReconstruction) -> None:
        self._cache[stored.id] = stored
        self._cache.move_to_end(stored.id)
        while len(self._cache) > self.memory_cache_size:
            self._cache.popitem(last=False)

    # ---- expiry and size

    def _is_expired(self, created_at: float) -> bool:
        return self.clock() - created_at > self.ttl_seconds

    def prune(self, keep: str | None = None) -> list[str]:
        """Delete expired entries, then the oldest ones until the total fits in ``max_bytes``;
        remove entries left without a manifest by a crash (after a grace period).

        Never deletes ``keep`` (the entry just saved) for size, nor an entry being read or
        saved, nor one whose manifest could not be read just now. Returns the deleted ids.
        """
        try:
            ids = [recon_id for recon_id in self.storage.entry_ids() if is_valid_reconstruction_id(recon_id)]
        except OSError as error:
            logger.warning("could not list the store for pruning (%s); will try again later", error)
            return []
        entries, incomplete = [], []  # (created_at, id, bytes), ids
        unknown_bytes = 0
        now = time.time()
        for recon_id in ids:
            size = 0
            try:
                files = self.storage.list_files(recon_id)
                size = sum(file.size for file in files.values())
                if self.METADATA_FILE not in files:
                    newest = max((file.modified_at for file in files.values()), default=0.0)
                    if now - newest > INCOMPLETE_ENTRY_GRACE_SECONDS:
                        incomplete.append(recon_id)
                    else:
                        unknown_bytes += size
                    continue
                created_at = float(self._read_metadata(recon_id)["created_at"])
            except (OSError, StoreError) as error:
                # Cannot judge it now: keep it (its bytes still count towards the total).
                logger.warning("skipping stored reconstruction %s while pruning (%s)", recon_id, error)
                unknown_bytes += size
                continue
            entries.append((created_at, recon_id, size))
        entries.sort()

        removed = []
        with self._lock:
            def protected(recon_id: str) -> bool:
                return recon_id == keep or self._leases[recon_id] > 0 or recon_id in self._pending

            for recon_id in incomplete:
                if not protected(recon_id) and self._delete(recon_id):
                    logger.info("removed an interrupted save %s", recon_id)
            kept = []
            for created_at, recon_id, size in entries:  # oldest first
                if self._is_expired(created_at) and not protected(recon_id) and self._delete(recon_id):
                    removed.append(recon_id)
                else:
                    kept.append((created_at, recon_id, size))
            total = unknown_bytes + sum(size for _, _, size in kept)
            for _, recon_id, size in kept:
                if total <= self.max_bytes:
                    break
                if not protected(recon_id) and self._delete(recon_id):
                    removed.append(recon_id)
                    total -= size
        if removed:
            logger.info("pruned %d stored reconstruction(s); %.1f MB left", len(removed), total / 1e6)
        return removed

    def total_bytes(self) -> int:
        total = 0
        for recon_id in self.storage.entry_ids():
            if is_valid_reconstruction_id(recon_id):
                total += sum(file.size for file in self.storage.list_files(recon_id).values())
        return total

    def _delete(self, recon_id: str) -> bool:
        """Delete one entry (caller holds the lock); False if the storage refused."""
        self._cache.pop(recon_id, None)
        try:
            self.storage.delete_entry(recon_id)
        except OSError as error:
            logger.warning("could not delete stored reconstruction %s (%s); will try again", recon_id, error)
            return False
        return True


def _parse_metadata(data: bytes) -> dict[str, Any] | None:
    try:
        metadata = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("created_at"), (int, float)):
        return None
    return metadata


def _describe(error: OSError) -> str:
    """A short, user-safe description of a storage error (no paths)."""
    if error.errno is not None:
        return os.strerror(error.errno).lower()
    return type(error).__name__
