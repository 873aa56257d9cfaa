"""The reference's learning-rate schedule: linear warm-up, then cosine decay."""

from __future__ import annotations

import math

PEAK_LR = 5e-5
FLOOR_LR = 1e-8
WARMUP_FRACTION = 0.05
SEGMENT_EPS = 1e-6  # fvcore picks the next segment once where + 1e-6 passes the boundary


def learning_rate_at(where: float, peak: float = PEAK_LR, floor: float = FLOOR_LR,
                     warmup_fraction: float = WARMUP_FRACTION) -> float:
    """lr at training progress ``where`` in [0, 1]: ``floor → peak`` linearly over the first
    ``warmup_fraction``, then a cosine from ``peak`` back to ``floor``."""
    where = min(max(where, 0.0), 1.0)
    if warmup_fraction > 0 and where + SEGMENT_EPS <= warmup_fraction:
        weight = where / warmup_fraction
        return peak * weight + floor * (1.0 - weight)
    weight = (where - warmup_fraction) / (1.0 - warmup_fraction)
    weight = min(max(weight, 0.0), 1.0)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * weight))
