"""Exports of a ground-truth synthetic reconstruction: GLB, PLY, COLMAP and the bundle."""

from __future__ import annotations

import dataclasses
import os
import zipfile

import matplotlib
import numpy as np
import pycolmap
import pytest
import trimesh

from vggt_core.errors import InputError
from vggt_core.export import export_all, export_colmap, export_glb, export_ply
from vggt_core.filtering import ViewSettings, select_points
from vggt_core.reconstruction import Reconstruction, reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene, scene_extent, scene_surface_distance

NUM_VIEWS, WIDTH, HEIGHT = 4, 64, 48
SURFACE_TOLERANCE = 1e-4  # relative to the scene extent; float32 storage is ~1e-7


@pytest.fixture(scope="module")
def recon() -> Reconstruction:
    return reconstruction_from_synthetic_scene(
        render_scene("room", num_views=NUM_VIEWS, width=WIDTH, height=HEIGHT, seed=1))


def _to_4x4(extrinsic: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :] = extrinsic
    return matrix


def _camera_centre(extrinsic: np.ndarray) -> np.ndarray:
    rotation, translation = extrinsic[:, :3].astype(np.float64), extrinsic[:, 3].astype(np.float64)
    return -rotation.T @ translation


def _expected_alignment(extrinsic: np.ndarray) -> np.ndarray:
    """Reference camera to the origin, then OpenCV → glTF axes (x → −X, y → −Y, z → +Z)."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ _to_4x4(extrinsic)


def _expected_camera_rgba(index: int, count: int) -> np.ndarray:
    rgb = (np.array(matplotlib.colormaps["gist_rainbow"](index / count)[:3]) * 255).astype(int)
    return np.append(rgb, 255)


def _load_glb(path):
    """``{node name: (geometry, vertices as the viewer places them [N, 3])}`` and the scene."""
    scene = trimesh.load(path, file_type="glb", process=False)
    placed = {}
    for node in scene.graph.nodes_geometry:
        transform, geometry_name = scene.graph[node]
        geometry = scene.geometry[geometry_name]
        placed[node] = (geometry, trimesh.transform_points(geometry.vertices, transform))
    return placed, scene


def _undo(alignment: np.ndarray, points: np.ndarray) -> np.ndarray:
    return trimesh.transform_points(points, np.linalg.inv(alignment))


# --------------------------------------------------------------------------------------------
# GLB
# --------------------------------------------------------------------------------------------


def test_glb_points_lie_on_the_true_surfaces(tmp_path, recon):
    result = export_glb(recon, tmp_path / "scene.glb", ViewSettings(confidence_threshold=20))
    assert os.fspath(result) == str(tmp_path / "scene.glb")
    placed, scene = _load_glb(result.path)

    cloud, viewer_points = placed["points"]
    assert isinstance(cloud, trimesh.PointCloud)
    selection = select_points(recon, ViewSettings(confidence_threshold=20))
    assert result.num_points == len(viewer_points) == selection.num_points > 1000
    assert scene.metadata["num_points"] == result.num_points

    world = _undo(_expected_alignment(recon.extrinsics[0]), viewer_points)
    assert scene_surface_distance("room", world).max() < SURFACE_TOLERANCE * scene_extent("room")
    np.testing.assert_allclose(world, selection.points, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(cloud.colors)[:, :3], selection.colors)


def test_glb_has_one_coloured_frustum_per_camera_with_apex_at_its_centre(tmp_path, recon):
    result = export_glb(recon, tmp_path / "scene.glb")
    placed, _ = _load_glb(result.path)
    alignment = _expected_alignment(recon.extrinsics[0])
    camera_nodes = sorted(name for name in placed if name.startswith("camera_"))
    assert camera_nodes == [f"camera_{i:03d}" for i in range(NUM_VIEWS)]
    assert result.num_cameras == NUM_VIEWS

    selection = select_points(recon, ViewSettings())
    low, high = np.percentile(selection.points, [5, 95], axis=0)
    frustum_depth = 0.1 * np.linalg.norm(high - low)
    np.testing.assert_array_equal(_expected_camera_rgba(0, NUM_VIEWS), [255, 0, 40, 255])
    for index, name in enumerate(camera_nodes):
        mesh, viewer_vertices = placed[name]
        colours = np.asarray(mesh.visual.vertex_colors)
        np.testing.assert_array_equal(colours, np.tile(_expected_camera_rgba(index, NUM_VIEWS),
                                                       (len(colours), 1)))
        world = _undo(alignment, viewer_vertices)
        centre = _camera_centre(recon.extrinsics[index])
        np.testing.assert_allclose(world[0], centre, atol=1e-5)  # vertex 0 is the apex
        # Everything lies between the centre and the base plane 0.1·scale in front (+z), give
        # or take the edges' thickness (2 % of the frustum depth).
        rotation = recon.extrinsics[index, :, :3].astype(np.float64)
        depth_in_camera = (world - centre) @ rotation.T[:, 2]
        assert depth_in_camera.min() > -0.025 * frustum_depth
        np.testing.assert_allclose(depth_in_camera.max(), frustum_depth, rtol=0.025)
        assert np.median(depth_in_camera) == pytest.approx(frustum_depth, rel=0.025)
        # Double-sided: every triangle also exists with the opposite winding.
        faces = {tuple(face) for face in np.asarray(mesh.faces).tolist()}
        assert all(tuple(face[::-1]) in faces for face in faces)


def test_glb_first_camera_looks_forward_with_y_up(tmp_path, recon):
    placed, _ = _load_glb(export_glb(recon, tmp_path / "scene.glb").path)
    _, viewer_apex_and_more = placed["camera_000"]
    np.testing.assert_allclose(viewer_apex_and_more[0], 0.0, atol=1e-5)  # camera 0 at the origin

    # Camera 0's axes as the viewer sees them: glTF's "front faces +Z", +Y up, −X right.
    _, viewer_points = placed["points"]
    alignment = _expected_alignment(recon.extrinsics[0])
    rotation = alignment[:3, :3] @ recon.extrinsics[0, :, :3].T.astype(np.float64)
    np.testing.assert_allclose(rotation, np.diag([-1.0, -1.0, 1.0]), atol=1e-6)

    # The same seen on the content: what camera 0 sees is in front (+Z), the top image row is
    # above (+Y) the bottom row, and the image's right side is at −X.
    frame0 = recon.points_from_depth[0]
    to_viewer = lambda points: trimesh.transform_points(points.reshape(-1, 3), alignment)  # noqa: E731
    assert (to_viewer(frame0)[:, 2] > 0).all()
    top, bottom = to_viewer(frame0[0, WIDTH // 2]), to_viewer(frame0[-1, WIDTH // 2])
    assert top[0, 1] / top[0, 2] > 0 > bottom[0, 1] / bottom[0, 2]
    left, right = to_viewer(frame0[HEIGHT // 2, 0]), to_viewer(frame0[HEIGHT // 2, -1])
    assert left[0, 0] > 0 > right[0, 0]
    # And the GLB really holds that transform: its point cloud equals the aligned points.
    np.testing.assert_allclose(viewer_points, to_viewer(select_points(recon, ViewSettings()).points),
                               atol=1e-4)


def test_glb_single_frame_shows_only_that_camera_aligned_to_it(tmp_path, recon):
    settings = ViewSettings(frame_index=2, confidence_threshold=0)
    result = export_glb(recon, tmp_path / "one.glb", settings)
    placed, _ = _load_glb(result.path)
    assert sorted(placed) == ["camera_002", "points"]
    assert result.num_points == HEIGHT * WIDTH
    np.testing.assert_allclose(placed["camera_002"][1][0], 0.0, atol=1e-5)
    world = _undo(_expected_alignment(recon.extrinsics[2]), placed["points"][1])
    np.testing.assert_allclose(world, recon.points_from_depth[2].reshape(-1, 3), atol=1e-4)
    mesh = placed["camera_002"][0]
    np.testing.assert_array_equal(np.asarray(mesh.visual.vertex_colors)[0],
                                  _expected_camera_rgba(2, NUM_VIEWS))


def test_glb_without_points_or_cameras_still_loads(tmp_path, recon):
    settings = ViewSettings(confidence_threshold=5.0, threshold_is_percentile=False, show_cameras=False)
    result = export_glb(recon, tmp_path / "empty.glb", settings)
    placed, scene = _load_glb(result.path)
    assert result.num_points == 0 and result.num_cameras == 0
    assert scene.metadata["num_points"] == 0
    assert sorted(placed) == ["points"] and len(placed["points"][1]) == 1  # the placeholder


def test_glb_survives_degenerate_cameras(tmp_path, recon):
    """Untrained weights can predict a zero field of view (infinite focal) or NaN poses."""
    intrinsics, extrinsics = recon.intrinsics.copy(), recon.extrinsics.copy()
    intrinsics[1, 1, 1] = np.inf
    extrinsics[3] = np.nan
    broken = dataclasses.replace(recon, intrinsics=intrinsics, extrinsics=extrinsics)
    result = export_glb(broken, tmp_path / "broken.glb")
    placed, _ = _load_glb(result.path)
    assert sorted(name for name in placed if name.startswith("camera_")) == [
        "camera_000", "camera_001", "camera_002"]
    assert result.num_cameras == 3
    for geometry, vertices in placed.values():
        assert np.isfinite(vertices).all()


# --------------------------------------------------------------------------------------------
# PLY
# --------------------------------------------------------------------------------------------


def _parse_ply(path) -> tuple[list[str], np.ndarray]:
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                      ("blue", "u1"), ("confidence", "<f4")])
    return header, np.frombuffer(data[end:], dtype=dtype)


def test_ply_reads_back_in_trimesh_and_by_parsing(tmp_path, recon):
    conf = recon.depth_conf * np.linspace(1, 3, recon.depth_conf.size, dtype=np.float32).reshape(
        recon.depth_conf.shape)
    varied = dataclasses.replace(recon, depth_conf=conf)
    settings = ViewSettings(confidence_threshold=25)
    path = export_ply(varied, tmp_path / "points.ply", settings)
    selection = select_points(varied, settings)

    cloud = trimesh.load(path, process=False)
    np.testing.assert_array_equal(np.asarray(cloud.vertices, dtype=np.float32), selection.points)
    np.testing.assert_array_equal(np.asarray(cloud.colors)[:, :3], selection.colors)

    header, vertices = _parse_ply(path)
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    assert f"element vertex {selection.num_points}" in header
    assert "property float confidence" in header
    assert len(vertices) == selection.num_points
    np.testing.assert_array_equal(vertices["confidence"], selection.confidence)
    np.testing.assert_array_equal(np.stack([vertices["x"], vertices["y"], vertices["z"]], 1),
                                  selection.points)
    assert vertices["confidence"].min() >= selection.threshold


def test_ply_with_no_points_is_valid(tmp_path, recon):
    settings = ViewSettings(confidence_threshold=9.0, threshold_is_percentile=False)
    header, vertices = _parse_ply(export_ply(recon, tmp_path / "empty.ply", settings))
    assert "element vertex 0" in header and len(vertices) == 0


# --------------------------------------------------------------------------------------------
# COLMAP
# --------------------------------------------------------------------------------------------

PHOTO_SIZE = (200, 170)  # (width, height) of the pretend original photos
SCALE = WIDTH / PHOTO_SIZE[0]
OFFSET_Y = (HEIGHT - PHOTO_SIZE[1] * SCALE) / 2.0  # a centre crop: negative


@pytest.fixture(scope="module")
def cropped_recon(recon) -> Reconstruction:
    """The same frames, recorded as centre crops of bigger photos."""
    return dataclasses.replace(
        recon,
        frame_names=[f"IMG {i:04d}.JPG" if i == 1 else f"IMG_{i:04d}.JPG" for i in range(NUM_VIEWS)],
        original_sizes=np.array([PHOTO_SIZE] * NUM_VIEWS),
        image_transforms=np.array([[SCALE, SCALE, 0.0, OFFSET_Y]] * NUM_VIEWS),
    )


def _rotation_angle(rotation_a: np.ndarray, rotation_b: np.ndarray) -> float:
    relative = rotation_a @ rotation_b.T
    skew = relative - relative.T
    sine = np.linalg.norm([skew[2, 1], skew[0, 2], skew[1, 0]]) / 2.0
    return float(np.arctan2(sine, (np.trace(relative) - 1.0) / 2.0))


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_model_reads_back_with_true_cameras_and_points(tmp_path, cropped_recon, binary):
    settings = ViewSettings(confidence_threshold=0, max_points=3000)
    directory = export_colmap(cropped_recon, tmp_path / "sparse", settings, binary=binary)
    suffix = ".bin" if binary else ".txt"
    for stem in ("cameras", "images", "points3D"):
        assert (directory / f"{stem}{suffix}").is_file()

    model = pycolmap.Reconstruction(str(directory))
    assert model.num_images() == NUM_VIEWS and model.num_cameras() == NUM_VIEWS
    # COLMAP's text format cannot hold a space in a name; binary keeps the name as is.
    expected_names = [name if binary else name.replace(" ", "_") for name in cropped_recon.frame_names]
    assert sorted(model.image(i).name for i in model.reg_image_ids()) == sorted(expected_names)
    for index in range(NUM_VIEWS):
        image = model.find_image_with_name(expected_names[index])
        assert image is not None
        pose = image.cam_from_world()
        true_rotation = cropped_recon.extrinsics[index, :, :3].astype(np.float64)
        assert _rotation_angle(pose.rotation.matrix(), true_rotation) < 1e-5
        np.testing.assert_allclose(pose.translation, cropped_recon.extrinsics[index, :, 3], atol=1e-5)

        camera = model.camera(image.camera_id)
        assert camera.model_name == "PINHOLE"
        assert (camera.width, camera.height) == PHOTO_SIZE
        fx, fy = cropped_recon.intrinsics[index, 0, 0], cropped_recon.intrinsics[index, 1, 1]
        cx, cy = cropped_recon.intrinsics[index, 0, 2], cropped_recon.intrinsics[index, 1, 2]
        # Model pixel indices sit half a pixel before COLMAP's corner-based coordinates.
        np.testing.assert_allclose(camera.params, [fx / SCALE, fy / SCALE, (cx + 0.5) / SCALE,
                                                   (cy + 0.5 - OFFSET_Y) / SCALE], rtol=1e-6)
        # VGGT's principal point (W/2 in model pixel indices) is half a model pixel right of and
        # below the centre of a centre crop, which is the photo's centre.
        np.testing.assert_allclose(camera.params[2:], [PHOTO_SIZE[0] / 2 + 0.5 / SCALE,
                                                       PHOTO_SIZE[1] / 2 + 0.5 / SCALE], rtol=1e-6)

    selection = select_points(cropped_recon, settings)
    assert model.num_points3D() == selection.num_points == 3000
    ids = sorted(model.point3D_ids())
    xyz = np.array([model.point3D(i).xyz for i in ids])
    rgb = np.array([model.point3D(i).color for i in ids])
    order_written, order_expected = np.lexsort(xyz.T), np.lexsort(selection.points.T)
    np.testing.assert_allclose(xyz[order_written], selection.points[order_expected], atol=1e-6)
    np.testing.assert_array_equal(rgb[order_written], selection.colors[order_expected])

    # Each point is observed once, in its own frame, at its projection into the photo camera.
    for point_id in ids[::97]:
        point = model.point3D(point_id)
        (element,) = point.track.elements
        image = model.image(element.image_id)
        observation = image.points2D[element.point2D_idx]
        assert observation.point3D_id == point_id
        np.testing.assert_allclose(observation.xy, image.project_point(point.xyz), atol=1e-4)
        # Mapped back into the model input, the observation is the pixel the point came from.
        column, row = observation.xy[0] * SCALE - 0.5, observation.xy[1] * SCALE + OFFSET_Y - 0.5
        pixel = np.round([column, row]).astype(int)
        np.testing.assert_allclose([column, row], pixel, atol=1e-3)
        frame = element.image_id - 1
        np.testing.assert_allclose(point.xyz, cropped_recon.points_from_depth[frame, pixel[1], pixel[0]],
                                   atol=1e-6)


def test_colmap_at_model_resolution_and_default_cap(tmp_path, recon):
    directory = export_colmap(recon, tmp_path / "model_res", ViewSettings(confidence_threshold=0),
                              original_resolution=False, max_points=500)
    model = pycolmap.Reconstruction(str(directory))
    camera = model.camera(1)
    assert (camera.width, camera.height) == (WIDTH, HEIGHT)
    np.testing.assert_allclose(camera.params, recon.intrinsics[0][[0, 1, 0, 1], [0, 1, 2, 2]] + [0, 0, 0.5, 0.5],
                               rtol=1e-6)
    assert model.num_points3D() == 500


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_writes_valid_cameras_for_degenerate_predictions(tmp_path, recon, binary, caplog):
    """An untrained model can predict a zero field of view (infinite focal length), which
    COLMAP refuses to read; that camera gets the narrowest field of view and a warning."""
    from vggt_core.export.colmap import MIN_FIELD_OF_VIEW_RAD

    intrinsics = recon.intrinsics.copy()
    intrinsics[1, 1, 1] = np.inf
    intrinsics[2, 0, 0] = -5.0
    broken = dataclasses.replace(recon, intrinsics=intrinsics)
    directory = export_colmap(broken, tmp_path / "model", ViewSettings(confidence_threshold=0),
                              binary=binary, original_resolution=False)
    model = pycolmap.Reconstruction(str(directory))  # the text reader checks every camera
    narrowest = 0.5 / np.tan(MIN_FIELD_OF_VIEW_RAD / 2)
    np.testing.assert_allclose(model.camera(2).params[:2], [recon.intrinsics[1, 0, 0], HEIGHT * narrowest])
    np.testing.assert_allclose(model.camera(3).params[:2], [WIDTH * narrowest, recon.intrinsics[2, 1, 1]])
    np.testing.assert_allclose(model.camera(1).params,  # pixel centres at +0.5
                               recon.intrinsics[0][[0, 1, 0, 1], [0, 1, 2, 2]] + [0, 0, 0.5, 0.5], rtol=1e-6)
    assert "room_001" in caplog.text and "room_002" in caplog.text and "invalid focal length" in caplog.text


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------


def test_export_all_writes_every_format(tmp_path, cropped_recon):
    settings = ViewSettings(max_points=2000)
    written = export_all(cropped_recon, tmp_path / "out", settings=settings)
    assert set(written) == {"glb", "ply", "colmap", "colmap_zip", "npz", "depth", "depth_zip"}
    assert all(path.exists() for path in written.values())

    with zipfile.ZipFile(written["colmap_zip"]) as archive:
        names = set(archive.namelist())
    assert {"sparse/0/cameras.bin", "sparse/0/images.bin", "sparse/0/points3D.bin"} <= names
    assert pycolmap.Reconstruction(str(written["colmap"])).num_points3D() == 2000

    reloaded = Reconstruction.load(written["npz"])
    assert reloaded.frame_names == cropped_recon.frame_names
    np.testing.assert_array_equal(reloaded.points_from_depth, cropped_recon.points_from_depth)

    only = export_all(cropped_recon, tmp_path / "only", formats=("ply",), settings=settings)
    assert set(only) == {"ply"}
    with pytest.raises(InputError):
        export_all(cropped_recon, tmp_path / "bad", formats=("obj",))
