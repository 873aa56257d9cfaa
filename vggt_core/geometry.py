"""Camera geometry shared by the model heads, the pipeline, the exporters and the tests.

Conventions (docs/architecture.md, *Conventions*):

* Extrinsics are **world-to-camera** ``[R | t]`` with ``X_cam = R·X_world + t`` in OpenCV axes
  (x right, y down, z forward). ``t`` is not the camera centre; :func:`camera_centers` gives that.
* Intrinsics ``K = [[f_x, 0, c_x], [0, f_y, c_y], [0, 0, 1]]`` map camera points to pixels with
  ``u = f_x·x/z + c_x``. Pixel ``(u, v)`` = (column, row) with integer pixel indices naming the
  pixel itself (no +0.5 centre offset).
* Quaternions are scalar-last ``(x, y, z, w)``.
* The 9-D pose encoding is ``[t_x, t_y, t_z, q_x, q_y, q_z, q_w, fov_h, fov_w]``.

Every public function accepts torch tensors or numpy arrays and answers in the kind of its first
argument (numpy in → numpy out), batched over any number of leading dimensions. Numpy inputs are
computed with torch internally so both kinds give identical numbers.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

ArrayOrTensor = Union[np.ndarray, torch.Tensor]

__all__ = [
    "quaternion_to_rotation_matrix",
    "rotation_matrix_to_quaternion",
    "pose_encoding_to_extrinsics_intrinsics",
    "extrinsics_intrinsics_to_pose_encoding",
    "invert_se3",
    "extrinsics_to_4x4",
    "project_points",
    "unproject_depth_map_to_world_points",
    "unproject_depth_maps_in_frame_chunks",
    "camera_centers",
]


# --------------------------------------------------------------------------------------------
# numpy / torch plumbing
# --------------------------------------------------------------------------------------------


def _as_tensor(value: ArrayOrTensor, device: torch.device | None = None) -> torch.Tensor:
    """Return ``value`` as a floating tensor (numpy memory is shared where possible)."""
    if isinstance(value, torch.Tensor):
        tensor = value
    else:
        array = np.asarray(value)
        if not np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float64)
        # from_numpy refuses negative strides (e.g. flipped views), so make them contiguous.
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    if device is not None:
        tensor = tensor.to(device)
    return tensor


def _like_input(result: torch.Tensor, primary: ArrayOrTensor) -> ArrayOrTensor:
    """Give ``result`` back in the kind (numpy or torch) of the caller's primary argument."""
    if isinstance(primary, torch.Tensor):
        return result
    return result.detach().cpu().numpy()


def _common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _check_trailing_shape(name: str, value: ArrayOrTensor, *trailing: int | Sequence[int]) -> None:
    """Raise ValueError unless the trailing dims of ``value`` match; an int or a set of allowed ints."""
    shape = tuple(value.shape)
    if len(shape) < len(trailing):
        raise ValueError(f"{name} must have at least {len(trailing)} dims, got shape {shape}")
    for actual, allowed in zip(shape[len(shape) - len(trailing):], trailing):
        allowed_set = (allowed,) if isinstance(allowed, int) else tuple(allowed)
        if actual not in allowed_set:
            raise ValueError(f"{name} has shape {shape}; trailing dims must be {trailing}")


# --------------------------------------------------------------------------------------------
# Quaternions (docs/architecture.md, *Conventions*)
# --------------------------------------------------------------------------------------------


def quaternion_to_rotation_matrix(quaternions: ArrayOrTensor) -> ArrayOrTensor:
    """Rotation matrices from scalar-last quaternions.

    Args:
        quaternions: ``[..., 4]`` as ``(x, y, z, w)``; need not be unit length, because the
            formula divides by the squared norm (implicit normalisation).

    Returns:
        ``[..., 3, 3]`` rotation matrices, same dtype as the input.
    """
    _check_trailing_shape("quaternions", quaternions, 4)
    q = _as_tensor(quaternions)
    i, j, k, r = torch.unbind(q, dim=-1)
    s = 2.0 / (q * q).sum(dim=-1)
    entries = (
        1 - s * (j * j + k * k), s * (i * j - k * r), s * (i * k + j * r),
        s * (i * j + k * r), 1 - s * (i * i + k * k), s * (j * k - i * r),
        s * (i * k - j * r), s * (j * k + i * r), 1 - s * (i * i + j * j),
    )
    matrices = torch.stack(entries, dim=-1).reshape(q.shape[:-1] + (3, 3))
    return _like_input(matrices, quaternions)


