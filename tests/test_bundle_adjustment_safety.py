"""Bundle adjustment keeps the input's gauge, never makes a scene worse, and nothing unsound reaches an export.

The scenes are synthetic (vggt_core.synthetic): their world is the renderer's, so frame 0 is far
from the identity, and the true surfaces are known (``scene_surface_distance``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import zipfile

import numpy as np
import pycolmap
import pytest

from vggt_core import bundle_adjustment, geometry
from vggt_core.bundle_adjustment import bundle_adjust, track_points_for_export
from vggt_core.export.colmap import export_colmap
from vggt_core.export.splatting import SPLATTING_MODEL_SUBDIR, export_splatting_bundle
from vggt_core.reconstruction import Reconstruction, reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene, scene_extent, scene_surface_distance

SCENE = "room"
NUM_FRAMES = 6
THRESHOLD_PX = 8.0


def _rotation_about(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.radians(degrees)
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


@pytest.fixture(scope="module")
def truth() -> Reconstruction:
    """True cameras, depth and point map in the renderer's world, with noisy tracks."""
    scene = render_scene(SCENE, num_views=NUM_FRAMES, width=168, height=126, seed=4)
    return reconstruction_from_synthetic_scene(scene, num_tracks=400, track_noise_px=0.3, seed=2)


def _perturbed(truth: Reconstruction, seed: int = 0) -> Reconstruction:
    """Frames 1.. rotated by 2° about their centres and moved by 2 % of the scene; focal 3 % long.
    The depth branch is unprojected with these cameras; the point map stays the truth."""
    rng = np.random.default_rng(seed)
    extrinsics = truth.extrinsics.astype(np.float64).copy()
    size = scene_extent(SCENE)
    for index in range(1, truth.num_frames):
        rotation, translation = extrinsics[index, :, :3], extrinsics[index, :, 3]
        centre = -rotation.T @ translation + rng.normal(size=3) * 0.02 * size / math.sqrt(3)
        rotation = _rotation_about(rng.normal(size=3), 2.0) @ rotation
        extrinsics[index] = np.c_[rotation, -rotation @ centre]
    intrinsics = truth.intrinsics.copy()
    intrinsics[:, [0, 1], [0, 1]] *= 1.03
    return dataclasses.replace(
        truth, extrinsics=extrinsics.astype(np.float32), intrinsics=intrinsics, frame_names=list(truth.frame_names),
        points_from_depth=geometry.unproject_depth_map_to_world_points(truth.depth, extrinsics, intrinsics)
        .astype(np.float32), info=dict(truth.info))


@pytest.fixture(scope="module")
def start(truth) -> Reconstruction:
    return _perturbed(truth)


@pytest.fixture(scope="module")
def adjusted(start):
    return bundle_adjust(start, shared_camera=True)


def _median_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.median(np.linalg.norm(a.reshape(-1, 3) - b.reshape(-1, 3), axis=1)))


