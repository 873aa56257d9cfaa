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


def test_the_model_stage_moves_block_by_block():
    """During the forward the bar moves once per alternating-attention block (not 0 → 0.7 at once),
    never backwards, and ends at 1."""
    import torch

    from vggt_core.inference import reconstruct
    from vggt_core.weights import load_model

    model = load_model("random-tiny", device="cpu")
    reports = []
    reconstruct(model, torch.rand(2, 3, 28, 42), progress=lambda fraction, message: reports.append((fraction, message)))
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    during_forward = [fraction for fraction, message in reports if "block" in message]
    assert len(during_forward) == model.config.depth and len(set(during_forward)) == model.config.depth
    assert 0 < min(during_forward) and max(during_forward) <= 0.6
