"""VGGTConfig: schema round trip and clear errors for impossible values."""

from __future__ import annotations

import json

import pytest

from conftest import TINY
from vggt_core.config import VGGTConfig


def test_defaults_are_vggt_1b():
    config = VGGTConfig()
    assert (config.embed_dim, config.depth, config.num_heads, config.num_register_tokens) == (1024, 24, 16, 4)
    assert config.dense_head.intermediate_layer_idx == [4, 11, 17, 23]
    assert config.track_head.corr_levels == 7 and config.track_head.min_image_side == 140
    assert config.used_layer_indices == [4, 11, 17, 23]


def test_json_round_trip(tmp_path):
    config = VGGTConfig.from_json(TINY / "config.json")
    assert config.to_dict() == json.loads((TINY / "config.json").read_text())
    config.to_json(tmp_path / "c.json")
    assert VGGTConfig.from_json(tmp_path / "c.json") == config
    assert VGGTConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("values, key", [
    ({"embed_dimension": 32}, "embed_dimension"),
    ({"camera_head": {"iterations": 2}}, "camera_head.'iterations'"),
    ({"embed_dim": 36, "num_heads": 2}, "head_dim"),  # head_dim 18 is not divisible by 4
    ({"embed_dim": 30, "num_heads": 4}, "num_heads"),
    ({"depth": 4, "dense_head": {"intermediate_layer_idx": [0, 1, 2, 4]}}, "intermediate_layer_idx"),
    ({"depth": 0}, "depth"),
    ({"patch_size": -14}, "patch_size"),
    ({"dense_head": {"out_channels": [8, 16, 32]}}, "out_channels"),
    ({"track_head": {"features": 30}}, "track_head.features"),
    ({"track_head": {"stride": 4}}, "track_head.stride"),
    ({"mlp_ratio": 0}, "mlp_ratio"),
    ({"camera_head": "big"}, "camera_head"),
])
def test_impossible_values_name_the_key(values, key):
    with pytest.raises(ValueError) as error:
        VGGTConfig.from_dict(values)
    assert key in str(error.value)


def test_min_image_side_follows_the_pyramid_depth():
    config = VGGTConfig.from_json(TINY / "config.json")  # 3 levels
    assert config.track_head.min_image_side == 14
    assert VGGTConfig.from_dict({"track_head": {"corr_levels": 5}}).track_head.min_image_side == 42
