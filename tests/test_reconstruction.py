"""Reconstruction: the model run (with a ground-truth stand-in model) and the npz file format."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vggt_core import geometry
from vggt_core.errors import InputError
from vggt_core.images import FrameTransform
from vggt_core.reconstruction import (FILE_FORMAT_VERSION, Reconstruction, reconstruct,
                                      reconstruction_from_synthetic_scene)
from vggt_core.synthetic import render_scene, scene_extent, scene_surface_distance

NUM_VIEWS, WIDTH, HEIGHT = 4, 56, 42


@pytest.fixture(scope="module")
def scene():
    return render_scene("table", num_views=NUM_VIEWS, width=WIDTH, height=HEIGHT, seed=3)


class GroundTruthModel(torch.nn.Module):
    """Stands in for VGGT: answers with the synthetic scene's true cameras, depth and points.

    ``heads`` chooses which outputs exist, like disabling heads of the real model.
    """

    def __init__(self, scene, heads=("camera", "depth", "point", "track")):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.scene = scene
        self.heads = heads
        self.calls = []

    def forward(self, images, query_points=None, frames_chunk_size=8):
        self.calls.append({"images": images.clone(), "query_points": query_points,
                           "frames_chunk_size": frames_chunk_size})
        height, width = images.shape[-2:]
        extrinsics = torch.from_numpy(self.scene.extrinsics)
        intrinsics = torch.from_numpy(self.scene.intrinsics)
        depth = torch.from_numpy(self.scene.depth)
        points = geometry.unproject_depth_map_to_world_points(depth, extrinsics, intrinsics)
        out = {}
        if "camera" in self.heads:
            out["pose_enc"] = geometry.extrinsics_intrinsics_to_pose_encoding(
                extrinsics, intrinsics, (height, width))[None]
        if "depth" in self.heads:
            out["depth"] = depth[None, ..., None]
            out["depth_conf"] = torch.full_like(depth, 2.0)[None]
        if "point" in self.heads:
            out["world_points"] = points[None]
            out["world_points_conf"] = torch.full_like(depth, 3.0)[None]
        if "track" in self.heads and query_points is not None:
            pixels = query_points[0].round().long()
            tracked = points[0, pixels[:, 1], pixels[:, 0]]  # [N, 3] surface points seen in frame 0
            track, _ = geometry.project_points(tracked, extrinsics, intrinsics)
            out["track"] = track[None].float()
            out["vis"] = torch.ones(track.shape[:2])[None]
            out["conf"] = torch.full(track.shape[:2], 0.5)[None]
        return out


def _images_tensor(scene) -> torch.Tensor:
    return torch.from_numpy(scene.images).permute(0, 3, 1, 2).float() / 255.0


def _rotation_angles(rotations_a: np.ndarray, rotations_b: np.ndarray) -> np.ndarray:
    """Angles (rad) between rotation pairs ``[S, 3, 3]``."""
    relative = np.einsum("sij,skj->sik", rotations_a.astype(np.float64), rotations_b.astype(np.float64))
    cosine = (np.trace(relative, axis1=1, axis2=2) - 1.0) / 2.0
    # atan2 of sine and cosine stays accurate near 0, where arccos(cosine) loses half the digits.
    skew = relative - relative.transpose(0, 2, 1)
    sine = np.linalg.norm([skew[:, 2, 1], skew[:, 0, 2], skew[:, 1, 0]], axis=0) / 2.0
    return np.arctan2(sine, cosine)


# --------------------------------------------------------------------------------------------
# reconstruct
# --------------------------------------------------------------------------------------------


def test_reconstruct_recovers_true_cameras_and_surfaces(scene):
    model = GroundTruthModel(scene)
    recon = reconstruct(model, _images_tensor(scene), frames_chunk_size=3)

    assert model.calls[0]["frames_chunk_size"] == 3
    assert model.calls[0]["images"].shape == (1, NUM_VIEWS, 3, HEIGHT, WIDTH)
    assert recon.num_frames == NUM_VIEWS and recon.image_size_hw == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(recon.images, scene.images)

    assert _rotation_angles(recon.extrinsics[:, :, :3], scene.extrinsics[:, :, :3]).max() < 1e-5
    np.testing.assert_allclose(recon.extrinsics[:, :, 3], scene.extrinsics[:, :, 3], atol=1e-5)
    np.testing.assert_allclose(recon.intrinsics[:, :2, :2], scene.intrinsics[:, :2, :2], rtol=1e-5)
    np.testing.assert_allclose(recon.intrinsics[:, :2, 2], [[WIDTH / 2, HEIGHT / 2]] * NUM_VIEWS)

    assert recon.points_from_depth.dtype == np.float32
    distance = scene_surface_distance(scene.name, recon.points_from_depth.reshape(-1, 3))
    assert distance.max() < 1e-4 * scene_extent(scene.name)
    np.testing.assert_array_equal(recon.depth, scene.depth)
    np.testing.assert_array_equal(recon.depth_conf, 2.0)
    np.testing.assert_array_equal(recon.world_points_conf, 3.0)
    assert recon.pose_encoding.shape == (NUM_VIEWS, 9)
    assert recon.tracks is None and recon.query_points is None
    assert recon.frame_names == [f"frame_{i:03d}" for i in range(NUM_VIEWS)]


def test_reconstruct_reports_progress_in_order(scene):
    reports = []
    reconstruct(GroundTruthModel(scene), _images_tensor(scene),
                progress=lambda fraction, message: reports.append((fraction, message)))
    fractions = [fraction for fraction, _ in reports]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    messages = [message for _, message in reports]
    assert "running the model" in messages and "unprojecting depth" in messages


def test_reconstruct_records_transforms_and_tracks(scene):
    transforms = [FrameTransform(name=f"photo_{i}.jpg", original_size=(200, 180),
                                 scale=(WIDTH / 200, WIDTH / 200), offset=(0.0, -3.6 + i))
                  for i in range(NUM_VIEWS)]
    queries = np.array([[10.0, 12.0], [30.0, 20.0], [45.0, 33.0]], dtype=np.float32)
    recon = reconstruct(GroundTruthModel(scene), _images_tensor(scene), query_points=queries,
                        transforms=transforms)

    assert recon.frame_names == [f"photo_{i}.jpg" for i in range(NUM_VIEWS)]
    np.testing.assert_array_equal(recon.original_sizes, [[200, 180]] * NUM_VIEWS)
    np.testing.assert_allclose(recon.image_transforms[2], [WIDTH / 200, WIDTH / 200, 0.0, -1.6])
    original = recon.intrinsics_at_original_resolution()
    for index, transform in enumerate(transforms):
        np.testing.assert_allclose(original[index], transform.model_intrinsics_to_photo(recon.intrinsics[index]))
    scale = WIDTH / 200
    np.testing.assert_allclose(original[1, 0, 0], recon.intrinsics[1, 0, 0] / scale, rtol=1e-6)
    # Model pixel indices are half a pixel before the photo's corner-based coordinates.
    np.testing.assert_allclose(original[1, 1, 2], (recon.intrinsics[1, 1, 2] + 0.5 - (-2.6)) / scale, rtol=1e-6)

    np.testing.assert_array_equal(recon.query_points, queries)
    assert recon.tracks.shape == (NUM_VIEWS, 3, 2)
    np.testing.assert_allclose(recon.tracks[0], queries, atol=1e-3)  # frame 0 tracks the queries
    assert recon.track_visibility.shape == recon.track_confidence.shape == (NUM_VIEWS, 3)
    np.testing.assert_array_equal(recon.track_confidence, 0.5)


def test_reconstruct_without_depth_head_uses_point_map_depth(scene):
    recon = reconstruct(GroundTruthModel(scene, heads=("camera", "point")), _images_tensor(scene))
    np.testing.assert_allclose(recon.depth, scene.depth, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(recon.depth_conf, 3.0)


def test_reconstruct_without_camera_head_fails_clearly(scene):
    with pytest.raises(RuntimeError, match="camera"):
        reconstruct(GroundTruthModel(scene, heads=("depth",)), _images_tensor(scene))


@pytest.mark.parametrize("make_bad", [
    lambda images: images * 2.0,                       # values above 1
    lambda images: images - 0.5,                       # values below 0
    lambda images: images[:, :2],                      # two channels
    lambda images: images[0],                          # no frame dimension
    lambda images: (images * 255).to(torch.uint8),     # integers
    lambda images: torch.where(images > 0.5, torch.nan, images),
])
def test_reconstruct_rejects_bad_images(scene, make_bad):
    with pytest.raises(InputError):
        reconstruct(GroundTruthModel(scene), make_bad(_images_tensor(scene)))


def test_reconstruct_rejects_bad_queries_and_names(scene):
    images = _images_tensor(scene)
    with pytest.raises(InputError):
        reconstruct(GroundTruthModel(scene), images, query_points=np.zeros((3, 3)))
    with pytest.raises(InputError):
        reconstruct(GroundTruthModel(scene), images, query_points=np.array([[WIDTH + 5.0, 1.0]]))
    with pytest.raises(InputError):
        reconstruct(GroundTruthModel(scene), images, frame_names=["only_one"])


# --------------------------------------------------------------------------------------------
# Reconstruction file format
# --------------------------------------------------------------------------------------------


def _assert_same(loaded: Reconstruction, original: Reconstruction) -> None:
    for field in dataclasses.fields(Reconstruction):
        a, b = getattr(loaded, field.name), getattr(original, field.name)
        if b is None:
            assert a is None, field.name
        elif isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, field.name
            assert a.tobytes() == b.tobytes(), field.name  # bit-equal, NaNs included
        else:
            assert a == b, field.name


def test_save_load_round_trip_without_optional_fields(tmp_path, scene):
    recon = reconstruction_from_synthetic_scene(scene)
    recon = dataclasses.replace(recon, world_points=None, world_points_conf=None, pose_encoding=None)
    path = recon.save(tmp_path / "scene.vggt")  # no .npz suffix is appended
    assert path == tmp_path / "scene.vggt" and path.is_file()
    loaded = Reconstruction.load(path)
    _assert_same(loaded, recon)
    assert loaded.world_points is None and loaded.tracks is None


def test_save_load_round_trip_with_every_field(tmp_path, scene):
    rng = np.random.default_rng(0)
    recon = reconstruction_from_synthetic_scene(scene)
    depth = recon.depth.copy()
    depth[0, 0, :3] = [np.nan, np.inf, -0.0]
    recon = dataclasses.replace(
        recon,
        depth=depth,
        depth_conf=rng.uniform(1, 9, depth.shape).astype(np.float32),
        frame_names=["ä photo.png", "b", "c/d.jpg", "日本.png"],
        original_sizes=np.array([[640, 480]] * NUM_VIEWS),
        image_transforms=rng.normal(size=(NUM_VIEWS, 4)),
        query_points=rng.uniform(0, 40, (5, 2)).astype(np.float32),
        tracks=rng.uniform(0, 40, (NUM_VIEWS, 5, 2)).astype(np.float32),
        track_visibility=rng.uniform(size=(NUM_VIEWS, 5)).astype(np.float32),
        track_confidence=rng.uniform(size=(NUM_VIEWS, 5)).astype(np.float32),
        track_query_frames=np.array([0, 0, 1, 3, 2]),
        sky_mask=rng.uniform(size=depth.shape) > 0.7,
        info={"units": "m", "scale": 2.5, "nested": {"list": [1, 2]}},
    )
    loaded = Reconstruction.load(recon.save(tmp_path / "full.npz"))
    # What a file keeps: confidences at float16 precision, and the depth branch's points
    # recomputed from the (edited) depth.
    expected = dataclasses.replace(recon.at_stored_precision(), points_from_depth=geometry.unproject_depth_map_to_world_points(
        depth, recon.extrinsics, recon.intrinsics).astype(np.float32))
    _assert_same(loaded, expected)
    np.testing.assert_allclose(loaded.depth_conf, recon.depth_conf, rtol=1e-3)
    assert Reconstruction.from_bytes((tmp_path / "full.npz").read_bytes()).num_frames == NUM_VIEWS


def test_files_store_only_what_cannot_be_recomputed(tmp_path, scene):
    recon = reconstruction_from_synthetic_scene(scene)
    path = recon.save(tmp_path / "lean.npz")
    with np.load(path) as archive:
        assert "points_from_depth" not in archive.files
        assert archive["depth_conf"].dtype == np.float16 and archive["depth"].dtype == np.float32
        # Not compressed: the size is the arrays' bytes plus small headers.
        stored = sum(archive[key].nbytes for key in archive.files)
    assert path.stat().st_size < stored * 1.01 + 10_000
    loaded = Reconstruction.load(path)
    assert loaded.depth_conf.dtype == np.float32
    np.testing.assert_array_equal(loaded.points_from_depth, recon.points_from_depth)
    # A huge confidence saturates at float16's largest value instead of becoming inf.
    depth_conf = recon.depth_conf.copy()
    depth_conf[0, 0, 0] = 1e9
    saturated = Reconstruction.load(dataclasses.replace(recon, depth_conf=depth_conf).save(tmp_path / "big.npz"))
    assert saturated.depth_conf[0, 0, 0] == np.finfo(np.float16).max


def test_points_from_depth_stored_by_older_files_are_read_as_they_are(tmp_path, scene):
    recon = reconstruction_from_synthetic_scene(scene)
    with np.load(recon.save(tmp_path / "lean.npz")) as archive:
        contents = {key: archive[key] for key in archive.files}
    marker = np.full_like(recon.points_from_depth, 7.0)
    _write_npz(tmp_path / "old.npz", **contents, points_from_depth=marker)
    np.testing.assert_array_equal(Reconstruction.load(tmp_path / "old.npz").points_from_depth, marker)


def test_version_1_file_still_loads():
    """A file written by format version 1 (before tracks' query frames, sky masks and info)."""
    fixture = Path(__file__).parent / "fixtures" / "reconstruction-v1.npz"
    with np.load(fixture) as archive:
        assert int(archive["__format_version__"]) == 1
    loaded = Reconstruction.load(fixture)
    assert loaded.num_frames == 3 and loaded.image_size_hw == (28, 42)
    assert loaded.tracks.shape == (3, 4, 2) and loaded.track_query_frames is None
    assert loaded.sky_mask is None and loaded.info == {}
    np.testing.assert_array_equal(loaded.original_sizes, [[84, 56]] * 3)
    # Saved again, it becomes a current-version file with the same contents.
    assert FILE_FORMAT_VERSION >= 2


def test_info_must_be_json(scene):
    recon = reconstruction_from_synthetic_scene(scene)
    with pytest.raises(InputError, match="JSON"):
        dataclasses.replace(recon, info={"bad": object()})
    with pytest.raises(InputError, match="JSON"):
        dataclasses.replace(recon, info={"nan": float("nan")})
    with pytest.raises(InputError, match="query_frames"):
        dataclasses.replace(recon, tracks=np.zeros((NUM_VIEWS, 2, 2), np.float32),
                            track_query_frames=np.array([0, NUM_VIEWS]))


def test_defaults_and_shape_validation(scene):
    recon = reconstruction_from_synthetic_scene(scene)
    plain = Reconstruction(images=recon.images, extrinsics=recon.extrinsics, intrinsics=recon.intrinsics,
                           depth=recon.depth, depth_conf=recon.depth_conf,
                           points_from_depth=recon.points_from_depth)
    assert plain.frame_names == ["frame_000", "frame_001", "frame_002", "frame_003"]
    np.testing.assert_array_equal(plain.original_sizes, [[WIDTH, HEIGHT]] * NUM_VIEWS)
    # The photo is the model input: only the half-pixel shift to corner-based coordinates remains.
    np.testing.assert_allclose(plain.intrinsics_at_original_resolution(),
                               recon.intrinsics + np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]]), rtol=1e-6)
    with pytest.raises(InputError, match="depth"):
        dataclasses.replace(recon, depth=recon.depth[:, :-1])
    with pytest.raises(InputError, match="uint8"):
        dataclasses.replace(recon, images=recon.images / 255.0)
    with pytest.raises(InputError, match="tracks"):
        dataclasses.replace(recon, track_visibility=np.ones((NUM_VIEWS, 2), np.float32))


