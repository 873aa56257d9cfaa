"""Bundle adjustment of a reconstruction's cameras on its own point tracks, with pycolmap.

VGGT's most accurate cameras come from feeding its predictions to bundle adjustment: each track
(:mod:`vggt_core.tracks`) is triangulated from the predicted cameras, observations that reproject
badly are dropped, and pycolmap (Ceres) refines cameras, focal lengths and points together. The
result keeps the input's gauge: frame 0 keeps its input pose and the input's scale is restored, so
the refined cameras, the depth points, the point map and the sparse points stay in one frame.

A refinement is only kept when it makes things better: one that raises the mean reprojection
error, or gives non-finite cameras or points, is rejected (the input cameras are kept and the
report says why). Sparse points that are not finite, lie behind a camera that observes them or
reproject further than the threshold are dropped, here and before any export
(:func:`track_points_for_export`). See docs/tracks.md.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError
from .geometry import unproject_depth_maps_in_frame_chunks
from .progress import ProgressCallback
from .reconstruction import Reconstruction

__all__ = ["BundleAdjustmentReport", "BundleAdjustmentResult", "CAMERA_MODELS", "bundle_adjust",
           "track_points_for_export", "triangulate_tracks", "with_triangulated_tracks"]

# Camera models whose refined parameters a pinhole intrinsic matrix can hold.
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")
# Fewer usable tracks than this leave the cameras too loosely constrained to refine.
DEFAULT_MIN_TRACKS = 16
# Robust loss: observations a few pixels off count less than squared (pixels).
_LOSS_SCALE_PX = 2.0
# Another round is skipped when the refined cameras change at most this fraction of the observations.
_SAME_OBSERVATIONS_FRACTION = 0.01
# Focal lengths that are known (EXIF, or typed in) are kept fixed by default.
_KNOWN_FOCAL_SOURCES = ("exif", "manual")
# Observations further than this (model-input pixels) from their point are left out by default.
DEFAULT_MAX_REPROJECTION_ERROR_PX = 8.0

logger = logging.getLogger(__name__)


@dataclass
class BundleAdjustmentReport:
    """What one bundle adjustment did.

    Attributes:
        refined: whether the cameras were refined (False: the input came back unchanged).
        message: one sentence for people (why it failed, or what it did).
        tracks_used: tracks triangulated and refined.
        tracks_rejected: tracks left out (fewer than 2 good observations, or not triangulable).
        observations: observations (frame, track) bundle adjustment used.
        mean_error_before_px: mean reprojection error of those observations with the input
            cameras (model-input pixels), or None when nothing was triangulated.
        mean_error_after_px: the same after refinement, or None when not refined (for a rejected
            refinement: what it would have been).
        seconds: wall time of the whole call.
        max_reprojection_error_px: the threshold the observations were kept with.
    """

    refined: bool
    message: str
    tracks_used: int = 0
    tracks_rejected: int = 0
    observations: int = 0
    mean_error_before_px: float | None = None
    mean_error_after_px: float | None = None
    seconds: float = 0.0
    max_reprojection_error_px: float = DEFAULT_MAX_REPROJECTION_ERROR_PX

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy (also stored as ``info["bundle_adjustment"]``)."""
        values = dataclasses.asdict(self)
        for key in ("mean_error_before_px", "mean_error_after_px"):
            if values[key] is not None and not np.isfinite(values[key]):
                values[key] = None
        return values


@dataclass
class BundleAdjustmentResult:
    """``reconstruction``: refined, or the input's cameras and points when the refinement failed or
    was rejected (with the report in ``info["bundle_adjustment"]``); ``report``."""

    reconstruction: Reconstruction
    report: BundleAdjustmentReport


# --------------------------------------------------------------------------------------------
# Triangulation
# --------------------------------------------------------------------------------------------


