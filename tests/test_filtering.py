"""Point filters: the reference demo's confidence, frame and background semantics, and speed."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from vggt_core.errors import InputError
from vggt_core.filtering import PointSelection, ViewSettings, select_points
from vggt_core.reconstruction import Reconstruction


def random_reconstruction(num_frames=3, height=8, width=10, seed=0, with_point_map=True,
                          dtype=np.float32) -> Reconstruction:
    """Arbitrary arrays of the right shapes; filtering does not care about geometry."""
    rng = np.random.default_rng(seed)
    shape = (num_frames, height, width)
    conf = (1.0 + rng.exponential(2.0, shape)).astype(dtype)
    return Reconstruction(
        images=rng.integers(0, 256, shape + (3,), dtype=np.uint8),
        extrinsics=np.tile(np.eye(3, 4, dtype=np.float32), (num_frames, 1, 1)),
        intrinsics=np.tile(np.array([[10, 0, width / 2], [0, 10, height / 2], [0, 0, 1]], np.float32),
                           (num_frames, 1, 1)),
        depth=rng.uniform(1, 5, shape).astype(np.float32),
        depth_conf=conf,
        points_from_depth=rng.normal(size=shape + (3,)).astype(np.float32),
        world_points=rng.normal(size=shape + (3,)).astype(np.float32) if with_point_map else None,
        world_points_conf=(1.0 + rng.exponential(5.0, shape)).astype(np.float32) if with_point_map else None,
    )


def reference_selection(points, conf, colors, q, black=False, white=False):
    """The reference demo's filter written out independently: ``[S,H,W,3]``, ``[S,H,W]``, ``[S,H,W,3]``."""
    points, conf, colors = points.reshape(-1, 3), conf.reshape(-1), colors.reshape(-1, 3)
    threshold = 0.0 if q == 0 else np.percentile(conf, q)
    mask = (conf >= threshold) & (conf > 1e-5)
    if black:
        mask &= colors.astype(int).sum(axis=1) >= 16
    if white:
        mask &= ~((colors[:, 0] > 240) & (colors[:, 1] > 240) & (colors[:, 2] > 240))
    return points[mask], colors[mask], conf[mask], threshold


def test_default_settings_are_the_reference_ui_defaults():
    settings = ViewSettings()
    assert settings.confidence_threshold == 50.0 and settings.threshold_is_percentile
    assert settings.branch == "depth" and settings.frame_index is None and settings.show_cameras
    assert not settings.filter_black_background and not settings.filter_white_background


@pytest.mark.parametrize("q", [0.0, 5.0, 33.3, 50.0, 97.5, 100.0])
def test_percentile_threshold_matches_reference_formula(q):
    recon = random_reconstruction()
    conf = recon.depth_conf.copy()
    conf[0, 0, :4] = [0.0, 1e-6, 1e-5, 2e-5]  # the > 1e-5 rule decides these at q == 0
    recon = dataclasses.replace(recon, depth_conf=conf)
    selection = select_points(recon, ViewSettings(confidence_threshold=q))
    points, colors, confidence, threshold = reference_selection(
        recon.points_from_depth, conf, recon.images, q)
    assert isinstance(selection, PointSelection)
    assert selection.threshold == threshold
    np.testing.assert_array_equal(selection.points, points)
    np.testing.assert_array_equal(selection.colors, colors)
    np.testing.assert_array_equal(selection.confidence, confidence)
    assert selection.branch == "depth"
    if q == 0:
        assert selection.num_points == conf.size - 3  # 0, 1e-6 and 1e-5 are dropped
    if q == 100:
        assert selection.num_points == 1  # only the maximum survives


def test_absolute_threshold():
    recon = random_reconstruction()
    selection = select_points(recon, ViewSettings(confidence_threshold=2.5, threshold_is_percentile=False))
    mask = recon.depth_conf.reshape(-1) >= 2.5
    assert selection.threshold == 2.5
    np.testing.assert_array_equal(selection.points, recon.points_from_depth.reshape(-1, 3)[mask])
    assert selection.confidence.min() >= 2.5


def test_frame_indices_and_pixel_indices_locate_each_point():
    recon = random_reconstruction(num_frames=4)
    selection = select_points(recon, ViewSettings(confidence_threshold=30))
    rows, cols = np.divmod(selection.pixel_indices, recon.image_size_hw[1])
    np.testing.assert_array_equal(
        recon.points_from_depth[selection.frame_indices, rows, cols], selection.points)
    np.testing.assert_array_equal(recon.images[selection.frame_indices, rows, cols], selection.colors)
    assert selection.frame_indices.dtype == np.int32
    assert np.all(np.diff(selection.frame_indices) >= 0)  # frame-major order


def test_single_frame_uses_that_frames_percentile():
    recon = random_reconstruction(num_frames=4)
    selection = select_points(recon, ViewSettings(confidence_threshold=40, frame_index=2))
    points, colors, _, threshold = reference_selection(
        recon.points_from_depth[2:3], recon.depth_conf[2:3], recon.images[2:3], 40)
    assert selection.threshold == threshold
    assert threshold != np.percentile(recon.depth_conf, 40)  # not the all-frames percentile
    np.testing.assert_array_equal(selection.points, points)
    np.testing.assert_array_equal(selection.frame_indices, 2)