def _write_npz(path, **arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def test_load_rejects_bad_files_with_input_error(tmp_path, scene):
    good = reconstruction_from_synthetic_scene(scene).save(tmp_path / "good.npz")
    data = good.read_bytes()

    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(2000))
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with np.load(good) as archive:
        contents = {key: archive[key] for key in archive.files}
    missing = dict(contents)
    del missing["depth"]
    _write_npz(tmp_path / "missing.npz", **missing)
    pickled = dict(contents, frame_names=np.array([object()], dtype=object))
    _write_npz(tmp_path / "pickled.npz", **pickled)
    wrong_shape = dict(contents, extrinsics=contents["extrinsics"][:, :3, :3].copy())
    _write_npz(tmp_path / "wrong_shape.npz", **wrong_shape)
    wrong_dtype = dict(contents, images=contents["images"].astype(np.float32))
    _write_npz(tmp_path / "wrong_dtype.npz", **wrong_dtype)
    _write_npz(tmp_path / "foreign.npz", depth=np.zeros(3))
    # A zip whose member is not a valid .npy.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("depth.npy", b"not an array")
    (tmp_path / "bad_member.npz").write_bytes(buffer.getvalue())

    for name in ("random", "truncated", "missing", "pickled", "wrong_shape", "wrong_dtype",
                 "foreign", "bad_member", "does_not_exist"):
        with pytest.raises(InputError):
            Reconstruction.load(tmp_path / f"{name}.npz")
