"""Point tracks from several query frames with VGGT's track head (see docs/tracks.md).

The tracker follows query points given in the *first* frame of its input: a learned token marks
that frame. To start tracks in another frame ``k``, the per-frame feature maps (computed once by
the aggregator and the track feature head) are reordered so that ``k`` leads, the tracker runs,
and its output is put back in the original frame order. Only the tracker runs per query frame.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .config import (DEFAULT_FRAMES_CHUNK_SIZE, DEFAULT_MAX_QUERY_POINTS, DEFAULT_NUM_QUERY_FRAMES,
                     QUERY_POINT_METHODS)
from .errors import InputError
from .progress import ProgressCallback
from .reconstruction import Reconstruction

__all__ = [
    "DEFAULT_MAX_QUERY_POINTS",
    "DEFAULT_NUM_QUERY_FRAMES",
    "QUERY_POINT_METHODS",
    "TrackQueries",
    "choose_query_points",
    "query_frame_indices",
    "track_reconstruction",
]

# Correlation maps of this many points are computed at once: [S, n, H/2·W/2] floats, ~400 MB for
# 32 frames of 518×392 (the values do not depend on it).
DEFAULT_POINTS_CHUNK_SIZE = 64
# Grid points keep this many pixels away from the border, where features are padded.
_GRID_MARGIN_PX = 4
# A grid with this many more cells than the quota lets the confidence ranking choose among them.
_GRID_OVERSAMPLING = 2.0
# VGGT's confidences are ≥ 1; at or below this a pixel is treated as unusable (as in the filters).
_MIN_CONFIDENCE = 1e-5


@dataclass(frozen=True)
class TrackQueries:
    """Points to track and the frame each one is picked in.

    Attributes:
        frames: ``[N]`` int64, the query frame of each point.
        points: ``[N, 2]`` float32 ``(x, y)`` in that frame's model-input pixels (pixel centres
            at integers, as the tracker samples them).
    """

    frames: np.ndarray
    points: np.ndarray

    def __post_init__(self) -> None:
        frames = np.asarray(self.frames, dtype=np.int64).reshape(-1)
        points = np.asarray(self.points, dtype=np.float32)
        if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] != frames.shape[0]:
            raise InputError(f"query points must have shape [N, 2] with N = {frames.shape[0]} frames, "
                             f"got {list(points.shape)}")
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "points", points)

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def query_frame_indices(num_frames: int, num_query_frames: int = DEFAULT_NUM_QUERY_FRAMES) -> list[int]:
    """``num_query_frames`` frame indices spread evenly over the sequence, always with frame 0."""
    count = max(1, min(int(num_query_frames), int(num_frames)))
    return sorted({(rank * int(num_frames)) // count for rank in range(count)})


def _confidence_maps(recon: Reconstruction) -> np.ndarray:
    """``[S, H, W]`` float32: depth confidence, 0 where the sky mask says sky or the user masked."""
    confidence = recon.depth_conf.astype(np.float32, copy=True)
    if recon.sky_mask is not None:
        confidence[recon.sky_mask] = 0.0
    if recon.exclusion_masks is not None:  # the user's masks: no query on a passer-by
        confidence[recon.exclusion_masks] = 0.0
    return confidence


def _grid_points(confidence: np.ndarray, quota: int) -> np.ndarray:
    """Up to ``quota`` pixels ``[n, 2]`` (x, y) of an even grid over ``confidence [H, W]``, the most
    confident cells first."""
    height, width = confidence.shape
    inner_h, inner_w = max(height - 2 * _GRID_MARGIN_PX, 1), max(width - 2 * _GRID_MARGIN_PX, 1)
    step = max(1.0, float(np.sqrt(inner_h * inner_w / (_GRID_OVERSAMPLING * quota))))
    xs = np.arange(_GRID_MARGIN_PX + step / 2, width - _GRID_MARGIN_PX, step)
    ys = np.arange(_GRID_MARGIN_PX + step / 2, height - _GRID_MARGIN_PX, step)
    grid_x, grid_y = np.meshgrid(np.round(xs).astype(np.int64), np.round(ys).astype(np.int64))
    grid_x, grid_y = grid_x.reshape(-1), grid_y.reshape(-1)
    values = confidence[grid_y, grid_x]
    keep = values > _MIN_CONFIDENCE
    # Stable sort: equal confidences (e.g. a synthetic scene) keep the grid's even spread.
    order = np.argsort(-values[keep], kind="stable")[:quota]
    return np.stack([grid_x[keep][order], grid_y[keep][order]], axis=1).astype(np.float32)


def _sift_points(image: np.ndarray, confidence: np.ndarray, quota: int) -> np.ndarray:
    """Up to ``quota`` SIFT keypoints ``[n, 2]`` (x, y) of ``image [H, W, 3]`` uint8 at confident pixels."""
    import pycolmap  # imported here: importing pycolmap installs glog's signal handlers

    gray = np.ascontiguousarray(
        (image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) / 255.0)
    options = pycolmap.FeatureExtractionOptions()
    options.sift.max_num_features = max(4 * quota, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        extractor = pycolmap.Sift(options, pycolmap.Device.cpu)
    keypoints, _ = extractor.extract(gray)
    # COLMAP puts pixel centres at +0.5; the tracker at integers.
    xy = np.unique(np.round(keypoints[:, :2].astype(np.float64) - 0.5, 2), axis=0)
    height, width = confidence.shape
    inside = ((xy[:, 0] >= _GRID_MARGIN_PX) & (xy[:, 0] <= width - 1 - _GRID_MARGIN_PX)
              & (xy[:, 1] >= _GRID_MARGIN_PX) & (xy[:, 1] <= height - 1 - _GRID_MARGIN_PX))
    xy = xy[inside]
    values = confidence[np.round(xy[:, 1]).astype(np.int64), np.round(xy[:, 0]).astype(np.int64)]
    keep = values > _MIN_CONFIDENCE
    order = np.argsort(-values[keep], kind="stable")[:quota]
    return xy[keep][order].astype(np.float32)


def choose_query_points(recon: Reconstruction, *, num_query_frames: int = DEFAULT_NUM_QUERY_FRAMES,
                        max_points: int = DEFAULT_MAX_QUERY_POINTS, method: str = "grid",
                        query_frames: Sequence[int] | None = None) -> TrackQueries:
    """Pick points to track in a few query frames spread over the sequence.

    Args:
        recon: the reconstruction (its frames and depth confidences are used).
        num_query_frames: how many query frames (ignored when ``query_frames`` is given).
        max_points: the total cap, split evenly over the query frames.
        method: ``"grid"`` (the most confident pixels of an even grid) or ``"sift"`` (SIFT
            keypoints from pycolmap at confident pixels).
        query_frames: explicit frame indices to pick points in.

    Returns:
        The queries, frame by frame in increasing frame order.

    Raises:
        InputError: an unknown method, a cap < 1 or frame indices outside the sequence.
    """
    if method not in QUERY_POINT_METHODS:
        raise InputError(f"unknown query point method {method!r}; choose from {QUERY_POINT_METHODS}")
    if int(max_points) < 1:
        raise InputError(f"the number of query points must be at least 1, got {max_points}")
    if query_frames is None:
        if int(num_query_frames) < 1:
            raise InputError(f"the number of query frames must be at least 1, got {num_query_frames}")
        frames = query_frame_indices(recon.num_frames, num_query_frames)
    else:
        frames = sorted({int(frame) for frame in query_frames})
        if not frames or frames[0] < 0 or frames[-1] >= recon.num_frames:
            raise InputError(f"query frames must be indices in [0, {recon.num_frames}), got {list(query_frames)}")
    confidence = _confidence_maps(recon)
    quotas = [int(max_points) // len(frames) + (1 if rank < int(max_points) % len(frames) else 0)
              for rank in range(len(frames))]
    all_frames, all_points = [], []
    for frame, quota in zip(frames, quotas):
        if quota == 0:
            continue
        if method == "grid":
            points = _grid_points(confidence[frame], quota)
        else:
            points = _sift_points(recon.images[frame], confidence[frame], quota)
        all_points.append(points)
        all_frames.append(np.full(len(points), frame, dtype=np.int64))
    return TrackQueries(frames=np.concatenate(all_frames) if all_frames else np.zeros(0, np.int64),
                        points=np.concatenate(all_points) if all_points else np.zeros((0, 2), np.float32))


def _frame_order_with_first(num_frames: int, query_frame: int) -> list[int]:
    """The frame order that puts ``query_frame`` first (swapped with frame 0, as the authors do;
    the tracker has no notion of frame order beyond which frame comes first)."""
    order = list(range(num_frames))
    order[0], order[query_frame] = order[query_frame], order[0]
    return order


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def track_reconstruction(model: torch.nn.Module, recon: Reconstruction, queries: TrackQueries | None = None, *,
                         num_query_frames: int = DEFAULT_NUM_QUERY_FRAMES,
                         max_query_points: int = DEFAULT_MAX_QUERY_POINTS, method: str = "grid",
                         frames_chunk_size: int = DEFAULT_FRAMES_CHUNK_SIZE,
                         points_chunk_size: int | None = DEFAULT_POINTS_CHUNK_SIZE,
                         progress: ProgressCallback | None = None) -> Reconstruction:
    """Track points from several query frames across all frames of ``recon``.

    The aggregator and the track feature head run once on ``recon.images`` (``uint8 / 255`` is
    exactly the model input); the tracker runs once per query frame with that frame first.

    Args:
        model: a :class:`vggt_core.model.VGGT` with a track head.
        recon: the reconstruction whose frames to track in.
        queries: the points; default :func:`choose_query_points` with the next three arguments.
        num_query_frames, max_query_points, method: see :func:`choose_query_points`.
        frames_chunk_size: frames the track feature head decodes at once (memory only).
        points_chunk_size: points whose correlation maps are computed at once (memory only).
        progress: optional ``progress(fraction, message)``.

    Returns:
        A copy with ``query_points [N, 2]``, ``track_query_frames [N]``, ``tracks [S, N, 2]``,
        ``track_visibility [S, N]`` and ``track_confidence [S, N]``, replacing any earlier tracks
        (and the sparse points of an earlier bundle adjustment, which referred to them).

    Raises:
        InputError: no queries, queries outside the frames, or frames too small for the tracker.
    """
    report = progress if progress is not None else (lambda fraction, message: None)
    if getattr(model, "track_head", None) is None:
        raise InputError("this model has no track head, so it cannot track points")
    if queries is None:
        queries = choose_query_points(recon, num_query_frames=num_query_frames, max_points=max_query_points,
                                      method=method)
    if len(queries) == 0:
        raise InputError("no query points to track (no confident pixels in the query frames)")
    height, width = recon.image_size_hw
    if queries.frames.min() < 0 or queries.frames.max() >= recon.num_frames:
        raise InputError(f"query frames must be indices in [0, {recon.num_frames})")
    points = queries.points
    if not np.isfinite(points).all() or (points < 0).any() or (points[:, 0] > width).any() \
            or (points[:, 1] > height).any():
        raise InputError(f"query points must lie inside the {width}×{height} model-input frames")
    minimum = model.config.track_head.min_image_side
    if min(height, width) < minimum:
        raise InputError(f"tracking needs frames of at least {minimum}×{minimum} pixels, got {width}×{height}")

    device = _model_device(model)
    report(0.0, "computing track features")
    images = torch.from_numpy(recon.images).to(device=device).permute(0, 3, 1, 2).float() / 255.0
    feature_maps = model.track_feature_maps(images[None], frames_chunk_size=frames_chunk_size)
    del images

    num_frames, num_points = recon.num_frames, len(queries)
    tracks = np.zeros((num_frames, num_points, 2), dtype=np.float32)
    visibility = np.zeros((num_frames, num_points), dtype=np.float32)
    confidence = np.zeros((num_frames, num_points), dtype=np.float32)
    query_frames = np.unique(queries.frames)
    for rank, frame in enumerate(query_frames.tolist()):
        report(0.1 + 0.9 * rank / len(query_frames), f"tracking from frame {frame + 1} of {num_frames}")
        selected = np.flatnonzero(queries.frames == frame)
        order = _frame_order_with_first(num_frames, frame)
        query = torch.from_numpy(points[selected]).to(device)[None]
        frame_tracks, frame_vis, frame_conf = model.track_with_feature_maps(
            query, feature_maps[:, order], points_chunk_size=points_chunk_size)
        # Row j of the output belongs to original frame order[j].
        tracks[np.ix_(order, selected)] = frame_tracks[0].float().cpu().numpy()
        visibility[np.ix_(order, selected)] = frame_vis[0].float().cpu().numpy()
        confidence[np.ix_(order, selected)] = frame_conf[0].float().cpu().numpy()
    del feature_maps
    if device.type == "cuda":
        torch.cuda.empty_cache()
    report(1.0, "tracks done")
    return dataclasses.replace(
        recon, frame_names=list(recon.frame_names), info=dict(recon.info),
        query_points=points.copy(), track_query_frames=queries.frames.copy(), tracks=tracks,
        track_visibility=visibility, track_confidence=confidence,
        **{name: None for name in _SPARSE_FIELDS})


# The sparse points of a bundle adjustment refer to track columns; new tracks invalidate them.
_SPARSE_FIELDS = ("sparse_points", "sparse_point_colors", "sparse_point_tracks", "sparse_observations")
