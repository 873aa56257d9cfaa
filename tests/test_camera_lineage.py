"""Derived scenes stay consistent: a camera change of a refined scene, and "predicted" (vggt_core.intrinsics).

"Predicted" always means the network's own cameras; a camera change sets a bundle adjustment aside
(its cameras and sparse points were fitted to the old focal length) and says so.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest

from vggt_core import geometry
from vggt_core.bundle_adjustment import bundle_adjust, track_points_for_export
from vggt_app.store.first_view import FirstView, load_first_view, save_first_view
from vggt_core.intrinsics import (REFINEMENT_SET_ASIDE_MESSAGE, apply_camera_choice, focal_length_summary,
                                  network_intrinsics, predicted_focal_lengths_px)
from vggt_core.reconstruction import Reconstruction, reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene

TYPED_FOCAL_PX = 150.0


@pytest.fixture(scope="module")
def predicted() -> Reconstruction:
    """What "the network" predicted: the true scene with frames 1.. moved and a focal 4 % long,
    with the pose encoding of exactly those cameras (as a model run stores it)."""
    truth = reconstruction_from_synthetic_scene(render_scene("room", num_views=5, width=140, height=112, seed=6),
                                                num_tracks=300, track_noise_px=0.3, seed=4)
    rng = np.random.default_rng(0)
    extrinsics = truth.extrinsics.copy()
    extrinsics[1:, :, 3] += rng.normal(scale=0.05, size=(truth.num_frames - 1, 3)).astype(np.float32)
    intrinsics = truth.intrinsics.copy()
    intrinsics[:, [0, 1], [0, 1]] *= 1.04
    height, width = truth.image_size_hw
    encoding = geometry.extrinsics_intrinsics_to_pose_encoding(extrinsics, intrinsics, (height, width))
    decoded_extrinsics, decoded_intrinsics = geometry.pose_encoding_to_extrinsics_intrinsics(encoding, (height, width))
    return dataclasses.replace(
        truth, extrinsics=decoded_extrinsics, intrinsics=decoded_intrinsics, pose_encoding=encoding,
        points_from_depth=geometry.unproject_depth_map_to_world_points(truth.depth, decoded_extrinsics,
                                                                       decoded_intrinsics).astype(np.float32),
        frame_names=list(truth.frame_names), info={})


@pytest.fixture(scope="module")
def refined(predicted) -> Reconstruction:
    result = bundle_adjust(predicted, shared_camera=True)
    assert result.report.refined, result.report.message
    recon = result.reconstruction
    assert np.abs(recon.intrinsics - predicted.intrinsics).max() > 1.0  # the focal length moved
    return recon


def _sparse_errors(recon: Reconstruction, source: Reconstruction) -> np.ndarray:
    """Reprojection errors (px) of ``source``'s sparse points through ``recon``'s cameras."""
    pixels, _ = geometry.project_points(source.sparse_points.astype(np.float64), recon.extrinsics.astype(np.float64),
                                        recon.intrinsics.astype(np.float64))
    return np.linalg.norm(pixels - source.tracks[:, source.sparse_point_tracks], axis=-1)[source.sparse_observations]


def _check_refinement_set_aside(changed: Reconstruction, predicted: Reconstruction) -> None:
    assert changed.sparse_points is None and changed.sparse_observations is None
    assert "cameras_refined" not in changed.info
    report = changed.info["bundle_adjustment"]
    assert report["refined"] is False and report["message"] == REFINEMENT_SET_ASIDE_MESSAGE
    assert track_points_for_export(changed) is None
    # The network's poses are back; the depth branch follows the new cameras.
    np.testing.assert_allclose(changed.extrinsics, predicted.extrinsics, atol=1e-6)
    np.testing.assert_allclose(changed.points_from_depth, geometry.unproject_depth_map_to_world_points(
        changed.depth, changed.extrinsics, changed.intrinsics), atol=1e-4)
    np.testing.assert_array_equal(changed.tracks, predicted.tracks)  # observations, still valid


def test_a_typed_focal_length_sets_the_refinement_aside(predicted, refined):
    changed = apply_camera_choice(refined, "manual", TYPED_FOCAL_PX, "px")
    # Kept, the refined sparse points would no longer fit these cameras.
    assert np.median(_sparse_errors(refined, refined)) < 1.0 < np.median(_sparse_errors(changed, refined))
    _check_refinement_set_aside(changed, predicted)
    np.testing.assert_allclose(changed.intrinsics[:, 0, 0], TYPED_FOCAL_PX, rtol=1e-6)
    np.testing.assert_allclose(changed.predicted_intrinsics, predicted.intrinsics)  # the network's, not the refined
    assert changed.info["intrinsics_source"] == "manual"


def test_predicted_after_a_typed_focal_length_is_the_networks_own(predicted, refined):
    typed = apply_camera_choice(refined, "manual", TYPED_FOCAL_PX, "px")
    back = apply_camera_choice(typed, "predicted")
    np.testing.assert_allclose(back.intrinsics, predicted.intrinsics)
    np.testing.assert_allclose(back.extrinsics, predicted.extrinsics, atol=1e-6)
    np.testing.assert_allclose(back.points_from_depth, predicted.points_from_depth, atol=1e-4)
    assert back.predicted_intrinsics is None and back.info["intrinsics_source"] == "predicted"
    assert "refined by bundle adjustment" not in focal_length_summary(back)


def test_predicted_on_a_refined_scene_restores_the_network_cameras(predicted, refined):
    assert "refined by bundle adjustment" in focal_length_summary(refined)
    # The summary's "predicted" focal length is the network's, not the refined one.
    np.testing.assert_allclose(predicted_focal_lengths_px(refined), predicted.intrinsics[:, 0, 0], rtol=1e-5)
    back = apply_camera_choice(refined, "predicted")
    _check_refinement_set_aside(back, predicted)
    np.testing.assert_allclose(back.intrinsics, predicted.intrinsics)


def test_a_refined_scene_saved_without_the_networks_intrinsics_reads_them_from_its_pose_encoding(predicted, refined):
    older = dataclasses.replace(refined, predicted_intrinsics=None, frame_names=list(refined.frame_names))
    np.testing.assert_allclose(network_intrinsics(older), predicted.intrinsics, rtol=1e-5)
    np.testing.assert_allclose(apply_camera_choice(older, "predicted").intrinsics, predicted.intrinsics, rtol=1e-5)


def test_the_lineage_survives_saving_and_rescaling(predicted, refined):
    buffer = io.BytesIO()
    refined.save(buffer)
    loaded = Reconstruction.from_bytes(buffer.getvalue())
    np.testing.assert_allclose(loaded.predicted_intrinsics, predicted.intrinsics)
    scaled = loaded.scaled(2.5, "m")
    changed = apply_camera_choice(scaled, "manual", TYPED_FOCAL_PX, "px")
    np.testing.assert_allclose(changed.extrinsics[:, :, 3], 2.5 * predicted.extrinsics[:, :, 3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(changed.extrinsics[:, :, :3], predicted.extrinsics[:, :, :3], atol=1e-6)


def test_an_unrefined_scene_changes_camera_as_before(predicted):
    typed = apply_camera_choice(predicted, "manual", TYPED_FOCAL_PX, "px")
    np.testing.assert_array_equal(typed.extrinsics, predicted.extrinsics)
    assert "bundle_adjustment" not in typed.info and "cameras_refined" not in typed.info
    assert apply_camera_choice(predicted, "predicted") is predicted


class _Attachments:
    """The two store methods first views use, in memory."""

    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}

    def save_attachment(self, recon_id: str, name: str, data: bytes) -> None:
        self.files[(recon_id, name)] = data

    def load_attachment(self, recon_id: str, name: str) -> bytes | None:
        return self.files.get((recon_id, name))


@pytest.mark.parametrize("refined_flag", [True, False])
def test_a_first_view_keeps_whether_the_scene_was_refined(refined_flag):
    store = _Attachments()
    save_first_view(store, "abc", FirstView(settings_key="k", num_frames=2, summary="s", frame_choices=["All"],
                                            glb=b"glb", gallery=[("a.jpg", "A", b"jpeg")], refined=refined_flag))
    assert load_first_view(store, "abc").refined is refined_flag


def test_a_first_view_written_before_the_flag_reads_as_unrefined():
    store = _Attachments()
    save_first_view(store, "abc", FirstView(settings_key="k", num_frames=2, summary="s", frame_choices=["All"],
                                            glb=b"glb", gallery=[("a.jpg", "A", b"jpeg")], refined=True))
    description = json.loads(store.files[("abc", "first-view.json")])
    del description["refined"]
    store.files[("abc", "first-view.json")] = json.dumps(description).encode()
    assert load_first_view(store, "abc").refined is False