def triangulate_tracks(tracks: np.ndarray, observed: np.ndarray, extrinsics: np.ndarray,
                       intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear (DLT) multi-view triangulation of every track from fixed cameras.

    Each observation adds two rows ``u·P₃ − P₁``, ``v·P₃ − P₂`` (``(u, v)`` in normalised camera
    coordinates, ``P = [R | t]``); the point is the null vector of the stacked rows, found from
    the 4×4 normal matrix of each track at once.

    Args:
        tracks: ``[S, N, 2]`` pixels.
        observed: ``[S, N]`` bool, the observations to use.
        extrinsics: ``[S, 3, 4]`` world-to-camera.
        intrinsics: ``[S, 3, 3]``.

    Returns:
        ``(points [N, 3] float64, valid [N] bool)``: valid where the track has ≥ 2 observations
        and a finite point.
    """
    extrinsics = extrinsics.astype(np.float64)
    inverse_k = np.linalg.inv(intrinsics.astype(np.float64))
    homogeneous = np.concatenate([tracks.astype(np.float64), np.ones(tracks.shape[:2] + (1,))], axis=-1)
    normalised = np.einsum("sij,snj->sni", inverse_k, homogeneous)
    u, v = normalised[..., 0:1], normalised[..., 1:2]
    rows_x = u * extrinsics[:, None, 2] - extrinsics[:, None, 0]  # [S, N, 4]
    rows_y = v * extrinsics[:, None, 2] - extrinsics[:, None, 1]
    weights = observed.astype(np.float64)
    normal = (np.einsum("sn,sni,snj->nij", weights, rows_x, rows_x)
              + np.einsum("sn,sni,snj->nij", weights, rows_y, rows_y))
    _, vectors = np.linalg.eigh(normal)
    null = vectors[:, :, 0]  # eigenvalues ascend
    with np.errstate(divide="ignore", invalid="ignore"):
        points = null[:, :3] / null[:, 3:4]
    valid = (observed.sum(axis=0) >= 2) & np.isfinite(points).all(axis=1) & (np.abs(null[:, 3]) > 1e-12)
    points[~valid] = 0.0
    return points, valid


def _reprojection_errors(points: np.ndarray, tracks: np.ndarray, extrinsics: np.ndarray,
                         intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``points [N, 3]`` seen by every camera: ``(errors [S, N] px, depth [S, N])``."""
    camera = np.einsum("sij,nj->sni", extrinsics[:, :, :3].astype(np.float64), points) \
        + extrinsics[:, None, :, 3].astype(np.float64)
    depth = camera[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        pixels = np.einsum("sij,snj->sni", intrinsics.astype(np.float64), camera / depth[..., None])[..., :2]
        errors = np.linalg.norm(pixels - tracks, axis=-1)
    errors[~np.isfinite(errors)] = np.inf
    return errors, depth


def _select_observations(recon: Reconstruction, min_visibility: float) -> np.ndarray:
    """``[S, N]`` bool: visible enough, finite, inside the frame and not in a user mask."""
    height, width = recon.image_size_hw
    tracks = recon.tracks
    observed = np.isfinite(tracks).all(axis=-1)
    observed &= (tracks[..., 0] >= 0) & (tracks[..., 0] <= width) & (tracks[..., 1] >= 0) & (tracks[..., 1] <= height)
    if recon.track_visibility is not None:
        observed &= recon.track_visibility >= min_visibility
    if recon.exclusion_masks is not None:  # the user's masks: a passer-by is no observation
        # Track pixels have their centres at integers (docs/tracks.md), hence rint.
        rows = np.clip(np.rint(np.nan_to_num(tracks[..., 1])).astype(np.int64), 0, height - 1)
        columns = np.clip(np.rint(np.nan_to_num(tracks[..., 0])).astype(np.int64), 0, width - 1)
        observed &= ~recon.exclusion_masks[np.arange(recon.num_frames)[:, None], rows, columns]
    return observed


def _triangulate_with_inliers(tracks: np.ndarray, observed: np.ndarray, extrinsics: np.ndarray,
                              intrinsics: np.ndarray, max_error: float, rounds: int = 2
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangulate ``tracks [S, N, 2]`` from ``observed [S, N]``, drop observations over
    ``max_error`` px or behind the camera, repeat.

    Returns ``(points [N, 3], inliers [S, N] bool, errors [S, N])``.
    """
    inliers = observed.copy()
    for _ in range(rounds):
        points, valid = triangulate_tracks(tracks, inliers, extrinsics, intrinsics)
        errors, depth = _reprojection_errors(points, tracks, extrinsics, intrinsics)
        inliers = observed & valid[None] & (errors <= max_error) & (depth > 0)
    points, valid = triangulate_tracks(tracks, inliers, extrinsics, intrinsics)
    errors, depth = _reprojection_errors(points, tracks, extrinsics, intrinsics)
    inliers &= valid[None] & (depth > 0)
    inliers[:, inliers.sum(axis=0) < 2] = False
    return points, inliers, errors


def _sound_observations(points: np.ndarray, tracks: np.ndarray, observations: np.ndarray, extrinsics: np.ndarray,
                        intrinsics: np.ndarray, max_error: float) -> np.ndarray:
    """``[S, P]`` bool: the ``observations [S, P]`` of ``points [P, 3]`` (at ``tracks [S, P, 2]``)
    whose point is finite, in front of the observing camera and within ``max_error`` px of it;
    a point left with fewer than 2 of them loses them all (it can no longer be checked)."""
    finite = np.isfinite(points).all(axis=1)
    safe_points = np.where(finite[:, None], points, 0.0)
    errors, depth = _reprojection_errors(safe_points, tracks, extrinsics, intrinsics)
    sound = observations & finite[None] & (depth > 0) & (errors <= max_error)
    sound[:, sound.sum(axis=0) < 2] = False
    return sound


def _with_sparse_points(recon: Reconstruction, points: np.ndarray, columns: np.ndarray,
                        observations: np.ndarray) -> Reconstruction:
    """A copy holding the sparse ``points [P, 3]`` of track ``columns [P]`` seen by ``observations
    [S, P]``, keeping only the points with 2 or more observations."""
    kept = observations.sum(axis=0) >= 2
    columns = columns[kept]
    full = np.zeros((recon.num_frames, recon.tracks.shape[1]), dtype=bool)
    full[:, columns] = observations[:, kept]
    return dataclasses.replace(
        recon, frame_names=list(recon.frame_names), info=dict(recon.info),
        sparse_points=points[kept].astype(np.float32), sparse_point_colors=_point_colors(recon, columns, full),
        sparse_point_tracks=columns.astype(np.int64), sparse_observations=observations[:, kept])


def with_triangulated_tracks(recon: Reconstruction, *,
                             max_reprojection_error: float = DEFAULT_MAX_REPROJECTION_ERROR_PX,
                             min_visibility: float = 0.2) -> Reconstruction:
    """A copy whose ``sparse_*`` points are sound: the tracks triangulated from the current cameras
    (no refinement) when it has none, else its own sparse points; in both cases only observations
    of finite points, in front of their camera and within the threshold (``max_reprojection_error``
    px, or the one bundle adjustment used) are kept, and points with 2 or more of them. ``recon``
    itself when it has no tracks. Used by exports (see :func:`track_points_for_export`)."""
    if recon.tracks is None:
        return recon
    tracks = recon.tracks.astype(np.float64)
    extrinsics, intrinsics = recon.extrinsics.astype(np.float64), recon.intrinsics.astype(np.float64)
    if recon.sparse_points is not None:
        report = recon.info.get("bundle_adjustment") or {}
        threshold = float(report.get("max_reprojection_error_px") or max_reprojection_error)
        columns = recon.sparse_point_tracks
        points = recon.sparse_points.astype(np.float64)
        sound = _sound_observations(points, tracks[:, columns], recon.sparse_observations, extrinsics, intrinsics,
                                    threshold)
        if sound.sum() == recon.sparse_observations.sum():
            return recon
        return _with_sparse_points(recon, points, columns, sound)
    points, inliers, _ = _triangulate_with_inliers(tracks, _select_observations(recon, min_visibility),
                                                   extrinsics, intrinsics, float(max_reprojection_error))
    sound = _sound_observations(points, tracks, inliers, extrinsics, intrinsics, float(max_reprojection_error))
    return _with_sparse_points(recon, points, np.arange(tracks.shape[1]), sound)


def track_points_for_export(recon: Reconstruction) -> Reconstruction | None:
    """The reconstruction with sound multi-view ``sparse_*`` points (:func:`with_triangulated_tracks`)
    for an export to write, or None when an export should write its ordinary points instead: the
    scene has no tracks, its bundle adjustment was rejected or skipped (its tracks did not make a
    better model), or no track gives a sound point."""
    if recon.tracks is None:
        return None
    report = recon.info.get("bundle_adjustment")
    if isinstance(report, dict) and not report.get("refined", False):
        return None
    tracked = with_triangulated_tracks(recon)
    if tracked.sparse_points is None or len(tracked.sparse_points) == 0:
        return None
    return tracked


# --------------------------------------------------------------------------------------------
# pycolmap
# --------------------------------------------------------------------------------------------


def _camera_params(intrinsics: np.ndarray, camera_model: str) -> list[float]:
    """``[3, 3]`` → COLMAP parameters of ``camera_model``."""
    fx, fy, cx, cy = (float(value) for value in intrinsics[[0, 1, 0, 1], [0, 1, 2, 2]])
    if camera_model == "SIMPLE_PINHOLE":
        return [(fx + fy) / 2.0, cx, cy]
    return [fx, fy, cx, cy]


def _intrinsics_of_params(params: np.ndarray, camera_model: str) -> np.ndarray:
    if camera_model == "SIMPLE_PINHOLE":
        focal, cx, cy = params
        fx = fy = focal
    else:
        fx, fy, cx, cy = params
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _build_model(recon: Reconstruction, points: np.ndarray, inliers: np.ndarray, used: np.ndarray,
                 shared_camera: bool, camera_model: str, extrinsics: np.ndarray):
    """A pycolmap model: image ``s + 1`` per frame, one point per used track (ids in ``used`` order)."""
    import pycolmap  # imported here: importing pycolmap installs glog's signal handlers

    height, width = recon.image_size_hw
    model = pycolmap.Reconstruction()
    num_cameras = 1 if shared_camera else recon.num_frames
    for index in range(num_cameras):
        intrinsics = recon.intrinsics.mean(axis=0) if shared_camera else recon.intrinsics[index]
        model.add_camera_with_trivial_rig(pycolmap.Camera(
            model=camera_model, width=width, height=height, params=_camera_params(intrinsics, camera_model),
            camera_id=index + 1))
    tracks = recon.tracks.astype(np.float64)
    # Per frame: its observations in the used tracks' order, as 2-D points 0, 1, ...
    point2d_index = np.full(inliers.shape, -1, dtype=np.int64)
    for frame in range(recon.num_frames):
        columns = used[inliers[frame, used]]
        point2d_index[frame, columns] = np.arange(len(columns))
        image = pycolmap.Image(name=recon.frame_names[frame], keypoints=tracks[frame, columns],
                               camera_id=1 if shared_camera else frame + 1, image_id=frame + 1)
        model.add_image_with_trivial_frame(image, pycolmap.Rigid3d(extrinsics[frame].astype(np.float64)))
    point_ids = []
    for column in used.tolist():
        frames = np.flatnonzero(inliers[:, column])
        track = pycolmap.Track([pycolmap.TrackElement(int(frame) + 1, int(point2d_index[frame, column]))
                                for frame in frames])
        point_ids.append(model.add_point3D(points[column], track))
    return model, point_ids


def _run_pycolmap_bundle_adjustment(model, num_frames: int, num_cameras: int, fix_focal: bool,
                                    max_iterations: int) -> bool:
    """Refine ``model`` in place with frame 0's pose held fixed; True when Ceres gave a usable solution."""
    import pycolmap

    options = pycolmap.BundleAdjustmentOptions()
    options.refine_focal_length = not fix_focal
    options.refine_principal_point = False
    options.refine_extra_params = False
    options.print_summary = False
    options.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    options.ceres.loss_function_scale = _LOSS_SCALE_PX
    options.ceres.solver_options.max_num_iterations = int(max_iterations)
    options.ceres.solver_options.function_tolerance = 1e-6
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in range(1, num_frames + 1):
        config.add_image(image_id)
    # Frame 0 stays at the identity; the scale is free here and restored afterwards.
    config.set_constant_rig_from_world_pose(1)
    if fix_focal:
        for camera_id in range(1, num_cameras + 1):
            config.set_constant_cam_intrinsics(camera_id)
    adjuster = pycolmap.create_default_bundle_adjuster(options, config, model)
    summary = adjuster.solve()
    return bool(summary.is_solution_usable())


def _refined_arrays(model, point_ids: list[int], num_frames: int, shared_camera: bool,
                    camera_model: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(extrinsics [S, 3, 4], intrinsics [S, 3, 3], points [P, 3])`` float64 read back from ``model``."""
    extrinsics = np.stack([model.image(frame + 1).cam_from_world().matrix() for frame in range(num_frames)])
    intrinsics = np.stack([_intrinsics_of_params(np.asarray(model.camera(1 if shared_camera else frame + 1).params),
                                                 camera_model) for frame in range(num_frames)])
    points = np.stack([model.point3D(point_id).xyz for point_id in point_ids]) if point_ids \
        else np.zeros((0, 3))
    return extrinsics, intrinsics, points


def _camera_centres(extrinsics: np.ndarray) -> np.ndarray:
    """``[S, 3, 4]`` world-to-camera → ``[S, 3]`` centres ``−Rᵀt``."""
    return -np.einsum("sji,sj->si", extrinsics[:, :, :3], extrinsics[:, :, 3])


def _in_input_gauge(extrinsics: np.ndarray, points: np.ndarray, input_extrinsics: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Refined cameras ``[S, 3, 4]`` and points ``[P, 3]`` at the input's scale.

    pycolmap held frame 0 at its input pose, so position and orientation are the input's; only
    the scale drifted. The scaling about frame 0's camera centre ``c₀`` (``X ↦ c₀ + k·(X − c₀)``,
    so ``t_i ↦ k·t_i + (k − 1)·R_i·c₀``) keeps frame 0's pose and makes the mean distance of the
    camera centres from frame 0's equal the input's. Frame 0 is *not* moved to the identity: the
    point map and everything else stay in the input's world.
    """
    if len(extrinsics) < 2:
        return extrinsics, points
    centres, input_centres = _camera_centres(extrinsics), _camera_centres(input_extrinsics.astype(np.float64))
    target = float(np.linalg.norm(input_centres[1:] - input_centres[0], axis=1).mean())
    current = float(np.linalg.norm(centres[1:] - centres[0], axis=1).mean())
    if not (target > 0 and current > 0 and np.isfinite(target / current)):
        return extrinsics, points
    factor = target / current
    first_centre = centres[0]
    scaled = extrinsics.copy()
    scaled[:, :, 3] = factor * extrinsics[:, :, 3] + (factor - 1.0) * (extrinsics[:, :, :3] @ first_centre)
    return scaled, first_centre + factor * (points - first_centre)


def _point_colors(recon: Reconstruction, columns: np.ndarray, inliers: np.ndarray) -> np.ndarray:
    """RGB ``[P, 3]`` uint8 of each track in its query frame (else its first observation)."""
    height, width = recon.image_size_hw
    if recon.track_query_frames is not None:
        frames = recon.track_query_frames[columns]
    else:
        frames = np.zeros(len(columns), dtype=np.int64)
    has_query = inliers[frames, columns]
    frames = np.where(has_query, frames, np.argmax(inliers[:, columns], axis=0))
    pixels = recon.tracks[frames, columns]
    x = np.clip(np.round(pixels[:, 0]).astype(np.int64), 0, width - 1)
    y = np.clip(np.round(pixels[:, 1]).astype(np.int64), 0, height - 1)
    return recon.images[frames, y, x]


def _counts(tracks: np.ndarray, inliers: np.ndarray, used: np.ndarray, recon: Reconstruction) -> dict[str, Any]:
    """Report fields for the observations ``inliers [S, N]`` of the ``used`` tracks, with the mean
    error of points triangulated from exactly those observations and the *input* cameras."""
    counts: dict[str, Any] = {"tracks_used": int(len(used)), "tracks_rejected": int(tracks.shape[1] - len(used)),
                              "observations": int(inliers[:, used].sum())}
    if len(used):
        observations = inliers[:, used]
        points, _ = triangulate_tracks(tracks[:, used], observations, recon.extrinsics, recon.intrinsics)
        errors, _ = _reprojection_errors(points, tracks[:, used], recon.extrinsics, recon.intrinsics)
        counts["mean_error_before_px"] = float(errors[observations].mean())
    return counts


# --------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------


def bundle_adjust(recon: Reconstruction, *, max_reprojection_error: float = DEFAULT_MAX_REPROJECTION_ERROR_PX,
                  shared_camera: bool = False, camera_model: str = "SIMPLE_PINHOLE", min_visibility: float = 0.2,
                  fix_focal: bool | None = None, min_tracks: int = DEFAULT_MIN_TRACKS,
                  max_iterations: int = 100, refinement_rounds: int = 3, progress: ProgressCallback | None = None) -> BundleAdjustmentResult:
    """Refine cameras, focal lengths and points on the reconstruction's tracks.

    Args:
        recon: a reconstruction with ``tracks`` (see :func:`vggt_core.tracks.track_reconstruction`).
        max_reprojection_error: observations that reproject further than this (model-input
            pixels) from the triangulated point with the input cameras are left out.
        shared_camera: one camera (focal length) for all frames, e.g. one video.
        camera_model: ``"SIMPLE_PINHOLE"`` (one focal length) or ``"PINHOLE"`` (fx, fy); the
            principal point stays fixed.
        min_visibility: observations with a lower ``track_visibility`` are not used.
        fix_focal: keep focal lengths fixed; default: fixed when they are known
            (``info["intrinsics_source"]`` is ``"exif"`` or ``"manual"``), refined otherwise.
        min_tracks: fewer usable tracks than this fails (the input comes back unrefined).
        max_iterations: Ceres iterations at most, per round.
        refinement_rounds: rounds of triangulate, filter, refine; each later round starts from
            the cameras the previous one refined, so it can take back observations that the
            input cameras had rejected (skipped when it would use nearly the same observations).
        progress: optional ``progress(fraction, message)``.

    Returns:
        The refined reconstruction (``extrinsics``, ``intrinsics``, ``points_from_depth``
        recomputed, the ``sparse_*`` points with colours and observations,
        ``info["bundle_adjustment"]`` = the report, ``info["cameras_refined"] = True`` and the
        network's own intrinsics in ``predicted_intrinsics``) and the report. When it fails or is
        rejected (a higher mean reprojection error, non-finite results, too few sound tracks):
        the input's cameras and points with the report (``refined=False``, a one-sentence
        ``message``) in ``info["bundle_adjustment"]`` (the input itself when it was refined before).

    Raises:
        InputError: an unknown camera model, or thresholds that are not positive.
    """
    started = time.perf_counter()
    report_progress = progress if progress is not None else (lambda fraction, message: None)
    if camera_model not in CAMERA_MODELS:
        raise InputError(f"unknown camera model {camera_model!r}; choose from {CAMERA_MODELS}")
    if not max_reprojection_error > 0:
        raise InputError(f"the reprojection error threshold must be > 0 pixels, got {max_reprojection_error}")
    if fix_focal is None:
        fix_focal = recon.info.get("intrinsics_source") in _KNOWN_FOCAL_SOURCES

    def failed(message: str, **counts: Any) -> BundleAdjustmentResult:
        logger.warning("bundle adjustment: %s", message)
        report = BundleAdjustmentReport(refined=False, message=message, seconds=time.perf_counter() - started,
                                        max_reprojection_error_px=float(max_reprojection_error), **counts)
        if recon.info.get("cameras_refined"):
            return BundleAdjustmentResult(recon, report)  # an earlier refinement and its report stand
        # The input's cameras and points, with the report: exports then know that its tracks did
        # not make a better model (track_points_for_export).
        kept = dataclasses.replace(recon, frame_names=list(recon.frame_names),
                                   info={**recon.info, "bundle_adjustment": report.as_dict()})
        return BundleAdjustmentResult(kept, report)

    if recon.tracks is None or recon.tracks.shape[1] == 0:
        return failed("No point tracks to adjust on: track points first (vggt_core.tracks.track_reconstruction).")
    if recon.num_frames < 2:
        return failed("Bundle adjustment needs at least 2 frames.")

    num_tracks = recon.tracks.shape[1]
    tracks = recon.tracks.astype(np.float64)
    observed = _select_observations(recon, min_visibility)
    extrinsics, intrinsics = recon.extrinsics.astype(np.float64), recon.intrinsics.astype(np.float64)
    refined_points = used = inliers = None
    # Observations rejected with the input cameras may fit the refined ones: triangulate and
    # filter again from the refined cameras, and refine once more.
    for round_index in range(max(1, int(refinement_rounds))):
        report_progress(0.8 * round_index / refinement_rounds, "triangulating tracks")
        points, round_inliers, _ = _triangulate_with_inliers(tracks, observed, extrinsics, intrinsics,
                                                             float(max_reprojection_error))
        round_used = np.flatnonzero(round_inliers.sum(axis=0) >= 2)
        if inliers is not None and np.count_nonzero(round_inliers != inliers) <= \
                _SAME_OBSERVATIONS_FRACTION * max(int(inliers.sum()), 1):
            break  # the refined cameras accept the same observations: refining again changes nothing
        if len(round_used) < min_tracks:
            if round_index == 0:
                counts = _counts(tracks, round_inliers, round_used, recon)
                return failed(f"Too few usable tracks: {len(round_used)} of {num_tracks} have 2 or more "
                              f"observations within {max_reprojection_error:g} px (at least {min_tracks} are "
                              "needed). The input cameras are kept.", **counts)
            break
        report_progress(0.8 * (round_index + 0.2) / refinement_rounds,
                        f"bundle adjustment of {len(round_used)} tracks")
        round_recon = dataclasses.replace(recon, extrinsics=extrinsics.astype(np.float32),
                                          intrinsics=intrinsics.astype(np.float32), frame_names=list(recon.frame_names))
        model, point_ids = _build_model(round_recon, points, round_inliers, round_used, shared_camera, camera_model,
                                        extrinsics)
        try:
            usable = _run_pycolmap_bundle_adjustment(model, recon.num_frames,
                                                     1 if shared_camera else recon.num_frames, fix_focal,
                                                     max_iterations)
        except (RuntimeError, ValueError) as error:  # pycolmap raises these for bad problems
            usable, reason = False, f"Bundle adjustment failed ({error}); the input cameras are kept."
        else:
            reason = "Bundle adjustment did not converge to a usable solution; the input cameras are kept."
        round_extrinsics, round_intrinsics, round_points = _refined_arrays(
            model, point_ids, recon.num_frames, shared_camera, camera_model) if usable else (None, None, None)
        if not usable or not (np.isfinite(round_extrinsics).all() and np.isfinite(round_intrinsics).all()
                              and np.isfinite(round_points).all() and (round_intrinsics[:, 0, 0] > 0).all()
                              and (round_intrinsics[:, 1, 1] > 0).all()):
            if round_index == 0:
                return failed(reason if not usable else
                              "Bundle adjustment gave non-finite cameras or points, so the input cameras are kept.",
                              **_counts(tracks, round_inliers, round_used, recon))
            break
        extrinsics, intrinsics, refined_points = round_extrinsics, round_intrinsics, round_points
        used, inliers = round_used, round_inliers
    extrinsics, refined_points = _in_input_gauge(extrinsics, refined_points, recon.extrinsics)

    # Never worse: over every observation it refined on, the mean error must not have grown (a
    # degenerate point, e.g. one sent to infinity, makes it grow without bound).
    counts = _counts(tracks, inliers, used, recon)
    mean_after = _mean_error(refined_points, tracks[:, used], inliers[:, used], extrinsics, intrinsics)
    if not mean_after <= counts["mean_error_before_px"]:
        return failed(f"Bundle adjustment raised the mean reprojection error from "
                      f"{_pixels_label(counts['mean_error_before_px'])} to {_pixels_label(mean_after)}, so the "
                      "input cameras are kept.", mean_error_after_px=mean_after, **counts)
    # Points behind a camera that sees them, or too far from an observation, are left out.
    sound = np.zeros_like(inliers)
    sound[:, used] = _sound_observations(refined_points, tracks[:, used], inliers[:, used], extrinsics, intrinsics,
                                         float(max_reprojection_error))
    kept = sound[:, used].sum(axis=0) >= 2
    used, refined_points = used[kept], refined_points[kept]
    counts = _counts(tracks, sound, used, recon)
    observations = sound[:, used]
    mean_after = _mean_error(refined_points, tracks[:, used], observations, extrinsics, intrinsics)
    if len(used) < min_tracks:
        return failed(f"Bundle adjustment left {len(used)} tracks within {max_reprojection_error:g} px in front of "
                      f"their cameras (at least {min_tracks} are needed), so the input cameras are kept.",
                      mean_error_after_px=mean_after, **counts)
    if not mean_after <= counts["mean_error_before_px"]:
        return failed(f"Bundle adjustment raised the mean reprojection error of its sound tracks from "
                      f"{_pixels_label(counts['mean_error_before_px'])} to {_pixels_label(mean_after)}, so the "
                      "input cameras are kept.", mean_error_after_px=mean_after, **counts)

    report_progress(0.8, "recomputing points from depth")
    report = BundleAdjustmentReport(
        refined=True,
        message=(f"Refined {recon.num_frames} cameras on {len(used)} tracks ({counts['observations']} observations): "
                 f"mean reprojection error {counts['mean_error_before_px']:.2f} px → {mean_after:.2f} px."),
        mean_error_after_px=mean_after, seconds=0.0, max_reprojection_error_px=float(max_reprojection_error),
        **counts)
    extrinsics32, intrinsics32 = extrinsics.astype(np.float32), intrinsics.astype(np.float32)
    report.seconds = time.perf_counter() - started
    info = {**recon.info, "cameras_refined": True, "bundle_adjustment": report.as_dict()}
    # "Predicted" keeps meaning the network's own intrinsics (vggt_core.intrinsics).
    predicted = recon.predicted_intrinsics if recon.predicted_intrinsics is not None else recon.intrinsics
    refined = dataclasses.replace(
        recon, extrinsics=extrinsics32, intrinsics=intrinsics32, predicted_intrinsics=predicted.copy(),
        points_from_depth=unproject_depth_maps_in_frame_chunks(recon.depth, extrinsics32, intrinsics32),
        frame_names=list(recon.frame_names), info=info,
        sparse_points=refined_points.astype(np.float32), sparse_point_colors=_point_colors(recon, used, sound),
        sparse_point_tracks=used.astype(np.int64), sparse_observations=observations)
    report_progress(1.0, "bundle adjustment done")
    return BundleAdjustmentResult(refined, report)


def _mean_error(points: np.ndarray, tracks: np.ndarray, observations: np.ndarray, extrinsics: np.ndarray,
                intrinsics: np.ndarray) -> float:
    """Mean reprojection error (px) of ``points [P, 3]`` at their ``observations [S, P]`` of ``tracks
    [S, P, 2]``; inf when a point is not finite or there is no observation."""
    if not observations.any() or not np.isfinite(points).all():
        return math.inf
    errors, _ = _reprojection_errors(points, tracks, extrinsics, intrinsics)
    return float(errors[observations].mean())


def _pixels_label(value: float | None) -> str:
    """``1,062.40 px``; a huge or non-finite error as ``1e+154 px`` / ``inf px``; ``unknown`` for None."""
    if value is None:
        return "unknown"
    return f"{value:,.2f} px" if abs(value) < 1e6 else f"{value:.2g} px"
