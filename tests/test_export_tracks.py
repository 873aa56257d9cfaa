"""Exports with point tracks: COLMAP multi-view tracks, nerfstudio transforms.json, the splatting bundle."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import pycolmap
import pytest
from PIL import Image

from vggt_core import geometry
from vggt_core.bundle_adjustment import bundle_adjust
from vggt_core.export import export_all, export_colmap
from vggt_core.export.photos import bundle_image_names
from vggt_core.reconstruction import Reconstruction, reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene, save_scene_images

NUM_FRAMES = 4
PHOTO_SCALE = 2  # the "photos" are twice the model input's size


def at_photo_scale(recon: Reconstruction) -> Reconstruction:
    """The same scene as if it came from photos PHOTO_SCALE times larger (resized, no crop)."""
    height, width = recon.image_size_hw
    sizes = np.tile([[width * PHOTO_SCALE, height * PHOTO_SCALE]], (recon.num_frames, 1))
    transforms = np.tile([[1 / PHOTO_SCALE, 1 / PHOTO_SCALE, 0.0, 0.0]], (recon.num_frames, 1))
    return dataclasses.replace(recon, original_sizes=sizes, image_transforms=transforms,
                               frame_names=list(recon.frame_names), info=dict(recon.info))


@pytest.fixture(scope="module")
def scene():
    return render_scene("table", num_views=NUM_FRAMES, width=168, height=126, seed=2)


@pytest.fixture(scope="module")
def refined(scene):
    truth = reconstruction_from_synthetic_scene(scene, num_tracks=300, track_noise_px=0.4, seed=1)
    result = bundle_adjust(at_photo_scale(truth), shared_camera=True)
    assert result.report.refined, result.report.message
    return result


def reprojection_errors(model: pycolmap.Reconstruction) -> tuple[list[float], list[int]]:
    errors, lengths = [], []
    for point in model.points3D.values():
        lengths.append(len(point.track.elements))
        for element in point.track.elements:
            image = model.image(element.image_id)
            projected = image.camera.img_from_cam(image.cam_from_world() * point.xyz)
            errors.append(float(np.linalg.norm(projected - image.points2D[element.point2D_idx].xy)))
    return errors, lengths


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_model_holds_the_refined_tracks(tmp_path, refined, binary):
    recon, report = refined.reconstruction, refined.report
    export_colmap(recon, tmp_path / "sparse", binary=binary)
    model = pycolmap.Reconstruction(str(tmp_path / "sparse"))
    assert model.num_images() == NUM_FRAMES and model.num_points3D() == report.tracks_used
    errors, lengths = reprojection_errors(model)
    assert min(lengths) >= 2 and sum(lengths) == report.observations
    # The model is at the photos' resolution: errors in photo pixels are PHOTO_SCALE times the report's.
    assert np.mean(errors) == pytest.approx(PHOTO_SCALE * report.mean_error_after_px, rel=1e-3)
    # The stored per-point errors (what COLMAP tools show) are the mean over each track.
    per_point = np.split(np.array(errors), np.cumsum(lengths)[:-1])
    np.testing.assert_allclose([point.error for point in model.points3D.values()],
                               [values.mean() for values in per_point], rtol=1e-3, atol=1e-6)
    height, width = recon.image_size_hw
    assert {(camera.width, camera.height) for camera in model.cameras.values()} == \
        {(width * PHOTO_SCALE, height * PHOTO_SCALE)}
    # Colours are those of the tracked pixels.
    colors = np.array([point.color for point in model.points3D.values()])
    assert sorted(map(tuple, colors)) == sorted(map(tuple, recon.sparse_point_colors))


def test_unrefined_tracks_are_triangulated_for_the_export(tmp_path, scene):
    tracked = reconstruction_from_synthetic_scene(scene, num_tracks=100, track_noise_px=0.0, seed=3)
    export_colmap(tracked, tmp_path / "sparse", original_resolution=False)
    model = pycolmap.Reconstruction(str(tmp_path / "sparse"))
    errors, lengths = reprojection_errors(model)
    assert model.num_points3D() >= 60 and min(lengths) >= 2 and max(errors) < 0.05
    # Without tracks: today's one-observation points of the dense selection.
    plain = dataclasses.replace(tracked, tracks=None, track_visibility=None, track_confidence=None, query_points=None,
                                track_query_frames=None, frame_names=list(tracked.frame_names))
    export_colmap(plain, tmp_path / "plain")
    _, lengths = reprojection_errors(pycolmap.Reconstruction(str(tmp_path / "plain")))
    assert set(lengths) == {1}


def test_splatting_bundle_layout_and_intrinsics_scale(tmp_path, refined):
    recon = refined.reconstruction
    written = export_all(recon, tmp_path / "out", formats=("splatting",))
    assert set(written) == {"splatting"}
    with zipfile.ZipFile(written["splatting"]) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "bundle")
    image_names = bundle_image_names(recon)
    assert {f"images/{name}" for name in image_names} | {"sparse/0/cameras.bin", "sparse/0/images.bin",
                                                         "sparse/0/points3D.bin", "transforms.json"} <= names
    height, width = recon.image_size_hw
    model = pycolmap.Reconstruction(str(tmp_path / "bundle" / "sparse" / "0"))
    for image in model.images.values():
        photo = Image.open(tmp_path / "bundle" / "images" / image.name)
        assert photo.size == (width * PHOTO_SCALE, height * PHOTO_SCALE)
        assert (image.camera.width, image.camera.height) == photo.size
        index = image.image_id - 1
        np.testing.assert_allclose(image.camera.calibration_matrix(), recon.intrinsics_at_original_resolution()[index],
                                   rtol=1e-6)
        # Focal lengths scale with the photo; the principal point is shifted by half a model pixel
        # (model pixel indices → COLMAP's corner-based coordinates) before it scales.
        expected = recon.intrinsics[index].astype(np.float64) * PHOTO_SCALE
        expected[:2, 2] = (recon.intrinsics[index, :2, 2] + 0.5) * PHOTO_SCALE
        np.testing.assert_allclose(image.camera.calibration_matrix()[:2], expected[:2], rtol=1e-5)
        # Without the originals, the photo is the model input warped back: it matches when shrunk again.
        shrunk = np.asarray(photo.resize((width, height), Image.Resampling.BOX), dtype=np.float64)
        assert np.abs(shrunk - recon.images[index]).mean() < 12
    assert model.num_points3D() == refined.report.tracks_used


def test_splatting_bundle_uses_the_original_photos(tmp_path, scene):
    recon = at_photo_scale(reconstruction_from_synthetic_scene(scene))
    height, width = recon.image_size_hw
    # The same views rendered at the photos' size (same seed: same cameras).
    photos = render_scene("table", num_views=NUM_FRAMES, width=width * PHOTO_SCALE, height=height * PHOTO_SCALE,
                          seed=2)
    paths = save_scene_images(photos, tmp_path / "photos")

    def first_image(originals) -> np.ndarray:
        written = export_all(recon, tmp_path / "out", formats=("splatting",), originals=originals)
        with zipfile.ZipFile(written["splatting"]) as archive:
            return np.asarray(Image.open(archive.open(f"images/{bundle_image_names(recon)[0]}")), dtype=np.float64)

    from_originals = np.abs(first_image(paths) - photos.images[0]).mean()
    warped_back = np.abs(first_image(None) - photos.images[0]).mean()
    assert from_originals < 3.0 and from_originals < warped_back / 2  # JPEG of the original vs. an upsampled frame


def test_nerfstudio_transforms_use_opengl_cameras_at_photo_resolution(tmp_path, refined):
    recon = refined.reconstruction
    written = export_all(recon, tmp_path / "out", formats=("nerfstudio",))
    root = written["nerfstudio"].parent
    content = json.loads(written["nerfstudio"].read_text())
    assert len(content["frames"]) == NUM_FRAMES and (root / content["ply_file_path"]).is_file()
    assert written["nerfstudio_zip"].is_file()
    points = recon.sparse_points[:50].astype(np.float64)
    intrinsics = recon.intrinsics_at_original_resolution()
    for index, frame in enumerate(content["frames"]):
        assert (root / frame["file_path"]).is_file()
        assert Image.open(root / frame["file_path"]).size == (frame["w"], frame["h"])
        camera_to_world = np.array(frame["transform_matrix"])
        np.testing.assert_allclose(camera_to_world[:3, 3], geometry.camera_centers(recon.extrinsics[index]), atol=1e-5)
        # OpenGL camera: looks down -z, y up.
        local = (np.linalg.inv(camera_to_world) @ np.c_[points, np.ones(len(points))].T).T[:, :3]
        in_front = local[:, 2] < 0
        pixels = np.stack([frame["fl_x"] * local[:, 0] / -local[:, 2] + frame["cx"],
                           -frame["fl_y"] * local[:, 1] / -local[:, 2] + frame["cy"]], axis=1)
        expected, depth = geometry.project_points(points, recon.extrinsics[index].astype(np.float64), intrinsics[index])
        np.testing.assert_array_equal(in_front, depth > 0)
        np.testing.assert_allclose(pixels, expected, atol=1e-3)
