"""Masks of things to leave out: loading, storage, and their effect on every export, the mesh,
the track queries and the bundle-adjustment observations. The masked object is one of the
synthetic room's boxes, whose geometry is known independently of the code under test."""

from __future__ import annotations

import io

import numpy as np
import pycolmap
import pytest
import trimesh
from PIL import Image
from scipy.ndimage import binary_dilation

from vggt_core.bundle_adjustment import with_triangulated_tracks
from vggt_core.export import export_colmap, export_glb, export_ply
from vggt_core.export.nerfstudio import NERFSTUDIO_PLY_NAME, export_nerfstudio
from vggt_core.filtering import ViewSettings, select_points
from vggt_core.images import FrameTransform
from vggt_core.masks import (load_masks, load_masks_for_reconstruction, photo_mask_to_model_pixels,
                             with_exclusion_masks, with_frame_mask)
from vggt_core.mesh import fuse_depth_to_mesh
from vggt_core.reconstruction import Reconstruction, reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene
from vggt_core.tracks import choose_query_points

# The red checker box of the synthetic room (vggt_core.synthetic._room_layout): it stands on the
# floor at y = 1.5 (y points down).
BOX_CENTRE = np.array([-0.7, 1.15, 0.4])
BOX_HALF_SIZE = np.array([0.35, 0.35, 0.35])
FLOOR_Y = 1.5
ALL_PIXELS = ViewSettings(confidence_threshold=0.0, max_points=None)


