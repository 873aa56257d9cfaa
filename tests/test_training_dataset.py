"""SceneDataset: folder formats (ours, COLMAP, synthetic), crop/resize arithmetic, sampling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pycolmap
import pytest
import torch
from PIL import Image

from vggt_core.export import export_colmap
from vggt_core.filtering import ViewSettings
from vggt_core.reconstruction import reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene, save_training_scene
from vggt_core.training import SceneDataset, normalize_ground_truth
from vggt_core.training.frame_processing import (crop_around_principal_point, exact_crop, process_frame,
                                                 resize_factor, resize_with_intrinsics, target_shape_for_aspect)
from vggt_core.training.scene_sources import read_colmap_scene, read_depth_map, write_colmap_depth_map


@pytest.fixture(scope="module")
def scene():
    return render_scene("room", num_views=4, width=84, height=56, seed=3)


@pytest.mark.parametrize("aspect, height", [(0.33, 168), (0.5, 252), (0.75, 378), (0.99, 504), (1.0, 518)])
def test_target_shapes(aspect, height):
    assert target_shape_for_aspect(aspect) == (height, 518)


def test_resize_and_exact_crop_numbers():
    intrinsic = np.array([[500.0, 0, 301.3], [0, 500.0, 198.7], [0, 0, 1]])
    image = np.zeros((400, 600, 3), dtype=np.uint8)
    factor, size = resize_factor((400, 600), (252, 518), 4)
    assert factor == pytest.approx(0.87) and size == (348, 522)
    resized, _, intrinsic = resize_with_intrinsics(image, None, intrinsic, (252, 518), 4)
    assert resized.shape == (348, 522, 3)
    np.testing.assert_allclose(intrinsic[[0, 1, 0, 1], [0, 1, 2, 2]], [435.0, 435.0, 262.066, 172.804], atol=1e-9)
    cropped, _, intrinsic, start = exact_crop(resized, None, intrinsic, (252, 518))
    assert start == (46, 3) and cropped.shape == (252, 518, 3)
    np.testing.assert_allclose(intrinsic[:2, 2], [259.066, 126.804], atol=1e-9)


def test_scale_crop_is_symmetric_about_the_principal_point():
    intrinsic = np.array([[500.0, 0, 320.4], [0, 500.0, 239.6], [0, 0, 1]])
    depth = np.ones((480, 640), dtype=np.float32)
    image, depth, cropped_k, rows, cols = crop_around_principal_point(
        np.zeros((480, 640, 3), np.uint8), depth, intrinsic, (432, 640))
    assert rows == (23, 455) and cols == (1, 639)
    assert image.shape[:2] == depth.shape == (432, 638)
    np.testing.assert_allclose(cropped_k[:2, 2], [319.4, 216.6])


def test_processing_keeps_the_pixel_to_ray_mapping(scene):
    """A pixel of the processed frame sees the same 3-D point as the source pixel it came from."""
    rng = np.random.default_rng(0)
    for _ in range(3):
        frame = process_frame(scene.images[0], scene.depth[0], scene.intrinsics[0].astype(np.float64), (42, 56), rng)
        assert frame.image.shape == (42, 56, 3) and frame.depth.shape == (42, 56)
        # Principal point ends within a pixel of the centre.
        assert abs(frame.intrinsic[0, 2] - 28) <= 1 and abs(frame.intrinsic[1, 2] - 21) <= 1
        valid = frame.depth > 0
        assert valid.mean() > 0.9
        # Unprojected processed depth lies on the scene surface (nearest-neighbour depth: up to ~1 px).
        from vggt_core.synthetic import scene_extent, scene_surface_distance
        from vggt_core.training.frame_processing import unproject

        _, world, mask = unproject(frame.depth, scene.extrinsics[0].astype(np.float64), frame.intrinsic)
        distance = np.abs(scene_surface_distance("room", world[mask].astype(np.float64)))
        assert np.median(distance) < 0.02 * scene_extent("room")


def test_synthetic_writer_round_trips_through_the_dataset(tmp_path, scene):
    save_training_scene(scene, tmp_path / "room")
    dataset = SceneDataset(tmp_path, frames_per_scene=3, image_width=84, aspect_range=(0.67, 0.67), augment=False,
                           seed=0)
    assert len(dataset) == 1
    sample = dataset.sample(0, 3, 0.67)
    assert sample["images"].shape == (3, 3, 56, 84) and sample["depths"].shape == (3, 56, 84)
    assert bool(sample["depth_available"])
    # Even without augmentation the reference resizes with a 4-pixel margin, then crops back.
    factor = max(60 / 56, 90 / 84)
    for index, frame_id in enumerate(sample["ids"].tolist()):
        source = scene.intrinsics[frame_id].astype(np.float64)
        expected_cx = (source[0, 2] + 0.5) * factor - 0.5
        expected_cx -= np.floor(expected_cx) - np.floor(min(42, expected_cx))
        np.testing.assert_allclose(sample["intrinsics"][index, 0, 0].item(), source[0, 0] * factor, rtol=1e-6)
        np.testing.assert_allclose(sample["intrinsics"][index, 0, 2].item(), expected_cx, atol=1e-5)
        np.testing.assert_allclose(sample["extrinsics"][index].numpy(), scene.extrinsics[frame_id], atol=1e-7)
    from vggt_core.synthetic import scene_extent, scene_surface_distance

    distance = np.abs(scene_surface_distance("room", sample["world_points"][sample["point_masks"]].double().numpy()))
    assert np.median(distance) < 0.01 * scene_extent("room")
    assert sample["point_masks"].all()


def test_sampling_draws_frames_and_batches(tmp_path, scene):
    save_training_scene(scene, tmp_path / "a")
    save_training_scene(render_scene("table", num_views=3, width=84, height=56, seed=1), tmp_path / "b")
    dataset = SceneDataset(tmp_path, frames_per_scene=(2, 5), image_width=56, seed=1)
    assert len(dataset) == 2
    seen = set()
    for _ in range(4):
        batch = dataset.sample_batch(batch_size=2)
        frames = batch["images"].shape[1]
        seen.add(frames)
        assert 2 <= frames <= 5 and batch["images"].shape[0] == 2
        height = batch["images"].shape[-2]
        assert height % 14 == 0 and batch["images"].shape[-1] == 56
        assert batch["images"].min() >= 0 and batch["images"].max() <= 1
        normalised = normalize_ground_truth(batch)
        assert torch.isfinite(normalised["world_points"]).all()
    assert len(seen) > 1
    batch = SceneDataset(tmp_path, frames_per_scene=4, image_width=56).sample_batch(max_images=8)
    assert batch["images"].shape[:2] == (2, 4)  # B = ⌊max_images / S⌋
    with pytest.raises(ValueError, match="2..24"):
        SceneDataset(tmp_path, frames_per_scene=25)


def _colmap_scene(tmp_path, scene, with_depth):
    recon = reconstruction_from_synthetic_scene(scene)
    recon = dataclasses.replace(recon, frame_names=[f"{name}.png" for name in recon.frame_names])
    root = tmp_path / "colmap_scene"
    export_colmap(recon, root / "sparse" / "0", ViewSettings(confidence_threshold=0))
    (root / "images").mkdir()
    for name, image in zip(recon.frame_names, scene.images):
        Image.fromarray(image).save(root / "images" / name)
    if with_depth:
        (root / "stereo" / "depth_maps").mkdir(parents=True)
        for name, depth in zip(recon.frame_names, scene.depth):
            write_colmap_depth_map(root / "stereo" / "depth_maps" / f"{name}.geometric.bin", depth)
    return root, recon


def test_colmap_reader_on_our_exporters_model(tmp_path, scene):
    root, recon = _colmap_scene(tmp_path, scene, with_depth=True)
    read = read_colmap_scene(root)
    model = pycolmap.Reconstruction(str(root / "sparse" / "0"))
    assert len(read.frames) == scene.num_views and read.has_depth
    for index, frame in enumerate(read.frames):
        np.testing.assert_allclose(frame.extrinsic, scene.extrinsics[index], atol=1e-6)
        # COLMAP puts pixel centres at +0.5; the reader shifts to integer pixel centres.
        colmap_k = model.camera(model.find_image_with_name(recon.frame_names[index]).camera_id).calibration_matrix()
        np.testing.assert_allclose(frame.intrinsic[:2, 2], np.asarray(colmap_k)[:2, 2] - 0.5, atol=1e-9)
        np.testing.assert_allclose(frame.intrinsic[[0, 1], [0, 1]], scene.intrinsics[index][[0, 1], [0, 1]],
                                   rtol=1e-6)
        image, depth = frame.load()
        np.testing.assert_array_equal(image, scene.images[index])
        np.testing.assert_array_equal(depth, scene.depth[index])
    dataset = SceneDataset(root, frames_per_scene=2, image_width=56, seed=0)
    assert dataset.sample(0, 2, 0.5)["point_masks"].any()


def test_colmap_without_depth_supervises_cameras_only(tmp_path, scene):
    root, _ = _colmap_scene(tmp_path, scene, with_depth=False)
    dataset = SceneDataset(root, frames_per_scene=3, image_width=56, seed=0, augment=False,
                           allow_duplicate_frames=False)
    batch = dataset.sample_batch(batch_size=1)
    assert not batch["depth_available"].any() and not batch["point_masks"].any()
    normalised = normalize_ground_truth(batch)
    # Camera-only sequences are scaled by their camera centres, not blown up by 1e6.
    translations = normalised["extrinsics"][..., 3]
    assert 0.1 < translations.norm(dim=-1)[0, 1:].max() < 10


def test_colmap_depth_map_format_round_trip(tmp_path):
    depth = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_colmap_depth_map(tmp_path / "d.bin", depth)
    assert (tmp_path / "d.bin").read_bytes().startswith(b"4&3&1&")
    np.testing.assert_array_equal(read_depth_map(tmp_path / "d.bin"), depth)


def test_bad_folders_give_clear_messages(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        SceneDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no scene"):
        SceneDataset(tmp_path)
    scene = render_scene("room", num_views=2, width=28, height=28)
    save_training_scene(scene, tmp_path / "broken")
    (tmp_path / "broken" / "images" / "0001.png").unlink()
    with pytest.raises(ValueError, match="1 image.s. listed in cameras.json are missing"):
        SceneDataset(tmp_path / "broken")


def test_masks_and_missing_depth(tmp_path, scene):
    from vggt_core.training.scene_sources import write_scene_folder

    masks = np.ones(scene.depth.shape, dtype=bool)
    masks[:, :, :20] = False  # e.g. a moving object or the sky: not supervised
    write_scene_folder(tmp_path / "masked", scene.images, scene.extrinsics, scene.intrinsics, depths=scene.depth,
                       masks=masks)
    dataset = SceneDataset(tmp_path / "masked", frames_per_scene=2, image_width=84, augment=False, seed=0)
    image, depth = dataset.scenes[0].frames[0].load()
    assert (depth[:, :20] == 0).all() and (depth[:, 20:] == scene.depth[0][:, 20:]).all()
    write_scene_folder(tmp_path / "cameras_only", scene.images, scene.extrinsics, scene.intrinsics)
    sample = SceneDataset(tmp_path / "cameras_only", frames_per_scene=2, image_width=56).sample(0, 2, 0.5)
    assert not bool(sample["depth_available"]) and not sample["point_masks"].any()
