"""Tests for vggt_core.geometry: the conventions of docs/architecture.md and round-trip properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vggt_core.geometry import (
    camera_centers,
    extrinsics_intrinsics_to_pose_encoding,
    extrinsics_to_4x4,
    invert_se3,
    pose_encoding_to_extrinsics_intrinsics,
    project_points,
    quaternion_to_rotation_matrix,
    rotation_matrix_to_quaternion,
    unproject_depth_map_to_world_points,
)


def random_unit_quaternions(generator: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """``[*shape, 4]`` float64 unit quaternions (x, y, z, w) with w >= 0."""
    quaternions = generator.normal(size=shape + (4,))
    quaternions /= np.linalg.norm(quaternions, axis=-1, keepdims=True)
    return np.where(quaternions[..., 3:4] < 0, -quaternions, quaternions)


def random_extrinsics(generator: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """``[*shape, 3, 4]`` float64 random rigid transforms."""
    rotations = quaternion_to_rotation_matrix(random_unit_quaternions(generator, shape))
    translations = generator.normal(size=shape + (3, 1))
    return np.concatenate([rotations, translations], axis=-1)


def pinhole(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------------------------------
# Quaternions
# ------------------------------------------------------------------------------------------


def test_quaternion_matrix_quaternion_round_trip_numpy():
    quaternions = random_unit_quaternions(np.random.default_rng(0), (5, 40))
    matrices = quaternion_to_rotation_matrix(quaternions)
    assert isinstance(matrices, np.ndarray) and matrices.shape == (5, 40, 3, 3)
    recovered = rotation_matrix_to_quaternion(matrices)
    assert isinstance(recovered, np.ndarray) and recovered.shape == (5, 40, 4)
    np.testing.assert_allclose(recovered, quaternions, atol=1e-12)


def test_quaternion_matrix_quaternion_round_trip_torch():
    quaternions = torch.from_numpy(random_unit_quaternions(np.random.default_rng(1), (200,)))
    recovered = rotation_matrix_to_quaternion(quaternion_to_rotation_matrix(quaternions))
    assert isinstance(recovered, torch.Tensor) and recovered.dtype == torch.float64
    torch.testing.assert_close(recovered, quaternions, atol=1e-12, rtol=0)


def test_rotation_matrices_are_orthonormal_with_unit_determinant():
    matrices = quaternion_to_rotation_matrix(random_unit_quaternions(np.random.default_rng(2), (300,)))
    identity = np.broadcast_to(np.eye(3), matrices.shape)
    np.testing.assert_allclose(matrices @ np.swapaxes(matrices, -1, -2), identity, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(matrices), 1.0, atol=1e-12)


def test_non_unit_quaternions_are_normalised_implicitly():
    quaternions = random_unit_quaternions(np.random.default_rng(3), (10,))
    scales = np.linspace(0.1, 7.0, 10)[:, None]
    np.testing.assert_allclose(quaternion_to_rotation_matrix(quaternions * scales),
                               quaternion_to_rotation_matrix(quaternions), atol=1e-12)


def test_quaternion_90_degrees_about_z_by_hand():
    half = math.sqrt(0.5)
    matrix = quaternion_to_rotation_matrix(np.array([0.0, 0.0, half, half]))
    expected = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(matrix, expected, atol=1e-12)


@pytest.mark.parametrize("matrix, expected", [
    (np.diag([1.0, -1.0, -1.0]), [1.0, 0.0, 0.0, 0.0]),  # 180° about x (spec's example)
    (np.diag([-1.0, 1.0, -1.0]), [0.0, 1.0, 0.0, 0.0]),  # 180° about y
    (np.diag([-1.0, -1.0, 1.0]), [0.0, 0.0, 1.0, 0.0]),  # 180° about z
    (np.eye(3), [0.0, 0.0, 0.0, 1.0]),
])
def test_special_rotations_to_quaternion(matrix, expected):
    np.testing.assert_allclose(rotation_matrix_to_quaternion(matrix), expected, atol=1e-12)


def test_quaternion_sign_is_standardised_to_non_negative_w():
    quaternions = random_unit_quaternions(np.random.default_rng(4), (50,))
    recovered = rotation_matrix_to_quaternion(quaternion_to_rotation_matrix(-quaternions))
    assert np.all(recovered[:, 3] >= 0)
    np.testing.assert_allclose(recovered, quaternions, atol=1e-12)


def test_matrix_to_quaternion_is_accurate_near_180_degrees():
    # Near 180° the w-based candidate is ill-conditioned; the algorithm must pick another one.
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    angle = math.pi - 1e-7
    quaternion = np.concatenate([axis * math.sin(angle / 2), [math.cos(angle / 2)]])
    recovered = rotation_matrix_to_quaternion(quaternion_to_rotation_matrix(quaternion))
    np.testing.assert_allclose(recovered, quaternion, atol=1e-9)


# ------------------------------------------------------------------------------------------
# Pose encoding
# ------------------------------------------------------------------------------------------


def test_identity_camera_with_90_degree_fov_decodes_by_hand():
    encoding = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, math.pi / 2, math.pi / 2]]])
    extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(encoding, (100, 160))
    assert extrinsics.shape == (1, 1, 3, 4) and intrinsics.shape == (1, 1, 3, 3)
    torch.testing.assert_close(extrinsics[0, 0], torch.eye(4)[:3])
    # fov 90° means f = (size/2)/tan(45°) = size/2; principal point is (W/2, H/2).
    torch.testing.assert_close(intrinsics[0, 0], torch.tensor(
        [[80.0, 0.0, 80.0], [0.0, 50.0, 50.0], [0.0, 0.0, 1.0]]))


def test_decoded_fov_uses_height_first_and_translation_is_kept():
    encoding = np.array([1.0, -2.0, 3.0, 0.0, 0.0, 0.0, 1.0, 2 * math.atan(0.5), 2 * math.atan(2.0)])
    extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(encoding, (60, 80))
    assert isinstance(extrinsics, np.ndarray)
    np.testing.assert_allclose(extrinsics[:, 3], [1.0, -2.0, 3.0])
    # fy from fov_h with H: 30/0.5 = 60; fx from fov_w with W: 40/2 = 20.
    np.testing.assert_allclose(intrinsics, pinhole(20.0, 60.0, 40.0, 30.0), atol=1e-12)


def test_torch_intrinsics_use_default_float32_dtype():
    encoding = torch.zeros(2, 3, 9, dtype=torch.float64)
    encoding[..., 6] = 1.0
    encoding[..., 7:] = 1.0
    extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(encoding, (10, 10))
    assert extrinsics.dtype == torch.float64
    assert intrinsics.dtype == torch.float32


def random_pose_encodings(generator: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    translations = generator.normal(size=shape + (3,))
    quaternions = random_unit_quaternions(generator, shape)
    fovs = generator.uniform(0.3, 2.0, size=shape + (2,))
    return np.concatenate([translations, quaternions, fovs], axis=-1)


@pytest.mark.parametrize("use_torch", [False, True])
def test_encode_after_decode_is_identity(use_torch):
    encoding = random_pose_encodings(np.random.default_rng(5), (2, 6)).astype(np.float32)
    if use_torch:
        encoding = torch.from_numpy(encoding)
    extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(encoding, (294, 518))
    recovered = extrinsics_intrinsics_to_pose_encoding(extrinsics, intrinsics, (294, 518))
    assert type(recovered) is type(encoding)
    assert recovered.shape == (2, 6, 9)
    assert recovered.dtype in (np.float32, torch.float32)
    np.testing.assert_allclose(np.asarray(recovered), np.asarray(encoding), atol=2e-6)


@pytest.mark.parametrize("use_torch", [False, True])
def test_decode_after_encode_is_identity(use_torch):
    generator = np.random.default_rng(6)
    height, width = 392, 518
    extrinsics = random_extrinsics(generator, (3, 4))
    focals = generator.uniform(200.0, 900.0, size=(3, 4, 2))
    intrinsics = np.zeros((3, 4, 3, 3))
    intrinsics[..., 0, 0], intrinsics[..., 1, 1] = focals[..., 0], focals[..., 1]
    intrinsics[..., 0, 2], intrinsics[..., 1, 2], intrinsics[..., 2, 2] = width / 2, height / 2, 1
    inputs = (extrinsics, intrinsics)
    if use_torch:
        inputs = tuple(torch.from_numpy(array) for array in inputs)
    encoding = extrinsics_intrinsics_to_pose_encoding(*inputs, (height, width))
    decoded_extrinsics, decoded_intrinsics = pose_encoding_to_extrinsics_intrinsics(
        encoding, (height, width))
    np.testing.assert_allclose(np.asarray(decoded_extrinsics), extrinsics, atol=1e-5)
    np.testing.assert_allclose(np.asarray(decoded_intrinsics), intrinsics, rtol=1e-5)


def test_pose_encoding_accepts_unbatched_and_single_batch_dims():
    encoding = random_pose_encodings(np.random.default_rng(7), (5,))
    extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(encoding, (50, 70))
    assert extrinsics.shape == (5, 3, 4) and intrinsics.shape == (5, 3, 3)
    single_extrinsics, _ = pose_encoding_to_extrinsics_intrinsics(encoding[0], (50, 70))
    np.testing.assert_allclose(single_extrinsics, extrinsics[0])


def test_encoding_ignores_principal_point_and_uses_focal_lengths():
    extrinsics = np.eye(4)[:3]
    shifted = extrinsics_intrinsics_to_pose_encoding(extrinsics, pinhole(50, 50, 3, 7), (100, 100))
    centred = extrinsics_intrinsics_to_pose_encoding(extrinsics, pinhole(50, 50, 50, 50), (100, 100))
    np.testing.assert_array_equal(shifted, centred)
    np.testing.assert_allclose(centred[7:], [math.pi / 2, math.pi / 2], atol=1e-6)


# ------------------------------------------------------------------------------------------
# SE(3)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [3, 4])
def test_invert_se3_times_original_is_identity_numpy(rows):
    transforms = extrinsics_to_4x4(random_extrinsics(np.random.default_rng(8), (4, 5)))
    inverse = invert_se3(transforms[..., :rows, :].astype(np.float32))
    assert inverse.shape == (4, 5, 4, 4) and inverse.dtype == np.float64
    np.testing.assert_allclose(inverse @ transforms, np.broadcast_to(np.eye(4), (4, 5, 4, 4)),
                               atol=1e-6)


@pytest.mark.parametrize("rows", [3, 4])
def test_invert_se3_times_original_is_identity_torch(rows):
    transforms = torch.from_numpy(extrinsics_to_4x4(random_extrinsics(np.random.default_rng(9), (7,))))
    inverse = invert_se3(transforms[..., :rows, :])
    assert inverse.dtype == torch.float64 and inverse.shape == (7, 4, 4)
    torch.testing.assert_close(transforms @ inverse, torch.eye(4, dtype=torch.float64).expand(7, 4, 4))


def test_invert_pure_translation_by_hand():
    transform = np.array([[1.0, 0, 0, 2], [0, 1, 0, -3], [0, 0, 1, 4]])
    np.testing.assert_allclose(invert_se3(transform), [[1, 0, 0, -2], [0, 1, 0, 3], [0, 0, 1, -4],
                                                       [0, 0, 0, 1]])


def test_extrinsics_to_4x4_appends_homogeneous_row():
    extrinsics = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    full = extrinsics_to_4x4(extrinsics)
    assert full.shape == (2, 4, 4)
    torch.testing.assert_close(full[:, :3], extrinsics)
    torch.testing.assert_close(full[:, 3], torch.tensor([[0.0, 0, 0, 1]] * 2))


def test_camera_centres_map_to_camera_origin():
    extrinsics = random_extrinsics(np.random.default_rng(10), (6,))
    centres = camera_centers(extrinsics)
    assert centres.shape == (6, 3)
    in_camera = np.einsum("sij,sj->si", extrinsics[:, :, :3], centres) + extrinsics[:, :, 3]
    np.testing.assert_allclose(in_camera, 0.0, atol=1e-12)
    np.testing.assert_allclose(centres, invert_se3(extrinsics)[:, :3, 3], atol=1e-12)


# ------------------------------------------------------------------------------------------
# Projection and unprojection
# ------------------------------------------------------------------------------------------


def test_unprojection_by_hand_identity_camera():
    depth = np.zeros((1, 2, 4, 1), dtype=np.float32)
    depth[0, 0, 3, 0] = 2.0  # row v=0, column u=3
    intrinsics = pinhole(2.0, 4.0, 1.0, 1.0)[None]
    points = unproject_depth_map_to_world_points(depth, np.eye(4)[None, :3], intrinsics)
    assert points.shape == (1, 2, 4, 3) and points.dtype == np.float64
    # ((3 − 1)·2/2, (0 − 1)·2/4, 2): integer pixel indices, no +0.5.
    np.testing.assert_allclose(points[0, 0, 3], [2.0, -0.5, 2.0])
    np.testing.assert_allclose(points[0, 1, 1], 0.0)


def test_unprojection_applies_camera_to_world_transform():
    # Camera rotated 90° about y and shifted: X_world = Rᵀ(X_cam − t).
    rotation = quaternion_to_rotation_matrix(np.array([0.0, math.sqrt(0.5), 0.0, math.sqrt(0.5)]))
    translation = np.array([0.5, -1.0, 2.0])
    extrinsics = np.concatenate([rotation, translation[:, None]], axis=1)[None]
    depth = np.full((1, 3, 3), 5.0)
    intrinsics = pinhole(1.0, 1.0, 1.0, 1.0)[None]
    points = unproject_depth_map_to_world_points(depth, extrinsics, intrinsics)
    expected_centre = rotation.T @ (np.array([0.0, 0.0, 5.0]) - translation)
    np.testing.assert_allclose(points[0, 1, 1], expected_centre, atol=1e-6)


def loop_unprojection(depth: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Slow per-pixel reference written straight from the unprojection formula. depth ``[S, H, W]``."""
    frames, height, width = depth.shape
    points = np.zeros((frames, height, width, 3))
    for s in range(frames):
        (fx, _, cx), (_, fy, cy), _ = intrinsics[s]
        rotation, translation = extrinsics[s, :, :3], extrinsics[s, :, 3]
        for v in range(height):
            for u in range(width):
                d = depth[s, v, u]
                camera = np.array([(u - cx) * d / fx, (v - cy) * d / fy, d])
                points[s, v, u] = rotation.T @ (camera - translation)
    return points


