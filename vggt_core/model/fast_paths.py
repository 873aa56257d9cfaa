"""One switch for the forward's exact speed-ups (docs/performance.md).

Every speed-up behind this switch computes the same numbers up to float32 rounding order (the
golden tests hold at their tolerances with it on or off): the DPT heads' full-resolution tail
decoded a few frames at a time, their ReLUs and residual adds in place, their channels-last
layout made explicit, position tables (UV and RoPE) made once per forward. Switched off, the model runs the plain code path that was measured at
0.98-1.05x the authors' implementation's time; ``benchmarks/bench_speedup.py`` times both.
"""

from __future__ import annotations

import contextlib
import threading

_state = threading.local()


def fast_paths_enabled() -> bool:
    """True unless the calling thread is inside ``fast_paths(False)``."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def fast_paths(enabled: bool):
    """Run the enclosed forwards with the speed-ups on or off (this thread only)."""
    previous = fast_paths_enabled()
    _state.enabled = enabled
    try:
        yield
    finally:
        _state.enabled = previous
