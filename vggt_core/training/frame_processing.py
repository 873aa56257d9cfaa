"""Per-frame crop, resize and unprojection with the intrinsics kept exact.

Pixel convention: the centre of pixel (row v, column u) is at (u, v). Both crops are centred on the
principal point, so after processing it sits within a pixel of the image centre, which is where
the camera head's encoding assumes it. See docs/training.md, "Data".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

SCALE_AUG_RANGE = (0.8, 1.2)
RESIZE_MARGIN_PIXELS = 4
RESIZE_MARGIN_AUG_MAX = 0.3   # the random extra margin, as a fraction of the target's longer side
DEPTH_VALID_MIN = 1e-8


def target_shape_for_aspect(aspect: float, width: int = 518, patch_size: int = 14) -> tuple[int, int]:
    """``(H_t, W_t)``: ``W_t = width``, ``H_t = int(width·aspect)`` rounded down to a multiple of the patch."""
    height = int(width * aspect) // patch_size * patch_size
    return max(height, patch_size), width


def _centred_window(centre: float, half_size: float, length: int) -> tuple[int, int]:
    """``(start, end)`` of a window of ``2·⌊half⌋`` pixels centred on ``centre``, inside ``[0, length)``."""
    half = min(half_size, centre, length - centre)
    start = math.floor(centre) - math.floor(half)
    return start, start + 2 * math.floor(half)


def crop_around_principal_point(image: np.ndarray, depth: np.ndarray | None, intrinsic: np.ndarray,
                                size_hw: tuple[int, int]):
    """Crop to at most ``size_hw``, symmetric about the principal point (never past the image).

    Args:
        image: ``[H, W, 3]``; depth: ``[H, W]`` or None; intrinsic: ``[3, 3]``.

    Returns:
        ``(image, depth, intrinsic, (row_start, row_end), (col_start, col_end))``; the intrinsic is a copy.
    """
    height, width = image.shape[:2]
    intrinsic = intrinsic.astype(np.float64).copy()
    rows = _centred_window(intrinsic[1, 2], size_hw[0] / 2.0, height)
    cols = _centred_window(intrinsic[0, 2], size_hw[1] / 2.0, width)
    intrinsic[1, 2] -= rows[0]
    intrinsic[0, 2] -= cols[0]
    image = image[rows[0]:rows[1], cols[0]:cols[1]]
    if depth is not None:
        depth = depth[rows[0]:rows[1], cols[0]:cols[1]]
    return image, depth, intrinsic, rows, cols


def resize_factor(size_hw: tuple[int, int], target_hw: tuple[int, int], margin: float) -> tuple[float, tuple[int, int]]:
    """``(f, (H', W'))``: the smallest scale that covers the target plus ``margin`` pixels."""
    height, width = size_hw
    factor = max((target_hw[0] + margin) / height, (target_hw[1] + margin) / width)
    return factor, (math.floor(height * factor), math.floor(width * factor))


def resize_with_intrinsics(image: np.ndarray, depth: np.ndarray | None, intrinsic: np.ndarray,
                           target_hw: tuple[int, int], margin: float):
    """Resize so that ``target_hw`` plus ``margin`` fits; scale K with pixel centres kept aligned.

    Images use Lanczos when shrinking and bicubic when enlarging; depth uses nearest neighbour
    (interpolating depth would invent points between surfaces).

    Returns:
        ``(image, depth, intrinsic)``.
    """
    height, width = image.shape[:2]
    _, (new_height, new_width) = resize_factor((height, width), target_hw, margin)
    factor = max(new_height / height, new_width / width)
    resample = Image.LANCZOS if factor < 1 else Image.BICUBIC
    image = np.asarray(Image.fromarray(image).resize((new_width, new_height), resample))
    if depth is not None:
        depth = np.asarray(Image.fromarray(depth.astype(np.float32), mode="F").resize(
            (new_width, new_height), Image.NEAREST))
    intrinsic = intrinsic.copy()
    intrinsic[:2, :2] *= factor
    intrinsic[:2, 2] = (intrinsic[:2, 2] + 0.5) * factor - 0.5
    return image, depth, intrinsic


def exact_crop(image: np.ndarray, depth: np.ndarray | None, intrinsic: np.ndarray, target_hw: tuple[int, int]):
    """Crop to exactly ``target_hw`` around the principal point; zero-pad bottom/right if short.

    Returns:
        ``(image [H_t, W_t, 3], depth [H_t, W_t] or None, intrinsic, (row_start, col_start))``.
    """
    intrinsic = intrinsic.copy()
    row_start = math.floor(intrinsic[1, 2]) - math.floor(min(target_hw[0] / 2.0, intrinsic[1, 2]))
    col_start = math.floor(intrinsic[0, 2]) - math.floor(min(target_hw[1] / 2.0, intrinsic[0, 2]))
    intrinsic[1, 2] -= row_start
    intrinsic[0, 2] -= col_start
    out_image = np.zeros(target_hw + image.shape[2:], dtype=image.dtype)
    piece = image[row_start:row_start + target_hw[0], col_start:col_start + target_hw[1]]
    out_image[:piece.shape[0], :piece.shape[1]] = piece
    out_depth = None
    if depth is not None:
        out_depth = np.zeros(target_hw, dtype=np.float32)
        piece = depth[row_start:row_start + target_hw[0], col_start:col_start + target_hw[1]]
        out_depth[:piece.shape[0], :piece.shape[1]] = piece
    return out_image, out_depth, intrinsic, (row_start, col_start)


def unproject(depth: np.ndarray, extrinsic: np.ndarray, intrinsic: np.ndarray):
    """Camera- and world-frame points of every pixel.

    Args:
        depth: ``[H, W]`` z-depth; extrinsic: ``[3, 4]`` camera-from-world; intrinsic: ``[3, 3]``.

    Returns:
        ``(cam_points [H, W, 3], world_points [H, W, 3], mask [H, W] bool)``, float32 points.
    """
    height, width = depth.shape
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    fx, fy, cx, cy = (np.float32(intrinsic[0, 0]), np.float32(intrinsic[1, 1]),
                      np.float32(intrinsic[0, 2]), np.float32(intrinsic[1, 2]))
    depth = depth.astype(np.float32)
    cam_points = np.stack([(cols - cx) * depth / fx, (rows - cy) * depth / fy, depth], axis=-1)
    rotation = extrinsic[:, :3].astype(np.float64)
    translation = extrinsic[:, 3].astype(np.float64)
    world_points = (cam_points.astype(np.float64) - translation) @ rotation  # Rᵀ(X − t) for row vectors
    return cam_points, world_points.astype(np.float32), depth > DEPTH_VALID_MIN


@dataclass
class ProcessedFrame:
    image: np.ndarray        # [H_t, W_t, 3] uint8
    depth: np.ndarray        # [H_t, W_t] float32, 0 = invalid
    intrinsic: np.ndarray    # [3, 3] float64


def process_frame(image: np.ndarray, depth: np.ndarray | None, intrinsic: np.ndarray, target_hw: tuple[int, int],
                  rng: np.random.Generator | None = None) -> ProcessedFrame:
    """Scale-augmented crop, resize with margin, exact crop (``rng`` None: no augmentation).

    Args:
        image: ``[H, W, 3]`` uint8; depth: ``[H, W]`` float or None; intrinsic: ``[3, 3]`` pixels.
    """
    height, width = image.shape[:2]
    if depth is not None and depth.shape != (height, width):
        raise ValueError(f"depth map {depth.shape} and image {(height, width)} differ in size")
    if rng is not None:
        scales = np.minimum(rng.uniform(*SCALE_AUG_RANGE, size=2), 1.0)
        crop_hw = (int(height * scales[0]), int(width * scales[1]))
        margin = RESIZE_MARGIN_PIXELS + rng.triangular(0.0, 0.0, RESIZE_MARGIN_AUG_MAX) * max(target_hw)
    else:
        crop_hw = (height, width)
        margin = RESIZE_MARGIN_PIXELS
    image, depth, intrinsic, _, _ = crop_around_principal_point(image, depth, intrinsic, crop_hw)
    image, depth, intrinsic = resize_with_intrinsics(image, depth, intrinsic, target_hw, margin)
    image, depth, intrinsic, _ = exact_crop(image, depth, intrinsic, target_hw)
    if depth is None:
        depth = np.zeros(target_hw, dtype=np.float32)
    depth = np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)
    return ProcessedFrame(image=image, depth=depth, intrinsic=intrinsic)
