"""Peak-memory estimate used to refuse inputs that cannot fit."""

from __future__ import annotations

import json

from conftest import TINY
from vggt_core.config import VGGTConfig, tiny_config
from vggt_core.memory import estimate_peak_memory_bytes, max_frames_for_memory, parameter_count


def test_tiny_config_is_the_golden_fixture_architecture():
    assert tiny_config().to_dict() == json.loads((TINY / "config.json").read_text())


def test_estimate_grows_with_frames_and_resolution_and_covers_the_weights():
    config = VGGTConfig()
    params = parameter_count(config)
    assert params == 1_256_537_516
    one = estimate_peak_memory_bytes(config, 1, 392, 518, num_parameters=params)
    assert one > params * 4
    hundred = estimate_peak_memory_bytes(config, 100, 392, 518, num_parameters=params)
    assert hundred > estimate_peak_memory_bytes(config, 50, 392, 518, num_parameters=params) > one
    assert estimate_peak_memory_bytes(config, 10, 518, 518, num_parameters=params) > \
        estimate_peak_memory_bytes(config, 10, 294, 518, num_parameters=params)


def test_max_frames_is_the_inverse_of_the_estimate():
    config = VGGTConfig()
    budget = 40 * 2 ** 30
    frames = max_frames_for_memory(config, 392, 518, budget)
    assert frames > 1
    assert estimate_peak_memory_bytes(config, frames, 392, 518) <= budget
    assert estimate_peak_memory_bytes(config, frames + 1, 392, 518) > budget
    assert max_frames_for_memory(config, 392, 518, 2 ** 30) == 0  # not even the weights fit