def test_black_and_white_background_filters():
    recon = random_reconstruction(num_frames=2)
    images = recon.images.copy()
    images[0, 0, 0] = [5, 5, 5]        # sum 15 → black
    images[0, 0, 1] = [16, 0, 0]       # sum 16 → kept
    images[0, 0, 2] = [241, 241, 241]  # all > 240 → white
    images[0, 0, 3] = [241, 240, 255]  # one channel not > 240 → kept
    images[1, 3, 3] = [0, 0, 0]
    recon = dataclasses.replace(recon, images=images)
    for black, white in [(True, False), (False, True), (True, True)]:
        settings = ViewSettings(confidence_threshold=0, filter_black_background=black,
                                filter_white_background=white)
        selection = select_points(recon, settings)
        points, colors, _, _ = reference_selection(recon.points_from_depth, recon.depth_conf,
                                                   images, 0, black=black, white=white)
        np.testing.assert_array_equal(selection.points, points)
        np.testing.assert_array_equal(selection.colors, colors)
        kept = {tuple(color) for color in selection.colors.tolist()}
        assert ((5, 5, 5) in kept) != black
        assert ((241, 241, 241) in kept) != white
        assert (16, 0, 0) in kept and (241, 240, 255) in kept


def test_point_branch_and_fallback():
    recon = random_reconstruction()
    selection = select_points(recon, ViewSettings(branch="point", confidence_threshold=20))
    points, _, _, threshold = reference_selection(recon.world_points, recon.world_points_conf,
                                                  recon.images, 20)
    assert selection.branch == "point" and selection.threshold == threshold
    np.testing.assert_array_equal(selection.points, points)

    without = random_reconstruction(with_point_map=False)
    fallback = select_points(without, ViewSettings(branch="point", confidence_threshold=20))
    expected = select_points(without, ViewSettings(branch="depth", confidence_threshold=20))
    assert fallback.branch == "depth"
    np.testing.assert_array_equal(fallback.points, expected.points)


def test_max_points_cap_is_even_and_deterministic():
    recon = random_reconstruction(num_frames=5, height=20, width=30)
    full = select_points(recon, ViewSettings(confidence_threshold=10, max_points=None))
    capped = select_points(recon, ViewSettings(confidence_threshold=10, max_points=100))
    again = select_points(recon, ViewSettings(confidence_threshold=10, max_points=100))
    assert capped.num_points == 100 and capped.num_before_cap == full.num_points
    np.testing.assert_array_equal(capped.points, again.points)
    # A subset of the uncapped result, in order, spread over every frame.
    full_keys = full.frame_indices.astype(np.int64) * 10**6 + full.pixel_indices
    capped_keys = capped.frame_indices.astype(np.int64) * 10**6 + capped.pixel_indices
    positions = np.searchsorted(full_keys, capped_keys)
    np.testing.assert_array_equal(full_keys[positions], capped_keys)
    gaps = np.diff(positions)
    assert gaps.min() >= full.num_points // 100 and gaps.max() <= full.num_points // 100 + 1
    assert set(capped.frame_indices.tolist()) == set(range(5))
    small = select_points(recon, ViewSettings(confidence_threshold=10, max_points=10**9))
    assert small.num_points == full.num_points


def test_non_finite_points_are_dropped():
    recon = random_reconstruction()
    points = recon.points_from_depth.copy()
    points[1, 2, 3] = [np.nan, 0, 0]
    points[2, 0, 0] = [0, np.inf, 0]
    recon = dataclasses.replace(recon, points_from_depth=points)
    selection = select_points(recon, ViewSettings(confidence_threshold=0))
    assert selection.num_points == points.shape[0] * points.shape[1] * points.shape[2] - 2
    assert np.isfinite(selection.points).all()


def test_settings_validation():
    recon = random_reconstruction(num_frames=3)
    with pytest.raises(InputError):
        select_points(recon, ViewSettings(frame_index=3))
    for bad in (dict(confidence_threshold=100.5), dict(confidence_threshold=-1),
                dict(confidence_threshold=float("nan")), dict(branch="pointmap"),
                dict(frame_index=-1), dict(max_points=0)):
        with pytest.raises(InputError):
            ViewSettings(**bad)
    # An absolute threshold is not a percentile, so it may exceed 100.
    assert select_points(recon, ViewSettings(confidence_threshold=500,
                                             threshold_is_percentile=False)).num_points == 0


def test_refiltering_fifty_full_size_frames_takes_under_a_second():
    num_frames, height, width = 50, 392, 518
    rng = np.random.default_rng(1)
    shape = (num_frames, height, width)
    depth_conf = rng.random(shape, dtype=np.float32) * 20.0 + 1.0
    recon = Reconstruction(
        images=rng.integers(0, 256, shape + (3,), dtype=np.uint8),
        extrinsics=np.tile(np.eye(3, 4, dtype=np.float32), (num_frames, 1, 1)),
        intrinsics=np.tile(np.eye(3, dtype=np.float32), (num_frames, 1, 1)),
        depth=depth_conf,  # any [S,H,W] float32 will do; filtering never reads it
        depth_conf=depth_conf,
        points_from_depth=rng.random(shape + (3,), dtype=np.float32),
    )
    settings = ViewSettings(confidence_threshold=37.5, filter_black_background=True,
                            filter_white_background=True)
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        selection = select_points(recon, settings)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 1.0, timings
    assert selection.num_points == settings.max_points  # ~6M survive, capped at 2M
    assert selection.threshold == np.percentile(depth_conf, 37.5)