def test_frame_zero_of_the_scene_is_far_from_the_identity(truth):
    rotation = truth.extrinsics[0, :, :3].astype(np.float64)
    angle = math.degrees(math.acos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
    assert angle > 20 or np.linalg.norm(truth.extrinsics[0, :, 3]) > scene_extent(SCENE)


def test_every_array_stays_in_the_input_gauge(truth, start, adjusted):
    report, refined = adjusted.report, adjusted.reconstruction
    assert report.refined, report.message
    size = scene_extent(SCENE)
    # Frame 0 keeps its input pose; the others come back to the truth.
    np.testing.assert_allclose(refined.extrinsics[0], start.extrinsics[0], atol=1e-5)
    assert np.abs(refined.extrinsics - truth.extrinsics).max() < 0.01 * size + 0.01
    # The refined depth branch lines up with the point map (untouched by bundle adjustment) ...
    before = _median_distance(start.points_from_depth, start.world_points)
    after = _median_distance(refined.points_from_depth, refined.world_points)
    np.testing.assert_array_equal(refined.world_points, start.world_points)
    assert after < 0.003 * size and after < before / 3, (before, after)
    # ... and the sparse points lie on the true surfaces of the renderer's world.
    distances = scene_surface_distance(SCENE, refined.sparse_points.astype(np.float64))
    assert np.median(distances) < 0.003 * size


def _one_sentence(message: str) -> bool:
    return message.endswith(".") and len(re.split(r"[.!?]\s+[A-Z]", message)) == 1


@pytest.fixture
def worse_solver(monkeypatch):
    """Whatever Ceres finds, the solution read back has every camera but frame 0 turned by 10°."""
    original = bundle_adjustment._refined_arrays

    def turned(*args, **kwargs):
        extrinsics, intrinsics, points = original(*args, **kwargs)
        extrinsics = extrinsics.copy()
        for index in range(1, len(extrinsics)):
            extrinsics[index, :, :3] = _rotation_about(np.array([0.3, 1.0, 0.2]), 10.0) @ extrinsics[index, :, :3]
        return extrinsics, intrinsics, points

    monkeypatch.setattr(bundle_adjustment, "_refined_arrays", turned)


def _check_rejected(result, start: Reconstruction, reason: str) -> None:
    report, kept = result.report, result.reconstruction
    assert not report.refined
    assert _one_sentence(report.message) and reason in report.message, report.message
    assert "input cameras are kept" in report.message
    np.testing.assert_array_equal(kept.extrinsics, start.extrinsics)
    np.testing.assert_array_equal(kept.intrinsics, start.intrinsics)
    np.testing.assert_array_equal(kept.points_from_depth, start.points_from_depth)
    assert kept.sparse_points is None and not kept.info.get("cameras_refined")
    assert kept.info["bundle_adjustment"]["refined"] is False
    assert kept.info["bundle_adjustment"]["message"] == report.message
    # Exports then write their ordinary points, not the tracks.
    assert track_points_for_export(kept) is None


def test_a_refinement_that_raises_the_error_is_rejected(start, worse_solver):
    result = bundle_adjust(start, shared_camera=True, refinement_rounds=1)
    _check_rejected(result, start, "raised the mean reprojection error")
    before, after = result.report.mean_error_before_px, result.report.mean_error_after_px
    assert after > before and f"{before:.2f} px" in result.report.message


@pytest.mark.parametrize("kind", ["astronomical error", "not finite"])
def test_a_refinement_with_a_degenerate_point_is_rejected(start, monkeypatch, kind):
    original = bundle_adjustment._refined_arrays

    def one_degenerate_point(model, point_ids, *args, **kwargs):
        extrinsics, intrinsics, points = original(model, point_ids, *args, **kwargs)
        points = points.copy()
        # A point that frame 0 observes, put just in front of frame 0's image plane and off its
        # axis: it projects 1e150 pixels away (seen: an error of 1e154 px) ...
        index = next(i for i, point_id in enumerate(point_ids)
                     if 1 in {element.image_id for element in model.point3D(point_id).track.elements})
        rotation, translation = extrinsics[0, :, :3], extrinsics[0, :, 3]
        points[index] = rotation.T @ (np.array([1.0, 0.0, 1e-150]) - translation)
        if kind == "not finite":  # ... or has no coordinates at all
            points[index] = np.nan
        return extrinsics, intrinsics, points

    monkeypatch.setattr(bundle_adjustment, "_refined_arrays", one_degenerate_point)
    result = bundle_adjust(start, shared_camera=True, refinement_rounds=1)
    if kind == "not finite":
        _check_rejected(result, start, "non-finite")
    else:
        _check_rejected(result, start, "raised the mean reprojection error")
        assert "e+" in result.report.message  # the huge error is written short


def test_after_a_rejected_refinement_the_colmap_download_has_the_ordinary_points(tmp_path, start, worse_solver):
    kept = bundle_adjust(start, shared_camera=True, refinement_rounds=1).reconstruction
    export_colmap(kept, tmp_path / "sparse", original_resolution=False)
    model = pycolmap.Reconstruction(str(tmp_path / "sparse"))
    assert model.num_points3D() > 1000  # the dense selection, each point seen by its own frame
    assert {len(point.track.elements) for point in model.points3D.values()} == {1}


def _check_sound_colmap_model(model: pycolmap.Reconstruction, threshold_px: float) -> int:
    """Every point finite, in front of every camera that observes it, within the threshold there."""
    assert model.num_points3D() > 0
    for point in model.points3D.values():
        assert np.isfinite(point.xyz).all()
        assert len(point.track.elements) >= 2
        for element in point.track.elements:
            image = model.image(element.image_id)
            in_camera = image.cam_from_world() * point.xyz
            assert in_camera[2] > 0
            error = np.linalg.norm(image.camera.img_from_cam(in_camera) - image.points2D[element.point2D_idx].xy)
            assert error <= threshold_px
    return model.num_points3D()


def test_unsound_points_of_an_accepted_refinement_never_reach_an_export(tmp_path, start, monkeypatch):
    original = bundle_adjustment._refined_arrays
    moved = {}

    def two_bad_points(*args, **kwargs):
        extrinsics, intrinsics, points = original(*args, **kwargs)
        points = points.copy()
        centre = -extrinsics[1, :, :3].T @ extrinsics[1, :, 3]
        moved["behind"] = points[0] = centre - 0.5 * (points[0] - centre)  # behind camera 1, seen by it or not
        moved["off"] = points[1] = points[1] + 0.05 * scene_extent(SCENE)  # some pixels off
        return extrinsics, intrinsics, points

    monkeypatch.setattr(bundle_adjustment, "_refined_arrays", two_bad_points)
    result = bundle_adjust(start, shared_camera=True, refinement_rounds=1)
    assert result.report.refined, result.report.message
    refined = result.reconstruction
    for point in moved.values():
        assert not np.isclose(refined.sparse_points, point.astype(np.float32), atol=1e-6).all(axis=1).any()
    export_colmap(refined, tmp_path / "sparse", original_resolution=False)
    count = _check_sound_colmap_model(pycolmap.Reconstruction(str(tmp_path / "sparse")), THRESHOLD_PX)
    assert count == len(refined.sparse_points) == result.report.tracks_used
    bundle = export_splatting_bundle(refined, tmp_path / "bundle.zip", durable=False)
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(tmp_path / "bundle")
    # Photos are the model input here (no resize), so the threshold is in the same pixels.
    _check_sound_colmap_model(pycolmap.Reconstruction(str(tmp_path / "bundle" / SPLATTING_MODEL_SUBDIR)),
                              THRESHOLD_PX)


def test_a_stored_degenerate_point_is_left_out_of_exports(tmp_path, adjusted):
    """Scenes saved before the checks may hold such a point (seen: an error of 1e154 px)."""
    refined = adjusted.reconstruction
    points = refined.sparse_points.copy()
    points[0] = [3e37, 1e37, -2e37]
    points[1] = np.nan
    stored = dataclasses.replace(refined, sparse_points=points, frame_names=list(refined.frame_names))
    export_colmap(stored, tmp_path / "sparse", original_resolution=False)
    count = _check_sound_colmap_model(pycolmap.Reconstruction(str(tmp_path / "sparse")), THRESHOLD_PX)
    assert count == len(points) - 2
    bundle = export_splatting_bundle(stored, tmp_path / "bundle.zip", durable=False)
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(tmp_path / "bundle")
        transforms = json.loads(archive.read("transforms.json"))
    assert _check_sound_colmap_model(pycolmap.Reconstruction(str(tmp_path / "bundle" / SPLATTING_MODEL_SUBDIR)),
                                     THRESHOLD_PX) == count
    assert transforms["ply_file_path"] == "sparse_pc.ply"
    with open(tmp_path / "bundle" / "sparse_pc.ply", "rb") as handle:
        header = handle.read(400).split(b"end_header")[0].decode("ascii", "replace")
    assert f"element vertex {count}" in header
