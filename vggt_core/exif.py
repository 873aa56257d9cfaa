"""Focal lengths that cameras write into their photos' EXIF, in pixels.

Two routes, in this order (see docs/scene.md, "Known focal lengths"):

1. ``FocalLengthIn35mmFilm``: the focal length a full-frame (36 × 24 mm) camera would need for
   the same field of view. We define the equivalence by the diagonal, as the CIPA standard and
   most phones do: ``f_px = f35 · diagonal_px / 43.267`` (43.267 mm is the 36 × 24 mm diagonal).
2. ``FocalLength`` (mm) with the sensor's pixel density ``FocalPlaneXResolution`` per
   ``FocalPlaneResolutionUnit``; when ``PixelXDimension`` says the photo was saved at another
   width than the sensor's, the density is rescaled to the stored width.

A tag that is missing, zero or unreadable never gives a number: the result is None.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from PIL import ExifTags, Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

__all__ = ["FULL_FRAME_DIAGONAL_MM", "exif_focal_length_px", "focal_length_px_from_35mm"]

FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # 43.267 mm

_TAG = ExifTags.Base
# FocalPlaneResolutionUnit → millimetres per unit. 1 ("no absolute unit") has no length.
_RESOLUTION_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
_DEFAULT_RESOLUTION_UNIT = 2  # the EXIF default: inches
# Orientations 5-8 turn the photo by 90°: its shown width is the stored height.
_QUARTER_TURN_ORIENTATIONS = frozenset({5, 6, 7, 8})


def focal_length_px_from_35mm(focal_35mm: float, width: int, height: int) -> float:
    """Pixels of a ``width × height`` photo whose 35 mm-equivalent focal length is ``focal_35mm``."""
    return float(focal_35mm) * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM


def _positive_number(value) -> float | None:
    """A tag value (int, IFDRational, tuple of numerator/denominator) as a float > 0, else None."""
    if isinstance(value, tuple) and len(value) == 2:
        numerator, denominator = value
        value = numerator / denominator if denominator else 0
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _tag(exif: Image.Exif, sub_ifd: dict, tag: int):
    # Cameras write these in the Exif sub-IFD; a few tools put them in IFD0.
    return sub_ifd.get(tag, exif.get(tag))


def exif_focal_length_px(path: str | os.PathLike) -> float | None:
    """The focal length in pixels of the photo at ``path`` as shown (after its EXIF rotation),
    or None when its EXIF gives none (no EXIF, missing or zero tags, unreadable file)."""
    try:
        with Image.open(Path(path)) as image:
            stored_width, stored_height = image.size
            exif = image.getexif()
            sub_ifd = dict(exif.get_ifd(ExifTags.IFD.Exif))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        logger.debug("no EXIF focal length for %s: %s", path, error)
        return None
    except Exception as error:  # noqa: BLE001 - a broken EXIF block must not break a reconstruction
        logger.warning("ignoring unreadable EXIF data in %s (%s)", path, error)
        return None
    if stored_width <= 0 or stored_height <= 0:
        return None

    focal_35mm = _positive_number(_tag(exif, sub_ifd, _TAG.FocalLengthIn35mmFilm))
    if focal_35mm is not None:
        # The diagonal is the same before and after a rotation.
        return focal_length_px_from_35mm(focal_35mm, stored_width, stored_height)

    focal_mm = _positive_number(_tag(exif, sub_ifd, _TAG.FocalLength))
    resolution = _positive_number(_tag(exif, sub_ifd, _TAG.FocalPlaneXResolution))
    unit = _tag(exif, sub_ifd, _TAG.FocalPlaneResolutionUnit)
    unit_mm = _RESOLUTION_UNIT_MM.get(_DEFAULT_RESOLUTION_UNIT if unit is None else _as_int(unit))
    if focal_mm is None or resolution is None or unit_mm is None:
        return None
    pixels_per_mm = resolution / unit_mm
    # FocalPlaneXResolution counts sensor pixels along the *stored* image's x axis. If the photo
    # was saved smaller than the sensor's width (PixelXDimension), its pixels are larger. The
    # stored x axis is the shown y axis for quarter-turned photos; with square pixels the focal
    # length in pixels is the same along both axes, so only the stored width matters here.
    sensor_width = _positive_number(_tag(exif, sub_ifd, _TAG.ExifImageWidth))
    if sensor_width is not None and round(sensor_width) != stored_width:
        pixels_per_mm *= stored_width / sensor_width
    return focal_mm * pixels_per_mm


def _as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def shown_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(width, height)`` of a photo after its EXIF rotation, or None if unreadable."""
    try:
        with Image.open(Path(path)) as image:
            width, height = image.size
            orientation = image.getexif().get(_TAG.Orientation, 1)
    except Exception:  # noqa: BLE001 - any unreadable file simply has no size
        return None
    return (height, width) if orientation in _QUARTER_TURN_ORIENTATIONS else (width, height)
