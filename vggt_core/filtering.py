"""Which predicted points to show or export: the reference demo's display filters.

Everything here is vectorised numpy over the stored :class:`Reconstruction`, so moving a slider
re-filters tens of millions of pixels in well under a second without touching the model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import InputError
from .reconstruction import Reconstruction

__all__ = ["ViewSettings", "PointSelection", "select_points", "evenly_spaced_subset"]

BRANCHES = ("depth", "point")

# The reference drops points whose confidence is numerically zero even at threshold 0.
_MIN_CONFIDENCE = 1e-5
# Reference background filters on 8-bit colours.
_BLACK_SUM_BELOW = 16
_WHITE_ALL_ABOVE = 240


@dataclass(frozen=True)
class ViewSettings:
    """Display filters, with the reference demo's UI defaults.

    Attributes:
        confidence_threshold: with ``threshold_is_percentile``, the percentile (0–100) of the
            selected frames' confidence below which points are hidden (50 hides the less
            confident half; 0 hides only zero-confidence points); otherwise an absolute
            confidence value.
        threshold_is_percentile: see above.
        branch: ``"depth"`` = depth unprojected with the predicted cameras + depth confidence;
            ``"point"`` = the point head's map + its confidence (falls back to the depth branch
            when the reconstruction has no point map).
        frame_index: only this frame's points (and camera), or None for all frames.
        filter_black_background: drop points with R + G + B < 16.
        filter_white_background: drop points with R, G and B all > 240.
        show_cameras: draw camera frustums (viewers only).
        max_points: keep at most this many points, evenly strided over the kept ones (so the
            subset is deterministic and spread over all frames); None for no cap.
        hide_sky: drop the pixels of ``Reconstruction.sky_mask`` (which must then be computed,
            see :mod:`vggt_core.sky`).
    """

    confidence_threshold: float = 50.0
    threshold_is_percentile: bool = True
    branch: Literal["depth", "point"] = "depth"
    frame_index: int | None = None
    filter_black_background: bool = False
    filter_white_background: bool = False
    show_cameras: bool = True
    max_points: int | None = 2_000_000
    hide_sky: bool = False

    def __post_init__(self) -> None:
        threshold = float(self.confidence_threshold)
        if not np.isfinite(threshold):
            raise InputError("the confidence threshold must be a finite number")
        if self.threshold_is_percentile and not 0.0 <= threshold <= 100.0:
            raise InputError(f"the confidence percentile must lie in 0..100, got {threshold:g}")
        if self.branch not in BRANCHES:
            raise InputError(f"unknown prediction branch {self.branch!r}; choose one of {BRANCHES}")
        if self.frame_index is not None and int(self.frame_index) < 0:
            raise InputError(f"frame index must be ≥ 0, got {self.frame_index}")
        if self.max_points is not None and int(self.max_points) < 1:
            raise InputError(f"max_points must be ≥ 1 or None, got {self.max_points}")


@dataclass
class PointSelection:
    """Points that passed the filters, in frame-major pixel order.

    Attributes:
        points: ``[N, 3]`` float32 world points.
        colors: ``[N, 3]`` uint8 RGB of the pixels they came from.
        confidence: ``[N]`` float32.
        frame_indices: ``[N]`` int32 frame each point came from.
        pixel_indices: ``[N]`` int64 flat pixel index ``row·W + column`` within its frame.
        min_confidence: the lowest confidence a point needed, an absolute confidence value (the
            value ``ViewSettings.confidence_threshold`` stands for: its percentile's value, or
            itself when it is not a percentile). ``threshold`` is its old, read-only name.
        branch: the branch actually used (``"depth"`` after a fallback).
        num_before_cap: how many points passed the filters before ``max_points`` thinned them.
    """

    points: np.ndarray
    colors: np.ndarray
    confidence: np.ndarray
    frame_indices: np.ndarray
    pixel_indices: np.ndarray
    min_confidence: float
    branch: str
    num_before_cap: int

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def threshold(self) -> float:
        """The old name of :attr:`min_confidence` (read-only)."""
        return self.min_confidence

    def thinned(self, max_points: int | None) -> PointSelection:
        """At most ``max_points`` of these points, evenly strided as ``ViewSettings.max_points``
        thins (this selection itself when it is small enough)."""
        subset = evenly_spaced_subset(self.num_points, max_points)
        if subset is None:
            return self
        return dataclasses.replace(self, points=self.points[subset], colors=self.colors[subset],
                                   confidence=self.confidence[subset], frame_indices=self.frame_indices[subset],
                                   pixel_indices=self.pixel_indices[subset])


def evenly_spaced_subset(count: int, limit: int | None) -> np.ndarray | None:
    """Indices of ``min(count, limit)`` items spread evenly over ``range(count)``.

    Returns None when no thinning is needed. ``(k·count) // limit`` is strictly increasing
    for ``limit < count``, so every index is distinct and the first item is always kept.
    """
    if limit is None or count <= limit:
        return None
    return (np.arange(limit, dtype=np.int64) * count) // limit


def _branch_arrays(recon: Reconstruction, branch: str) -> tuple[np.ndarray, np.ndarray, str]:
    """``(points [S, H, W, 3], confidence [S, H, W], branch used)``."""
    if branch == "point" and recon.world_points is not None:
        return recon.world_points, recon.world_points_conf, "point"
    return recon.points_from_depth, recon.depth_conf, "depth"


def select_points(recon: Reconstruction, settings: ViewSettings = ViewSettings()) -> PointSelection:
    """Apply the display filters to a reconstruction.

    Same semantics as the reference ``predictions_to_glb`` (docs/architecture.md, *Display filters and the GLB*): the threshold
    is ``np.percentile(conf, q)`` over the selected frames (0 when ``q == 0``), points need
    ``conf ≥ threshold`` and ``conf > 1e-5``; then the background filters. Beyond the
    reference, non-finite points are dropped, pixels of ``recon.exclusion_masks`` are always
    left out, and ``max_points`` thins the result.

    Raises:
        InputError: the frame index is out of range.
    """
    if settings.frame_index is not None and settings.frame_index >= recon.num_frames:
        raise InputError(f"frame {settings.frame_index} does not exist; "
                         f"the reconstruction has {recon.num_frames} frames")
    points_map, confidence_map, branch = _branch_arrays(recon, settings.branch)
    if settings.frame_index is None:
        frames = np.arange(recon.num_frames)
        frame_slice = slice(None)
    else:
        frames = np.array([settings.frame_index])
        frame_slice = slice(settings.frame_index, settings.frame_index + 1)
    # Views of the stored arrays: nothing is copied until the kept indices are known.
    confidence = confidence_map[frame_slice].reshape(-1)
    points = points_map[frame_slice].reshape(-1, 3)
    colors = recon.images[frame_slice].reshape(-1, 3)

    if settings.threshold_is_percentile:
        min_confidence = (0.0 if settings.confidence_threshold == 0
                          else float(np.percentile(confidence, settings.confidence_threshold)))
    else:
        min_confidence = float(settings.confidence_threshold)
    # A Python float compares in the array's dtype (NEP 50), so a float32 percentile round-trips.
    keep = confidence >= min_confidence
    keep &= confidence > _MIN_CONFIDENCE
    # Per-channel column operations: reductions over a length-3 axis are several times slower.
    red, green, blue = colors[:, 0], colors[:, 1], colors[:, 2]
    if settings.filter_black_background:
        keep &= np.add(np.add(red, green, dtype=np.uint16), blue) >= _BLACK_SUM_BELOW
    if settings.filter_white_background:
        keep &= np.minimum(np.minimum(red, green), blue) <= _WHITE_ALL_ABOVE
    if settings.hide_sky:
        if recon.sky_mask is None:
            raise InputError("hiding the sky needs the reconstruction's sky masks: compute them first "
                             "(vggt_core.sky.with_sky_mask)")
        keep &= ~recon.sky_mask[frame_slice].reshape(-1)
    if recon.exclusion_masks is not None:
        # The user's masks (vggt_core.masks) always apply: they are input, not a display choice.
        keep &= ~recon.exclusion_masks[frame_slice].reshape(-1)
    kept = np.flatnonzero(keep)

    num_before_cap = int(len(kept))
    subset = evenly_spaced_subset(len(kept), settings.max_points)
    if subset is not None:
        kept = kept[subset]

    selected_points = np.take(points, kept, axis=0).astype(np.float32, copy=False)
    if not np.isfinite(selected_points).all():
        finite = (np.isfinite(selected_points[:, 0]) & np.isfinite(selected_points[:, 1])
                  & np.isfinite(selected_points[:, 2]))
        kept, selected_points = kept[finite], selected_points[finite]

    pixels_per_frame = recon.image_size_hw[0] * recon.image_size_hw[1]
    frame_positions, pixel_indices = np.divmod(kept, pixels_per_frame)
    return PointSelection(
        points=selected_points,
        colors=np.take(colors, kept, axis=0),
        confidence=confidence[kept].astype(np.float32, copy=False),
        frame_indices=frames[frame_positions].astype(np.int32),
        pixel_indices=pixel_indices.astype(np.int64, copy=False),
        min_confidence=min_confidence,
        branch=branch,
        num_before_cap=num_before_cap,
    )