def _positive_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt(x) where x > 0, else 0; the where keeps gradients finite at x <= 0."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))),
                       torch.zeros_like(x))


def rotation_matrix_to_quaternion(matrices: ArrayOrTensor) -> ArrayOrTensor:
    """Scalar-last quaternions from rotation matrices (PyTorch3D-style; docs/architecture.md, *Conventions*).

    Of the four algebraically equivalent candidates the one with the largest denominator is taken,
    which keeps the division well conditioned for every rotation. The sign is standardised so that
    ``w >= 0`` (``w == 0`` is left alone, e.g. 180° about x gives ``(1, 0, 0, 0)``).

    Args:
        matrices: ``[..., 3, 3]`` rotation matrices.

    Returns:
        ``[..., 4]`` quaternions ``(x, y, z, w)``, same dtype as the input.
    """
    _check_trailing_shape("matrices", matrices, 3, 3)
    m = _as_tensor(matrices)
    batch_shape = m.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(
        m.reshape(batch_shape + (9,)), dim=-1)

    # a[n] is 2·|component n| of the quaternion in (r, i, j, k) order.
    a = _positive_sqrt(torch.stack([
        1.0 + m00 + m11 + m22,
        1.0 + m00 - m11 - m22,
        1.0 - m00 + m11 - m22,
        1.0 - m00 - m11 + m22,
    ], dim=-1))
    candidates = torch.stack([
        torch.stack([a[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, a[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, a[..., 2] ** 2, m12 + m21], dim=-1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, a[..., 3] ** 2], dim=-1),
    ], dim=-2)  # [..., candidate, (r, i, j, k)]
    # The 0.1 floor only matters for the candidates that are not picked; it avoids inf/nan there.
    candidates = candidates / (2.0 * a.clamp(min=0.1))[..., None]

    best = a.argmax(dim=-1)  # argmax returns the first index on ties, as the spec requires
    index = best[..., None, None].expand(batch_shape + (1, 4))
    rijk = torch.gather(candidates, dim=-2, index=index).squeeze(-2)

    xyzw = torch.cat([rijk[..., 1:], rijk[..., :1]], dim=-1)
    xyzw = torch.where(xyzw[..., 3:4] < 0, -xyzw, xyzw)
    return _like_input(xyzw, matrices)


# --------------------------------------------------------------------------------------------
# Pose encoding (docs/architecture.md, *Conventions*)
# --------------------------------------------------------------------------------------------


def pose_encoding_to_extrinsics_intrinsics(
    pose_encoding: ArrayOrTensor, image_size_hw: Sequence[int]
) -> tuple[ArrayOrTensor, ArrayOrTensor]:
    """Decode the 9-D ``absT_quaR_FoV`` pose encoding into camera matrices.

    Args:
        pose_encoding: ``[..., 9]`` = ``[t_x, t_y, t_z, q_x, q_y, q_z, q_w, fov_h, fov_w]``
            (translation of the world-to-camera extrinsic, scalar-last quaternion, fields of view
            in radians, height first). Any leading dims, e.g. ``[B, S, 9]`` or ``[S, 9]``.
        image_size_hw: ``(H, W)`` in pixels of the image the intrinsics refer to.

    Returns:
        ``(extrinsics [..., 3, 4], intrinsics [..., 3, 3])``. Extrinsics keep the encoding's dtype.
        Intrinsics are in torch's default dtype (float32) for torch input, as in the reference,
        and in the encoding's dtype for numpy input. Principal point ``(W/2, H/2)``,
        ``f_y = (H/2)/tan(fov_h/2)``, ``f_x = (W/2)/tan(fov_w/2)``.
    """
    _check_trailing_shape("pose_encoding", pose_encoding, 9)
    height, width = (float(image_size_hw[0]), float(image_size_hw[1]))
    encoding = _as_tensor(pose_encoding)

    translation = encoding[..., :3]
    rotation = quaternion_to_rotation_matrix(encoding[..., 3:7])
    extrinsics = torch.cat([rotation, translation[..., None]], dim=-1)

    intrinsics_dtype = (torch.get_default_dtype() if isinstance(pose_encoding, torch.Tensor)
                        else encoding.dtype)
    fov_h = encoding[..., 7].to(intrinsics_dtype)
    fov_w = encoding[..., 8].to(intrinsics_dtype)
    intrinsics = torch.zeros(encoding.shape[:-1] + (3, 3), dtype=intrinsics_dtype,
                             device=encoding.device)
    intrinsics[..., 0, 0] = (width / 2.0) / torch.tan(fov_w / 2.0)
    intrinsics[..., 1, 1] = (height / 2.0) / torch.tan(fov_h / 2.0)
    intrinsics[..., 0, 2] = width / 2.0
    intrinsics[..., 1, 2] = height / 2.0
    intrinsics[..., 2, 2] = 1.0
    return _like_input(extrinsics, pose_encoding), _like_input(intrinsics, pose_encoding)


def extrinsics_intrinsics_to_pose_encoding(
    extrinsics: ArrayOrTensor, intrinsics: ArrayOrTensor, image_size_hw: Sequence[int]
) -> ArrayOrTensor:
    """Encode cameras as the 9-D ``absT_quaR_FoV`` vector (inverse of the decoder above).

    Args:
        extrinsics: ``[..., 3, 4]`` world-to-camera ``[R | t]``.
        intrinsics: ``[..., 3, 3]``; only ``f_x`` and ``f_y`` are used (the principal point is
            ignored, as in the reference).
        image_size_hw: ``(H, W)`` in pixels.

    Returns:
        ``[..., 9]`` float32 ``[t, q_xyzw, fov_h, fov_w]``.
    """
    _check_trailing_shape("extrinsics", extrinsics, 3, (3, 4))
    _check_trailing_shape("intrinsics", intrinsics, 3, 3)
    height, width = (float(image_size_hw[0]), float(image_size_hw[1]))
    extr = _as_tensor(extrinsics)
    intr = _as_tensor(intrinsics, device=extr.device)

    quaternion = rotation_matrix_to_quaternion(extr[..., :3, :3])
    translation = extr[..., :3, 3]
    fov_h = 2.0 * torch.atan((height / 2.0) / intr[..., 1, 1])
    fov_w = 2.0 * torch.atan((width / 2.0) / intr[..., 0, 0])
    dtype = _common_dtype(translation, fov_h)
    encoding = torch.cat([
        translation.to(dtype), quaternion.to(dtype), fov_h[..., None].to(dtype),
        fov_w[..., None].to(dtype),
    ], dim=-1).to(torch.float32)
    return _like_input(encoding, extrinsics)


# --------------------------------------------------------------------------------------------
# Rigid transforms
# --------------------------------------------------------------------------------------------


def extrinsics_to_4x4(extrinsics: ArrayOrTensor) -> ArrayOrTensor:
    """Append the ``[0, 0, 0, 1]`` row.

    Args:
        extrinsics: ``[..., 3, 4]`` (a ``[..., 4, 4]`` input is returned as a copy).

    Returns:
        ``[..., 4, 4]`` in the input's dtype.
    """
    _check_trailing_shape("extrinsics", extrinsics, (3, 4), 4)
    extr = _as_tensor(extrinsics)
    if extr.shape[-2] == 4:
        return _like_input(extr.clone(), extrinsics)
    bottom = torch.zeros(extr.shape[:-2] + (1, 4), dtype=extr.dtype, device=extr.device)
    bottom[..., 0, 3] = 1.0
    return _like_input(torch.cat([extr, bottom], dim=-2), extrinsics)


def invert_se3(matrices: ArrayOrTensor) -> ArrayOrTensor:
    """Closed-form inverse of rigid transforms: ``[[Rᵀ, −Rᵀt], [0, 0, 0, 1]]``.

    Exact for rotations, cheaper and better conditioned than a general matrix inverse.

    Args:
        matrices: ``[..., 3, 4]`` or ``[..., 4, 4]`` ``[R | t]`` (the bottom row is ignored).

    Returns:
        ``[..., 4, 4]``. Numpy output is float64 (as the reference, which builds on ``eye(4)``);
        torch output keeps the input's dtype and device.
    """
    _check_trailing_shape("matrices", matrices, (3, 4), 4)
    transform = _as_tensor(matrices)
    if not isinstance(matrices, torch.Tensor):
        transform = transform.to(torch.float64)
    rotation_t = transform[..., :3, :3].transpose(-1, -2)
    translation = transform[..., :3, 3:]
    inverse = torch.zeros(transform.shape[:-2] + (4, 4), dtype=transform.dtype,
                          device=transform.device)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3:] = -rotation_t @ translation
    inverse[..., 3, 3] = 1.0
    return _like_input(inverse, matrices)


