"""Peak resident memory of a stretch of code on Linux, by resetting the kernel's high-water
mark (``VmHWM``) first: ``echo 5 > /proc/self/clear_refs``. Unlike ``ru_maxrss`` this isolates
one step inside a long process (e.g. one chunk's model run after earlier chunks' results).

Resident memory only follows what is in use if freed memory goes back to the kernel. glibc keeps
freed heap blocks and reuses them, which made per-chunk figures wander by ±40 %; with
:func:`exact_large_allocations` every allocation above 64 KiB is its own mapping, returned on
free, and :func:`peak_rss` trims the heap first, so repeated measurements agree to about 1 %.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from dataclasses import dataclass


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


@dataclass
class PeakRSS:
    """``before_bytes``: resident memory on entry; ``peak_bytes``: the highest during the block;
    ``increase_bytes``: their difference, what the block needed on top of what was there."""

    before_bytes: int = 0
    peak_bytes: int = 0

    @property
    def increase_bytes(self) -> int:
        return self.peak_bytes - self.before_bytes


_M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: measurements are rougher, but still run
        return None


def exact_large_allocations(threshold_bytes: int = 65536) -> None:
    """Serve allocations above ``threshold_bytes`` with their own mappings from now on (also
    fixes glibc's otherwise self-raising threshold). Costs some speed; for measurements only."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes))


def current_rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


@contextmanager
def peak_rss():
    """``with peak_rss() as probe: ...`` then ``probe.increase_bytes`` (Linux only)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current RSS
    probe = PeakRSS(before_bytes=current_rss_bytes())
    try:
        yield probe
    finally:
        probe.peak_bytes = _status_kib("VmHWM") * 1024
