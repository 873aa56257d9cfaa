"""Reconstructions stored under unguessable ids, for share links.

Each entry is a few files under its id (see :mod:`vggt_app.store.storage` for where they live):
``reconstruction.npz``, any ``attachments/<name>``, and ``metadata.json``, written LAST: it
is the entry's manifest, and an entry without one is invisible (a save that has not finished,
or was interrupted by a crash). Entries expire a fixed time after they were made, and the
oldest go first when the store outgrows its size limit. Nothing else ever deletes one: a
transient error (too many open files, a full disk) is reported to the user and the entry
stays. Nothing lists the entries: the id is the only key and the secret part of a share link.
A derived entry (a rescaled, re-projected or tracked copy of another) stores only what differs
from its parent (``derived.npz``) and the parent's id; loading rebuilds it from the parent, whose
files live as long as any descendant's link. Expiry and the size bound run in the background
(:meth:`ReconstructionStore.start_pruning`), never inside a save, and delete without holding
the lock that readers take. Each client (a salted hash of its address) may hold a share of the
store; over it, its own oldest entries go first.
See docs/store.md for the guarantees and the reasons behind them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
# A copy held in memory is re-checked against the store's manifest when it is older than this,
# so an entry deleted by another server stops being served here within that time.
MEMORY_RECHECK_SECONDS = 30.0
# metadata["entry_format"]: absent (1) for a full copy in reconstruction.npz; 2 for a derived
# entry that stores its differences from metadata["parent"] in derived.npz; 3 the same with
# derived.npz compressed: a user's masks ([S, H, W] bools, mostly runs of False) are megabytes
# as raw bytes and a few kilobytes deflated. Both load (np.load reads either kind of npz).
DELTA_ENTRY_FORMAT = 3
DELTA_ENTRY_FORMATS = (2, 3)
_DELTA_SCALE_KEY = "__delta_scale_ratio__"
_DELTA_REMOVED_KEY = "__delta_removed__"


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


def is_derived_metadata(metadata: Mapping[str, Any]) -> bool:
    """Whether a manifest describes a derived entry (any delta format this code reads)."""
    return metadata.get("entry_format") in DELTA_ENTRY_FORMATS


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
    DELTA_FILE = "derived.npz"
    METADATA_FILE = "metadata.json"
    ATTACHMENTS_FOLDER = "attachments"

    def __init__(self, root: str | os.PathLike | None = None, *, ttl_seconds: float, max_bytes: int,
                 memory_cache_size: int = 4, clock: Callable[[], float] = time.time,
                 storage: EntryStorage | None = None, writer_threads: int = 2, max_queued_saves: int = 4,
                 queue_timeout_s: float = 60.0, write_attempts: int = 3, retry_delay_s: float = 0.5,
                 client_share_bytes: int | None = None, client_quota: Any = None):
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
        # id -> (reconstruction, when its manifest was last seen in the storage)
        self._cache: OrderedDict[str, tuple[StoredReconstruction, float]] = OrderedDict()
        # Loads in progress: a second open of the same entry waits for the first's read.
        self._loading: dict[str, Future] = {}
        # Entries the pruner is deleting right now (outside the lock): readers get "expired".
        self._deleting: set[str] = set()
        self.client_share_bytes = client_share_bytes
        # Client keys and rate limits (a vggt_app.store.client_quota.ClientQuota), or None.
        self.client_quota = client_quota
        self._pruner: threading.Thread | None = None
        self._history_to_compact = False  # deleted entries may still be in the storage's history
        self._stop_pruning = threading.Event()
        # Saved but not yet durable: id -> (reconstruction, its write).
        self._pending: dict[str, tuple[StoredReconstruction, Future]] = {}
        self._leases: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._writers = ThreadPoolExecutor(max_workers=max(1, writer_threads), thread_name_prefix="store-writer")
        self._queue_slots = threading.BoundedSemaphore(max(1, writer_threads) + max(0, max_queued_saves))

    def close(self) -> None:
        """Stop the background pruner, finish the queued writes and stop the writer threads."""
        self._stop_pruning.set()
        if self._pruner is not None:
            self._pruner.join()
        self._writers.shutdown(wait=True)

    def start_pruning(self, interval_s: float = 60.0) -> None:
        """Run :meth:`prune` every ``interval_s`` on one background thread (until :meth:`close`).

        Saves never prune: with 41 remote entries a prune took 2.1 s, and it grows with the store.
        """
        if self._pruner is not None:
            return

        def loop() -> None:
            while not self._stop_pruning.wait(interval_s):
                try:
                    self.prune()
                except Exception:  # housekeeping: log, and try again next round
                    logger.exception("pruning the store failed")

        self._pruner = threading.Thread(target=loop, name="store-pruner", daemon=True)
        self._pruner.start()

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

    def save_derived(self, parent: StoredReconstruction, reconstruction: Reconstruction,
                     metadata: Mapping[str, Any] | None = None) -> str:
        """Store ``reconstruction``, made from the stored ``parent``, as a derived entry: only the
        arrays that differ from the parent (after a change of scale, which is kept as a factor)
        and the parent's id. Returns the id once durable."""
        return self.save_async(reconstruction, metadata, parent=parent).wait()

    def save_async(self, reconstruction: Reconstruction,
                   metadata: Mapping[str, Any] | None = None, *,
                   parent: StoredReconstruction | None = None) -> PendingSave:
        """Hand a reconstruction to the writer pool and return at once (unless the queue is full).

        The id is usable right away: :meth:`load` serves it from memory until its files exist.
        Do not show it as a share link before :meth:`PendingSave.wait` returns. With ``parent``
        the entry is stored as a derived entry (see :meth:`save_derived`).
        """
        if not self._queue_slots.acquire(timeout=self.queue_timeout_s):
            raise StoreBusyError("The server is busy saving other reconstructions; please try again "
                                 "in a minute.")
        recon_id = secrets.token_urlsafe(RECONSTRUCTION_ID_BYTES)
        info = dict(metadata or {})
        info["created_at"] = self.clock()
        if parent is not None:
            info["parent"] = parent.id
            info["entry_format"] = DELTA_ENTRY_FORMAT
        # What a reload will give back, so the scene looks the same before and after.
        stored = StoredReconstruction(recon_id, reconstruction.at_stored_precision(), info)
        try:
            with self._lock:
                future = self._writers.submit(self._write_with_retries, stored, parent)
                self._pending[recon_id] = (stored, future)
                self._remember(stored)
        except BaseException:
            self._queue_slots.release()
            raise
        future.add_done_callback(lambda _: self._queue_slots.release())
        return PendingSave(recon_id, future)

    def _write_with_retries(self, stored: StoredReconstruction, parent: StoredReconstruction | None) -> None:
        try:
            for attempt in range(1, self.write_attempts + 1):
                try:
                    self._write(stored, parent)
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
            if stored.id in self._cache:
                self._cache[stored.id] = (stored, self.clock())
        # No prune here: the background pruner (start_pruning) keeps saves independent of the
        # store's size.

    def _write(self, stored: StoredReconstruction, parent: StoredReconstruction | None = None) -> None:
        # The manifest (metadata) goes last: until it exists the entry is invisible.
        if parent is not None:
            delta = delta_arrays(parent.reconstruction, stored.reconstruction)
            with self.storage.open_write(stored.id, self.DELTA_FILE) as handle:
                np.savez_compressed(handle, **delta)  # DELTA_ENTRY_FORMAT 3
        else:
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
        known = self._known(recon_id)
        created_at = known.created_at if known is not None else self._read_metadata(recon_id)["created_at"]
        if self._is_expired(created_at):
            raise ReconstructionNotFoundError(self.not_found_message())

    def _known(self, recon_id: str) -> StoredReconstruction | None:
        """The entry from memory (being saved, or recently used and still in the storage).

        A copy whose manifest was last seen over MEMORY_RECHECK_SECONDS ago is checked again
        (one ``exists``), so an entry that another server deleted stops being served here."""
        with self._lock:
            if recon_id in self._pending:
                return self._pending[recon_id][0]
            cached = self._cache.get(recon_id)
        if cached is None:
            return None
        stored, checked_at = cached
        now = self.clock()
        if now - checked_at <= MEMORY_RECHECK_SECONDS:
            return stored
        try:
            present = self.storage.exists(recon_id, self.METADATA_FILE)
        except OSError:
            return stored  # cannot tell just now; the copy is still a valid entry's
        with self._lock:
            if not present:
                self._cache.pop(recon_id, None)
                raise ReconstructionNotFoundError(self.not_found_message())
            if recon_id in self._cache:
                self._cache[recon_id] = (stored, now)
        return stored

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
            if recon_id in self._deleting:  # the pruner is deleting it: never wait for that
                raise ReconstructionNotFoundError(self.not_found_message())
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
            known = self._known(recon_id)
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
            stored = self._load_unchecked(recon_id)
            if self._is_expired(stored.created_at):
                with self._lock:
                    self._cache.pop(recon_id, None)
                raise ReconstructionNotFoundError(self.not_found_message())
        return stored

    def _load_unchecked(self, recon_id: str) -> StoredReconstruction:
        """The entry from memory or the storage, whatever its age (a derived entry needs its
        parent's arrays after the parent's own link expired). Concurrent loads of one entry
        share one read."""
        stored = self._known(recon_id)
        if stored is not None:
            with self._lock:
                self._remember(stored)
            return stored
        with self._lock:
            loading = self._loading.get(recon_id)
            owner = loading is None
            if owner:
                loading = self._loading[recon_id] = Future()
        if not owner:
            return loading.result()
        try:
            stored = self._read(recon_id)  # outside the lock: large files take a while
            with self._lock:
                self._remember(stored)
            loading.set_result(stored)
            return stored
        except BaseException as error:
            loading.set_exception(error)
            raise
        finally:
            with self._lock:
                self._loading.pop(recon_id, None)

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
            if self._is_derived_entry(recon_id):  # no full file of its own: write the rebuilt scene
                with atomic_path(target, durable=False) as temporary:
                    self.load(recon_id).reconstruction.save(temporary)
                return target
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

    def _is_derived_entry(self, recon_id: str) -> bool:
        known = self._known(recon_id)
        metadata = known.metadata if known is not None else self._read_metadata(recon_id)
        return is_derived_metadata(metadata)

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
        derived = is_derived_metadata(metadata)
        try:
            data = self.storage.read_bytes(recon_id, self.DELTA_FILE if derived else self.RECONSTRUCTION_FILE)
        except FileNotFoundError as error:
            raise ReconstructionNotFoundError(self.not_found_message()) from error
        except OSError as error:
            raise StoreUnavailableError(self.unavailable_message(error)) from error
        try:
            if derived:
                if not is_valid_reconstruction_id(metadata.get("parent")):
                    raise InputError("the derived entry names no valid parent")
                parent = self._load_unchecked(metadata["parent"])
                reconstruction = apply_delta(parent.reconstruction, data)
            else:
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
        previous = self._cache.get(stored.id)
        self._cache[stored.id] = (stored, previous[1] if previous is not None else self.clock())
        self._cache.move_to_end(stored.id)
        while len(self._cache) > self.memory_cache_size:
            self._cache.popitem(last=False)

    # ---- expiry and size

    def _is_expired(self, created_at: float) -> bool:
        return self.clock() - created_at > self.ttl_seconds

    def prune(self) -> list[str]:
        """Delete expired entries, entries over their client's share (that client's oldest
        first), then whole families, least recently extended first, until the total fits in
        ``max_bytes``; remove entries left without a manifest by a crash (after a grace period).
        Returns the deleted ids.

        A family is an entry with its derived entries (and theirs): a parent's files are kept
        while any descendant is younger than the TTL, and are deleted with them. Never deletes
        an entry being read or saved (nor its ancestors), nor one whose manifest could not be read
        just now, nor the newest entry for size. The listing and the deletes run without the
        lock that readers take; the entries chosen are marked as deleting under it, so a reader
        gets "expired" at once instead of waiting.
        """
        try:
            ids = [recon_id for recon_id in self.storage.entry_ids() if is_valid_reconstruction_id(recon_id)]
        except OSError as error:
            logger.warning("could not list the store for pruning (%s); will try again later", error)
            return []
        entries: dict[str, _PruneEntry] = {}
        incomplete: list[str] = []
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
                metadata = self._read_metadata(recon_id)
            except (OSError, StoreError) as error:
                # Cannot judge it now: keep it (its bytes still count towards the total).
                logger.warning("skipping stored reconstruction %s while pruning (%s)", recon_id, error)
                unknown_bytes += size
                continue
            parent = metadata.get("parent") if is_derived_metadata(metadata) else None
            entries[recon_id] = _PruneEntry(recon_id, float(metadata["created_at"]), size,
                                            metadata.get("client"), parent if isinstance(parent, str) else None)
        plan = _PrunePlan(entries, unknown_bytes)
        protected = self._protected_ids()
        for recon_id in incomplete:
            if self._delete_marked([recon_id], protected):
                logger.info("removed an interrupted save %s", recon_id)

        # Expiry: an entry goes when it and all its descendants are past the TTL.
        removed = []
        for recon_id in plan.oldest_first():
            if recon_id in plan.entries and self._is_expired(plan.newest_in_family(recon_id)):
                done = self._delete_marked(plan.descendants(recon_id), plan.protected_by(self._protected_ids()))
                plan.forget(done)
                removed += done
        # Client shares: over its share, a client's own oldest entries go first (with their
        # descendants, unless one of those is another client's).
        newest = plan.newest_entry()
        if self.client_share_bytes is not None:
            for client in plan.clients_over(self.client_share_bytes):
                for recon_id in plan.oldest_first(client):
                    if plan.client_bytes(client) <= self.client_share_bytes:
                        break
                    family = plan.descendants(recon_id)
                    if recon_id == newest or any(entries[member].client != client for member in family):
                        continue
                    done = self._delete_marked(family, plan.protected_by(self._protected_ids()))
                    plan.forget(done)
                    removed += done
        # The size bound: whole families, the one whose newest member is oldest first.
        for root in plan.families_by_newest_member():
            if plan.total_bytes() <= self.max_bytes:
                break
            family = plan.descendants(root)
            if newest in family:
                continue
            done = self._delete_marked(family, plan.protected_by(self._protected_ids()))
            plan.forget(done)
            removed += done
        if removed:
            logger.info("pruned %d stored reconstruction(s); %.1f MB left", len(removed), plan.total_bytes() / 1e6)
            self._history_to_compact = True
        if self._history_to_compact:
            self._compact_history()
        return removed

    def _compact_history(self) -> None:
        """Erase what was just deleted from a storage that keeps history (a Hub dataset)."""
        compact = getattr(self.storage, "compact_history", None)
        if compact is None:
            return
        try:
            compact()
            self._history_to_compact = False
        except OSError as error:  # the next prune tries again
            logger.warning("could not erase the deleted entries from the storage's history (%s)", error)

    def _protected_ids(self) -> set[str]:
        with self._lock:
            return {recon_id for recon_id, count in self._leases.items() if count > 0} | set(self._pending)

    def _delete_marked(self, recon_ids: list[str], blocked: set[str]) -> list[str]:
        """Delete ``recon_ids`` (descendants listed after their ancestors; deleted first) unless
        any is in ``blocked`` or becomes protected before it is marked: all or nothing. The
        storage calls run without the lock; readers of a marked id get "expired" meanwhile."""
        if not recon_ids or blocked.intersection(recon_ids):
            return []
        with self._lock:
            if any(self._leases[recon_id] > 0 or recon_id in self._pending for recon_id in recon_ids):
                return []
            self._deleting.update(recon_ids)
            for recon_id in recon_ids:
                self._cache.pop(recon_id, None)
        removed = []
        try:
            for recon_id in reversed(recon_ids):  # children before their parent
                try:
                    self.storage.delete_entry(recon_id)
                except OSError as error:
                    logger.warning("could not delete stored reconstruction %s (%s); will try again",
                                   recon_id, error)
                    break  # keep its ancestors: a child must never outlive its parent's files
                removed.append(recon_id)
        finally:
            with self._lock:
                self._deleting.difference_update(recon_ids)
        return list(reversed(removed))

    def total_bytes(self) -> int:
        total = 0
        for recon_id in self.storage.entry_ids():
            if is_valid_reconstruction_id(recon_id):
                total += sum(file.size for file in self.storage.list_files(recon_id).values())
        return total

    def _delete(self, recon_id: str) -> bool:
        """Delete one entry at once (a failed save's leftovers); False if the storage refused."""
        self._cache.pop(recon_id, None)
        try:
            self.storage.delete_entry(recon_id)
        except OSError as error:
            logger.warning("could not delete stored reconstruction %s (%s); will try again", recon_id, error)
            return False
        return True


