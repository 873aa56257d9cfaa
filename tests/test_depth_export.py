"""Depth and confidence maps at the photos' own resolution, through real crop and pad transforms."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vggt_core.export import export_all, export_depth_maps
from vggt_core.export.depth import frame_file_stems
from vggt_core.images import load_images
from vggt_core.reconstruction import Reconstruction

PHOTO_SIZES = [(100, 160), (150, 90)]  # (width, height): one tall, one wide


def reconstruction_of_photos(tmp_path, mode: str) -> Reconstruction:
    paths = []
    for index, (width, height) in enumerate(PHOTO_SIZES):
        path = tmp_path / f"photo {index}.png"
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    images, transforms = load_images(paths, mode=mode, target_size=56, return_transforms=True)
    num_frames, _, height, width = images.shape
    rng = np.random.default_rng(7)
    depth = rng.uniform(0.5, 4.0, (num_frames, height, width)).astype(np.float32)
    return Reconstruction(
        images=np.round(images.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8),
        extrinsics=np.tile(np.eye(3, 4, dtype=np.float32), (num_frames, 1, 1)),
        intrinsics=np.tile(np.diag([50.0, 50.0, 1.0]).astype(np.float32), (num_frames, 1, 1)),
        depth=depth, depth_conf=depth * 3 + 1, points_from_depth=np.zeros(depth.shape + (3,), np.float32),
        frame_names=[p.name for p in paths], original_sizes=[t.original_size for t in transforms],
        image_transforms=[[*t.scale, *t.offset] for t in transforms])


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_maps_have_the_photo_size_and_the_values_they_map_to(tmp_path, mode):
    recon = reconstruction_of_photos(tmp_path, mode)
    written = export_depth_maps(recon, tmp_path / "out")
    scale = json.loads((tmp_path / "out" / "depth_scale.json").read_text())
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate(PHOTO_SIZES):
        depth = np.load(written["depth_npy"][index])
        confidence = np.load(written["confidence_npy"][index])
        png = np.asarray(Image.open(written["depth_png"][index]))
        assert depth.shape == confidence.shape == png.shape == (height, width)
        assert depth.dtype == np.float32 and png.dtype == np.uint16
        transform = recon.frame_transform(index)
        for x, y in zip(rng.integers(0, width, 200), rng.integers(0, height, 200)):
            column, row = np.floor(transform.original_to_processed([x + 0.5, y + 0.5])).astype(int)
            inside = 0 <= column < recon.image_size_hw[1] and 0 <= row < recon.image_size_hw[0]
            if inside:
                assert depth[y, x] == recon.depth[index, row, column]
                assert confidence[y, x] == recon.depth_conf[index, row, column]
                assert png[y, x] / scale["depth_scale"] == pytest.approx(depth[y, x], abs=0.6 / scale["depth_scale"])
            else:
                assert np.isnan(depth[y, x]) and np.isnan(confidence[y, x]) and png[y, x] == 0
    if mode == "pad":  # padding shows the whole photo: every pixel has a depth
        assert not any(np.isnan(np.load(path)).any() for path in written["depth_npy"])
    else:  # the tall photo lost its top and bottom to the crop
        tall = np.load(written["depth_npy"][0])
        assert np.isnan(tall[0]).all() and np.isnan(tall[-1]).all() and not np.isnan(tall[80]).any()
    assert scale["units"].startswith("arbitrary")


def test_export_all_writes_and_zips_the_depth_maps(tmp_path):
    recon = reconstruction_of_photos(tmp_path, "crop").scaled(2.0, units="m")
    written = export_all(recon, tmp_path / "all", formats=("depth",))
    names = sorted(p.name for p in written["depth"].iterdir())
    assert names == ["000_photo_0_confidence.npy", "000_photo_0_depth.npy", "000_photo_0_depth.png",
                     "000_photo_0_normal.npy", "000_photo_0_normal.png",
                     "001_photo_1_confidence.npy", "001_photo_1_depth.npy", "001_photo_1_depth.png",
                     "001_photo_1_normal.npy", "001_photo_1_normal.png",
                     "depth_scale.json"]
    assert written["depth_zip"].is_file()
    assert json.loads((written["depth"] / "depth_scale.json").read_text())["units"] == "m"


def test_file_stems_are_safe_and_unique():
    assert frame_file_stems(["a.jpg", "a.png", "../x y.jpg", ".."]) == ["000_a", "001_a", "002_x_y", "003_frame"]
