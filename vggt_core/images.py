"""Loading photos and turning them into the model's input tensor.

The pixel pipeline for ordinary 8-bit RGB/RGBA images reproduces the reference preprocessing
bit for bit (docs/architecture.md, *Image preprocessing*): the model was trained on exactly these resampled values,
so any deviation (another resampler, another rounding rule) shifts its predictions.

Beyond the reference, phone photos in HEIC open too (pillow-heif), images are turned upright
from their EXIF orientation, unusual PIL modes (16-bit, float, palette, CMYK, ...) are
converted to a sensible 8-bit RGB first, and every frame gets a :class:`FrameTransform` that
maps model-input pixels back to the photo.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import pillow_heif
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import DEFAULT_IMAGE_SIZE, PATCH_SIZE
from .errors import InputError

logger = logging.getLogger(__name__)

# Phones save HEIC by default; pillow-heif teaches PIL to open it (and HEIF/AVIF-in-HEIF).
pillow_heif.register_heif_opener()

DEFAULT_TARGET_SIZE = DEFAULT_IMAGE_SIZE
PREPROCESS_MODES = ("crop", "pad")

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".jfif", ".heic", ".heif"}
)

# Crop mode resizes the full height before cropping (needed for bit-exact parity), so a very
# tall sliver would allocate a huge intermediate; beyond this height/width ratio we refuse.
MAX_CROP_ASPECT_RATIO = 32

# White, as the reference uses for both transparency and padding.
PAD_VALUE = 1.0

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_EXIF_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class FrameTransform:
    """How one original photo maps to its slice of the model-input tensor.

    Continuous pixel coordinates with (0, 0) at the top-left corner of the top-left pixel
    (so pixel centres sit at half-integers): ``processed_xy = original_xy * scale + offset``.
    """

    name: str
    """File name, or ``image_NNN`` (position in the batch) for in-memory input."""
    original_size: tuple[int, int]
    """(width, height) of the photo after EXIF orientation."""
    scale: tuple[float, float]
    """(sx, sy) = resized size / original size."""
    offset: tuple[float, float]
    """(ox, oy) in processed pixels: cropping makes them negative, padding positive."""

    def processed_to_original(self, xy) -> np.ndarray:
        """Map points ``xy`` [..., 2] (x, y) in model-input pixels to photo pixels [..., 2]."""
        points = _as_points(xy)
        return (points - np.asarray(self.offset)) / np.asarray(self.scale)

    def original_to_processed(self, xy) -> np.ndarray:
        """Map points ``xy`` [..., 2] (x, y) in photo pixels to model-input pixels [..., 2]."""
        points = _as_points(xy)
        return points * np.asarray(self.scale) + np.asarray(self.offset)

    def intrinsics_to_original(self, intrinsics) -> np.ndarray:
        """Re-express camera intrinsics ``intrinsics`` [..., 3, 3] for the original photo.

        The processed image is ``A · original`` with A = [[sx,0,ox],[0,sy,oy],[0,0,1]], so the
        photo's intrinsics are ``A⁻¹ · K`` (fx/sx, fy/sy, (cx-ox)/sx, (cy-oy)/sy; skew too).
        """
        return _affine_matrix_inverse(self.scale, self.offset) @ _as_matrices(intrinsics)

    def intrinsics_to_processed(self, intrinsics) -> np.ndarray:
        """Inverse of :meth:`intrinsics_to_original`: ``intrinsics`` [..., 3, 3] -> [..., 3, 3]."""
        return _affine_matrix(self.scale, self.offset) @ _as_matrices(intrinsics)

    # The methods below take and give *model pixel indices*: the network's and the unprojection's
    # pixels, where pixel (u, v) sits at the integer (u, v) (docs/architecture.md, *Conventions*,
    # "Pixel centres"). In the corner-based coordinates above that pixel's centre is (u + ½, v + ½).

    def model_pixels_to_photo(self, xy) -> np.ndarray:
        """Map model pixel indices ``xy`` [..., 2] to photo pixels [..., 2] with the corner at 0
        (COLMAP's, OpenCV's and nerfstudio's convention: pixel ``i``'s centre at ``i + 0.5``)."""
        return self.processed_to_original(_as_points(xy) + MODEL_PIXEL_CENTRE)

    def photo_to_model_pixels(self, xy) -> np.ndarray:
        """Inverse of :meth:`model_pixels_to_photo`: ``xy`` [..., 2] -> [..., 2]."""
        return self.original_to_processed(xy) - MODEL_PIXEL_CENTRE

    def model_intrinsics_to_photo(self, intrinsics) -> np.ndarray:
        """Intrinsics ``[..., 3, 3]`` that project to model pixel indices, re-expressed to project
        to the photo's corner-based pixels: ``A⁻¹ · C · K`` with C the half-pixel shift, so a point
        unprojected from model pixel (u, v) projects onto the centre of the photo area it covers."""
        return _affine_matrix_inverse(self.scale, self.offset) @ _half_pixel_shift(+1) @ _as_matrices(intrinsics)

    def photo_intrinsics_to_model(self, intrinsics) -> np.ndarray:
        """Inverse of :meth:`model_intrinsics_to_photo`: ``intrinsics`` [..., 3, 3] -> [..., 3, 3]."""
        return _half_pixel_shift(-1) @ _affine_matrix(self.scale, self.offset) @ _as_matrices(intrinsics)


# Where a model pixel's centre lies in corner-based coordinates, relative to its index.
MODEL_PIXEL_CENTRE = 0.5


def _half_pixel_shift(sign: int) -> np.ndarray:
    """``[3, 3]``: adds ``sign · MODEL_PIXEL_CENTRE`` to projected x and y."""
    shift = sign * MODEL_PIXEL_CENTRE
    return np.array([[1.0, 0.0, shift], [0.0, 1.0, shift], [0.0, 0.0, 1.0]], dtype=np.float64)


def _as_points(xy) -> np.ndarray:
    points = np.asarray(xy, dtype=np.float64)
    if points.ndim == 0 or points.shape[-1] != 2:
        raise ValueError(f"expected points of shape [..., 2], got {points.shape}")
    return points


def _as_matrices(intrinsics) -> np.ndarray:
    matrices = np.asarray(intrinsics, dtype=np.float64)
    if matrices.ndim < 2 or matrices.shape[-2:] != (3, 3):
        raise ValueError(f"expected intrinsics of shape [..., 3, 3], got {matrices.shape}")
    return matrices


def _affine_matrix(scale: tuple[float, float], offset: tuple[float, float]) -> np.ndarray:
    return np.array(
        [[scale[0], 0.0, offset[0]], [0.0, scale[1], offset[1]], [0.0, 0.0, 1.0]], dtype=np.float64
    )


def _affine_matrix_inverse(scale: tuple[float, float], offset: tuple[float, float]) -> np.ndarray:
    sx, sy = scale
    ox, oy = offset
    return np.array(
        [[1.0 / sx, 0.0, -ox / sx], [0.0, 1.0 / sy, -oy / sy], [0.0, 0.0, 1.0]], dtype=np.float64
    )


# ----------------------------------------------------------------------------------------------
# Finding image files
# ----------------------------------------------------------------------------------------------


def natural_sort_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``frame2`` before ``frame10``."""
    parts = re.split(r"(\d+)", name)
    # Tag each piece so numbers and text never get compared with each other.
    key = tuple((0, int(part), "") if part.isdigit() else (1, 0, part.casefold()) for part in parts)
    # The raw name breaks ties such as "a01" vs "a1" deterministically.
    return key + ((1, 0, name),)


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder`` (not recursive), hidden ones skipped, in natural order."""
    folder_path = Path(folder)
    if not folder_path.is_dir():
        raise InputError(f"Image folder not found: {folder_path}")
    files = [
        entry
        for entry in folder_path.iterdir()
        if not entry.name.startswith(".")
        and entry.suffix.lower() in IMAGE_EXTENSIONS
        and entry.is_file()
    ]
    return sorted(files, key=lambda path: natural_sort_key(path.name))


# ----------------------------------------------------------------------------------------------
# Opening one image as 8-bit RGB
# ----------------------------------------------------------------------------------------------


def open_image_rgb(source: ImageSource, name: str | None = None) -> Image.Image:
    """Open a path, PIL image or uint8 array as an upright 8-bit RGB PIL image.

    An RGB PIL image without EXIF orientation is returned as is (not copied).

    ``name`` is only used in error messages (defaults to the file name).
    Raises :class:`InputError` for anything that cannot be read as an image.
    """
    label = name if name is not None else _source_name(source, 0)
    image = _read_image(source, label)
    image = _apply_exif_orientation(image)
    return _convert_to_rgb(image, label)


def _source_name(source: ImageSource, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    return f"image_{index:03d}"


def _read_image(source: ImageSource, label: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _image_from_array(source, label)
    if isinstance(source, (str, os.PathLike)):
        return _read_image_file(Path(source), label)
    raise InputError(
        f"{label}: unsupported input of type {type(source).__name__}; "
        "give a file path, a PIL image or a uint8 array"
    )


def _read_image_file(path: Path, label: str) -> Image.Image:
    if not path.exists():
        raise InputError(f"{label}: image file not found")
    if path.is_dir():
        raise InputError(f"{label} is a folder, not an image file")
    try:
        with Image.open(path) as image:
            # Decode now, while the file is open: a truncated file only fails here.
            image.load()
            # copy() keeps palette and "transparency" info but no longer needs the file.
            return image.copy()
    except Image.DecompressionBombError as error:
        logger.info("%s: %s", path, error)  # the details for the operator; the person gets a sentence
        raise InputError(f"{label}: image is too large to load safely (more than "
                         f"{Image.MAX_IMAGE_PIXELS or 0:,} pixels)") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        logger.info("%s: %s", path, error)
        raise InputError(f"{label}: not a readable image file (damaged, or not an image)") from error


def _image_from_array(array: np.ndarray, label: str) -> Image.Image:
    """Wrap a uint8 array [H, W], [H, W, 1], [H, W, 3] (RGB) or [H, W, 4] (RGBA) as a PIL image."""
    if array.dtype != np.uint8:
        raise InputError(f"{label}: image arrays must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    modes_by_channels = {3: "RGB", 4: "RGBA"}
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array), mode="L")
    if array.ndim == 3 and array.shape[2] in modes_by_channels:
        return Image.fromarray(np.ascontiguousarray(array), mode=modes_by_channels[array.shape[2]])
    raise InputError(f"{label}: image arrays must be [H, W] or [H, W, 1|3|4], got {array.shape}")


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make the photo unusable
        logger.warning("Ignoring unreadable EXIF data in %s", getattr(image, "filename", "image"))
        return image
    if orientation in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def _convert_to_rgb(image: Image.Image, label: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "RGBA":
        return _composite_on_white(image)
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_array_to_rgb(_sixteen_bit_to_uint8(np.asarray(image)))
    if mode == "F":
        return _gray_array_to_rgb(_float_to_uint8(np.asarray(image)))
    if _has_transparency(image):
        return _composite_on_white(_convert(image, "RGBA", label))
    return _convert(image, "RGB", label)


def _has_transparency(image: Image.Image) -> bool:
    return "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info


def _convert(image: Image.Image, mode: str, label: str) -> Image.Image:
    try:
        return image.convert(mode)
    except (ValueError, OSError) as error:
        logger.info("%s: converting %s to %s: %s", label, image.mode, mode, error)
        raise InputError(f"{label}: unsupported image mode {image.mode!r}") from error


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Flatten an RGBA image onto opaque white, as the reference does, and drop alpha."""
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale 16-bit samples [H, W] (0..65535) to uint8 [H, W]; 65535/257 = 255 exactly."""
    # Mode "I" is 32-bit but in practice holds 16-bit PNG data; out-of-range values are clipped.
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide + 128) // 257).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map float samples [H, W] to uint8: [0, 1] data is scaled by 255, anything else stretched."""
    finite = np.where(np.isfinite(values), values, 0.0).astype(np.float64)
    low, high = float(finite.min()), float(finite.max())
    if low >= 0.0 and high <= 1.0:
        unit = finite
    elif high > low:
        unit = (finite - low) / (high - low)
    else:
        unit = np.zeros_like(finite)
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def _gray_array_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray), mode="L").convert("RGB")


