"""Known focal lengths: the predicted depth re-projected with EXIF or typed intrinsics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from vggt_core import InputError
from vggt_core.config import tiny_config
from vggt_core.intrinsics import (apply_camera_choice, focal_length_summary, predicted_focal_lengths_px,
                                  with_known_focal_lengths, with_predicted_intrinsics)
from vggt_core.model import VGGT
from vggt_core.pipeline import gather_input_frames, reconstruct_frames
from vggt_core.reconstruction import Reconstruction, reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene

# Photos twice the model input, cropped symmetrically (7 model rows off the top and the bottom),
# so the photo's centre is the model-input centre.
PHOTO_SIZE = (168, 140)
TRANSFORM = (0.5, 0.5, 0.0, -7.0)


@pytest.fixture(scope="module")
def truth() -> Reconstruction:
    """A camera whose principal point is at the photo's centre: the model input's centre, which is
    ((W − 1)/2, (H − 1)/2) in model pixel indices (the renderer's cameras use VGGT's (W/2, H/2))."""
    recon = reconstruction_from_synthetic_scene(render_scene("table", num_views=2, width=84, height=56, seed=2))
    height, width = recon.image_size_hw
    intrinsics = recon.intrinsics.copy()
    intrinsics[:, :2, 2] = [(width - 1) / 2, (height - 1) / 2]
    from vggt_core.reconstruction import _unproject_in_chunks

    return dataclasses.replace(recon, intrinsics=intrinsics, original_sizes=np.tile(PHOTO_SIZE, (2, 1)),
                               image_transforms=np.tile(TRANSFORM, (2, 1)), frame_names=list(recon.frame_names),
                               points_from_depth=_unproject_in_chunks(recon.depth, recon.extrinsics, intrinsics))


@pytest.fixture(scope="module")
def mispredicted(truth) -> Reconstruction:
    """The true depth and poses, but a focal length 30 % too long (as a network might predict)."""
    intrinsics = truth.intrinsics.copy()
    intrinsics[:, 0, 0] *= 1.3
    intrinsics[:, 1, 1] *= 1.3
    from vggt_core.geometry import unproject_depth_maps_in_frame_chunks

    points = unproject_depth_maps_in_frame_chunks(truth.depth, truth.extrinsics, intrinsics)
    return dataclasses.replace(truth, intrinsics=intrinsics, frame_names=list(truth.frame_names),
                               points_from_depth=points)


def true_photo_focal(truth) -> float:
    return float(truth.intrinsics[0, 0, 0]) / TRANSFORM[0]


def test_a_known_focal_length_recovers_the_true_points(truth, mispredicted):
    fixed = with_known_focal_lengths(mispredicted, [true_photo_focal(truth)] * 2, source="manual")
    np.testing.assert_allclose(fixed.intrinsics, truth.intrinsics, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fixed.points_from_depth, truth.points_from_depth, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(fixed.depth, mispredicted.depth)  # the network's depth is kept
    np.testing.assert_array_equal(fixed.extrinsics, mispredicted.extrinsics)
    np.testing.assert_array_equal(fixed.predicted_intrinsics, mispredicted.intrinsics)
    assert fixed.info["intrinsics_source"] == "manual"
    assert predicted_focal_lengths_px(fixed) == pytest.approx([1.3 * true_photo_focal(truth)] * 2, rel=1e-5)

    back = with_predicted_intrinsics(fixed)
    np.testing.assert_array_equal(back.intrinsics, mispredicted.intrinsics)
    np.testing.assert_allclose(back.points_from_depth, mispredicted.points_from_depth, rtol=1e-6)
    assert back.predicted_intrinsics is None and back.info["intrinsics_source"] == "predicted"


def test_known_intrinsics_survive_saving(truth, mispredicted, tmp_path):
    fixed = apply_camera_choice(mispredicted, "manual", true_photo_focal(truth), "px")
    loaded = Reconstruction.load(fixed.save(tmp_path / "s.npz"))
    np.testing.assert_array_equal(loaded.predicted_intrinsics, fixed.predicted_intrinsics)
    assert loaded.info["intrinsics_source"] == "manual"


def test_35mm_equivalent_and_exif_choices(truth, mispredicted):
    focal = true_photo_focal(truth)
    mm35 = focal * 43.267 / np.hypot(*PHOTO_SIZE)
    by_35mm = apply_camera_choice(mispredicted, "manual", mm35, "mm35")
    np.testing.assert_allclose(by_35mm.intrinsics, truth.intrinsics, rtol=1e-4)

    with pytest.raises(InputError, match="no focal length in their EXIF"):
        apply_camera_choice(mispredicted, "exif")
    with_exif = dataclasses.replace(mispredicted, frame_names=list(mispredicted.frame_names),
                                    info={"exif_focal_length_px": [focal, focal]})
    by_exif = apply_camera_choice(with_exif, "exif")
    np.testing.assert_allclose(by_exif.points_from_depth, truth.points_from_depth, rtol=1e-4, atol=1e-4)
    summary = focal_length_summary(by_exif)
    assert f"EXIF {focal:,.0f} px" in summary and "predicted" in summary
    assert "does not take intrinsics" in summary
    for bad in [("manual", None, "px"), ("manual", -3, "px"), ("manual", 30, "inch"), ("guess", None, "px")]:
        with pytest.raises(InputError):
            apply_camera_choice(mispredicted, *bad)


def test_reconstruct_frames_records_the_photos_exif_focal_lengths(tmp_path):
    paths = []
    for index in range(2):
        image = Image.fromarray(np.random.default_rng(index).integers(0, 255, (42, 56, 3), dtype=np.uint8))
        exif = Image.Exif()
        if index == 0:
            exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.FocalLengthIn35mmFilm] = 28
        image.save(tmp_path / f"{index}.jpg", exif=exif)
        paths.append(tmp_path / f"{index}.jpg")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VGGT(tiny_config()).eval()
    recon = reconstruct_frames(model, gather_input_frames(paths))
    assert recon.info["intrinsics_source"] == "predicted"
    assert recon.info["exif_focal_length_px"][0] == pytest.approx(28 * 70 / 43.267, rel=1e-4)
    assert recon.info["exif_focal_length_px"][1] is None
    assert "EXIF 45 px (1 of 2 frames)" in focal_length_summary(recon)
