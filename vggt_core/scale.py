"""Real-world scale: VGGT's lengths are in arbitrary units, one known distance fixes them.

A person marks two pixels of the photos whose true distance they know (a door's width, a
table's length). Their 3-D points come from the chosen prediction branch, and the ratio of the
true to the reconstructed distance is the factor that :meth:`Reconstruction.scaled` applies.
See docs/scene.md, "Real-world scale".
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import InputError
from .reconstruction import Reconstruction

__all__ = ["LENGTH_UNITS", "PhotoPixel", "point_at_photo_pixel", "distance_between_photo_pixels",
           "scale_from_known_distance"]

# Units a scene can be given, with their length in metres (for conversions between them).
LENGTH_UNITS: dict[str, float] = {"mm": 0.001, "cm": 0.01, "m": 1.0, "km": 1000.0,
                                  "in": 0.0254, "ft": 0.3048, "yd": 0.9144}

# (frame index, x, y): a pixel of the original photo, continuous coordinates with (0, 0) at
# the top-left corner of the top-left pixel (the convention of FrameTransform).
PhotoPixel = Sequence[float]


def _branch_points(recon: Reconstruction, branch: str) -> np.ndarray:
    if branch == "point":
        if recon.world_points is None:
            raise InputError("this reconstruction has no point-map branch; measure on the depth branch")
        return recon.world_points
    if branch != "depth":
        raise InputError(f"unknown prediction branch {branch!r}; choose 'depth' or 'point'")
    return recon.points_from_depth


def point_at_photo_pixel(recon: Reconstruction, pixel: PhotoPixel, *, branch: str = "depth") -> np.ndarray:
    """The 3-D world point ``[3]`` (float64) that the model predicted at a photo pixel.

    The photo position is mapped to model-input pixels through the frame's
    :class:`~vggt_core.images.FrameTransform`, and the model-input pixel that contains it is
    read (no interpolation: across a depth edge an average would be a point on neither side).

    Raises:
        InputError: malformed pixel, unknown frame, a pixel outside what the model saw (cropped
            away) or without a finite prediction.
    """
    try:
        frame, x, y = pixel
        frame = int(frame)
        x, y = float(x), float(y)
    except (TypeError, ValueError) as error:
        raise InputError(f"a measured point must be (frame, x, y), got {pixel!r}") from error
    if not 0 <= frame < recon.num_frames:
        raise InputError(f"frame {frame} does not exist; the reconstruction has {recon.num_frames} frames")
    if not (math.isfinite(x) and math.isfinite(y)):
        raise InputError("a measured point's pixel coordinates must be finite numbers")
    points = _branch_points(recon, branch)
    column, row = recon.frame_transform(frame).original_to_processed([x, y])
    height, width = recon.image_size_hw
    column, row = int(math.floor(column)), int(math.floor(row))
    if not (0 <= column < width and 0 <= row < height):
        raise InputError(f"the point ({x:.0f}, {y:.0f}) of frame {frame} lies outside the part of the photo "
                         "the model saw (it was cropped away); pick a point nearer the middle")
    point = points[frame, row, column].astype(np.float64)
    if not np.isfinite(point).all():
        raise InputError(f"the model predicted no valid point at ({x:.0f}, {y:.0f}) of frame {frame}")
    return point


def distance_between_photo_pixels(recon: Reconstruction, a: PhotoPixel, b: PhotoPixel, *,
                                  branch: str = "depth") -> float:
    """Distance in scene units between the points predicted at photo pixels ``a`` and ``b``
    (each ``(frame, x, y)``; they may lie in different frames)."""
    return float(np.linalg.norm(point_at_photo_pixel(recon, a, branch=branch)
                                - point_at_photo_pixel(recon, b, branch=branch)))


def scale_from_known_distance(recon: Reconstruction, a: PhotoPixel, b: PhotoPixel, length: float, *,
                              branch: str = "depth") -> float:
    """The factor that makes the distance between photo pixels ``a`` and ``b`` equal ``length``.

    ``recon.scaled(factor, units)`` then gives the scene in the unit ``length`` is in.

    Args:
        recon: the reconstruction.
        a, b: ``(frame_index, x, y)`` in the original photo's pixels.
        length: the true distance, > 0.
        branch: measure on the ``"depth"`` branch (depth + cameras) or the ``"point"`` map.

    Raises:
        InputError: a bad length, a bad pixel, or two pixels at the same 3-D point.
    """
    try:
        length = float(length)
    except (TypeError, ValueError) as error:
        raise InputError(f"the true length must be a number, got {length!r}") from error
    if not math.isfinite(length) or length <= 0.0:
        raise InputError(f"the true length must be a number > 0, got {length:g}")
    distance = distance_between_photo_pixels(recon, a, b, branch=branch)
    if not distance > 0.0:
        raise InputError("the two points are the same 3-D point; pick two points some distance apart")
    return length / distance