def test_unprojection_matches_per_pixel_loop_numpy_and_torch():
    generator = np.random.default_rng(11)
    depth = generator.uniform(0.5, 4.0, size=(3, 5, 7))
    extrinsics = random_extrinsics(generator, (3,))
    intrinsics = np.stack([pinhole(6.0, 5.0, 3.5, 2.5), pinhole(4.0, 4.0, 3.0, 2.0),
                           pinhole(9.0, 7.0, 3.5, 2.5)])
    expected = loop_unprojection(depth, extrinsics, intrinsics)
    from_numpy = unproject_depth_map_to_world_points(depth[..., None], extrinsics, intrinsics)
    np.testing.assert_allclose(from_numpy, expected, atol=1e-5)  # camera points go via float32
    from_torch = unproject_depth_map_to_world_points(
        torch.from_numpy(depth), torch.from_numpy(extrinsics), torch.from_numpy(intrinsics))
    assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.float64
    np.testing.assert_allclose(from_torch.numpy(), expected, atol=1e-12)


def test_unprojection_rejects_skew_and_shape_mismatch():
    depth = np.ones((2, 4, 4))
    extrinsics = np.broadcast_to(np.eye(4)[:3], (2, 3, 4))
    skewed = np.broadcast_to(np.array([[1.0, 0.1, 2], [0, 1, 2], [0, 0, 1]]), (2, 3, 3))
    with pytest.raises(ValueError, match="skew"):
        unproject_depth_map_to_world_points(depth, extrinsics, skewed)
    with pytest.raises(ValueError):
        unproject_depth_map_to_world_points(np.ones((3, 4, 4)), extrinsics,
                                            np.broadcast_to(pinhole(1, 1, 2, 2), (2, 3, 3)))