def camera_centers(extrinsics: ArrayOrTensor) -> ArrayOrTensor:
    """Camera centres in world coordinates, ``C = −Rᵀt``.

    Args:
        extrinsics: ``[..., 3, 4]`` (or ``[..., 4, 4]``) world-to-camera.

    Returns:
        ``[..., 3]`` in the input's dtype.
    """
    _check_trailing_shape("extrinsics", extrinsics, (3, 4), 4)
    extr = _as_tensor(extrinsics)
    rotation = extr[..., :3, :3]
    translation = extr[..., :3, 3]
    centres = -(rotation.transpose(-1, -2) @ translation[..., None])[..., 0]
    return _like_input(centres, extrinsics)


# --------------------------------------------------------------------------------------------
# Projection and unprojection (docs/architecture.md, *Conventions*)
# --------------------------------------------------------------------------------------------


def project_points(
    points: ArrayOrTensor, extrinsics: ArrayOrTensor, intrinsics: ArrayOrTensor
) -> tuple[ArrayOrTensor, ArrayOrTensor]:
    """Project world points into cameras.

    Leading dims broadcast, so shared points ``[P, 3]`` with cameras ``[S, 3, 4]`` / ``[S, 3, 3]``
    give ``[S, P, 2]``.

    Args:
        points: ``[..., P, 3]`` world points.
        extrinsics: ``[..., 3, 4]`` world-to-camera.
        intrinsics: ``[..., 3, 3]``.

    Returns:
        ``(pixels [..., P, 2], depth [..., P])``: ``pixels = (K·X_cam / z)[:2]`` in the intrinsics'
        pixel convention and ``depth = z`` of the camera-frame point. Points with ``z == 0`` that
        would give NaN get pixel 0 (the reference's default); other non-finite values are kept.
    """
    _check_trailing_shape("points", points, 3)
    _check_trailing_shape("extrinsics", extrinsics, 3, (3, 4))
    _check_trailing_shape("intrinsics", intrinsics, 3, 3)
    world = _as_tensor(points)
    extr = _as_tensor(extrinsics, device=world.device)
    intr = _as_tensor(intrinsics, device=world.device)
    dtype = _common_dtype(world, extr, intr)
    world, extr, intr = world.to(dtype), extr.to(dtype), intr.to(dtype)

    rotation = extr[..., :3, :3]
    translation = extr[..., :3, 3]
    camera_points = world @ rotation.transpose(-1, -2) + translation[..., None, :]
    depth = camera_points[..., 2]
    normalised = camera_points / depth[..., None]
    pixels = (normalised @ intr.transpose(-1, -2))[..., :2]
    pixels = torch.where(torch.isnan(pixels), torch.zeros_like(pixels), pixels)
    return _like_input(pixels, points), _like_input(depth, points)


