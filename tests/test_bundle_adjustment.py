"""Bundle adjustment brings perturbed cameras of a synthetic scene back to the truth (vggt_core.bundle_adjustment)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from vggt_core.bundle_adjustment import bundle_adjust, triangulate_tracks
from vggt_core.errors import InputError
from vggt_core.reconstruction import Reconstruction, reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene, scene_extent

NUM_FRAMES = 8
ROTATION_NOISE_DEG = 3.0
CENTRE_NOISE_FRACTION = 0.03  # of the scene size (the median depth)
FOCAL_FACTOR = 1.04


def in_first_camera(scene):
    """The scene with frame 0 at the identity (VGGT's gauge)."""
    first = np.eye(4)
    first[:3] = scene.extrinsics[0]
    moved = np.einsum("sij,jk->sik", scene.extrinsics.astype(np.float64), np.linalg.inv(first))
    return dataclasses.replace(scene, extrinsics=moved.astype(np.float32))


def rotation_about(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.radians(degrees)
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def perturbed(recon: Reconstruction, scene_size: float, seed: int = 1) -> Reconstruction:
    rng = np.random.default_rng(seed)
    extrinsics = recon.extrinsics.astype(np.float64).copy()
    for index in range(1, recon.num_frames):
        rotation, translation = extrinsics[index, :, :3], extrinsics[index, :, 3]
        centre = -rotation.T @ translation + rng.normal(size=3) / math.sqrt(3) * CENTRE_NOISE_FRACTION * scene_size
        rotation = rotation_about(rng.normal(size=3), ROTATION_NOISE_DEG) @ rotation
        extrinsics[index] = np.concatenate([rotation, (-rotation @ centre)[:, None]], axis=1)
    intrinsics = recon.intrinsics.copy()
    intrinsics[:, 0, 0] *= FOCAL_FACTOR
    intrinsics[:, 1, 1] *= FOCAL_FACTOR
    return dataclasses.replace(recon, extrinsics=extrinsics.astype(np.float32), intrinsics=intrinsics,
                               frame_names=list(recon.frame_names), info=dict(recon.info))


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cosine = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return math.degrees(math.acos(np.clip(cosine, -1.0, 1.0)))


def relative_pose_errors(estimated: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Mean relative rotation and translation-direction errors (degrees) over all pairs (RRA/RTA)."""
    rotation_errors, translation_errors = [], []
    for i in range(len(truth)):
        for j in range(i + 1, len(truth)):
            def relative(cameras):
                rotation = cameras[j, :, :3] @ cameras[i, :, :3].T
                return rotation, cameras[j, :, 3] - rotation @ cameras[i, :, 3]
            rotation_est, translation_est = relative(estimated.astype(np.float64))
            rotation_true, translation_true = relative(truth.astype(np.float64))
            cosine = (np.trace(rotation_est.T @ rotation_true) - 1) / 2
            rotation_errors.append(math.degrees(math.acos(np.clip(cosine, -1.0, 1.0))))
            translation_errors.append(angle_deg(translation_est, translation_true))
    return float(np.mean(rotation_errors)), float(np.mean(translation_errors))


@pytest.fixture(scope="module")
def truth():
    scene = in_first_camera(render_scene("room", num_views=NUM_FRAMES, width=224, height=168, seed=3))
    return reconstruction_from_synthetic_scene(scene, num_tracks=600, track_noise_px=0.3, seed=5)


@pytest.fixture(scope="module")
def adjusted(truth):
    start = perturbed(truth, scene_size(truth))
    return start, bundle_adjust(start, shared_camera=True)


def scene_size(recon: Reconstruction) -> float:
    return float(np.median(recon.depth))


def test_triangulation_from_true_cameras_lands_on_the_surface(truth):
    noiseless = reconstruction_from_synthetic_scene(
        render_scene("table", num_views=3, width=112, height=84), num_tracks=50, track_noise_px=0.0)
    points, valid = triangulate_tracks(noiseless.tracks, noiseless.track_visibility > 0.5,
                                       noiseless.extrinsics, noiseless.intrinsics)
    from vggt_core.synthetic import scene_surface_distance
    assert valid.sum() >= 30
    assert scene_surface_distance("table", points[valid]).max() < 1e-3 * scene_extent("table")


def test_bundle_adjustment_recovers_the_true_cameras(truth, adjusted):
    start, result = adjusted
    rotation_before, translation_before = relative_pose_errors(start.extrinsics, truth.extrinsics)
    assert rotation_before > 2.0 and translation_before > 2.0  # "several degrees" to begin with

    assert result.report.refined, result.report.message
    refined = result.reconstruction
    rotation_after, translation_after = relative_pose_errors(refined.extrinsics, truth.extrinsics)
    assert rotation_after < 0.3 and translation_after < 0.3, (rotation_after, translation_after)
    true_focal = float(truth.intrinsics[0, 0, 0])
    assert np.abs(refined.intrinsics[:, [0, 1], [0, 1]] / true_focal - 1).max() < 0.01
    # One shared camera: every frame has the same intrinsics.
    np.testing.assert_array_equal(refined.intrinsics, np.broadcast_to(refined.intrinsics[0], refined.intrinsics.shape))


def test_the_result_keeps_the_input_gauge(adjusted):
    start, result = adjusted
    refined = result.reconstruction
    np.testing.assert_allclose(refined.extrinsics[0], start.extrinsics[0], atol=1e-6)

    def mean_centre_distance(extrinsics):
        centres = -np.einsum("sji,sj->si", extrinsics[:, :, :3], extrinsics[:, :, 3])
        return np.linalg.norm(centres[1:] - centres[0], axis=1).mean()

    assert mean_centre_distance(refined.extrinsics) == pytest.approx(mean_centre_distance(start.extrinsics), rel=1e-4)


def test_report_sparse_points_and_depth_points(truth, adjusted):
    start, result = adjusted
    report, refined = result.report, result.reconstruction
    assert report.tracks_used + report.tracks_rejected == truth.tracks.shape[1]
    assert report.tracks_used > 400 and report.observations >= 2 * report.tracks_used
    assert report.mean_error_before_px > 2.0 and report.mean_error_after_px < 0.5
    assert "px" in report.message and report.message.startswith("Refined 8 cameras")
    assert report.seconds > 0
    assert refined.info["cameras_refined"] is True
    assert refined.info["bundle_adjustment"] == json.loads(json.dumps(report.as_dict()))

    num_points = report.tracks_used
    assert refined.sparse_points.shape == (num_points, 3) and refined.sparse_point_colors.shape == (num_points, 3)
    assert refined.sparse_observations.shape == (NUM_FRAMES, num_points)
    assert int(refined.sparse_observations.sum()) == report.observations
    # The refined sparse points reproject onto their tracks with the refined cameras.
    columns = refined.sparse_point_tracks
    from vggt_core import geometry
    pixels, _ = geometry.project_points(refined.sparse_points.astype(np.float64),
                                        refined.extrinsics.astype(np.float64), refined.intrinsics.astype(np.float64))
    errors = np.linalg.norm(pixels - refined.tracks[:, columns], axis=-1)[refined.sparse_observations]
    assert errors.mean() == pytest.approx(report.mean_error_after_px, rel=1e-3)
    # points_from_depth follows the refined cameras (the refined cameras see the depth at their pixels).
    np.testing.assert_allclose(refined.points_from_depth,
                               Reconstruction.from_bytes(_saved(refined)).points_from_depth, atol=1e-5)
    assert np.abs(refined.points_from_depth - start.points_from_depth).max() > 1e-3


def _saved(recon: Reconstruction) -> bytes:
    import io
    buffer = io.BytesIO()
    recon.save(buffer)
    return buffer.getvalue()


def test_known_focal_lengths_stay_fixed(truth):
    start = perturbed(truth, scene_size(truth))
    start.info["intrinsics_source"] = "exif"
    result = bundle_adjust(start, shared_camera=True, max_iterations=5)
    assert result.report.refined
    np.testing.assert_allclose(result.reconstruction.intrinsics, start.intrinsics, rtol=1e-6)


def test_too_few_tracks_gives_the_input_back_with_a_message(truth):
    few = dataclasses.replace(truth, tracks=truth.tracks[:, :5], track_visibility=truth.track_visibility[:, :5],
                              track_confidence=truth.track_confidence[:, :5], query_points=truth.query_points[:5],
                              track_query_frames=truth.track_query_frames[:5], frame_names=list(truth.frame_names))
    result = bundle_adjust(few)
    assert not result.report.refined
    kept = result.reconstruction
    np.testing.assert_array_equal(kept.extrinsics, few.extrinsics)
    np.testing.assert_array_equal(kept.intrinsics, few.intrinsics)
    assert kept.sparse_points is None and not kept.info.get("cameras_refined")
    assert kept.info["bundle_adjustment"] == json.loads(json.dumps(result.report.as_dict()))
    assert result.report.message.startswith("Too few usable tracks") and result.report.tracks_used <= 5
    no_tracks = dataclasses.replace(truth, tracks=None, track_visibility=None, track_confidence=None,
                                    query_points=None, track_query_frames=None, frame_names=list(truth.frame_names))
    result = bundle_adjust(no_tracks)
    assert not result.report.refined and "track" in result.report.message
    with pytest.raises(InputError, match="camera model"):
        bundle_adjust(truth, camera_model="OPENCV")


def test_one_camera_per_frame_with_two_focal_lengths(truth):
    start = perturbed(truth, scene_size(truth))
    result = bundle_adjust(start, camera_model="PINHOLE")
    assert result.report.refined, result.report.message
    refined = result.reconstruction
    rotation_after, translation_after = relative_pose_errors(refined.extrinsics, truth.extrinsics)
    rotation_before, translation_before = relative_pose_errors(start.extrinsics, truth.extrinsics)
    assert rotation_after < rotation_before / 3 and translation_after < translation_before / 3
    # Each frame got its own camera, refined separately; principal points stay.
    assert len({float(value) for value in refined.intrinsics[:, 0, 0]}) == NUM_FRAMES
    np.testing.assert_array_equal(refined.intrinsics[:, :2, 2], start.intrinsics[:, :2, 2])
    assert result.report.mean_error_after_px < 0.5
