"""The GLB's point cloud written directly (vggt_core.export.glb_points) is the file trimesh's own
point export gives: same points, colours, cameras, transforms and extras, read back by trimesh."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import trimesh

from vggt_core.export import build_scene, export_glb
from vggt_core.export.glb_points import replace_point_cloud
from vggt_core.export.glb_quantization import _read_glb
from vggt_core.filtering import ViewSettings
from vggt_core.reconstruction import reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene


@pytest.fixture(scope="module")
def scene_recon():
    return reconstruction_from_synthetic_scene(render_scene("table", num_views=3, width=96, height=72, seed=3))


@pytest.mark.parametrize("settings", [
    ViewSettings(confidence_threshold=0),
    ViewSettings(confidence_threshold=60, branch="point", max_points=5_000),
    ViewSettings(confidence_threshold=30, frame_index=1, show_cameras=False),
    ViewSettings(confidence_threshold=100),  # nothing passes: the placeholder point
], ids=["all", "point-branch-capped", "one-frame-no-cameras", "empty"])
def test_direct_point_writing_matches_trimesh_export(tmp_path, scene_recon, settings):
    fast = export_glb(scene_recon, tmp_path / "fast.glb", settings)
    (tmp_path / "trimesh.glb").write_bytes(build_scene(scene_recon, settings).export(file_type="glb"))
    ours, theirs = trimesh.load(tmp_path / "fast.glb"), trimesh.load(tmp_path / "trimesh.glb")
    assert sorted(ours.geometry) == sorted(theirs.geometry)
    np.testing.assert_array_equal(ours.geometry["points"].vertices, theirs.geometry["points"].vertices)
    np.testing.assert_array_equal(ours.geometry["points"].colors, theirs.geometry["points"].colors)
    assert len(ours.geometry["points"].vertices) == max(fast.num_points, 1)
    for name in ours.graph.nodes_geometry:
        np.testing.assert_allclose(ours.graph[name][0], theirs.graph[name][0])
    for name in ours.geometry:
        if name != "points":
            np.testing.assert_array_equal(ours.geometry[name].vertices, theirs.geometry[name].vertices)
    assert ours.metadata == theirs.metadata
    data = (tmp_path / "fast.glb").read_bytes()
    assert struct.unpack_from("<I", data, 8)[0] == len(data) and len(data) % 4 == 0
    gltf, _ = _read_glb(data)
    accessor = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]
    points = ours.geometry["points"].vertices
    np.testing.assert_allclose(accessor["min"], points.min(axis=0), rtol=1e-6)
    np.testing.assert_allclose(accessor["max"], points.max(axis=0), rtol=1e-6)


def test_replacing_points_refuses_what_it_cannot_write():
    cloud = trimesh.PointCloud(vertices=np.zeros((1, 3)), colors=np.full((1, 4), 255, np.uint8))
    scene = trimesh.Scene()
    scene.add_geometry(cloud, geom_name="points", node_name="points")
    data = scene.export(file_type="glb")
    with pytest.raises(ValueError, match="no single-primitive mesh named 'cloud'"):
        replace_point_cloud(data, np.zeros((2, 3)), np.zeros((2, 4), np.uint8), mesh_name="cloud")
    with pytest.raises(ValueError, match="colors_rgba must be"):
        replace_point_cloud(data, np.zeros((2, 3)), np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match="N >= 1"):
        replace_point_cloud(data, np.zeros((0, 3)), np.zeros((0, 4), np.uint8))
    two = replace_point_cloud(data, np.array([[0, 0, 0], [1, 2, 3]], np.float32), np.full((2, 4), 9, np.uint8))
    loaded = trimesh.load(trimesh.util.wrap_as_stream(two), file_type="glb")
    np.testing.assert_array_equal(loaded.geometry["points"].vertices, [[0, 0, 0], [1, 2, 3]])
