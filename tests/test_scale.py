"""Real-world scale: Reconstruction.scaled and scale_from_known_distance on exact synthetic scenes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vggt_core import InputError, geometry, scale_from_known_distance
from vggt_core.reconstruction import Reconstruction, reconstruction_from_synthetic_scene
from vggt_core.scale import distance_between_photo_pixels, point_at_photo_pixel
from vggt_core.synthetic import render_scene

# Photos twice the model-input size, 28 photo rows cropped away at the top (and some at the bottom).
PHOTO_SIZE = (168, 140)
TRANSFORM = (0.5, 0.5, 0.0, -14.0)


@pytest.fixture(scope="module")
def true_scene() -> Reconstruction:
    recon = reconstruction_from_synthetic_scene(render_scene("room", num_views=3, width=84, height=56, seed=3))
    return dataclasses.replace(recon, original_sizes=np.tile(PHOTO_SIZE, (3, 1)),
                               image_transforms=np.tile(TRANSFORM, (3, 1)))


def photo_pixel(frame: int, column: int, row: int) -> tuple[int, float, float]:
    """The photo position whose model-input pixel is (column, row): its centre mapped back."""
    sx, sy, ox, oy = TRANSFORM
    return frame, (column + 0.5 - ox) / sx, (row + 0.5 - oy) / sy


def test_a_known_distance_restores_true_depth_and_translations(true_scene):
    shrunk = true_scene.scaled(1 / 7.3)
    a, b = photo_pixel(0, 10, 20), photo_pixel(2, 70, 40)
    true_length = float(np.linalg.norm(true_scene.points_from_depth[0, 20, 10]
                                       - true_scene.points_from_depth[2, 40, 70]))

    factor = scale_from_known_distance(shrunk, a, b, true_length)
    restored = shrunk.scaled(factor, units="m")

    assert factor == pytest.approx(7.3, rel=1e-3)
    np.testing.assert_allclose(restored.depth, true_scene.depth, rtol=1e-3)
    np.testing.assert_allclose(restored.extrinsics[:, :, 3], true_scene.extrinsics[:, :, 3], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(restored.points_from_depth, true_scene.points_from_depth, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(restored.world_points, true_scene.world_points, rtol=1e-3, atol=1e-5)
    assert distance_between_photo_pixels(restored, a, b) == pytest.approx(true_length, rel=1e-6)
    assert restored.units == "m" and restored.scale_factor == pytest.approx(factor / 7.3)


def test_scaling_keeps_rotations_intrinsics_and_projections(true_scene):
    scaled = true_scene.scaled(2.5)
    np.testing.assert_array_equal(scaled.intrinsics, true_scene.intrinsics)
    np.testing.assert_array_equal(scaled.extrinsics[:, :, :3], true_scene.extrinsics[:, :, :3])
    np.testing.assert_array_equal(scaled.depth_conf, true_scene.depth_conf)
    # Every point still projects to the pixel it came from, with 2.5 × its depth.
    pixels, depth = geometry.project_points(scaled.points_from_depth[1].reshape(-1, 3).astype(np.float64),
                                            scaled.extrinsics[1].astype(np.float64),
                                            scaled.intrinsics[1].astype(np.float64))
    rows, columns = np.mgrid[0:56, 0:84]
    np.testing.assert_allclose(pixels, np.stack([columns.ravel(), rows.ravel()], axis=1), atol=2e-3)
    np.testing.assert_allclose(depth, 2.5 * true_scene.depth[1].ravel(), rtol=1e-5)
    np.testing.assert_allclose(scaled.pose_encoding[:, :3], 2.5 * true_scene.pose_encoding[:, :3], rtol=1e-6)
    np.testing.assert_array_equal(scaled.pose_encoding[:, 3:], true_scene.pose_encoding[:, 3:])
    assert true_scene.units is None and true_scene.scale_factor == 1.0  # the original is untouched


def test_units_survive_saving(true_scene, tmp_path):
    scaled = true_scene.scaled(0.01, units="cm")
    loaded = Reconstruction.load(scaled.save(tmp_path / "scene.npz"))
    assert loaded.units == "cm" and loaded.scale_factor == pytest.approx(0.01)
    np.testing.assert_array_equal(loaded.depth, scaled.depth)


def test_measuring_maps_photo_pixels_through_the_crop(true_scene):
    np.testing.assert_array_equal(point_at_photo_pixel(true_scene, photo_pixel(1, 3, 0)),
                                  true_scene.points_from_depth[1, 0, 3].astype(np.float64))
    with pytest.raises(InputError, match="cropped away"):
        point_at_photo_pixel(true_scene, (1, 20.0, 10.0))  # photo row 10 lies in the cropped band
    with pytest.raises(InputError, match="does not exist"):
        point_at_photo_pixel(true_scene, (5, 20.0, 60.0))


@pytest.mark.parametrize("length", [0.0, -1.0, float("nan"), "abc"])
def test_bad_lengths_and_factors_are_refused(true_scene, length):
    with pytest.raises(InputError):
        scale_from_known_distance(true_scene, photo_pixel(0, 1, 1), photo_pixel(0, 9, 9), length)
    with pytest.raises(InputError):
        true_scene.scaled(length)


def test_the_same_point_twice_cannot_set_a_scale(true_scene):
    with pytest.raises(InputError, match="same 3-D point"):
        scale_from_known_distance(true_scene, photo_pixel(0, 4, 4), photo_pixel(0, 4, 4), 1.0)


def test_exports_name_the_units(true_scene, tmp_path):
    import trimesh

    from vggt_core.export import export_all

    scaled = true_scene.scaled(3.0, units="cm")
    written = export_all(scaled, tmp_path, formats=("glb", "ply", "colmap", "npz"))
    glb = trimesh.load(written["glb"], file_type="glb", force="scene")
    assert glb.metadata["units"] == "cm" and glb.metadata["scale_factor"] == pytest.approx(3.0)
    header = written["ply"].read_bytes().split(b"end_header")[0].decode()
    assert "comment units cm" in header and "comment scale_factor 3" in header
    assert (written["colmap"].parent.parent / "units.txt").read_text().startswith("units: cm")
    assert Reconstruction.load(written["npz"]).units == "cm"
    assert trimesh.load(written["ply"]).vertices.shape[1] == 3  # the extra comments keep it readable


def test_a_version_1_file_has_no_units_and_scales():
    from pathlib import Path

    old = Reconstruction.load(Path(__file__).parent / "fixtures" / "reconstruction-v1.npz")
    assert old.units is None and old.scale_factor == 1.0 and old.predicted_intrinsics is None
    doubled = old.scaled(2.0, units="ft")
    np.testing.assert_allclose(doubled.depth, 2.0 * old.depth)
    assert doubled.units == "ft"
