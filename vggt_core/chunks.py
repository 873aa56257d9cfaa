"""Long sequences in overlapping chunks: run the model per chunk, align the chunks with robust
Sim(3)s estimated from the frames they share, and merge them into one reconstruction
(docs/chunks.md).

VGGT normalises the gauge (frame 0 is the world) and the scale of every run, so two runs that
share frames disagree by a similarity transform. Chunk ``k + 1`` starts with the last
``overlap`` frames of chunk ``k``; those frames' points, predicted in both gauges, give the
Sim(3) between the chunks. The chain of these transforms puts every chunk into the first chunk's
gauge and scale. Optional loop closure adds Sim(3) constraints between distant chunks and solves
the chunk poses as a pose graph with GTSAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from . import geometry
from .errors import InputError
from .images import FrameTransform
from .progress import ProgressCallback
from .reconstruction import Reconstruction

__all__ = [
    "Sim3",
    "ChunkPlan",
    "plan_chunks",
    "estimate_sim3",
    "align_chunks",
    "reconstruct_in_chunks",
    "reconstruct_decoded_in_chunks",
    "default_overlap",
    "chunk_size_for_memory",
    "loop_closure_candidates",
]


# At most this many pixel correspondences per chunk pair enter the Sim(3) fit: a few thousand
# well-spread points determine 7 parameters far beyond float32 precision, and the fit stays
# fast for 518×518 frames (a full overlap frame is 268k pixels).
_MAX_CORRESPONDENCES = 20000
_ROBUST_LOSSES = ("huber", "cauchy", "none")


@dataclass(frozen=True)
class Sim3:
    """A similarity ``x ↦ scale · rotation · x + translation`` acting on ``[..., 3]`` points.

    Attributes:
        scale: positive factor.
        rotation: ``[3, 3]`` float64 rotation matrix.
        translation: ``[3]`` float64.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    @staticmethod
    def identity() -> Sim3:
        return Sim3(1.0, np.eye(3), np.zeros(3))

    def matrix(self) -> np.ndarray:
        """``[4, 4]`` homogeneous matrix ``[[s·R, t], [0, 1]]``."""
        out = np.eye(4)
        out[:3, :3] = self.scale * self.rotation
        out[:3, 3] = self.translation
        return out

    @staticmethod
    def from_matrix(matrix: np.ndarray) -> Sim3:
        """From a ``[4, 4]`` matrix ``[[s·R, t], [0, w]]`` (normalised by ``w``)."""
        matrix = np.asarray(matrix, dtype=np.float64) / float(matrix[3, 3])
        scale = float(np.cbrt(np.linalg.det(matrix[:3, :3])))
        return Sim3(scale, matrix[:3, :3] / scale, matrix[:3, 3].copy())

    def __matmul__(self, other: Sim3) -> Sim3:
        """Composition: ``(self @ other)(x) = self(other(x))``."""
        return Sim3(self.scale * other.scale, self.rotation @ other.rotation,
                    self.scale * self.rotation @ other.translation + self.translation)

    def inverse(self) -> Sim3:
        rotation_t = self.rotation.T
        return Sim3(1.0 / self.scale, rotation_t, -(rotation_t @ self.translation) / self.scale)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """``points [..., 3]`` → transformed ``[..., 3]`` float64."""
        return self.scale * (np.asarray(points, dtype=np.float64) @ self.rotation.T) + self.translation

    def transform_extrinsics(self, extrinsics: np.ndarray) -> np.ndarray:
        """World-to-camera ``[S, 3, 4]`` of the old world → ``[S, 3, 4]`` float64 of the new world
        ``x' = self(x)``, with camera-frame lengths scaled by ``scale`` so depths stay consistent:
        ``R' = R·Aᵀ``, ``t' = s·t − R'·b`` for ``self = (s, A, b)``."""
        extrinsics = np.asarray(extrinsics, dtype=np.float64)
        rotation = extrinsics[:, :, :3] @ self.rotation.T
        translation = self.scale * extrinsics[:, :, 3] - np.einsum("sij,j->si", rotation, self.translation)
        return np.concatenate([rotation, translation[:, :, None]], axis=2)


# --------------------------------------------------------------------------------------------
# Robust Sim(3) between point sets
# --------------------------------------------------------------------------------------------