def unproject_depth_map_to_world_points(
    depth: ArrayOrTensor, extrinsics: ArrayOrTensor, intrinsics: ArrayOrTensor
) -> ArrayOrTensor:
    """Lift depth maps to world points: one 3-D point per pixel.

    Pixel ``(u, v)`` uses integer indices (``u`` = column, ``v`` = row, no +0.5):
    ``X_cam = ((u − c_x)·d/f_x, (v − c_y)·d/f_y, d)`` and ``X_world = Rᵀ(X_cam − t)``.

    Args:
        depth: ``[S, H, W]`` or ``[S, H, W, 1]`` z-depth along the optical axis (any leading dims
            instead of ``S`` work as long as the cameras have the same ones).
        extrinsics: ``[S, 3, 4]`` world-to-camera.
        intrinsics: ``[S, 3, 3]`` with zero skew.

    Returns:
        ``[S, H, W, 3]`` world points. Numpy input gives float64 numpy with the camera-frame
        points rounded to float32 first, exactly like the reference; torch input gives a tensor in
        the promoted dtype of the inputs on the depth's device.

    Raises:
        ValueError: on mismatched shapes or a non-zero skew term.
    """
    _check_trailing_shape("extrinsics", extrinsics, 3, (3, 4))
    _check_trailing_shape("intrinsics", intrinsics, 3, 3)
    depth_map = _as_tensor(depth)
    extr = _as_tensor(extrinsics, device=depth_map.device)
    intr = _as_tensor(intrinsics, device=depth_map.device)

    camera_dims = extr.ndim - 2
    if depth_map.ndim == camera_dims + 3 and depth_map.shape[-1] == 1:
        depth_map = depth_map[..., 0]
    if depth_map.ndim != camera_dims + 2 or depth_map.shape[:-2] != extr.shape[:-2]:
        raise ValueError(
            f"depth shape {tuple(depth.shape)} does not match extrinsics {tuple(extr.shape)}")
    if intr.shape[:-2] != extr.shape[:-2]:
        raise ValueError(
            f"intrinsics shape {tuple(intr.shape)} does not match extrinsics {tuple(extr.shape)}")
    if bool((intr[..., 0, 1] != 0).any()):
        raise ValueError("intrinsics must have zero skew (K[0, 1] == 0)")

    numpy_input = not isinstance(depth, torch.Tensor)
    dtype = torch.float64 if numpy_input else _common_dtype(depth_map, extr, intr)
    depth_map, extr, intr = depth_map.to(dtype), extr.to(dtype), intr.to(dtype)

    height, width = depth_map.shape[-2:]
    columns = torch.arange(width, dtype=dtype, device=depth_map.device)
    rows = torch.arange(height, dtype=dtype, device=depth_map.device)

    def per_camera(values: torch.Tensor) -> torch.Tensor:
        return values[..., None, None]  # [...] -> [..., 1, 1] to broadcast over (H, W)

    x = (columns - per_camera(intr[..., 0, 2])) * depth_map / per_camera(intr[..., 0, 0])
    y = (rows[:, None] - per_camera(intr[..., 1, 2])) * depth_map / per_camera(intr[..., 1, 1])
    camera_points = torch.stack([x, y, depth_map], dim=-1)  # [..., H, W, 3]
    if numpy_input:
        # The reference stores camera-frame points as float32 before the float64 transform.
        camera_points = camera_points.to(torch.float32).to(torch.float64)

    rotation = extr[..., :3, :3]
    translation = extr[..., :3, 3]
    # Row-vector form of Rᵀ(X − t) is (X − t) @ R; flattening the pixel grid makes it one matmul.
    offsets = (camera_points - translation[..., None, None, :]).reshape(
        camera_points.shape[:-3] + (height * width, 3))
    world_points = (offsets @ rotation).reshape(camera_points.shape)
    return _like_input(world_points, depth)