@pytest.mark.parametrize("use_torch", [False, True])
def test_unproject_then_project_returns_to_the_same_pixel(use_torch):
    generator = np.random.default_rng(12)
    frames, height, width = 4, 6, 9
    depth = generator.uniform(1.0, 10.0, size=(frames, height, width)).astype(np.float32)
    extrinsics = random_extrinsics(generator, (frames,)).astype(np.float32)
    intrinsics = np.stack([pinhole(f, f * 1.1, width / 2, height / 2) for f in (5.0, 8.0, 12.0, 20.0)])
    intrinsics = intrinsics.astype(np.float32)
    inputs = (depth, extrinsics, intrinsics)
    if use_torch:
        inputs = tuple(torch.from_numpy(array) for array in inputs)
    points = unproject_depth_map_to_world_points(*inputs)
    pixels, projected_depth = project_points(
        points.reshape(frames, -1, 3), *inputs[1:])
    assert pixels.shape == (frames, height * width, 2)
    assert projected_depth.shape == (frames, height * width)
    rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    expected_pixels = np.stack([columns, rows], axis=-1).reshape(1, -1, 2)
    np.testing.assert_allclose(np.asarray(pixels), np.broadcast_to(expected_pixels, pixels.shape),
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(projected_depth), depth.reshape(frames, -1), rtol=1e-5)


