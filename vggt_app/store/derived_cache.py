"""A folder of derived files (rendered views, depth pictures, download bundles, previews)
kept under a byte cap, least recently used first out.

Everything in it can be rebuilt from a stored reconstruction, so it is never durable (no
``fsync``) and is wiped when the process starts again. A file that was just handed to a client
(the web server serves it moments later) or that a request is still using is *pinned*: it is
not evicted until ``serve_grace_s`` after its last hand-out (a browser fetches a view at once;
a download link may be clicked minutes later, so bundles are built with a longer grace). If
protected files alone exceed the cap, the folder goes over it for that long rather than break a
page that is loading, but never over ``burst_factor`` times the cap (2 by default): past that,
files in their grace go too, least recently handed out first (a burst of 36 view changes
reached 309 MB over a 40 MB cap before; only a pinned file, still being assembled, is never
evicted). Big optional builds (download bundles) call :meth:`require_room` first
and are refused with :class:`CacheFullError` instead. See docs/store.md, "Derived files".
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vggt_core.atomic_files import atomic_path

__all__ = ["CacheFullError", "DerivedFileCache", "remove_stale_process_folders"]

logger = logging.getLogger(__name__)


class CacheFullError(RuntimeError):
    """Recently served files fill the cap; ``str()`` is a message for the user."""


@dataclass
class _CachedFile:
    size: int
    keep_until: float  # not evicted before this (clock time): it was just handed out
    grace_s: float
    pins: int = 0


class DerivedFileCache:
    """Files under ``root/<group>/<name>``, ``max_bytes`` in all (see the module docstring).

    ``group`` is usually a reconstruction id; ``name`` may contain ``/`` for bundles. All
    methods are thread-safe; building the same file twice at once is serialised by
    :meth:`build`, so parallel identical requests write it once.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int, *, serve_grace_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, burst_factor: float = 2.0):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        # The grace may take the folder over max_bytes, but not over this.
        self.hard_max_bytes = int(self.max_bytes * max(1.0, float(burst_factor)))
        self.serve_grace_s = float(serve_grace_s)
        self.clock = clock
        self._files: OrderedDict[Path, _CachedFile] = OrderedDict()  # least recently used first
        self._total = 0
        self._lock = threading.Lock()
        self._build_locks: dict[Path, threading.Lock] = {}
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- paths and lookups

    def path(self, group: str, name: str) -> Path:
        return self.root / group / name

    def get(self, group: str, name: str) -> Path | None:
        """The cached file, marked as just handed out, or None if it is not (or no longer) there."""
        path = self.path(group, name)
        with self._lock:
            entry = self._files.get(path)
            if entry is None:
                return None
            if not path.is_file():  # removed behind our back (e.g. by the web server's cleaner)
                self._forget(path)
                return None
            self._files.move_to_end(path)
            entry.keep_until = self.clock() + entry.grace_s
        with contextlib.suppress(OSError):
            os.utime(path)  # the web server's own cleaner ages files by their change time
        return path

    @contextlib.contextmanager
    def build(self, group: str, name: str, *, grace_s: float | None = None) -> Iterator[tuple[Path, Path | None]]:
        """Serialise building one file: yields ``(temporary path, existing file or None)``.

        If ``existing`` is a path, another request built the file meanwhile: use it. Whatever is
        written to the temporary path becomes the cached file when the block ends without error
        (nothing written: nothing changes); it is counted, protected for ``grace_s`` (default
        ``serve_grace_s``) after each hand-out, and older files are evicted to fit.
        """
        path = self.path(group, name)
        with self._lock:
            build_lock = self._build_locks.setdefault(path, threading.Lock())
        with build_lock:
            existing = self.get(group, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, durable=False, optional=True) as temporary:
                yield temporary, existing
                wrote = temporary.exists()
            if wrote:
                self.add(path, grace_s=grace_s)

    def add(self, path: Path, *, grace_s: float | None = None) -> None:
        """Count a file written under :attr:`root` (handed out now) and evict to fit the cap."""
        size = path.stat().st_size
        grace = self.serve_grace_s if grace_s is None else float(grace_s)
        with self._lock:
            entry = self._files.pop(path, None)
            if entry is not None:
                self._total -= entry.size
            self._files[path] = _CachedFile(size, self.clock() + grace, grace)
            self._total += size
        self.evict()

    @contextlib.contextmanager
    def pinned(self, *paths: Path) -> Iterator[None]:
        """Keep ``paths`` while the block runs (a request that is still assembling its answer)."""
        with self._lock:
            held = [self._files[path] for path in paths if path in self._files]
            for entry in held:
                entry.pins += 1
        try:
            yield
        finally:
            with self._lock:
                now = self.clock()
                for entry in held:
                    entry.pins -= 1
                    entry.keep_until = max(entry.keep_until, now + entry.grace_s)

    # ---- size

    def require_room(self) -> None:
        """Evict what may go; raise if the cap is still full (of files just handed out).

        Raises:
            CacheFullError: with a message for the user.
        """
        self.evict()
        if self._total > self.max_bytes:
            raise CacheFullError("The server is preparing many downloads right now; please try again in a minute.")

    @property
    def total_bytes(self) -> int:
        return self._total

    def evict(self) -> list[Path]:
        """Delete least recently used files that are not protected until the total fits; then,
        over the hard cap, files in their grace too (never pinned ones)."""
        removed = []
        with self._lock:
            now = self.clock()
            for path, entry in list(self._files.items()):
                if self._total <= self.max_bytes:
                    break
                if entry.pins > 0 or now < entry.keep_until:
                    continue
                self._forget(path)
                removed.append(path)
            # Download bundles (a longer grace) are bounded by require_room instead, and the
            # file handed out last is what a client is fetching right now.
            for path, entry in list(self._files.items())[:-1]:
                if self._total <= self.hard_max_bytes:
                    break
                if entry.pins > 0 or entry.grace_s > self.serve_grace_s:
                    continue
                self._forget(path)
                removed.append(path)
        for path in removed:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        if self._total > self.max_bytes:
            logger.info("derived files at %.0f MB, over the %.0f MB cap until recent downloads age",
                        self._total / 1e6, self.max_bytes / 1e6)
        return removed

    def forget_group(self, group: str) -> None:
        """Drop every file of ``group`` (e.g. an expired reconstruction), pinned ones included."""
        folder = self.root / group
        with self._lock:
            for path in [path for path in self._files if folder in path.parents]:
                self._forget(path)
        shutil.rmtree(folder, ignore_errors=True)

    def _forget(self, path: Path) -> None:
        entry = self._files.pop(path, None)
        if entry is not None:
            self._total -= entry.size
        self._build_locks.pop(path, None)  # bounded: one lock per file that exists


def _pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_process_folders(parent: str | os.PathLike) -> list[Path]:
    """Remove ``parent/<pid>-*`` folders of processes that are gone (a crash skips the cleanup
    at exit); returns the removed folders."""
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for folder in parent.iterdir():
        pid_text = folder.name.split("-", 1)[0]
        if folder.is_dir() and pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_is_alive(int(pid_text)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