# Unprojecting a few frames at a time bounds the float64 intermediates of the reference-exact
# unprojection (3 × [S, H, W, 3] float64) for long videos.
UNPROJECT_FRAMES_PER_CHUNK = 16


def unproject_depth_maps_in_frame_chunks(depth: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray, *,
                                         frames_per_chunk: int = UNPROJECT_FRAMES_PER_CHUNK) -> np.ndarray:
    """:func:`unproject_depth_map_to_world_points` of numpy arrays, ``frames_per_chunk`` frames at a
    time, stored as float32: the same numbers with a bounded float64 working set.

    Args:
        depth: ``[S, H, W]`` z-depth.
        extrinsics: ``[S, 3, 4]`` world-to-camera.
        intrinsics: ``[S, 3, 3]`` with zero skew.
        frames_per_chunk: frames unprojected at once (>= 1).

    Returns:
        ``[S, H, W, 3]`` float32 world points (NumPy).
    """
    if frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be >= 1, got {frames_per_chunk}")
    points = np.empty(np.shape(depth) + (3,), dtype=np.float32)
    for start in range(0, points.shape[0], frames_per_chunk):
        chunk = slice(start, start + frames_per_chunk)
        points[chunk] = unproject_depth_map_to_world_points(depth[chunk], extrinsics[chunk], intrinsics[chunk])
    return points
