"""Binary PLY point clouds with colour and confidence.

The file is one header plus one packed little-endian structured array: writing it is a
single ``tobytes`` call, fast even for millions of points, and readable by MeshLab,
CloudCompare, Open3D and trimesh.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic_files import atomic_writer
from ..filtering import PointSelection, ViewSettings, select_points
from ..reconstruction import Reconstruction

__all__ = ["PLY_VERTEX_DTYPE", "write_ply", "export_ply"]

# Field order is the on-disk order; "<" pins little-endian whatever the host is.
PLY_VERTEX_DTYPE = np.dtype([
    ("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
    ("red", "u1"), ("green", "u1"), ("blue", "u1"),
    ("confidence", "<f4"),
])

_PLY_TYPE_NAMES = {np.dtype("<f4"): "float", np.dtype("u1"): "uchar"}


def _header(num_points: int, comments: tuple[str, ...] = ()) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0", "comment written by vggt_core",
             *(f"comment {comment}" for comment in comments), f"element vertex {num_points}"]
    for name in PLY_VERTEX_DTYPE.names:
        lines.append(f"property {_PLY_TYPE_NAMES[PLY_VERTEX_DTYPE[name]]} {name}")
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def write_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray,
              confidence: np.ndarray, comments: tuple[str, ...] = (), *, durable: bool = True) -> Path:
    """Write a binary little-endian PLY, atomically (``durable=False`` skips the fsync).

    Args:
        path: output file.
        points: ``[N, 3]`` positions (stored as float32).
        colors: ``[N, 3]`` uint8 RGB.
        confidence: ``[N]`` (stored as float32).
        comments: extra one-line header comments (e.g. ``"units m"``).

    Returns:
        ``path`` as a :class:`Path`.
    """
    points = np.asarray(points)
    num_points = len(points)
    if points.shape != (num_points, 3) or np.shape(colors) != (num_points, 3) \
            or np.shape(confidence) != (num_points,):
        raise ValueError(f"inconsistent shapes: points {points.shape}, colors {np.shape(colors)}, "
                         f"confidence {np.shape(confidence)}")
    vertices = np.empty(num_points, dtype=PLY_VERTEX_DTYPE)
    for axis, name in enumerate(("x", "y", "z")):
        vertices[name] = points[:, axis]
    for channel, name in enumerate(("red", "green", "blue")):
        vertices[name] = np.asarray(colors, dtype=np.uint8)[:, channel]
    vertices["confidence"] = confidence
    target = Path(path)
    with atomic_writer(target, durable=durable) as handle:
        handle.write(_header(num_points, tuple(" ".join(str(c).split()) for c in comments)))
        handle.write(vertices.tobytes())
    return target


def export_ply(recon: Reconstruction, path: str | os.PathLike,
               settings: ViewSettings = ViewSettings(), *, durable: bool = True,
               selection: PointSelection | None = None) -> Path:
    """Write the points that pass ``settings`` (world coordinates, no viewer alignment);
    ``selection`` is ``select_points(recon, settings)`` when the caller already has it."""
    if selection is None:
        selection = select_points(recon, settings)
    return write_ply(path, selection.points, selection.colors, selection.confidence,
                     comments=(f"units {recon.units or 'arbitrary'}", f"scale_factor {recon.scale_factor:.9g}"),
                     durable=durable)
