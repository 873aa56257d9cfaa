"""Mesh by TSDF fusion and normal maps from depth, checked against the synthetic room's exact
geometry (vggt_core.synthetic), not against the code under test."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from vggt_core.depth_maps import colorize_normal_maps
from vggt_core.errors import InputError
from vggt_core.export.mesh import build_mesh_scene, mesh_glb_bytes, mesh_ply_bytes
from vggt_core.export.glb import build_scene
from vggt_core.filtering import ViewSettings
from vggt_core.mesh import MeshQuality, fuse_depth_to_mesh, mesh_cache_key
from vggt_core.normals import normal_maps_from_depth
from vggt_core.reconstruction import reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene, scene_surface_distance

# The room is the box |x| ≤ 2.6, |y| ≤ 1.5, |z| ≤ 2.6 (vggt_core.synthetic._room_layout).
ROOM_HALF_SIZE = np.array([2.6, 1.5, 2.6])
ALL_PIXELS = ViewSettings(confidence_threshold=0.0)


@pytest.fixture(scope="module")
def room():
    return reconstruction_from_synthetic_scene(render_scene("room", num_views=10, width=168, height=126, seed=3))


@pytest.fixture(scope="module")
def room_mesh(room):
    return fuse_depth_to_mesh(room, ALL_PIXELS, quality=MeshQuality.STANDARD, max_faces=None)


def test_mesh_vertices_lie_on_the_true_surfaces(room_mesh):
    distance = scene_surface_distance("room", room_mesh.vertices)
    assert room_mesh.num_faces > 1000
    assert np.mean(distance <= 1.5 * room_mesh.voxel_size) >= 0.95


def test_true_surface_points_are_covered_by_the_mesh(room, room_mesh):
    mesh = trimesh.Trimesh(room_mesh.vertices, room_mesh.faces, process=False)
    # Dense samples of the mesh's faces, so that the distance is to the surface, not to vertices.
    samples, _ = trimesh.sample.sample_surface(mesh, 400_000, seed=0)
    truth = room.points_from_depth.reshape(-1, 3)[::5]
    distance, _ = cKDTree(samples).query(truth)
    assert np.mean(distance <= 1.5 * room_mesh.voxel_size) >= 0.95


def test_mesh_faces_point_towards_the_cameras_and_colours_come_from_the_photos(room, room_mesh):
    mesh = trimesh.Trimesh(room_mesh.vertices, room_mesh.faces, process=False)
    on_floor = np.abs(mesh.triangles_center[:, 1] - ROOM_HALF_SIZE[1]) < 0.5 * room_mesh.voxel_size
    assert on_floor.sum() > 100
    # The floor is at +y (y points down); the room's inside, where the cameras are, is at -y.
    assert np.median(mesh.face_normals[on_floor, 1]) < -0.9
    # The floor's checker colours: every vertex colour is close to some photo pixel colour.
    photo_colours = room.images.reshape(-1, 3)[::7].astype(np.float64)
    gaps, _ = cKDTree(photo_colours).query(room_mesh.vertex_colors.astype(np.float64))
    assert np.median(gaps) < 12.0


def test_simplification_keeps_to_the_face_budget_and_the_surface(room, room_mesh):
    small = fuse_depth_to_mesh(room, ALL_PIXELS, max_faces=20_000)
    assert small.num_faces <= 20_000 < room_mesh.num_faces == small.num_faces_before_simplification
    distance = scene_surface_distance("room", small.vertices)
    assert np.mean(distance <= 1.5 * small.voxel_size) >= 0.9
    assert small.vertex_colors.shape == (small.num_vertices, 3)


def test_quality_sets_the_voxel_size(room):
    draft = fuse_depth_to_mesh(room, ALL_PIXELS, quality="draft", max_faces=None)
    standard = fuse_depth_to_mesh(room, ALL_PIXELS, quality="standard", max_faces=None)
    assert draft.voxel_size == pytest.approx(2 * standard.voxel_size)
    assert draft.num_faces < standard.num_faces


def test_bad_cases_give_messages(room):
    one_frame = reconstruction_from_synthetic_scene(render_scene("room", num_views=1, width=40, height=30))
    with pytest.raises(InputError, match="two frames"):
        fuse_depth_to_mesh(one_frame)
    unconfident = dataclasses.replace(room, depth_conf=np.zeros_like(room.depth_conf),
                                      frame_names=list(room.frame_names))
    with pytest.raises(InputError, match="confidence threshold"):
        fuse_depth_to_mesh(unconfident)
    with pytest.raises(InputError, match="quality"):
        fuse_depth_to_mesh(room, quality="ultra")


def test_cache_key_ignores_what_does_not_change_the_mesh():
    assert mesh_cache_key(ViewSettings(frame_index=2, max_points=10)) == mesh_cache_key(ViewSettings())
    assert mesh_cache_key(ViewSettings(confidence_threshold=20)) != mesh_cache_key(ViewSettings())
    assert mesh_cache_key(ViewSettings(), "fine") != mesh_cache_key(ViewSettings())


def test_mesh_glb_lines_up_with_the_point_scene_and_ply_reads_back(room, room_mesh):
    point_scene = build_scene(room, ALL_PIXELS)
    mesh_scene = trimesh.load(io.BytesIO(mesh_glb_bytes(room_mesh, room, show_cameras=True)), file_type="glb",
                              process=False)
    transform, name = mesh_scene.graph["mesh"]
    placed = trimesh.transform_points(mesh_scene.geometry[name].vertices, transform)
    expected = trimesh.transform_points(room_mesh.vertices, np.asarray(point_scene.metadata["alignment"]))
    np.testing.assert_allclose(placed, expected, atol=1e-4)
    assert sum(node.startswith("camera_") for node in mesh_scene.graph.nodes_geometry) == room.num_frames
    assert len(build_mesh_scene(room_mesh, room).graph.nodes_geometry) == 1

    ply = trimesh.load(io.BytesIO(mesh_ply_bytes(room_mesh)), file_type="ply", process=False)
    np.testing.assert_allclose(ply.vertices, room_mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(ply.faces, room_mesh.faces)
    np.testing.assert_array_equal(ply.visual.vertex_colors[:, :3], room_mesh.vertex_colors)


# --------------------------------------------------------------------------------------------
# Normal maps
# --------------------------------------------------------------------------------------------


def _true_room_normals(recon):
    """Per pixel, the camera-frame normal of the room face it sees (NaN off the room's faces),
    from the exact world points and the room's known walls."""
    world = recon.points_from_depth.astype(np.float64)
    normals_world = np.full(world.shape, np.nan)
    for axis in range(3):
        on_face = np.abs(np.abs(world[..., axis]) - ROOM_HALF_SIZE[axis]) < 1e-4
        inward = np.zeros(3)
        for sign in (-1.0, 1.0):
            face = on_face & (np.sign(world[..., axis]) == sign)
            inward[:] = 0.0
            inward[axis] = -sign  # the inner faces point back into the room
            normals_world[face] = inward
    rotations = recon.extrinsics[:, :, :3].astype(np.float64)
    return np.einsum("sij,shwj->shwi", rotations, normals_world)


def test_normals_of_the_room_planes_are_within_two_degrees():
    recon = reconstruction_from_synthetic_scene(render_scene("room", num_views=4, width=168, height=126, seed=2))
    estimated = normal_maps_from_depth(recon.depth, recon.intrinsics)
    truth = _true_room_normals(recon)
    compared = np.isfinite(truth).all(axis=-1)
    assert compared.mean() > 0.5  # most pixels see a wall, the floor or the ceiling
    assert np.isfinite(estimated[compared]).all()
    cosine = np.clip(np.einsum("nc,nc->n", estimated[compared].astype(np.float64), truth[compared]), -1.0, 1.0)
    angles = np.degrees(np.arccos(cosine))
    assert np.median(angles) < 2.0
    assert np.percentile(angles, 90) < 10.0
    np.testing.assert_allclose(np.linalg.norm(estimated[compared], axis=-1), 1.0, atol=1e-5)


def test_normals_are_nan_without_depth_and_colours_use_the_opengl_encoding():
    depth = np.full((1, 5, 6), 2.0, dtype=np.float32)
    depth[0, 2, 3] = np.nan
    intrinsics = np.array([[[100.0, 0, 3.0], [0, 100.0, 2.5], [0, 0, 1]]], dtype=np.float32)
    normals = normal_maps_from_depth(depth, intrinsics)
    assert np.isnan(normals[0, 2, 3]).all()
    # A fronto-parallel plane faces the camera: -z in OpenCV camera axes.
    np.testing.assert_allclose(normals[0, 0, 0], [0.0, 0.0, -1.0], atol=1e-6)
    colours = colorize_normal_maps(normals)
    assert colours.shape == (1, 5, 6, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours[0, 0, 0], [128, 128, 255])  # towards the viewer: +z in OpenGL
    np.testing.assert_array_equal(colours[0, 2, 3], [0, 0, 0])
    # A floor seen from above (normal up = -y in OpenCV) is green: +y in OpenGL.
    np.testing.assert_array_equal(colorize_normal_maps(np.array([[[0.0, -1.0, 0.0]]]))[0, 0, 0], [128, 255, 128])