# ----------------------------------------------------------------------------------------------
# Resizing, cropping and padding
# ----------------------------------------------------------------------------------------------


def resized_size(width: int, height: int, mode: str, target_size: int) -> tuple[int, int]:
    """(W', H') the photo is resized to before cropping/padding; 0 means "too thin"."""

    def scaled_to_patches(side: int, reference_side: int) -> int:
        # Same float expression and Python round (ties to even) as the reference: changing the
        # order of operations changes which way exact ties round.
        return round(side * (target_size / reference_side) / PATCH_SIZE) * PATCH_SIZE

    if mode == "pad" and height > width:
        return scaled_to_patches(width, height), target_size
    return target_size, scaled_to_patches(height, width)


def _check_target_size(target_size: int) -> None:
    valid = (
        isinstance(target_size, (int, np.integer))
        and not isinstance(target_size, bool)
        and target_size > 0
        and target_size % PATCH_SIZE == 0
    )
    if not valid:
        raise InputError(
            f"target_size must be a positive multiple of {PATCH_SIZE}, got {target_size!r}"
        )


def _check_mode(mode: str) -> None:
    if mode not in PREPROCESS_MODES:
        raise InputError(f"mode must be one of {PREPROCESS_MODES}, got {mode!r}")


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor [3, H, W] in [0, 1] (what torchvision's ToTensor gives)."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
    return pixels.permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def _centre_padding(size: int, padded_size: int) -> int:
    """Padding before the content (top or left); the larger half goes after, as in the reference."""
    return (padded_size - size) // 2


def _pad_white(image: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int, int]:
    """Centre ``image`` [3, h, w] on a white canvas [3, height, width]; returns it, left and top."""
    _, current_height, current_width = image.shape
    if (current_height, current_width) == (height, width):
        return image, 0, 0
    top = _centre_padding(current_height, height)
    left = _centre_padding(current_width, width)
    canvas = torch.full((image.shape[0], height, width), PAD_VALUE, dtype=image.dtype)
    canvas[:, top : top + current_height, left : left + current_width] = image
    return canvas, left, top


def image_size_problem(width: int, height: int, mode: str = "crop",
                       target_size: int = DEFAULT_TARGET_SIZE) -> str | None:
    """Why a ``width`` x ``height`` photo cannot be reconstructed (one sentence), or None."""
    if width == 0 or height == 0:
        return f"image is empty ({width}x{height} pixels)"
    if width < PATCH_SIZE or height < PATCH_SIZE:
        # Upsampling a few pixels to 518 would only invent detail: the model would see a blur.
        return (f"image is too small ({width}x{height} pixels); it must be at least {PATCH_SIZE} pixels on "
                f"each side to hold one {PATCH_SIZE}-pixel patch")
    new_width, new_height = resized_size(width, height, mode, target_size)
    if new_width == 0 or new_height == 0:
        return (f"image is too small or too thin ({width}x{height} pixels): resizing it to {target_size} "
                f"pixels leaves less than one {PATCH_SIZE}-pixel patch in one direction")
    if new_height > MAX_CROP_ASPECT_RATIO * target_size:
        return (f"image is too tall and thin for crop mode ({width}x{height} pixels; at most "
                f"{MAX_CROP_ASPECT_RATIO} times taller than wide); try pad mode")
    return None


def _preprocess_one(
    image: Image.Image, name: str, mode: str, target_size: int
) -> tuple[torch.Tensor, FrameTransform]:
    """RGB photo -> tensor [3, H, W] (before batch padding) and its transform."""
    original_width, original_height = image.size
    problem = image_size_problem(original_width, original_height, mode, target_size)
    if problem is not None:
        raise InputError(f"{name}: {problem}")
    new_width, new_height = resized_size(original_width, original_height, mode, target_size)
    tensor = _pil_to_tensor(image.resize((new_width, new_height), Image.Resampling.BICUBIC))

    offset_x, offset_y = 0, 0
    if mode == "crop" and new_height > target_size:
        first_row = (new_height - target_size) // 2
        tensor = tensor[:, first_row : first_row + target_size, :]
        offset_y = -first_row
    elif mode == "pad":
        tensor, offset_x, offset_y = _pad_white(tensor, target_size, target_size)

    transform = FrameTransform(
        name=name,
        original_size=(original_width, original_height),
        scale=(new_width / original_width, new_height / original_height),
        offset=(float(offset_x), float(offset_y)),
    )
    return tensor, transform


def _pad_to_common_size(
    tensors: list[torch.Tensor], transforms: list[FrameTransform]
) -> tuple[list[torch.Tensor], list[FrameTransform]]:
    """Pad every [3, h, w] frame with white to the batch's largest height and width."""
    max_height = max(tensor.shape[1] for tensor in tensors)
    max_width = max(tensor.shape[2] for tensor in tensors)
    if all(tensor.shape[1:] == (max_height, max_width) for tensor in tensors):
        return tensors, transforms
    logger.warning(
        "Images have different shapes after preprocessing; padding all of them with white to "
        "%dx%d (width x height)",
        max_width,
        max_height,
    )
    padded_tensors, shifted_transforms = [], []
    for tensor, transform in zip(tensors, transforms):
        padded, left, top = _pad_white(tensor, max_height, max_width)
        padded_tensors.append(padded)
        shifted_transforms.append(
            FrameTransform(
                name=transform.name,
                original_size=transform.original_size,
                scale=transform.scale,
                offset=(transform.offset[0] + left, transform.offset[1] + top),
            )
        )
    return padded_tensors, shifted_transforms


def model_input_size(sizes: Iterable[tuple[int, int]], mode: str = "crop",
                     target_size: int = DEFAULT_TARGET_SIZE) -> tuple[int, int]:
    """``(H, W)`` of the model-input batch for photos of ``sizes`` (upright ``(width, height)``),
    without decoding them: what :func:`load_images` would produce (too-small photos ignored)."""
    heights, widths = [], []
    for width, height in sizes:
        new_width, new_height = resized_size(int(width), int(height), mode, target_size)
        if mode == "pad":
            new_width = new_height = target_size
        widths.append(new_width)
        heights.append(min(new_height, target_size) if mode == "crop" else new_height)
    if not widths:
        raise InputError("No images were given")
    return max(heights), max(widths)


def _as_source_list(sources: ImageSource | Iterable[ImageSource]) -> list[ImageSource]:
    # A lone path/image/array is a batch of one; note that a str is itself iterable.
    if isinstance(sources, (str, os.PathLike, Image.Image, np.ndarray)):
        return [sources]
    return list(sources)


def load_images(
    paths_or_images: ImageSource | Sequence[ImageSource],
    mode: str = "crop",
    target_size: int = DEFAULT_TARGET_SIZE,
    return_transforms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[FrameTransform]]:
    """Load photos into the model-input batch.

    ``paths_or_images``: file paths, PIL images and/or uint8 arrays (or one of them).
    ``mode``: ``"crop"`` (width = target_size, taller images centre-cropped to target_size
    rows) or ``"pad"`` (longer side = target_size, padded with white to a square).

    Returns a float32 tensor [S, 3, H, W] in [0, 1]; with ``return_transforms`` also one
    :class:`FrameTransform` per frame, in the same order.

    Raises :class:`InputError` naming the file for an unreadable or non-image file, an image
    smaller than one patch (14 pixels) on either side, or one so thin that resizing leaves no
    patch row; and for empty input.
    """
    _check_mode(mode)
    _check_target_size(target_size)
    sources = _as_source_list(paths_or_images)
    if not sources:
        raise InputError("No images were given")

    tensors, transforms = [], []
    for index, source in enumerate(sources):
        name = _source_name(source, index)
        image = open_image_rgb(source, name)
        tensor, transform = _preprocess_one(image, name, mode, int(target_size))
        tensors.append(tensor)
        transforms.append(transform)

    tensors, transforms = _pad_to_common_size(tensors, transforms)
    batch = torch.stack(tensors)
    if return_transforms:
        return batch, transforms
    return batch
