"""Progress ranges map a stage's own 0..1 into its slice of the whole run's bar."""

from __future__ import annotations

import pytest

from vggt_core.progress import ProgressRange


def test_a_range_maps_and_clamps_a_stage_and_nests():
    reports = []
    stage = ProgressRange(lambda fraction, message: reports.append((round(fraction, 9), message)), 0.2, 0.6)
    for fraction in (-1.0, 0.0, 0.5, 1.0, 3.0):
        stage(fraction, "step")
    assert reports == [(0.2, "step"), (0.2, "step"), (0.4, "step"), (0.6, "step"), (0.6, "step")]

    reports.clear()
    inner = stage.stage(0.5, 1.0)  # the second half of [0.2, 0.6]
    inner(0.0, "a")
    inner(0.5, "b")
    assert reports == [(0.4, "a"), (0.5, "b")]


def test_a_range_outside_0_1_is_refused():
    for start, end in ((-0.1, 0.5), (0.6, 0.5), (0.5, 1.1)):
        with pytest.raises(ValueError):
            ProgressRange(lambda fraction, message: None, start, end)
