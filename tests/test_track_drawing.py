"""draw_tracks: true tracks of a synthetic scene drawn on its frames, one colour per track, hidden
points hollow, and the Tracks view's summary lines about bundle adjustment."""

from __future__ import annotations

import numpy as np
import pytest

from vggt_core import InputError
from vggt_core.reconstruction import reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene
from vggt_core.track_drawing import draw_tracks, marker_radius, track_colors


def project(points: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 3]`` world points seen by one camera: ``[N, 2]`` pixels and ``[N]`` depths."""
    camera = points @ extrinsics[:, :3].T + extrinsics[:, 3]
    pixels = camera @ intrinsics.T
    return pixels[:, :2] / pixels[:, 2:3], camera[:, 2]


@pytest.fixture(scope="module")
def tracked_scene():
    """The synthetic room with 6 true tracks picked in frame 0 and projected into every frame;
    track 5 is marked not visible in frame 1."""
    recon = reconstruction_from_synthetic_scene(render_scene("room", num_views=3, width=120, height=90, seed=3))
    picked = np.array([[20, 20], [60, 45], [100, 70], [30, 70], [90, 20], [60, 20]])
    world = recon.points_from_depth[0][picked[:, 1], picked[:, 0]]
    tracks, visibility = [], []
    height, width = recon.image_size_hw
    for frame in range(recon.num_frames):
        pixels, depth = project(world.astype(np.float64), recon.extrinsics[frame], recon.intrinsics[frame])
        tracks.append(pixels)
        inside = ((depth > 0) & (pixels[:, 0] >= 0) & (pixels[:, 0] < width)
                  & (pixels[:, 1] >= 0) & (pixels[:, 1] < height))
        visibility.append(inside.astype(np.float32))
    recon.tracks = np.stack(tracks).astype(np.float32)
    recon.track_visibility = np.stack(visibility)
    recon.track_visibility[1, 5] = 0.0
    recon.query_points = picked.astype(np.float32)
    recon.track_query_frames = np.zeros(len(picked), dtype=np.int64)
    return recon


def test_true_tracks_land_on_their_pixels_in_their_colour(tracked_scene):
    recon = tracked_scene
    pictures = draw_tracks(recon)
    assert len(pictures) == recon.num_frames
    colors = track_colors(recon.tracks.shape[1]).astype(int)
    assert len({tuple(c) for c in colors}) == len(colors)  # one colour per track
    for frame, picture in enumerate(pictures):
        assert picture.shape == recon.images[frame].shape and picture.dtype == np.uint8
        for track in range(recon.tracks.shape[1]):
            x, y = np.round(recon.tracks[frame, track]).astype(int)
            if not (0 <= x < picture.shape[1] and 0 <= y < picture.shape[0]):
                continue
            if recon.track_visibility[frame, track] >= 0.5:
                # A filled disc: the track's own colour at its true position.
                assert np.abs(picture[y, x].astype(int) - colors[track]).max() <= 2, (frame, track)
            else:
                # Hollow: the frame's own pixel at the centre, the colour on the circle.
                assert np.array_equal(picture[y, x], recon.images[frame][y, x])
                radius = marker_radius(*recon.image_size_hw)
                ring = picture[y - radius - 1:y + radius + 2, x - radius - 1:x + radius + 2].reshape(-1, 3).astype(int)
                assert (np.abs(ring - colors[track]).max(axis=1) <= 2).any()


def test_picking_tracks_keeps_their_colours_and_trail_zero_draws_no_paths(tracked_scene):
    recon = tracked_scene
    only = draw_tracks(recon, track_indices=[2], trail=0)
    colors = track_colors(recon.tracks.shape[1]).astype(int)
    x, y = np.round(recon.tracks[0, 2]).astype(int)
    assert np.abs(only[0][y, x].astype(int) - colors[2]).max() <= 2
    x, y = np.round(recon.tracks[0, 1]).astype(int)
    assert np.array_equal(only[0][y, x], recon.images[0][y, x])  # track 1 not drawn
    # Without paths, nothing changes far from the markers; with the full trail, the last frame
    # shows the line from the earlier positions.
    changed_without = (draw_tracks(recon, trail=0)[2] != recon.images[2]).any(axis=-1).sum()
    changed_with = (draw_tracks(recon)[2] != recon.images[2]).any(axis=-1).sum()
    assert changed_with > changed_without


def test_no_tracks_or_bad_indices_are_clear_errors(tracked_scene, small_reconstruction):
    with pytest.raises(InputError, match="no point tracks"):
        draw_tracks(small_reconstruction)
    with pytest.raises(InputError, match="Track indices"):
        draw_tracks(tracked_scene, track_indices=[6])


def test_summary_lines_of_bundle_adjustment(tracked_scene):
    from vggt_app.summary import bundle_adjustment_lines

    recon = tracked_scene
    assert bundle_adjustment_lines(recon, {}) == []
    report = {"refined": True, "message": "ok", "tracks_used": 1200, "tracks_rejected": 34, "observations": 3000,
              "mean_error_before_px": 3.456, "mean_error_after_px": 0.512, "seconds": 2.31}
    refined = type(recon)(**{**recon.__dict__, "info": {"cameras_refined": True, "bundle_adjustment": report}})
    (line,) = bundle_adjustment_lines(refined, {})
    assert "Cameras refined by bundle adjustment" in line
    assert "1,200 tracks used" in line and "34 rejected" in line and "3.46 px → 0.51 px" in line and "2.3 s" in line
    failed = {"refined": False, "message": "Too few usable tracks: 3 (need 10)", "tracks_used": 3}
    (line,) = bundle_adjustment_lines(recon, {"bundle_adjustment": failed})
    assert "not applied" in line and "Too few usable tracks: 3 (need 10)" in line
