"""Tracks from several query frames with a tiny random VGGT (vggt_core.tracks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vggt_core.config import tiny_config
from vggt_core.errors import InputError
from vggt_core.model import VGGT
from vggt_core.reconstruction import Reconstruction, reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene
from vggt_core.tracks import (TrackQueries, choose_query_points, query_frame_indices,
                              track_reconstruction)

NUM_FRAMES = 5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VGGT(tiny_config()).eval()


@pytest.fixture(scope="module")
def recon():
    # 168×140: multiples of 14 and large enough for the track head's correlation pyramid.
    return reconstruction_from_synthetic_scene(render_scene("room", num_views=NUM_FRAMES, width=168, height=140))


def model_input(recon: Reconstruction) -> torch.Tensor:
    return torch.from_numpy(recon.images).permute(0, 3, 1, 2).float() / 255.0


def test_query_frames_are_spread_and_start_at_frame_0():
    assert query_frame_indices(32, 4) == [0, 8, 16, 24]
    assert query_frame_indices(3, 4) == [0, 1, 2]
    assert query_frame_indices(10, 1) == [0]


def test_grid_queries_respect_the_cap_and_frames(recon):
    queries = choose_query_points(recon, num_query_frames=2, max_points=41)
    assert len(queries) == 41 and queries.points.shape == (41, 2) and queries.points.dtype == np.float32
    assert sorted(set(queries.frames.tolist())) == query_frame_indices(NUM_FRAMES, 2)
    height, width = recon.image_size_hw
    assert (queries.points >= 0).all() and (queries.points[:, 0] < width).all() \
        and (queries.points[:, 1] < height).all()
    # No pixel twice in one frame: the grid is even.
    assert len({(f, x, y) for f, (x, y) in zip(queries.frames, queries.points.tolist())}) == 41
    with pytest.raises(InputError, match="query point method"):
        choose_query_points(recon, method="harris")
    with pytest.raises(InputError, match="query frames"):
        choose_query_points(recon, query_frames=[NUM_FRAMES])


def test_sift_queries_are_keypoints_inside_the_frame(recon):
    queries = choose_query_points(recon, query_frames=[1], max_points=50, method="sift")
    assert 10 <= len(queries) <= 50 and set(queries.frames.tolist()) == {1}
    height, width = recon.image_size_hw
    assert (queries.points[:, 0] < width).all() and (queries.points[:, 1] < height).all()


def test_frame_0_queries_equal_the_plain_forward(model, recon):
    queries = choose_query_points(recon, query_frames=[0], max_points=24)
    tracked = track_reconstruction(model, recon, queries)
    plain = model(model_input(recon)[None], query_points=torch.from_numpy(queries.points)[None])
    np.testing.assert_allclose(tracked.tracks, plain["track"][0].numpy(), atol=1e-4)
    np.testing.assert_allclose(tracked.track_visibility, plain["vis"][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(tracked.track_confidence, plain["conf"][0].numpy(), atol=1e-5)


def test_tracks_from_several_query_frames(model, recon):
    queries = choose_query_points(recon, num_query_frames=3, max_points=30)
    tracked = track_reconstruction(model, recon, queries)
    num_points = len(queries)
    assert tracked.tracks.shape == (NUM_FRAMES, num_points, 2)
    assert tracked.track_visibility.shape == tracked.track_confidence.shape == (NUM_FRAMES, num_points)
    assert tracked.track_query_frames.tolist() == queries.frames.tolist()
    np.testing.assert_array_equal(tracked.query_points, queries.points)
    assert np.isfinite(tracked.tracks).all()
    assert ((tracked.track_visibility >= 0) & (tracked.track_visibility <= 1)).all()
    # Each query point lands on itself in its own query frame.
    own = tracked.tracks[queries.frames, np.arange(num_points)]
    np.testing.assert_allclose(own, queries.points, atol=1e-4)
    # ... and nowhere is it pinned in the other frames (the tracker moved it there).
    other = tracked.tracks[(queries.frames + 1) % NUM_FRAMES, np.arange(num_points)]
    assert np.abs(other - queries.points).max() > 1e-3

    # Frame k's tracks are the tracker's output on the feature maps with k first, mapped back.
    features = model.track_feature_maps(model_input(recon)[None])
    k = int(queries.frames[-1])
    assert k > 0
    selected = np.flatnonzero(queries.frames == k)
    order = list(range(NUM_FRAMES))
    order[0], order[k] = k, 0
    direct, _, _ = model.track_with_feature_maps(torch.from_numpy(queries.points[selected])[None],
                                                  features[:, order])
    np.testing.assert_allclose(tracked.tracks[order][:, selected], direct[0].numpy(), atol=1e-5)


def test_chunked_equals_unchunked(model, recon):
    queries = choose_query_points(recon, num_query_frames=2, max_points=20)
    whole = track_reconstruction(model, recon, queries, frames_chunk_size=NUM_FRAMES, points_chunk_size=None)
    chunked = track_reconstruction(model, recon, queries, frames_chunk_size=2, points_chunk_size=3)
    # Equal up to float32 rounding (different batch sizes take different kernels), which four
    # tracker iterations with random weights amplify to ~1e-5 relative.
    np.testing.assert_allclose(chunked.tracks, whole.tracks, rtol=0, atol=2e-3)
    np.testing.assert_allclose(chunked.track_visibility, whole.track_visibility, rtol=0, atol=1e-4)
    np.testing.assert_allclose(chunked.track_confidence, whole.track_confidence, rtol=0, atol=1e-4)


def test_bad_queries_are_refused(model, recon):
    with pytest.raises(InputError, match="inside"):
        track_reconstruction(model, recon, TrackQueries(frames=[0], points=[[500.0, 3.0]]))
    with pytest.raises(InputError, match="no query points"):
        track_reconstruction(model, recon, TrackQueries(frames=np.zeros(0), points=np.zeros((0, 2))))


def test_tracks_and_sparse_points_round_trip_through_the_npz(model, recon, tmp_path):
    queries = choose_query_points(recon, num_query_frames=2, max_points=10)
    tracked = track_reconstruction(model, recon, queries)
    num_points = 4
    with_sparse = Reconstruction(**{**tracked.__dict__,
                                    "sparse_points": np.arange(12, dtype=np.float32).reshape(4, 3),
                                    "sparse_point_colors": np.full((num_points, 3), 7, np.uint8),
                                    "sparse_point_tracks": np.array([0, 2, 5, 9]),
                                    "sparse_observations": np.ones((NUM_FRAMES, num_points), bool)})
    with_sparse.save(tmp_path / "scene.npz")
    loaded = Reconstruction.load(tmp_path / "scene.npz")
    for name in ("query_points", "track_query_frames", "tracks", "track_visibility", "track_confidence",
                 "sparse_points", "sparse_point_colors", "sparse_point_tracks", "sparse_observations"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(with_sparse, name), err_msg=name)
    np.testing.assert_allclose(loaded.points_from_depth, with_sparse.points_from_depth, atol=1e-5)
    np.testing.assert_allclose(with_sparse.scaled(2.0).sparse_points, 2 * with_sparse.sparse_points)
    # Tracking again drops the sparse points, which referred to the old tracks.
    assert track_reconstruction(model, with_sparse, queries).sparse_points is None
    with pytest.raises(InputError, match="sparse_point_tracks"):
        Reconstruction(**{**with_sparse.__dict__, "sparse_point_tracks": np.array([0, 2, 5, 10])})
