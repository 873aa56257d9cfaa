"""How long-running library calls report progress, and how one stage's progress maps into a whole run's.

Every stage (the model run, tracking, bundle adjustment, preprocessing) takes an optional
``progress(fraction, message)`` callback with ``fraction`` in [0, 1] of *that stage*. A caller
that runs several stages under one progress bar gives each a :class:`ProgressRange`, which maps
the stage's 0..1 onto its slice ``[start, end]`` of the bar.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ProgressCallback", "ProgressRange", "ignore_progress"]

# ``progress(fraction, message)``: fraction in [0, 1], message a short lower-case description.
ProgressCallback = Callable[[float, str], None]


def ignore_progress(fraction: float, message: str) -> None:
    """A :data:`ProgressCallback` that reports nothing, for callers that passed None."""


class ProgressRange:
    """A :data:`ProgressCallback` for one stage: its ``fraction`` 0..1 is reported to ``progress``
    as ``start + (end - start) · fraction``, clamped to the stage's range (a stage that overshoots
    or reports a negative fraction must not move another stage's part of the bar)."""

    def __init__(self, progress: ProgressCallback, start: float, end: float):
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"a progress range needs 0 <= start <= end <= 1, got [{start}, {end}]")
        self.progress = progress
        self.start = start
        self.end = end

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        self.progress(self.start + (self.end - self.start) * fraction, message)

    def stage(self, start: float, end: float) -> ProgressRange:
        """The sub-range ``[start, end]`` (fractions of this range) as its own callback."""
        return ProgressRange(self.progress, self.start + (self.end - self.start) * start,
                             self.start + (self.end - self.start) * end)