def _weighted_umeyama(source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> Sim3:
    """Closed-form weighted least-squares similarity with ``target ≈ sim(source)``.

    Args: source, target ``[N, 3]`` float64; weights ``[N]`` ≥ 0 (not all zero).
    """
    weights = weights / weights.sum()
    source_mean = weights @ source
    target_mean = weights @ target
    source_centred = source - source_mean
    target_centred = target - target_mean
    covariance = (target_centred * weights[:, None]).T @ source_centred
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        reflection[2, 2] = -1.0
    rotation = u @ reflection @ vt
    source_variance = float(weights @ (source_centred ** 2).sum(axis=1))
    scale = float(np.trace(np.diag(singular) @ reflection)) / source_variance
    translation = target_mean - scale * rotation @ source_mean
    return Sim3(scale, rotation, translation)


def estimate_sim3(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None, *,
                  robust_loss: str = "huber", iterations: int = 10) -> tuple[Sim3, dict]:
    """A confidence-weighted, robust Sim(3) with ``target ≈ sim(source)``.

    Iteratively reweighted least squares: each step solves the weighted Umeyama problem, then
    multiplies the confidence weights by the Huber or Cauchy weight of every residual. The
    residual scale is re-estimated each step from the median absolute residual (×1.4826, the
    normal-consistent MAD), so the threshold adapts to the noise level; Huber's threshold is
    1.345 σ, Cauchy's 2.385 σ (both 95 % efficient under Gaussian noise).

    Args:
        source: ``[N, 3]`` points (N ≥ 3, not collinear).
        target: ``[N, 3]`` the same points in the target frame.
        weights: ``[N]`` non-negative confidences, default all 1.
        robust_loss: ``"huber"``, ``"cauchy"`` or ``"none"`` (plain weighted least squares).
        iterations: IRLS steps after the initial fit.

    Returns:
        ``(sim3, report)``; the report holds the final residuals' median and the robust scale
        in target units.
    """
    if robust_loss not in _ROBUST_LOSSES:
        raise InputError(f"robust_loss must be one of {_ROBUST_LOSSES}, got {robust_loss!r}")
    source = np.asarray(source, dtype=np.float64).reshape(-1, 3)
    target = np.asarray(target, dtype=np.float64).reshape(-1, 3)
    base_weights = np.ones(len(source)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    usable = np.isfinite(source).all(axis=1) & np.isfinite(target).all(axis=1) & (base_weights > 0)
    source, target, base_weights = source[usable], target[usable], base_weights[usable]
    if len(source) < 3:
        raise InputError("fewer than 3 usable point correspondences to align two chunks")
    sim = _weighted_umeyama(source, target, base_weights)
    sigma = 0.0
    for _ in range(iterations if robust_loss != "none" else 0):
        residuals = np.linalg.norm(sim.apply(source) - target, axis=1)
        sigma = 1.4826 * float(np.median(residuals))
        if sigma <= 1e-12 * (1.0 + float(np.abs(target).max())):
            break  # exact correspondences: nothing to down-weight
        if robust_loss == "huber":
            threshold = 1.345 * sigma
            robust = np.minimum(1.0, threshold / np.maximum(residuals, 1e-300))
        else:
            threshold = 2.385 * sigma
            robust = 1.0 / (1.0 + (residuals / threshold) ** 2)
        sim = _weighted_umeyama(source, target, base_weights * robust)
    residuals = np.linalg.norm(sim.apply(source) - target, axis=1)
    return sim, {"median_residual": float(np.median(residuals)), "robust_sigma": sigma,
                 "correspondences": int(len(source))}


# --------------------------------------------------------------------------------------------
# Chunk layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkPlan:
    """Frame ranges of the chunks: chunk ``k`` holds frames ``starts[k] : ends[k]``; chunk
    ``k + 1`` starts ``overlap`` frames before chunk ``k`` ends."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    overlap: int

    @property
    def num_chunks(self) -> int:
        return len(self.starts)


def plan_chunks(num_frames: int, chunk_size: int, overlap: int) -> ChunkPlan:
    """Split ``num_frames`` into chunks of at most ``chunk_size`` frames sharing ``overlap``.

    The last chunk is shifted back to end at the last frame, so every chunk but the first has
    exactly ``chunk_size`` frames when the sequence is longer than one chunk (a short last
    chunk would align on few frames and run the model on a tiny sequence).
    """
    if chunk_size < 2:
        raise InputError(f"chunk size must be at least 2 frames, got {chunk_size}")
    if not 1 <= overlap < chunk_size:
        raise InputError(f"overlap must be between 1 and chunk size - 1 = {chunk_size - 1}, got {overlap}")
    if num_frames <= chunk_size:
        return ChunkPlan((0,), (num_frames,), overlap)
    step = chunk_size - overlap
    starts = list(range(0, num_frames - chunk_size + 1, step))
    if starts[-1] + chunk_size < num_frames:
        starts.append(num_frames - chunk_size)
    # The shifted last chunk overlaps its predecessor by more than ``overlap`` frames; the
    # alignment always uses the frames actually shared.
    ends = [start + chunk_size for start in starts]
    return ChunkPlan(tuple(starts), tuple(ends), overlap)


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------


def _sample_indices(count: int, limit: int, seed: int) -> np.ndarray:
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def _shared_frame_points(first: Reconstruction, first_frames: Sequence[int], second: Reconstruction,
                         second_frames: Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth-branch points of the same frames in two reconstructions.

    Returns ``(points_in_second [N, 3], points_in_first [N, 3], weights [N])``, ``N`` at most
    :data:`_MAX_CORRESPONDENCES`; the weight is the geometric mean of the two depth confidences,
    so a pixel counts only as much as both predictions trust it.
    """
    target = first.points_from_depth[list(first_frames)].reshape(-1, 3)
    source = second.points_from_depth[list(second_frames)].reshape(-1, 3)
    weights = np.sqrt(first.depth_conf[list(first_frames)].astype(np.float64).ravel()
                      * second.depth_conf[list(second_frames)].astype(np.float64).ravel())
    chosen = _sample_indices(len(target), _MAX_CORRESPONDENCES, seed)
    return source[chosen], target[chosen], weights[chosen]


def _transformed(chunk: Reconstruction, sim: Sim3) -> dict[str, np.ndarray | None]:
    """The chunk's geometry in the frame ``x' = sim(x)``: cameras, depth, both point branches."""
    extrinsics = sim.transform_extrinsics(chunk.extrinsics).astype(np.float32)
    depth = (chunk.depth.astype(np.float64) * sim.scale).astype(np.float32)
    world_points = None if chunk.world_points is None else sim.apply(chunk.world_points).astype(np.float32)
    return {"extrinsics": extrinsics, "depth": depth, "world_points": world_points}


def _consecutive_sim3s(chunks: Sequence[Reconstruction], shared: Sequence[int],
                       robust_loss: str) -> tuple[list[Sim3], list[dict]]:
    """Sim(3) from chunk ``k + 1``'s gauge to chunk ``k``'s, fitted on their shared frames."""
    sims, reports = [], []
    for index in range(1, len(chunks)):
        previous, current = chunks[index - 1], chunks[index]
        count = shared[index - 1]
        source, target, weights = _shared_frame_points(
            previous, range(previous.num_frames - count, previous.num_frames), current, range(count), seed=index)
        sim, report = estimate_sim3(source, target, weights, robust_loss=robust_loss)
        sims.append(sim)
        reports.append(report)
    return sims, reports


def chain_transforms(consecutive: Sequence[Sim3]) -> list[Sim3]:
    """Sim(3)s ``k+1 → k`` (``K − 1`` of them) → the ``K`` maps ``k → 0`` (the first the identity)."""
    transforms = [Sim3.identity()]
    for sim in consecutive:
        transforms.append(transforms[-1] @ sim)
    return transforms


def _chunk_frame_ranges(chunk_sizes: Sequence[int], overlap: int,
                        shared_counts: Sequence[int] | None) -> list[int]:
    """Global index of each chunk's first frame; ``shared_counts[k]`` frames are shared between
    chunks ``k`` and ``k + 1`` (default ``overlap``)."""
    starts = [0]
    for index in range(1, len(chunk_sizes)):
        shared = overlap if shared_counts is None else shared_counts[index - 1]
        starts.append(starts[-1] + chunk_sizes[index - 1] - shared)
    return starts


def align_chunks(chunks: Sequence[Reconstruction], overlap: int, *, robust_loss: str = "huber",
                 chunk_transforms: Sequence[Sim3] | None = None,
                 shared_frame_counts: Sequence[int] | None = None) -> Reconstruction:
    """Merge per-chunk reconstructions into one, in the first chunk's gauge and scale.

    Chunk ``k + 1``'s first ``overlap`` frames are chunk ``k``'s last ``overlap`` frames. The
    Sim(3) from chunk ``k + 1`` to chunk ``k`` is fitted robustly (:func:`estimate_sim3`) to
    the depth-branch points of those frames, weighted by their depth confidences; the chain of
    these maps every chunk into chunk 0. Overlap frames were predicted twice: per pixel the more
    confident depth (by ``depth_conf``) and point (by ``world_points_conf``) is kept, and the
    frame's camera comes from the chunk whose depth is more confident on average there.

    Args:
        chunks: ≥ 1 reconstructions with equal image sizes; chunk ``k`` has ``S_k > overlap``
            frames (the first may equal ``overlap`` only if it is the only chunk).
        overlap: frames shared by consecutive chunks (≥ 1 when there are several chunks).
        robust_loss: ``"huber"`` (default), ``"cauchy"`` or ``"none"``.
        chunk_transforms: optional Sim(3) per chunk from its gauge to the output gauge (e.g. from
            a pose graph with loop closures), used instead of the chain of pairwise fits.
        shared_frame_counts: ``num_chunks - 1`` counts of frames shared by consecutive chunks
            when they differ from ``overlap`` (the last chunk of :func:`plan_chunks` may share
            more).

    Returns:
        One :class:`Reconstruction` of ``sum(S_k) - shared`` frames; ``info["chunk_alignment"]``
        records each chunk's Sim(3) and fit residuals. Tracks, where chunks have them, become
        one track set per chunk, defined (visible) only on that chunk's frames.
    """
    if not chunks:
        raise InputError("no chunks to align")
    sizes = [chunk.num_frames for chunk in chunks]
    shared = [overlap] * (len(chunks) - 1) if shared_frame_counts is None else [int(n) for n in shared_frame_counts]
    if len(shared) != len(chunks) - 1:
        raise InputError(f"{len(shared)} shared-frame counts for {len(chunks)} chunks")
    if len(chunks) > 1 and overlap < 1:
        raise InputError(f"chunks must share at least one frame to be aligned, got overlap {overlap}")
    for index, count in enumerate(shared):
        if not (1 <= count <= sizes[index] and count < sizes[index + 1]):
            raise InputError(f"chunks {index} and {index + 1} ({sizes[index]} and {sizes[index + 1]} frames) "
                             f"cannot share {count} frames")
    if len({chunk.image_size_hw for chunk in chunks}) != 1:
        raise InputError("all chunks must have the same image size")
    if chunk_transforms is not None and len(chunk_transforms) != len(chunks):
        raise InputError(f"{len(chunk_transforms)} chunk transforms for {len(chunks)} chunks")

    # 1. Each chunk's Sim(3) into chunk 0's gauge.
    pairwise, reports = _consecutive_sim3s(chunks, shared, robust_loss)
    transforms = chain_transforms(pairwise)
    if chunk_transforms is not None:
        transforms = list(chunk_transforms)
    geometry_in_first = [_transformed(chunk, sim) for chunk, sim in zip(chunks, transforms)]

    # 2. Which chunk supplies each output frame: global frame -> list of (chunk, local frame).
    chunk_starts = _chunk_frame_ranges(sizes, overlap, shared)
    num_frames = chunk_starts[-1] + sizes[-1]
    owners: list[list[tuple[int, int]]] = [[] for _ in range(num_frames)]
    for chunk_index, (start, size) in enumerate(zip(chunk_starts, sizes)):
        for local in range(size):
            owners[start + local].append((chunk_index, local))

    first = chunks[0]
    height, width = first.image_size_hw
    has_points = all(chunk.world_points is not None for chunk in chunks)
    has_sky = all(chunk.sky_mask is not None for chunk in chunks)
    has_predicted_intrinsics = all(chunk.predicted_intrinsics is not None for chunk in chunks)
    extrinsics = np.empty((num_frames, 3, 4), np.float32)
    intrinsics = np.empty((num_frames, 3, 3), np.float32)
    depth = np.empty((num_frames, height, width), np.float32)
    depth_conf = np.empty((num_frames, height, width), np.float32)
    world_points = np.empty((num_frames, height, width, 3), np.float32) if has_points else None
    world_points_conf = np.empty((num_frames, height, width), np.float32) if has_points else None
    sky_mask = np.empty((num_frames, height, width), bool) if has_sky else None
    predicted_intrinsics = np.empty((num_frames, 3, 3), np.float32) if has_predicted_intrinsics else None
    images = np.empty((num_frames, height, width, 3), np.uint8)
    original_sizes = np.empty((num_frames, 2), np.int64)
    image_transforms = np.empty((num_frames, 4), np.float64)
    frame_names: list[str] = []
    for frame, sources in enumerate(owners):
        # The camera (and everything per frame, not per pixel) of the frame's most confident chunk.
        camera_chunk, camera_local = max(sources, key=lambda item: float(chunks[item[0]].depth_conf[item[1]].mean()))
        chosen = chunks[camera_chunk]
        extrinsics[frame] = geometry_in_first[camera_chunk]["extrinsics"][camera_local]
        intrinsics[frame] = chosen.intrinsics[camera_local]
        images[frame] = chosen.images[camera_local]
        original_sizes[frame] = chosen.original_sizes[camera_local]
        image_transforms[frame] = chosen.image_transforms[camera_local]
        frame_names.append(chosen.frame_names[camera_local])
        if predicted_intrinsics is not None:
            predicted_intrinsics[frame] = chosen.predicted_intrinsics[camera_local]
        if sky_mask is not None:
            sky_mask[frame] = chosen.sky_mask[camera_local]
        # Per pixel, the more confident prediction (ties keep the earlier chunk).
        chunk_index, local = sources[0]
        depth[frame] = geometry_in_first[chunk_index]["depth"][local]
        depth_conf[frame] = chunks[chunk_index].depth_conf[local]
        if has_points:
            world_points[frame] = geometry_in_first[chunk_index]["world_points"][local]
            world_points_conf[frame] = chunks[chunk_index].world_points_conf[local]
        for chunk_index, local in sources[1:]:
            better = chunks[chunk_index].depth_conf[local] > depth_conf[frame]
            depth[frame][better] = geometry_in_first[chunk_index]["depth"][local][better]
            depth_conf[frame][better] = chunks[chunk_index].depth_conf[local][better]
            if has_points:
                better_point = chunks[chunk_index].world_points_conf[local] > world_points_conf[frame]
                world_points[frame][better_point] = geometry_in_first[chunk_index]["world_points"][local][better_point]
                world_points_conf[frame][better_point] = chunks[chunk_index].world_points_conf[local][better_point]

    points_from_depth = geometry.unproject_depth_maps_in_frame_chunks(depth, extrinsics, intrinsics)
    pose_encoding = geometry.extrinsics_intrinsics_to_pose_encoding(extrinsics, intrinsics, (height, width))
    tracks = _merged_tracks(chunks, chunk_starts, num_frames)

    info = dict(first.info)
    info["chunk_alignment"] = {
        "num_chunks": len(chunks),
        "overlap": int(overlap),
        "chunk_first_frames": [int(start) for start in chunk_starts],
        "robust_loss": robust_loss,
        "from_pose_graph": chunk_transforms is not None,
        "chunk_to_first": [{"scale": sim.scale, "rotation": sim.rotation.tolist(),
                            "translation": sim.translation.tolist()} for sim in transforms],
        "pairwise_fit": reports,
    }
    return Reconstruction(
        images=images, extrinsics=extrinsics, intrinsics=intrinsics, depth=depth, depth_conf=depth_conf,
        points_from_depth=points_from_depth, world_points=world_points, world_points_conf=world_points_conf,
        pose_encoding=pose_encoding, frame_names=frame_names, original_sizes=original_sizes,
        image_transforms=image_transforms, sky_mask=sky_mask, predicted_intrinsics=predicted_intrinsics,
        info=info, **tracks)


def _merged_tracks(chunks: Sequence[Reconstruction], chunk_starts: Sequence[int],
                   num_frames: int) -> dict[str, np.ndarray]:
    """One track set per chunk that has tracks, side by side: ``tracks [S, N_total, 2]`` with
    visibility and confidence 0 outside the chunk's frames; query frames become global."""
    with_tracks = [(chunk, start) for chunk, start in zip(chunks, chunk_starts) if chunk.tracks is not None]
    if not with_tracks:
        return {}
    total = sum(chunk.tracks.shape[1] for chunk, _ in with_tracks)
    tracks = np.zeros((num_frames, total, 2), np.float32)
    visibility = np.zeros((num_frames, total), np.float32)
    confidence = np.zeros((num_frames, total), np.float32)
    query_points = np.zeros((total, 2), np.float32)
    query_frames = np.zeros(total, np.int64)
    column = 0
    for chunk, start in with_tracks:
        count = chunk.tracks.shape[1]
        rows, columns = slice(start, start + chunk.num_frames), slice(column, column + count)
        tracks[rows, columns] = chunk.tracks
        visibility[rows, columns] = 1.0 if chunk.track_visibility is None else chunk.track_visibility
        confidence[rows, columns] = 1.0 if chunk.track_confidence is None else chunk.track_confidence
        if chunk.query_points is not None:
            query_points[columns] = chunk.query_points
        else:
            query_points[columns] = chunk.tracks[0]
        local_query = (np.zeros(count, np.int64) if chunk.track_query_frames is None
                       else chunk.track_query_frames)
        query_frames[columns] = start + local_query
        column += count
    return {"tracks": tracks, "track_visibility": visibility, "track_confidence": confidence,
            "query_points": query_points, "track_query_frames": query_frames}


# --------------------------------------------------------------------------------------------
# Loop closure: a pose graph over the chunks' Sim(3)s (GTSAM)
# --------------------------------------------------------------------------------------------


def _to_gtsam(sim: Sim3):
    import gtsam

    # GTSAM's Similarity3 maps x to s·(R·x + t'), so its translation is ours divided by s.
    return gtsam.Similarity3(gtsam.Rot3(sim.rotation), sim.translation / sim.scale, sim.scale)


def _from_gtsam(value) -> Sim3:
    return Sim3.from_matrix(np.asarray(value.matrix()))


def optimise_chunk_poses(consecutive: Sequence[Sim3], loops: Sequence[tuple[int, int, Sim3]], *,
                         odometry_sigma: float = 0.01, loop_sigma: float = 0.01) -> list[Sim3]:
    """Chunk poses from a Sim(3) pose graph solved with GTSAM (Levenberg–Marquardt).

    Args:
        consecutive: ``K − 1`` measured Sim(3)s from chunk ``k + 1``'s gauge to chunk ``k``'s.
        loops: ``(a, b, sim)`` measured Sim(3)s from chunk ``b``'s gauge to chunk ``a``'s
            (loop closures, from a model run on frames of both chunks).
        odometry_sigma, loop_sigma: isotropic standard deviations of the 7 tangent-space
            components of each kind of constraint (relative weights of the two kinds).

    Returns:
        ``K`` Sim(3)s from each chunk's gauge to chunk 0's (chunk 0 is held at the identity).

    Raises:
        ImportError: GTSAM is not installed (``pip install gtsam``).
    """
    import gtsam

    graph = gtsam.NonlinearFactorGraph()
    initial = gtsam.Values()
    chained = chain_transforms(consecutive)
    for index, sim in enumerate(chained):
        initial.insert(index, _to_gtsam(sim))
    graph.add(gtsam.PriorFactorSimilarity3(0, _to_gtsam(Sim3.identity()),
                                           gtsam.noiseModel.Isotropic.Sigma(7, 1e-6)))
    odometry_noise = gtsam.noiseModel.Isotropic.Sigma(7, odometry_sigma)
    loop_noise = gtsam.noiseModel.Isotropic.Sigma(7, loop_sigma)
    for index, sim in enumerate(consecutive):
        # between(a, b) = a⁻¹·b: chunk b's gauge expressed in chunk a's.
        graph.add(gtsam.BetweenFactorSimilarity3(index, index + 1, _to_gtsam(sim), odometry_noise))
    for first, second, sim in loops:
        if not (0 <= first < len(chained) and 0 <= second < len(chained)) or first == second:
            raise InputError(f"a loop closure must join two different chunks of {len(chained)}, "
                             f"got {first} and {second}")
        graph.add(gtsam.BetweenFactorSimilarity3(first, second, _to_gtsam(sim), loop_noise))
    result = gtsam.LevenbergMarquardtOptimizer(graph, initial).optimize()
    return [_from_gtsam(result.atSimilarity3(index)) for index in range(len(chained))]


def loop_closure_candidates(model: torch.nn.Module, images: torch.Tensor, plan: ChunkPlan, *,
                            min_similarity: float = 0.9, max_pairs: int = 4,
                            batch_frames: int = 16) -> list[tuple[int, int]]:
    """Frame pairs that look alike but lie in non-adjacent chunks, from the model's own image
    features: the mean DINOv2 patch token of each frame, compared by cosine similarity.

    Only meaningful with trained weights (random weights make every frame look alike or none),
    so nothing calls it unless asked (``--loop-closure`` without pairs).

    Args:
        images: ``[S, 3, H, W]`` in [0, 1].
        plan: the chunk layout; pairs within one chunk or two consecutive ones are skipped
            (the overlap already constrains them).

    Returns: up to ``max_pairs`` ``(i, j)`` with ``i < j``, most similar first.
    """
    from .config import IMAGENET_MEAN, IMAGENET_STD

    device = next(model.parameters()).device
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    descriptors = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_frames):
            batch = images[start:start + batch_frames].to(device=device, dtype=torch.float32)
            tokens = model.aggregator.patch_embed((batch - mean) / std)  # [b, h·w, C]
            descriptors.append(torch.nn.functional.normalize(tokens.float().mean(dim=1), dim=-1).cpu())
    features = torch.cat(descriptors).numpy().astype(np.float64)
    similarity = features @ features.T
    chunk_of = np.empty(images.shape[0], np.int64)
    for index, start in enumerate(plan.starts):
        chunk_of[start:] = index  # later chunks overwrite: a frame's last chunk
    pairs = []
    for first in range(len(features)):
        for second in range(first + 1, len(features)):
            if chunk_of[second] - chunk_of[first] >= 2 and similarity[first, second] >= min_similarity:
                pairs.append((float(similarity[first, second]), first, second))
    pairs.sort(reverse=True)
    return [(first, second) for _, first, second in pairs[:max_pairs]]


def _chunk_holding(frame: int, plan: ChunkPlan) -> int:
    for index, (start, end) in enumerate(zip(plan.starts, plan.ends)):
        if start <= frame < end:
            return index
    raise InputError(f"frame {frame} is outside the {plan.ends[-1]} frames")


def _window(frame: int, chunk: int, plan: ChunkPlan, size: int) -> list[int]:
    """``size`` consecutive global frames inside chunk ``chunk``, starting as near ``frame`` as fits."""
    start, end = plan.starts[chunk], plan.ends[chunk]
    size = min(size, end - start)
    first = min(max(frame - size // 2, start), end - size)
    return list(range(first, first + size))


# --------------------------------------------------------------------------------------------
# Running the model in chunks
# --------------------------------------------------------------------------------------------


def reconstruct_in_chunks(
    model: torch.nn.Module,
    images: torch.Tensor,
    chunk_size: int,
    overlap: int,
    *,
    frames_chunk_size: int = 8,
    progress: ProgressCallback | None = None,
    frame_names: Sequence[str] | None = None,
    transforms: Sequence[FrameTransform] | None = None,
    robust_loss: str = "huber",
    loop_closure_pairs: Sequence[tuple[int, int]] | None = None,
    run_chunk: Callable[..., Reconstruction] | None = None,
) -> Reconstruction:
    """Reconstruct any number of frames with bounded memory: the model runs on overlapping
    chunks of at most ``chunk_size`` frames (chunk ``k + 1`` starts with the last ``overlap``
    frames of chunk ``k``), which :func:`align_chunks` merges into chunk 0's gauge and scale.

    Args:
        model: a VGGT model (see :func:`vggt_core.reconstruct`).
        images: ``[S, 3, H, W]`` float in [0, 1].
        chunk_size: most frames per model run (≥ 2); the model's peak memory is that of one
            run of ``chunk_size`` frames, whatever ``S``.
        overlap: frames shared by consecutive chunks, ``1 ≤ overlap < chunk_size``.
        frames_chunk_size: frames decoded at once by the dense heads.
        progress: ``progress(fraction, message)``; one stage per chunk ("chunk 2 of 5 (frames
            24-55): ..."), then loop closure and merging.
        frame_names, transforms: ``S`` names / :class:`FrameTransform`, as for ``reconstruct``.
        robust_loss: the IRLS weight of the chunk alignment, ``"huber"`` or ``"cauchy"``.
        loop_closure_pairs: optional global frame pairs ``(i, j)`` that see the same place
            (e.g. from :func:`loop_closure_candidates`); for each, the model runs once more on a
            window of ``overlap`` frames around each, and the chunk poses are solved as a Sim(3)
            pose graph (:func:`optimise_chunk_poses`, needs GTSAM).
        run_chunk: the single-run function, default :func:`vggt_core.reconstruct` (a test or
            a sharded runner can pass another with the same signature).

    Returns:
        One :class:`Reconstruction` of all ``S`` frames.
    """
    if run_chunk is None:
        from .inference import reconstruct as run_chunk
    report = progress if progress is not None else (lambda fraction, message: None)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"images must be a tensor [S, 3, H, W], got {getattr(images, 'shape', type(images))}")
    num_frames = images.shape[0]
    if frame_names is not None and len(frame_names) != num_frames:
        raise InputError(f"{len(frame_names)} frame names for {num_frames} frames")
    if transforms is not None and len(transforms) != num_frames:
        raise InputError(f"{len(transforms)} frame transforms for {num_frames} frames")
    plan = plan_chunks(num_frames, int(chunk_size), int(overlap))
    pairs = [(int(a), int(b)) for a, b in (loop_closure_pairs or [])]
    stages = plan.num_chunks + len(pairs) + 1

    def run_on(frames: Sequence[int], stage: int, message: str) -> Reconstruction:
        def chunk_progress(fraction: float, detail: str) -> None:
            report((stage + fraction) / stages, f"{message}: {detail}")

        frames = list(frames)
        return run_chunk(model, images[frames], frames_chunk_size=frames_chunk_size, progress=chunk_progress,
                         frame_names=None if frame_names is None else [frame_names[i] for i in frames],
                         transforms=None if transforms is None else [transforms[i] for i in frames])

    chunks = []
    for index, (start, end) in enumerate(zip(plan.starts, plan.ends)):
        chunks.append(run_on(range(start, end), index,
                             f"chunk {index + 1} of {plan.num_chunks} (frames {start + 1}-{end})"))
    shared = [plan.ends[index] - plan.starts[index + 1] for index in range(plan.num_chunks - 1)]

    chunk_transforms = None
    if pairs and plan.num_chunks > 1:
        consecutive, _ = _consecutive_sim3s(chunks, shared, robust_loss)
        loops = []
        for number, (first, second) in enumerate(pairs):
            first_chunk, second_chunk = _chunk_holding(first, plan), _chunk_holding(second, plan)
            if first_chunk == second_chunk:
                continue  # one run already saw both frames
            first_frames = _window(first, first_chunk, plan, overlap)
            second_frames = _window(second, second_chunk, plan, overlap)
            loop_run = run_on(first_frames + second_frames, plan.num_chunks + number,
                              f"loop closure {number + 1}/{len(pairs)} (frames {first + 1} and {second + 1})")
            count = len(first_frames)
            to_first = _fit_run_to_chunk(loop_run, range(count), chunks[first_chunk],
                                         [f - plan.starts[first_chunk] for f in first_frames], robust_loss)
            to_second = _fit_run_to_chunk(loop_run, range(count, 2 * count), chunks[second_chunk],
                                          [f - plan.starts[second_chunk] for f in second_frames], robust_loss)
            loops.append((first_chunk, second_chunk, to_first @ to_second.inverse()))
        if loops:
            chunk_transforms = optimise_chunk_poses(consecutive, loops)

    report((stages - 1) / stages, f"aligning {plan.num_chunks} chunks")
    merged = align_chunks(chunks, overlap, robust_loss=robust_loss, chunk_transforms=chunk_transforms,
                          shared_frame_counts=shared)
    merged.info["chunk_alignment"]["chunk_size"] = int(chunk_size)
    merged.info["chunk_alignment"]["loop_closure_pairs"] = [list(pair) for pair in pairs]
    report(1.0, "done")
    return merged


def _fit_run_to_chunk(run: Reconstruction, run_frames: Sequence[int], chunk: Reconstruction,
                      chunk_frames: Sequence[int], robust_loss: str) -> Sim3:
    """The Sim(3) from ``run``'s gauge to ``chunk``'s, fitted on frames both predicted."""
    source, target, weights = _shared_frame_points(chunk, chunk_frames, run, run_frames, seed=len(chunk_frames))
    return estimate_sim3(source, target, weights, robust_loss=robust_loss)[0]


def default_overlap(chunk_size: int) -> int:
    """Frames shared by consecutive chunks when none is asked for: a quarter of a chunk, at least one."""
    return max(1, int(chunk_size) // 4)


def chunk_size_for_memory(estimate) -> int | None:
    """The most frames per chunk that fit by ``estimate`` (a
    :class:`vggt_core.pipeline.MemoryEstimate` of all the frames): all of them when they fit.

    None where the device gives no free-memory figure, or where not even two frames fit (a
    chunk needs two to be aligned to its neighbour).
    """
    if estimate.fits is None:
        return None
    if estimate.fits:
        return max(2, int(estimate.num_frames))
    fitting = int(estimate.max_frames or 0)
    return fitting if fitting >= 2 else None


def reconstruct_decoded_in_chunks(model: torch.nn.Module, decoded, chunk_size: int, overlap: int, *,
                                  frames_chunk_size: int = 8, progress: ProgressCallback | None = None,
                                  loop_closure: bool = False,
                                  loop_closure_pairs: Sequence[tuple[int, int]] | None = None,
                                  check_memory: bool = True) -> Reconstruction:
    """:func:`reconstruct_in_chunks` on frames from :func:`vggt_core.pipeline.decode_frames`, with
    the pipeline's memory check for one chunk and its bookkeeping (``info`` of the photos).

    ``loop_closure`` adds :func:`loop_closure_candidates` (meaningful only with trained weights)
    to the given ``loop_closure_pairs``. ``check_memory=False`` skips the memory check, for a
    model that is not one module on one device (``DeviceGroup.model``).
    """
    from .pipeline import check_frames_fit_in_memory

    images = decoded.images
    height, width = images.shape[-2:]
    if check_memory:
        check_frames_fit_in_memory(model, min(chunk_size, images.shape[0]), height, width, frames_chunk_size)
    pairs = list(loop_closure_pairs or [])
    if loop_closure:
        pairs += loop_closure_candidates(model, images, plan_chunks(images.shape[0], chunk_size, overlap))
    recon = reconstruct_in_chunks(model, images, chunk_size, overlap, frames_chunk_size=frames_chunk_size,
                                  progress=progress, frame_names=decoded.names, transforms=decoded.transforms,
                                  loop_closure_pairs=pairs)
    recon.info["intrinsics_source"] = "predicted"
    recon.info["exif_focal_length_px"] = list(decoded.exif_focal_lengths_px)
    return recon
