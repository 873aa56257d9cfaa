"""Pixel centres in every camera export (docs/architecture.md, "Pixel centres").

The model's pixel (u, v) is at the integers (u, v); COLMAP, OpenCV and nerfstudio put pixel i's
centre at i + 0.5. A depth point unprojected from model pixel (u, v) must project, through every
exported camera, onto the centre of the photo area that model pixel covers:
``((u + 0.5 − ox) / sx, (v + 0.5 − oy) / sy)`` with the frame's resize/crop ``photo · s + o``.
The projections are computed with pycolmap's own functions and with nerfstudio's camera formula,
on photos whose size differs from the model input (landscape and portrait, crop and pad).
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pycolmap
import pytest

from vggt_core import geometry
from vggt_core.export.colmap import export_colmap
from vggt_core.export.depth import DEPTH_SCALE_FILE, export_depth_maps
from vggt_core.export.nerfstudio import export_nerfstudio
from vggt_core.export.splatting import SPLATTING_MODEL_SUBDIR, export_splatting_bundle
from vggt_core.images import load_images
from vggt_core.reconstruction import Reconstruction
from vggt_core.training.scene_sources import read_colmap_scene

TOLERANCE_PX = 0.01
# (mode, photo sizes (width, height)): the model input is 56 pixels wide (crop) or long (pad).
PHOTO_SETS = {
    "crop-landscape-and-portrait": ("crop", [(150, 100), (90, 160)]),
    "pad-portrait-and-landscape": ("pad", [(70, 130), (200, 90)]),
}
# Model pixels (u, v) checked in every frame: corners and inner pixels of a 56 × 56 input.
MODEL_PIXELS = np.array([[0, 0], [55, 0], [3, 17], [28, 28], [40, 11], [55, 41]])


def _rotation(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues' formula: ``[3]`` axis · angle → ``[3, 3]``."""
    angle = np.linalg.norm(axis_angle)
    k = np.cross(np.eye(3), axis_angle / angle)
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _scene(mode: str, photo_sizes: list[tuple[int, int]]) -> Reconstruction:
    """A reconstruction of random cameras and depth whose frames come from photos of ``photo_sizes``."""
    rng = np.random.default_rng(7)
    photos = [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for width, height in photo_sizes]
    batch, transforms = load_images(photos, mode=mode, target_size=56, return_transforms=True)
    num_frames, _, height, width = batch.shape
    images = np.round(batch.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    # Cameras a little apart around one arbitrary world orientation, so that they see the same points.
    world = _rotation(np.array([0.9, -2.0, 0.4]))
    extrinsics = np.stack([np.c_[_rotation(rng.normal(scale=0.05, size=3)) @ world, rng.normal(scale=0.2, size=3)]
                           for _ in range(num_frames)])
    # VGGT's intrinsics: principal point at (W/2, H/2) in model pixel indices.
    intrinsics = np.stack([[[1.3 * width, 0.0, width / 2], [0.0, 1.2 * width, height / 2], [0.0, 0.0, 1.0]]
                           for _ in range(num_frames)])
    depth = rng.uniform(3.0, 5.0, size=(num_frames, height, width))
    points = geometry.unproject_depth_map_to_world_points(depth, extrinsics, intrinsics)
    return Reconstruction(
        images=images, extrinsics=extrinsics, intrinsics=intrinsics, depth=depth, depth_conf=np.ones_like(depth) * 2,
        points_from_depth=points, original_sizes=np.array([t.original_size for t in transforms]),
        image_transforms=np.array([[*t.scale, *t.offset] for t in transforms]),
        frame_names=[f"photo_{index}.png" for index in range(num_frames)])


def _photo_centres(recon: Reconstruction, frame: int, pixels: np.ndarray) -> np.ndarray:
    """``[N, 2]``: the centre of the photo area covered by model pixels ``pixels [N, 2]``, in the
    photo's corner-based pixels, from the stored resize/crop numbers alone."""
    sx, sy, ox, oy = recon.image_transforms[frame]
    return np.stack([(pixels[:, 0] + 0.5 - ox) / sx, (pixels[:, 1] + 0.5 - oy) / sy], axis=1)


def _unprojected(recon: Reconstruction, frame: int, pixels: np.ndarray) -> np.ndarray:
    """``[N, 3]`` world points of the depth branch at model pixels ``pixels [N, 2]`` of ``frame``."""
    return recon.points_from_depth[frame, pixels[:, 1], pixels[:, 0]].astype(np.float64)


@pytest.fixture(scope="module", params=sorted(PHOTO_SETS))
def recon(request) -> Reconstruction:
    mode, sizes = PHOTO_SETS[request.param]
    scene = _scene(mode, sizes)
    # The photos really differ from the model input, in size and in aspect.
    assert all(tuple(size) != scene.image_size_hw[::-1] for size in scene.original_sizes)
    return scene


def _check_pycolmap_model(model: pycolmap.Reconstruction, recon: Reconstruction, names: list[str]) -> None:
    for frame in range(recon.num_frames):
        image = model.find_image_with_name(names[frame])
        camera = model.camera(image.camera_id)
        assert (camera.width, camera.height) == tuple(recon.original_sizes[frame])
        projected = np.array([camera.img_from_cam(image.cam_from_world() * point)
                              for point in _unprojected(recon, frame, MODEL_PIXELS)])
        np.testing.assert_allclose(projected, _photo_centres(recon, frame, MODEL_PIXELS), atol=TOLERANCE_PX)


def test_colmap_cameras_project_model_pixels_onto_photo_pixel_centres(tmp_path, recon):
    export_colmap(recon, tmp_path / "sparse")
    _check_pycolmap_model(pycolmap.Reconstruction(str(tmp_path / "sparse")), recon, recon.frame_names)


def test_colmap_at_model_resolution_puts_pixel_centres_at_half_integers(tmp_path, recon):
    export_colmap(recon, tmp_path / "sparse", original_resolution=False)
    model = pycolmap.Reconstruction(str(tmp_path / "sparse"))
    for frame in range(recon.num_frames):
        image = model.find_image_with_name(recon.frame_names[frame])
        projected = np.array([image.camera.img_from_cam(image.cam_from_world() * point)
                              for point in _unprojected(recon, frame, MODEL_PIXELS)])
        np.testing.assert_allclose(projected, MODEL_PIXELS + 0.5, atol=TOLERANCE_PX)


def _tracked(recon: Reconstruction) -> Reconstruction:
    """``recon`` with tracks of frame 0's MODEL_PIXELS: exact projections into every frame."""
    points = _unprojected(recon, 0, MODEL_PIXELS)
    tracks = np.stack([geometry.project_points(points, recon.extrinsics[frame].astype(np.float64),
                                               recon.intrinsics[frame].astype(np.float64))[0]
                       for frame in range(recon.num_frames)])
    recon = Reconstruction(**{**{name: getattr(recon, name) for name in (
        "images", "extrinsics", "intrinsics", "depth", "depth_conf", "points_from_depth", "original_sizes",
        "image_transforms", "frame_names")}, "tracks": tracks, "track_visibility": np.ones(tracks.shape[:2])})
    return recon


def test_colmap_track_observations_sit_on_photo_pixel_centres(tmp_path, recon):
    tracked = _tracked(recon)
    export_colmap(tracked, tmp_path / "sparse")
    model = pycolmap.Reconstruction(str(tmp_path / "sparse"))
    assert model.num_points3D() >= 3  # the corner pixels may leave the other frame
    for point in model.points3D.values():
        for element in point.track.elements:
            image = model.image(element.image_id)
            frame = element.image_id - 1
            observation = image.points2D[element.point2D_idx].xy
            # It is one of the frame's tracked positions, at that model position's photo centre.
            distances = np.linalg.norm(_photo_centres(tracked, frame, tracked.tracks[frame]) - observation, axis=1)
            assert distances.min() < 1e-4
            projected = image.camera.img_from_cam(image.cam_from_world() * point.xyz)
            np.testing.assert_allclose(projected, observation, atol=TOLERANCE_PX)
    # The track that starts at model pixel (u, v) of frame 0 is observed at that pixel's photo centre.
    observed = np.array([p.xy for p in model.image(1).points2D])
    expected = _photo_centres(tracked, 0, MODEL_PIXELS)
    assert (np.linalg.norm(observed[:, None] - expected[None], axis=-1).min(axis=0) < TOLERANCE_PX).sum() \
        == model.num_points3D()


def _nerfstudio_pixels(frame: dict, points: np.ndarray) -> np.ndarray:
    """nerfstudio's pinhole camera: ``transform_matrix`` is camera-to-world in OpenGL axes (x right,
    y up, looking down −z), and ``cx, cy`` are in pixels with the image corner at 0."""
    camera_to_world = np.array(frame["transform_matrix"])
    local = (np.linalg.inv(camera_to_world) @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    depth = -local[:, 2]
    return np.stack([frame["fl_x"] * local[:, 0] / depth + frame["cx"],
                     -frame["fl_y"] * local[:, 1] / depth + frame["cy"]], axis=1)


def test_nerfstudio_cameras_project_model_pixels_onto_photo_pixel_centres(tmp_path, recon):
    path = export_nerfstudio(recon, tmp_path / "ns", durable=False)
    frames = json.loads(path.read_text())["frames"]
    for index, frame in enumerate(frames):
        assert (frame["w"], frame["h"]) == tuple(recon.original_sizes[index])
        np.testing.assert_allclose(_nerfstudio_pixels(frame, _unprojected(recon, index, MODEL_PIXELS)),
                                   _photo_centres(recon, index, MODEL_PIXELS), atol=TOLERANCE_PX)


def test_splatting_bundle_cameras_and_our_reader_agree(tmp_path, recon):
    bundle = export_splatting_bundle(recon, tmp_path / "bundle.zip", durable=False)
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(tmp_path / "bundle")
    folder = tmp_path / "bundle"
    transforms = json.loads((folder / "transforms.json").read_text())
    names = [frame["file_path"].split("/", 1)[1] for frame in transforms["frames"]]
    _check_pycolmap_model(pycolmap.Reconstruction(str(folder / SPLATTING_MODEL_SUBDIR)), recon, names)
    for index, frame in enumerate(transforms["frames"]):
        np.testing.assert_allclose(_nerfstudio_pixels(frame, _unprojected(recon, index, MODEL_PIXELS)),
                                   _photo_centres(recon, index, MODEL_PIXELS), atol=TOLERANCE_PX)
    # Our own COLMAP reader (training) takes the half pixel back off: its intrinsics project onto
    # photo pixel indices, the same convention as the model's.
    scene = read_colmap_scene(folder)
    for frame_data in scene.frames:
        index = names.index(frame_data.image_path.name)
        points = _unprojected(recon, index, MODEL_PIXELS)
        camera = (frame_data.extrinsic[:, :3] @ points.T).T + frame_data.extrinsic[:, 3]
        pixels = (frame_data.intrinsic @ camera.T).T
        np.testing.assert_allclose(pixels[:, :2] / pixels[:, 2:], _photo_centres(recon, index, MODEL_PIXELS) - 0.5,
                                   atol=TOLERANCE_PX)


def test_depth_scale_file_states_photo_intrinsics_with_centres_at_half_pixels(tmp_path, recon):
    export_depth_maps(recon, tmp_path / "depth", durable=False)
    content = json.loads((tmp_path / "depth" / DEPTH_SCALE_FILE).read_text())
    assert "0.5" in content["pixel_centres"]
    for index, name in enumerate(recon.frame_names):
        camera = content["intrinsics"][name]
        assert (camera["width"], camera["height"]) == tuple(recon.original_sizes[index])
        local = (recon.extrinsics[index, :, :3].astype(np.float64) @ _unprojected(recon, index, MODEL_PIXELS).T).T \
            + recon.extrinsics[index, :, 3]
        pixels = np.stack([camera["fx"] * local[:, 0] / local[:, 2] + camera["cx"],
                           camera["fy"] * local[:, 1] / local[:, 2] + camera["cy"]], axis=1)
        np.testing.assert_allclose(pixels, _photo_centres(recon, index, MODEL_PIXELS), atol=TOLERANCE_PX)


def test_a_known_focal_length_exports_its_principal_point_at_the_photo_centre(tmp_path, recon):
    from vggt_core.intrinsics import apply_camera_choice

    known = apply_camera_choice(recon, "manual", 123.0, "px")
    export_colmap(known, tmp_path / "sparse")
    model = pycolmap.Reconstruction(str(tmp_path / "sparse"))
    for frame, name in enumerate(known.frame_names):
        camera = model.find_image_with_name(name).camera
        width, height = recon.original_sizes[frame]
        np.testing.assert_allclose(camera.params, [123.0, 123.0, width / 2, height / 2], rtol=1e-6)
