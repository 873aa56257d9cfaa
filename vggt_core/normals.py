"""Surface normals per view, computed from the depth maps (see docs/surfaces.md, *Normal maps*).

Each pixel is unprojected into its own camera's frame; the normal is the cross product of the
point's differences to its neighbours along the row and along the column. Of the two neighbours
on each axis (forward and backward), the one whose depth differs less is used: at a depth edge
the other one lies on another surface and would tilt the normal towards the jump.

Normals are in **OpenCV camera axes** (x right, y down, z forward), unit length, and turned to
face the camera (a wall seen head-on is ``(0, 0, -1)``). Pixels without a finite positive depth
on themselves and on at least one neighbour per axis are NaN.

For display, :func:`colorize_normal_maps` uses the usual normal-map encoding in **OpenGL camera
axes** (x right, y up, z towards the viewer), ``rgb = (n·0.5 + 0.5)·255``: a surface facing the
camera is the familiar light blue (128, 128, 255), a floor seen from above is greenish.
"""

from __future__ import annotations

import numpy as np

__all__ = ["normal_maps_from_depth", "colorize_normal_maps", "OPENCV_TO_OPENGL_CAMERA"]

# The axis flip from OpenCV camera axes to OpenGL camera axes (y up, z backwards).
OPENCV_TO_OPENGL_CAMERA = np.array([1.0, -1.0, -1.0], dtype=np.float32)


def _camera_points(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """``depth [S, H, W]`` and ``intrinsics [S, 3, 3]`` → camera-frame points ``[S, H, W, 3]``
    float32, NaN where the depth is not finite and positive."""
    num_frames, height, width = depth.shape
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float32)
    columns = np.arange(width, dtype=np.float32)[None, None, :]
    rows = np.arange(height, dtype=np.float32)[None, :, None]
    fx, fy = intrinsics[:, 0, 0, None, None], intrinsics[:, 1, 1, None, None]
    cx, cy = intrinsics[:, 0, 2, None, None], intrinsics[:, 1, 2, None, None]
    x = (columns - cx) / fx * depth
    y = (rows - cy) / fy * depth
    return np.stack([x, y, depth], axis=-1).astype(np.float32, copy=False)


def _tangent(points: np.ndarray, axis: int) -> np.ndarray:
    """Difference to the neighbour along ``axis`` (1 = rows, 2 = columns) of ``points [S, H, W, 3]``
    whose depth is closer (forward or backward difference), NaN where neither exists."""
    forward = np.full_like(points, np.nan)
    backward = np.full_like(points, np.nan)
    head = [slice(None)] * 4
    tail = [slice(None)] * 4
    head[axis], tail[axis] = slice(1, None), slice(None, -1)
    difference = points[tuple(head)] - points[tuple(tail)]
    forward[tuple(tail)] = difference
    backward[tuple(head)] = difference
    forward_jump = np.abs(forward[..., 2])
    backward_jump = np.abs(backward[..., 2])
    # NaN compares False, so a missing forward neighbour picks the backward one.
    use_forward = (forward_jump <= backward_jump) | np.isnan(backward_jump)
    return np.where(use_forward[..., None], forward, backward)


def normal_maps_from_depth(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Unit normals per pixel in each frame's OpenCV camera axes, facing the camera.

    Args:
        depth: ``[S, H, W]`` z-depth (non-finite or ≤ 0 = no depth).
        intrinsics: ``[S, 3, 3]`` in the depth maps' pixels.

    Returns:
        ``[S, H, W, 3]`` float32 unit vectors, NaN where undefined (no depth on the pixel, or
        on both neighbours along a row or a column).
    """
    depth = np.asarray(depth, dtype=np.float32)
    intrinsics = np.asarray(intrinsics, dtype=np.float32)
    if depth.ndim != 3 or intrinsics.shape != (depth.shape[0], 3, 3):
        raise ValueError(f"depth must be [S, H, W] and intrinsics [S, 3, 3], got {depth.shape} and {intrinsics.shape}")
    points = _camera_points(depth, intrinsics)
    along_columns = _tangent(points, axis=2)  # ∂P/∂u
    along_rows = _tangent(points, axis=1)     # ∂P/∂v
    normals = np.cross(along_columns, along_rows)
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normals = normals / length
    normals[~(length[..., 0] > 0)] = np.nan
    # Face the camera: the normal and the viewing ray (the point itself) point opposite ways.
    facing_away = np.einsum("shwc,shwc->shw", normals, points) > 0
    normals[facing_away] *= -1.0
    return normals.astype(np.float32, copy=False)


def colorize_normal_maps(normals: np.ndarray) -> np.ndarray:
    """The usual normal-map colours of normals in OpenCV camera axes.

    Args:
        normals: ``[S, H, W, 3]`` (or one ``[H, W, 3]``) unit normals, OpenCV camera axes,
            NaN where undefined (as :func:`normal_maps_from_depth` gives them).

    Returns:
        ``[S, H, W, 3]`` uint8 RGB ``round((n_gl·0.5 + 0.5)·255)`` with ``n_gl`` the normal in
        OpenGL camera axes (x right, y up, z towards the viewer); undefined pixels are black.
    """
    maps = np.asarray(normals, dtype=np.float32)
    if maps.ndim == 3:
        maps = maps[None]
    if maps.ndim != 4 or maps.shape[-1] != 3:
        raise ValueError(f"normals must have shape [S, H, W, 3], got {maps.shape}")
    valid = np.isfinite(maps).all(axis=-1)
    opengl = np.nan_to_num(maps) * OPENCV_TO_OPENGL_CAMERA
    colours = np.rint(np.clip(opengl * 0.5 + 0.5, 0.0, 1.0) * 255.0).astype(np.uint8)
    colours[~valid] = 0
    return colours