@dataclass
class _PruneEntry:
    id: str
    created_at: float
    size: int
    client: str | None
    parent: str | None


class _PrunePlan:
    """The complete entries one prune found, grouped in families (parent -> derived entries)."""

    def __init__(self, entries: dict[str, _PruneEntry], unknown_bytes: int):
        self.entries = dict(entries)
        self.unknown_bytes = unknown_bytes
        self.children: dict[str, list[str]] = {}
        for entry in entries.values():
            if entry.parent is not None:
                self.children.setdefault(entry.parent, []).append(entry.id)

    def descendants(self, recon_id: str) -> list[str]:
        """``recon_id`` and every entry derived from it, ancestors before descendants."""
        order, queue = [], [recon_id]
        while queue:
            current = queue.pop(0)
            if current in self.entries and current not in order:
                order.append(current)
                queue.extend(self.children.get(current, []))
        return order

    def newest_in_family(self, recon_id: str) -> float:
        return max(self.entries[member].created_at for member in self.descendants(recon_id))

    def oldest_first(self, client: object = ...) -> list[str]:
        chosen = [entry for entry in self.entries.values() if client is ... or entry.client == client]
        return [entry.id for entry in sorted(chosen, key=lambda entry: (entry.created_at, entry.id))]

    def newest_entry(self) -> str | None:
        ordered = self.oldest_first()
        return ordered[-1] if ordered else None

    def families_by_newest_member(self) -> list[str]:
        roots = [recon_id for recon_id, entry in self.entries.items() if entry.parent not in self.entries]
        return sorted(roots, key=lambda root: (self.newest_in_family(root), root))

    def clients_over(self, share_bytes: int) -> list[str]:
        clients = {entry.client for entry in self.entries.values() if entry.client}
        over = [client for client in clients if self.client_bytes(client) > share_bytes]
        return sorted(over, key=self.client_bytes, reverse=True)

    def client_bytes(self, client: str) -> int:
        return sum(entry.size for entry in self.entries.values() if entry.client == client)

    def total_bytes(self) -> int:
        return self.unknown_bytes + sum(entry.size for entry in self.entries.values())

    def protected_by(self, protected: set[str]) -> set[str]:
        """The ids that may not be deleted: ``protected`` and their ancestors."""
        blocked = set()
        for recon_id in protected:
            current = recon_id
            while current is not None and current not in blocked:
                blocked.add(current)
                entry = self.entries.get(current)
                current = entry.parent if entry is not None else None
        return blocked

    def forget(self, removed: list[str]) -> None:
        for recon_id in removed:
            self.entries.pop(recon_id, None)


