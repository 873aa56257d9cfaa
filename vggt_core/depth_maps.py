"""False-colour images of depth and confidence maps, ready to save as PNG.

All frames share one value range, so the same depth has the same colour in every view and
the views can be compared side by side. The range is the 2nd–98th percentile of the valid
values of all frames: a few far-away or spurious pixels would otherwise squeeze everything
else into a narrow band of colours.
"""

from __future__ import annotations

import matplotlib
import numpy as np

from .normals import colorize_normal_maps, normal_maps_from_depth  # the gallery's third view

__all__ = [
    "DEPTH_COLORMAP",
    "CONFIDENCE_COLORMAP",
    "ROBUST_PERCENTILES",
    "robust_value_range",
    "colorize_depth_maps",
    "colorize_confidence_maps",
    "colorize_normal_maps",
    "normal_maps_from_depth",
]

DEPTH_COLORMAP = "turbo"
CONFIDENCE_COLORMAP = "viridis"
ROBUST_PERCENTILES = (2.0, 98.0)
_LUT_SIZE = 256


def _as_maps(values: np.ndarray, name: str) -> np.ndarray:
    """``[S, H, W]`` or ``[S, H, W, 1]`` (or one ``[H, W]`` map) → float ``[S, H, W]``."""
    maps = np.asarray(values)
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"{name} must have shape [S, H, W], got {maps.shape}")
    return maps.astype(np.float32, copy=False)


def robust_value_range(values: np.ndarray, valid: np.ndarray) -> tuple[float, float] | None:
    """``ROBUST_PERCENTILES`` of ``values[valid]`` (any equal shapes); None when nothing is valid."""
    selected = values[valid]
    if selected.size == 0:
        return None
    low, high = np.percentile(selected, ROBUST_PERCENTILES)
    return float(low), float(high)


def _apply_colormap(normalised: np.ndarray, valid: np.ndarray, cmap: str) -> np.ndarray:
    """Map ``normalised [...]`` in [0, 1] through a colormap; invalid pixels black → uint8 ``[..., 3]``."""
    # A 256-entry lookup table is exact at 8-bit output and far faster than evaluating the
    # colormap per pixel on tens of millions of pixels.
    lut = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, _LUT_SIZE), bytes=True)[:, :3]
    indices = np.rint(np.clip(np.nan_to_num(normalised), 0.0, 1.0) * (_LUT_SIZE - 1)).astype(np.uint8)
    colours = lut[indices]
    colours[~valid] = 0
    return colours


def _normalise(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:  # a constant map: show it mid-range rather than divide by zero
        return np.full(values.shape, 0.5, dtype=np.float32)
    return (values - np.float32(low)) / np.float32(high - low)


def colorize_depth_maps(depth: np.ndarray, value_range: tuple[float, float] | None = None,
                        cmap: str = DEPTH_COLORMAP) -> np.ndarray:
    """Colour depth maps with near = warm (red/yellow end of turbo) and far = cold (blue).

    Args:
        depth: ``[S, H, W]`` (or ``[S, H, W, 1]``, or one ``[H, W]`` map) z-depth.
        value_range: ``(near, far)`` mapped to the ends of the colormap; default the
            2nd–98th percentile of all valid depths of all frames. Values outside are clipped.
        cmap: a matplotlib colormap name; its high end is used for near depths.

    Returns:
        ``[S, H, W, 3]`` uint8 RGB. Non-finite or non-positive depths are black.
    """
    maps = _as_maps(depth, "depth")
    valid = np.isfinite(maps) & (maps > 0)
    if value_range is None:
        value_range = robust_value_range(maps, valid) or (0.0, 1.0)
    near, far = value_range
    # Inverted so that near depths get the colormap's high (warm) end.
    return _apply_colormap(1.0 - _normalise(maps, near, far), valid, cmap)


def colorize_confidence_maps(confidence: np.ndarray, value_range: tuple[float, float] | None = None,
                             cmap: str = CONFIDENCE_COLORMAP) -> np.ndarray:
    """Colour confidence maps on a log scale (bright = confident).

    VGGT's confidences are ``1 + exp(x)``, spanning orders of magnitude; the logarithm spreads
    them evenly over the colormap.

    Args:
        confidence: ``[S, H, W]`` (or ``[S, H, W, 1]``, or ``[H, W]``) positive confidences.
        value_range: ``(low, high)`` confidences (not logarithms) mapped to the ends of the
            colormap; default the 2nd–98th percentile over all frames.
        cmap: a matplotlib colormap name.

    Returns:
        ``[S, H, W, 3]`` uint8 RGB. Non-finite or non-positive confidences are black.
    """
    maps = _as_maps(confidence, "confidence")
    valid = np.isfinite(maps) & (maps > 0)
    log_maps = np.log(np.where(valid, maps, 1.0))
    if value_range is None:
        log_range = robust_value_range(log_maps, valid) or (0.0, 1.0)
    else:
        low, high = value_range
        if low <= 0 or high <= 0:
            raise ValueError(f"confidence range must be positive, got {value_range}")
        log_range = (float(np.log(low)), float(np.log(high)))
    return _apply_colormap(_normalise(log_maps, *log_range), valid, cmap)