def test_project_points_by_hand_and_broadcasting():
    points = np.array([[0.0, 0.0, 2.0], [1.0, -1.0, 4.0]])
    extrinsics = np.stack([np.eye(4)[:3], np.concatenate([np.eye(3), [[1.0], [0.0], [0.0]]], 1)])
    intrinsics = np.broadcast_to(pinhole(10.0, 20.0, 5.0, 6.0), (2, 3, 3))
    pixels, depth = project_points(points, extrinsics, intrinsics)
    assert pixels.shape == (2, 2, 2) and depth.shape == (2, 2)
    # Camera 0: (5 + 10·0/2, 6) and (5 + 10·1/4, 6 − 20·1/4); camera 1 shifts x by +1.
    np.testing.assert_allclose(pixels[0], [[5.0, 6.0], [7.5, 1.0]])
    np.testing.assert_allclose(pixels[1], [[10.0, 6.0], [10.0, 1.0]])
    np.testing.assert_allclose(depth, [[2.0, 4.0], [2.0, 4.0]])


def test_project_points_torch_broadcasts_batch_of_cameras():
    points = torch.randn(2, 1, 5, 3, dtype=torch.float64) + torch.tensor([0.0, 0.0, 10.0],
                                                                         dtype=torch.float64)
    extrinsics = torch.eye(4, dtype=torch.float64)[:3].expand(2, 3, 3, 4)
    intrinsics = torch.from_numpy(pinhole(3.0, 3.0, 1.0, 1.0)).expand(2, 3, 3, 3)
    pixels, depth = project_points(points, extrinsics, intrinsics)
    assert isinstance(pixels, torch.Tensor) and pixels.shape == (2, 3, 5, 2)
    torch.testing.assert_close(depth, points[..., 2].expand(2, 3, 5))


def test_chunked_unprojection_is_the_plain_one_in_float32():
    from vggt_core.geometry import unproject_depth_map_to_world_points, unproject_depth_maps_in_frame_chunks

    rng = np.random.default_rng(7)
    depth = rng.uniform(0.5, 4.0, (5, 6, 7)).astype(np.float32)
    rotations = quaternion_to_rotation_matrix(rng.normal(size=(5, 4)))
    extrinsics = np.concatenate([rotations, rng.normal(size=(5, 3, 1))], axis=2).astype(np.float32)
    intrinsics = np.tile(np.array([[8.0, 0.0, 3.5], [0.0, 9.0, 3.0], [0.0, 0.0, 1.0]], np.float32), (5, 1, 1))
    chunked = unproject_depth_maps_in_frame_chunks(depth, extrinsics, intrinsics, frames_per_chunk=2)
    assert chunked.dtype == np.float32 and chunked.shape == (5, 6, 7, 3)
    np.testing.assert_array_equal(chunked, unproject_depth_map_to_world_points(depth, extrinsics, intrinsics)
                                  .astype(np.float32))