def _stored_arrays(reconstruction: Reconstruction) -> dict[str, np.ndarray]:
    """The arrays :meth:`Reconstruction.save` writes, by name."""
    buffer = io.BytesIO()
    reconstruction.save(buffer)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _same_array(first: np.ndarray, second: np.ndarray) -> bool:
    """Bit for bit the same (NaNs included)."""
    if first.dtype != second.dtype or first.shape != second.shape:
        return False
    return np.array_equal(np.ascontiguousarray(first).reshape(-1).view(np.uint8),
                          np.ascontiguousarray(second).reshape(-1).view(np.uint8))


def _scaled_base(parent: Reconstruction, ratio: float) -> Reconstruction:
    return parent.scaled(ratio) if ratio != 1.0 else parent


def delta_arrays(parent: Reconstruction, derived: Reconstruction) -> dict[str, np.ndarray]:
    """What a derived entry stores: the arrays of ``derived``'s file that differ from its
    parent's, after the parent is rescaled by the ratio of their scale factors (a rescale would
    otherwise store every depth map again), plus the names of arrays it lacks. Computed by
    comparing files, so a future kind of change needs no code here; what cannot be expressed
    as a rescale is simply stored."""
    ratio = derived.scale_factor / parent.scale_factor
    base = _stored_arrays(_scaled_base(parent, ratio))
    changed = _stored_arrays(derived)
    delta = {name: value for name, value in changed.items()
             if name not in base or not _same_array(value, base[name])}
    delta[_DELTA_SCALE_KEY] = np.array(ratio, dtype=np.float64)
    delta[_DELTA_REMOVED_KEY] = np.array(sorted(set(base) - set(changed)), dtype=np.str_)
    return delta


def apply_delta(parent: Reconstruction, data: bytes) -> Reconstruction:
    """The derived reconstruction rebuilt from its parent and its ``derived.npz`` bytes.

    Raises:
        InputError: the delta is unreadable or does not fit the parent.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            delta = {key: archive[key] for key in archive.files}
        ratio = float(delta.pop(_DELTA_SCALE_KEY))
        removed = [str(name) for name in delta.pop(_DELTA_REMOVED_KEY).tolist()]
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise InputError(f"the derived entry's file is unreadable ({error})") from error
    arrays = _stored_arrays(_scaled_base(parent, ratio))
    for name in removed:
        arrays.pop(name, None)
    arrays.update(delta)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return Reconstruction.from_bytes(buffer.getvalue(), "derived reconstruction")


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