def on_box(points: np.ndarray, tolerance: float) -> np.ndarray:
    """``[N]`` bool: within ``tolerance`` of the box and above the floor it stands on by more
    than ``tolerance`` (the floor around the box is not the box)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    inside = (np.abs(points - BOX_CENTRE) <= BOX_HALF_SIZE + tolerance).all(axis=1)
    return inside & (points[:, 1] < FLOOR_Y - tolerance)


@pytest.fixture(scope="module")
def room() -> Reconstruction:
    scene = render_scene("room", num_views=6, width=168, height=126, seed=5)
    return reconstruction_from_synthetic_scene(scene, num_tracks=600, track_noise_px=0.0, seed=1)


@pytest.fixture(scope="module")
def box_masks(room) -> np.ndarray:
    """``[S, H, W]``: the pixels that see the box, from the exact depth, grown by two pixels as a
    user's mask would be (a point on the box's outline may be tracked to the pixel beside it)."""
    masks = on_box(room.points_from_depth, 1e-3).reshape(room.depth.shape)
    masks = np.stack([binary_dilation(mask, iterations=2) for mask in masks])
    assert masks.any(axis=(1, 2)).all()  # the box is in every frame
    return masks


@pytest.fixture(scope="module")
def masked(room, box_masks) -> Reconstruction:
    return with_exclusion_masks(room, box_masks)


def test_without_masks_the_exports_do_show_the_box(room):
    # The checks below could not fail if the box were not in the scene to begin with.
    assert on_box(select_points(room, ALL_PIXELS).points, 1e-3).sum() > 500
    assert on_box(with_triangulated_tracks(room).sparse_points, 1e-3).sum() > 5


def test_no_exported_point_lies_on_a_masked_object(tmp_path, masked):
    export_ply(masked, tmp_path / "points.ply", ALL_PIXELS)
    ply = trimesh.load(tmp_path / "points.ply", process=False)
    assert len(ply.vertices) > 10_000 and not on_box(ply.vertices, 1e-3).any()

    glb = export_glb(masked, tmp_path / "scene.glb", ALL_PIXELS).path
    scene = trimesh.load(glb, file_type="glb", process=False)
    transform, name = scene.graph["points"]
    alignment = np.asarray(scene.metadata["alignment"])  # the scene's root: undo it for world points
    world = trimesh.transform_points(trimesh.transform_points(scene.geometry[name].vertices, transform),
                                     np.linalg.inv(alignment))
    assert len(world) > 10_000 and not on_box(world, 2e-3).any()

    # COLMAP and nerfstudio take the multi-view tracks: masked observations must not make points.
    model_dir = export_colmap(masked, tmp_path / "colmap", ALL_PIXELS)
    model = pycolmap.Reconstruction(str(model_dir))
    colmap_points = np.array([point.xyz for point in model.points3D.values()])
    assert len(colmap_points) > 50 and not on_box(colmap_points, 1e-3).any()

    export_nerfstudio(masked, tmp_path / "nerfstudio", settings=ALL_PIXELS)
    sparse = trimesh.load(tmp_path / "nerfstudio" / NERFSTUDIO_PLY_NAME, process=False)
    assert len(sparse.vertices) > 50 and not on_box(sparse.vertices, 1e-3).any()


def test_no_mesh_vertex_lies_on_a_masked_object(room, masked):
    unmasked_mesh = fuse_depth_to_mesh(room, ALL_PIXELS, max_faces=None)
    tolerance = 2.0 * unmasked_mesh.voxel_size
    assert on_box(unmasked_mesh.vertices, tolerance).sum() > 100
    mesh = fuse_depth_to_mesh(masked, ALL_PIXELS, max_faces=None)
    assert mesh.num_vertices > 1000 and not on_box(mesh.vertices, tolerance).any()


def test_no_track_query_and_no_observation_in_a_mask(room, masked, box_masks):
    queries = choose_query_points(masked, num_query_frames=3, max_points=3000)
    columns, rows = np.rint(queries.points).astype(np.int64).T
    assert len(queries) > 1000 and not box_masks[queries.frames, rows, columns].any()
    unmasked_queries = choose_query_points(room, num_query_frames=3, max_points=3000)
    columns, rows = np.rint(unmasked_queries.points).astype(np.int64).T
    assert box_masks[unmasked_queries.frames, rows, columns].any()

    sparse = with_triangulated_tracks(masked)
    tracks = masked.tracks[:, sparse.sparse_point_tracks]
    frames, points = np.nonzero(sparse.sparse_observations)
    x, y = np.rint(tracks[frames, points]).astype(np.int64).T
    assert len(frames) > 100 and not box_masks[frames, y, x].any()


def test_masks_painted_after_a_refinement_clear_its_sparse_points(room, box_masks):
    refined = with_triangulated_tracks(room)  # stands in for bundle adjustment's sparse points
    assert on_box(refined.sparse_points, 1e-3).any()
    masked = with_exclusion_masks(refined, box_masks)
    assert len(masked.sparse_points) > 50 and not on_box(masked.sparse_points, 1e-3).any()


def test_masks_round_trip_through_the_npz(tmp_path, masked, box_masks):
    masked.save(tmp_path / "masked.npz")
    loaded = Reconstruction.load(tmp_path / "masked.npz")
    np.testing.assert_array_equal(loaded.exclusion_masks, box_masks)
    assert with_exclusion_masks(masked, np.zeros_like(box_masks)).exclusion_masks is None


def test_a_version_2_file_without_masks_still_loads(tmp_path, room):
    buffer = io.BytesIO()
    room.save(buffer)
    arrays = dict(np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False))
    arrays["__format_version__"] = np.array(2)  # what this library wrote before masks existed
    np.savez(tmp_path / "old.npz", **arrays)
    loaded = Reconstruction.load(tmp_path / "old.npz")
    assert loaded.exclusion_masks is None
    np.testing.assert_array_equal(loaded.depth, room.depth)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _transform(name: str, width: int, height: int, scale: float, offset=(0.0, 0.0)) -> FrameTransform:
    return FrameTransform(name=name, original_size=(width, height), scale=(scale, scale), offset=offset)


def test_masks_match_photos_by_stem_are_resized_with_a_note_and_strays_are_named(tmp_path):
    # Two 40×20 photos shown at half size (20×10 model pixels).
    transforms = [_transform("a.jpg", 40, 20, 0.5), _transform("b.jpg", 40, 20, 0.5)]
    left_half = np.zeros((20, 40), np.uint8)
    left_half[:, :20] = 255
    Image.fromarray(left_half).save(tmp_path / "a.png")
    Image.fromarray(np.full((10, 20), 255, np.uint8)).save(tmp_path / "b.png")  # wrong size
    Image.fromarray(np.full((20, 40), 255, np.uint8)).save(tmp_path / "c.png")  # no photo c
    result = load_masks(tmp_path, transforms, (10, 20))
    assert result.masks.shape == (2, 10, 20)
    assert result.masks[0, :, :10].all() and not result.masks[0, :, 10:].any()
    assert result.masks[1].all()
    assert result.matched == [True, True]
    assert len(result.notes) == 2
    assert any("b.png" in note and "resized" in note and "10×20" not in note for note in result.notes)
    assert any("c.png" in note and "matches no photo" in note for note in result.notes)


def test_cropped_photos_map_masks_through_the_frame_transform():
    # A 30-pixel-wide photo shown at scale 1 with 5 pixels cropped on the left: model column c is
    # photo column c + 5.
    mask = np.zeros((4, 30), bool)
    mask[:, 7] = True
    mapped = photo_mask_to_model_pixels(mask, _transform("p.jpg", 30, 4, 1.0, (-5.0, 0.0)), (4, 20))
    assert mapped[:, 2].all() and mapped.sum() == 4
    # Padding (outside the photo) is never masked.
    padded = photo_mask_to_model_pixels(np.ones((4, 10), bool), _transform("p.jpg", 10, 4, 1.0, (5.0, 0.0)), (4, 20))
    assert padded[:, 5:15].all() and not padded[:, :5].any() and not padded[:, 15:].any()


def test_painting_and_uploading_for_a_reconstruction(tmp_path, room):
    height, width = room.image_size_hw
    painted = np.zeros((height, width, 4), np.uint8)
    painted[10:20, 30:40] = (255, 0, 0, 255)  # a red stroke on a transparent layer
    painted_recon = with_frame_mask(room, 2, painted)
    assert painted_recon.exclusion_masks[2].sum() == 100 and painted_recon.exclusion_masks.sum() == 100
    stem = room.frame_names[4]
    Image.fromarray(np.full((height, width), 255, np.uint8)).save(tmp_path / f"{stem}.png")
    uploaded, notes = load_masks_for_reconstruction(painted_recon, tmp_path)
    assert notes == []
    assert uploaded.exclusion_masks[4].all() and uploaded.exclusion_masks[2].sum() == 100
