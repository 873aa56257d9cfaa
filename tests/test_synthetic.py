"""Tests for vggt_core.synthetic: the renderer's depth and cameras must be exactly consistent."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vggt_core.geometry import camera_centers, project_points, unproject_depth_map_to_world_points
from vggt_core.synthetic import (
    SCENE_NAMES,
    SyntheticScene,
    render_scene,
    save_scene_images,
    scene_extent,
    scene_surface_distance,
)

NUM_VIEWS, WIDTH, HEIGHT = 5, 80, 60


@pytest.fixture(scope="module", params=SCENE_NAMES)
def scene(request) -> SyntheticScene:
    return render_scene(request.param, num_views=NUM_VIEWS, width=WIDTH, height=HEIGHT, seed=3)


def test_shapes_and_dtypes(scene):
    assert scene.images.shape == (NUM_VIEWS, HEIGHT, WIDTH, 3) and scene.images.dtype == np.uint8
    assert scene.depth.shape == (NUM_VIEWS, HEIGHT, WIDTH) and scene.depth.dtype == np.float32
    assert scene.extrinsics.shape == (NUM_VIEWS, 3, 4) and scene.extrinsics.dtype == np.float32
    assert scene.intrinsics.shape == (NUM_VIEWS, 3, 3) and scene.intrinsics.dtype == np.float32
    assert scene.num_views == NUM_VIEWS and scene.image_size_hw == (HEIGHT, WIDTH)


def test_intrinsics_follow_the_spec_convention(scene):
    np.testing.assert_allclose(scene.intrinsics[:, 0, 2], WIDTH / 2)
    np.testing.assert_allclose(scene.intrinsics[:, 1, 2], HEIGHT / 2)
    np.testing.assert_allclose(scene.intrinsics[:, 0, 0], scene.intrinsics[:, 1, 1])
    assert np.all(scene.intrinsics[:, 0, 1] == 0) and np.all(scene.intrinsics[:, 2] == [0, 0, 1])


def test_rotations_are_proper(scene):
    rotations = scene.extrinsics[:, :, :3].astype(np.float64)
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1),
                               np.broadcast_to(np.eye(3), rotations.shape), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-6)


def test_every_pixel_sees_a_surface_in_front(scene):
    assert np.all(np.isfinite(scene.depth))
    assert np.all(scene.depth > 0.1)


def test_unprojected_depth_lies_on_the_scene_surfaces(scene):
    points = unproject_depth_map_to_world_points(scene.depth, scene.extrinsics, scene.intrinsics)
    distances = scene_surface_distance(scene.name, points.reshape(-1, 3))
    assert distances.max() < 1e-4 * scene_extent(scene.name)


def test_surface_distance_is_not_trivially_zero(scene):
    # Pulling every point 2% of its depth towards the camera must leave the surfaces.
    points = unproject_depth_map_to_world_points(scene.depth, scene.extrinsics, scene.intrinsics)
    centres = camera_centers(scene.extrinsics.astype(np.float64))[:, None, None, :]
    pulled = points + 0.02 * (centres - points)
    distances = scene_surface_distance(scene.name, pulled.reshape(-1, 3))
    assert np.median(distances) > 1e-3
    assert scene_surface_distance(scene.name, centres.reshape(-1, 3)).min() > 0.1


def test_views_agree_with_each_other_through_the_cameras(scene):
    # Points seen by view 0, projected into view 1, should mostly meet view 1's own depth there.
    points = unproject_depth_map_to_world_points(scene.depth[:1], scene.extrinsics[:1],
                                                 scene.intrinsics[:1]).reshape(-1, 3)
    pixels, depth_in_view1 = project_points(points, scene.extrinsics[1].astype(np.float64),
                                            scene.intrinsics[1].astype(np.float64))
    columns, rows = np.round(pixels[:, 0]).astype(int), np.round(pixels[:, 1]).astype(int)
    inside = (columns >= 0) & (columns < WIDTH) & (rows >= 0) & (rows < HEIGHT)
    assert inside.mean() > 0.5
    rendered = scene.depth[1, rows[inside], columns[inside]]
    relative_error = np.abs(rendered - depth_in_view1[inside]) / rendered
    assert np.median(relative_error) < 0.02


def test_images_have_texture_and_views_differ(scene):
    for image in scene.images:
        assert image.astype(np.float64).std() > 15.0
    for first, second in zip(scene.images[:-1], scene.images[1:]):
        assert np.abs(first.astype(np.int16) - second.astype(np.int16)).mean() > 5.0


def test_cameras_move_along_the_path(scene):
    centres = camera_centers(scene.extrinsics.astype(np.float64))
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
    assert np.all(steps > 0.05)


def test_rendering_is_deterministic_per_seed():
    first = render_scene("table", num_views=2, width=32, height=24, seed=7)
    second = render_scene("table", num_views=2, width=32, height=24, seed=7)
    other = render_scene("table", num_views=2, width=32, height=24, seed=8)
    for field in ("images", "depth", "extrinsics", "intrinsics"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))
    assert not np.array_equal(first.images, other.images)


def test_single_view_and_unknown_name():
    single = render_scene("room", num_views=1, width=16, height=12)
    assert single.images.shape == (1, 12, 16, 3)
    with pytest.raises(ValueError, match="unknown synthetic scene"):
        render_scene("garden")


def test_save_scene_images_writes_numbered_pngs(tmp_path, scene):
    paths = save_scene_images(scene, tmp_path / "views")
    assert [path.name for path in paths] == [f"{index:03d}.png" for index in range(NUM_VIEWS)]
    np.testing.assert_array_equal(np.asarray(Image.open(paths[2])), scene.images[2])
