"""False colouring of depth and confidence maps."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from vggt_core.depth_maps import colorize_confidence_maps, colorize_depth_maps


def _colormap_rgb(name: str, value: float) -> np.ndarray:
    return np.asarray(matplotlib.colormaps[name](value, bytes=True)[:3])


def test_nearer_is_warmer():
    depth = np.tile(np.linspace(1.0, 5.0, 40, dtype=np.float32), (2, 30, 1))  # depth grows to the right
    colours = colorize_depth_maps(depth)
    assert colours.shape == (2, 30, 40, 3) and colours.dtype == np.uint8
    colours = colours.astype(int)
    near, far = colours[0, 5, 2], colours[0, 5, -3]
    assert near[0] > near[2] + 50  # red dominates blue up close
    assert far[2] > far[0] + 50    # blue dominates red far away
    red_minus_blue = colours[0, 5, :, 0] - colours[0, 5, :, 2]
    assert red_minus_blue[:10].mean() > red_minus_blue[-10:].mean()


def test_same_depth_same_colour_in_every_view():
    view_a = np.linspace(1.0, 2.0, 100, dtype=np.float32).reshape(10, 10)
    view_b = np.linspace(1.0, 9.0, 100, dtype=np.float32).reshape(10, 10)
    view_a[3, 3] = view_b[6, 6] = 1.7  # a shared depth in views with very different ranges
    colours = colorize_depth_maps(np.stack([view_a, view_b]))
    np.testing.assert_array_equal(colours[0, 3, 3], colours[1, 6, 6])
    # One range for all views: view_a's far end (2) is not coloured like view_b's far end (9).
    assert not np.array_equal(colours[0, -1, -1], colours[1, -1, -1])


def test_explicit_range_maps_near_and_far_to_the_colormap_ends():
    depth = np.array([[[2.0, 10.0, 1.0, 50.0]]], dtype=np.float32)
    colours = colorize_depth_maps(depth, value_range=(2.0, 10.0))
    np.testing.assert_array_equal(colours[0, 0, 0], _colormap_rgb("turbo", 1.0))
    np.testing.assert_array_equal(colours[0, 0, 1], _colormap_rgb("turbo", 0.0))
    np.testing.assert_array_equal(colours[0, 0, 2], colours[0, 0, 0])  # clipped below
    np.testing.assert_array_equal(colours[0, 0, 3], colours[0, 0, 1])  # clipped above


def test_invalid_depth_is_black_and_outliers_do_not_flatten_the_range():
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 3.0, (3, 20, 20)).astype(np.float32)
    depth[0, 0, :5] = [np.nan, np.inf, -np.inf, 0.0, -1.0]
    depth[1, 0, 0] = 1e6  # one wild outlier
    colours = colorize_depth_maps(depth[..., None])  # [S,H,W,1] is accepted too
    assert colours.shape == (3, 20, 20, 3)
    np.testing.assert_array_equal(colours[0, 0, :5], 0)
    valid = np.ones(depth.shape, bool)
    valid[0, 0, :5] = False
    assert (colours[valid].max(axis=1) > 0).all()
    # With a 2–98 % range the ordinary depths still span most of the colormap.
    distinct = {tuple(c) for c in colours[valid].reshape(-1, 3).tolist()}
    assert len(distinct) > 150


def test_constant_depth_does_not_divide_by_zero():
    colours = colorize_depth_maps(np.full((2, 4, 4), 3.0, np.float32))
    np.testing.assert_array_equal(colours, np.broadcast_to(_colormap_rgb("turbo", 0.5), colours.shape))


def test_confidence_uses_one_log_scale_for_all_views():
    confidence = np.array([[[1.0, 10.0, 100.0]], [[10.0, 100.0, np.nan]]], dtype=np.float32)
    colours = colorize_confidence_maps(confidence, value_range=(1.0, 100.0))
    np.testing.assert_array_equal(colours[0, 0, 0], _colormap_rgb("viridis", 0.0))
    np.testing.assert_array_equal(colours[0, 0, 1], _colormap_rgb("viridis", 0.5))  # log midpoint
    np.testing.assert_array_equal(colours[0, 0, 2], _colormap_rgb("viridis", 1.0))
    np.testing.assert_array_equal(colours[0, 0, 1], colours[1, 0, 0])
    np.testing.assert_array_equal(colours[1, 0, 2], 0)

    default = colorize_confidence_maps(1.0 + np.random.default_rng(0).exponential(3.0, (2, 16, 16)))
    assert default.shape == (2, 16, 16, 3) and default.dtype == np.uint8
    with pytest.raises(ValueError):
        colorize_confidence_maps(confidence, value_range=(0.0, 10.0))


def test_more_confident_is_brighter():
    confidence = np.geomspace(1.0, 1000.0, 50, dtype=np.float32).reshape(1, 1, 50)
    brightness = colorize_confidence_maps(confidence).astype(int).sum(axis=-1)[0, 0]
    assert brightness[-1] > brightness[0] + 200
    assert np.all(np.diff(brightness[5:-5]) >= -3)  # viridis brightens along its length
