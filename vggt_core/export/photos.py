"""The frames as photos at their original resolution, for exports that ship images with cameras.

The original files are used when the caller has them (the CLI does; the app keeps only the
reconstruction). Otherwise each stored model-input frame is warped back to the photo's size
with the inverse of its :class:`vggt_core.images.FrameTransform`: the result has the photo's
geometry (so the original-resolution intrinsics fit it) but only the model input's detail, and
parts the crop cut off (``--mode crop``) are black.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from ..atomic_files import atomic_writer
from ..frame_names import export_frame_file_names
from ..reconstruction import Reconstruction

__all__ = ["OriginalImage", "bundle_image_names", "photo_at_original_resolution", "write_photos"]

# A path to the photo, or the decoded (EXIF-upright) picture.
OriginalImage = Union[str, os.PathLike, Image.Image]
_JPEG_QUALITY = 95


def bundle_image_names(recon: Reconstruction) -> list[str]:
    """Unique, file-system and COLMAP-text safe names ``NNN_<stem>.jpg`` in frame order
    (:func:`vggt_core.frame_names.export_frame_file_name`)."""
    return export_frame_file_names(recon.frame_names, ".jpg")


def _open_original(original: OriginalImage) -> Image.Image:
    if isinstance(original, Image.Image):
        return original.convert("RGB")
    with Image.open(original) as image:
        # Sizes in the reconstruction are those after EXIF orientation.
        return ImageOps.exif_transpose(image).convert("RGB")


def photo_at_original_resolution(recon: Reconstruction, index: int,
                                 original: OriginalImage | None = None) -> tuple[Image.Image, bool]:
    """Frame ``index`` at its photo's size: ``(picture, True)`` from the original when it is given,
    readable and of the recorded size, else ``(picture, False)`` warped back from the model input."""
    width, height = (int(value) for value in recon.original_sizes[index])
    if original is not None:
        try:
            picture = _open_original(original)
        except (OSError, ValueError):
            picture = None
        if picture is not None and picture.size == (width, height):
            return picture, True
    sx, sy, ox, oy = (float(value) for value in recon.image_transforms[index])
    frame = Image.fromarray(np.ascontiguousarray(recon.images[index]))
    # PIL maps output (photo) pixel x to input (model) pixel a·x + b·y + c, corner convention.
    picture = frame.transform((width, height), Image.Transform.AFFINE, (sx, 0.0, ox, 0.0, sy, oy),
                              resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))
    return picture, False


def write_photos(recon: Reconstruction, directory: str | os.PathLike,
                 originals: Sequence[OriginalImage | None] | None = None, *, durable: bool = True) -> list[bool]:
    """Write every frame as ``directory/<bundle_image_names>`` (JPEG, quality 95).

    Returns:
        Per frame, whether the original photo was used (False: warped back from the model input).
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    used = []
    for index, name in enumerate(bundle_image_names(recon)):
        original = originals[index] if originals is not None and index < len(originals) else None
        picture, from_original = photo_at_original_resolution(recon, index, original)
        with atomic_writer(target / name, durable=durable) as handle:
            # Full-resolution chroma (4:4:4): trainers fit colours per pixel.
            picture.save(handle, format="JPEG", quality=_JPEG_QUALITY, subsampling=0)
        used.append(from_original)
    return used
