"""Known focal lengths: re-projecting VGGT's depth with the camera's real intrinsics.

VGGT does not take intrinsics as input: it predicts them, with the depth and the poses. When the
focal length is known (from the photos' EXIF, or typed in), we keep the network's depth and poses
and unproject the depth with the known intrinsics instead: focal length given, principal point at
the photo's centre, both mapped into model-input pixels through the frame's crop/pad transform.
The network's own intrinsics are kept in ``predicted_intrinsics`` and ``info["intrinsics_source"]``
says which ones ``intrinsics`` are, so that a later refinement (bundle adjustment) can keep a
known focal length fixed. See docs/scene.md, "Known focal lengths".

Lineage: "predicted" always means the network's own cameras. Changing the camera of a scene whose
cameras bundle adjustment refined sets the refinement aside: its cameras and sparse points were
fitted to the old focal length (their reprojection errors grow from a fraction of a pixel to
many), so the result has the network's poses (from its pose encoding), the chosen intrinsics, no
sparse points, ``info["cameras_refined"]`` removed and ``info["bundle_adjustment"]`` a report with
``refined=False`` and a one-sentence message saying so. Refining again adjusts with the new camera.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from . import geometry
from .errors import InputError
from .exif import focal_length_px_from_35mm
from .geometry import unproject_depth_maps_in_frame_chunks
from .reconstruction import Reconstruction

__all__ = ["INTRINSICS_SOURCES", "FOCAL_UNITS", "REFINEMENT_SET_ASIDE_MESSAGE", "intrinsics_for_focal_lengths",
           "with_known_focal_lengths", "with_predicted_intrinsics", "apply_camera_choice", "network_intrinsics",
           "predicted_focal_lengths_px", "focal_length_summary"]

# What ``Reconstruction.info["intrinsics_source"]`` may say (absent means "predicted").
INTRINSICS_SOURCES = ("predicted", "exif", "manual")
# A typed focal length is in photo pixels or in 35 mm-equivalent millimetres.
FOCAL_UNITS = ("px", "mm35")
EXIF_FOCAL_KEY = "exif_focal_length_px"
# What info["bundle_adjustment"]["message"] says after a camera change set a refinement aside.
REFINEMENT_SET_ASIDE_MESSAGE = ("The camera change set aside the bundle adjustment, whose cameras and sparse points "
                                "were fitted to the previous focal length; refine again to adjust with this one.")


def intrinsics_for_focal_lengths(recon: Reconstruction, focal_lengths_px: Sequence[float]) -> np.ndarray:
    """Model-input intrinsics ``[S, 3, 3]`` (float64) of cameras with focal length
    ``focal_lengths_px [S]`` (photo pixels, square pixels) and the principal point at each
    photo's centre: ``(W/2, H/2)`` in the photo's corner-based pixels, mapped to model pixel
    indices (docs/architecture.md, "Pixel centres"), so that exported cameras put it back there."""
    if len(focal_lengths_px) != recon.num_frames:
        raise InputError(f"{len(focal_lengths_px)} focal lengths for {recon.num_frames} frames")
    matrices = []
    for index, focal in enumerate(focal_lengths_px):
        focal = float(focal)
        if not math.isfinite(focal) or focal <= 0:
            raise InputError(f"the focal length of frame {index} must be a number of pixels > 0, got {focal:g}")
        transform = recon.frame_transform(index)
        width, height = transform.original_size
        photo = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
        matrices.append(transform.photo_intrinsics_to_model(photo))
    return np.stack(matrices)


def _is_refined(recon: Reconstruction) -> bool:
    """Whether bundle adjustment refined the cameras (and perhaps left sparse points)."""
    return bool(recon.info.get("cameras_refined")) or recon.sparse_points is not None


def network_intrinsics(recon: Reconstruction) -> np.ndarray:
    """``[S, 3, 3]`` float32: the network's own intrinsics (in model-input pixels), whatever replaced
    them since: known focal lengths or bundle adjustment keep them in ``predicted_intrinsics``; a
    refined scene saved before that kept them is read from its pose encoding."""
    if recon.predicted_intrinsics is not None:
        return recon.predicted_intrinsics
    if _is_refined(recon) and recon.pose_encoding is not None:
        return geometry.pose_encoding_to_extrinsics_intrinsics(recon.pose_encoding, recon.image_size_hw)[1]
    return recon.intrinsics


def _camera_change(recon: Reconstruction, intrinsics: np.ndarray, predicted: np.ndarray | None,
                   info: dict) -> Reconstruction:
    """A copy with ``intrinsics [S, 3, 3]`` and the depth unprojected with them; a refined scene
    also gets the network's poses back and loses its refinement (module docstring, "Lineage")."""
    extrinsics = recon.extrinsics
    sparse: dict = {}
    if _is_refined(recon):
        if recon.pose_encoding is not None:
            # Still the network's: bundle adjustment keeps the input's gauge and never touches it.
            extrinsics = geometry.pose_encoding_to_extrinsics_intrinsics(recon.pose_encoding, recon.image_size_hw)[0]
        from .bundle_adjustment import BundleAdjustmentReport

        info.pop("cameras_refined", None)
        info["bundle_adjustment"] = BundleAdjustmentReport(refined=False,
                                                           message=REFINEMENT_SET_ASIDE_MESSAGE).as_dict()
        sparse = {"sparse_points": None, "sparse_point_colors": None, "sparse_point_tracks": None,
                  "sparse_observations": None}
    intrinsics = np.asarray(intrinsics, dtype=np.float32)
    extrinsics = np.asarray(extrinsics, dtype=np.float32)
    return dataclasses.replace(
        recon, extrinsics=extrinsics, intrinsics=intrinsics, predicted_intrinsics=predicted,
        frame_names=list(recon.frame_names), info=info, **sparse,
        points_from_depth=unproject_depth_maps_in_frame_chunks(recon.depth, extrinsics, intrinsics))


def with_predicted_intrinsics(recon: Reconstruction) -> Reconstruction:
    """The reconstruction with the network's own intrinsics and the depth unprojected with them
    (and, for a refined scene, the network's poses: see the module docstring, "Lineage")."""
    if recon.predicted_intrinsics is None and not _is_refined(recon):
        return recon
    info = {**recon.info, "intrinsics_source": "predicted"}
    info.pop("known_focal_length_px", None)
    return _camera_change(recon, network_intrinsics(recon).copy(), None, info)


def with_known_focal_lengths(recon: Reconstruction, focal_lengths_px: Sequence[float],
                             source: str = "manual") -> Reconstruction:
    """A copy whose depth branch is the predicted depth unprojected with known focal lengths.

    Args:
        recon: the reconstruction (its depth and poses are kept as predicted).
        focal_lengths_px: ``[S]`` focal length of each frame in its photo's pixels.
        source: ``"exif"`` or ``"manual"``, stored in ``info["intrinsics_source"]``.

    The point-map branch is left as the network predicted it: it does not depend on intrinsics.
    A refined scene loses its refinement (module docstring, "Lineage").
    """
    if source not in ("exif", "manual"):
        raise InputError(f"the source of known focal lengths must be 'exif' or 'manual', got {source!r}")
    intrinsics = intrinsics_for_focal_lengths(recon, focal_lengths_px).astype(np.float32)
    info = {**recon.info, "intrinsics_source": source,
            "known_focal_length_px": [round(float(f), 4) for f in focal_lengths_px]}
    return _camera_change(recon, intrinsics, network_intrinsics(recon).copy(), info)


def apply_camera_choice(recon: Reconstruction, choice: str, focal: float | None = None,
                        unit: str = "px") -> Reconstruction:
    """One of the app's and CLI's camera options.

    Args:
        choice: ``"predicted"`` (VGGT's), ``"exif"`` (``info["exif_focal_length_px"]``, recorded
            from the photos by :func:`vggt_core.pipeline.reconstruct_frames`) or ``"manual"``.
        focal: for ``"manual"``, the focal length in ``unit``.
        unit: ``"px"`` (photo pixels, the same for every frame) or ``"mm35"`` (35 mm-equivalent
            millimetres, turned into pixels by each photo's diagonal).

    Raises:
        InputError: an unknown choice or unit, a missing or bad focal length, or photos without one
            in their EXIF.
    """
    if choice == "predicted":
        return with_predicted_intrinsics(recon)
    if choice == "exif":
        found = recon.info.get(EXIF_FOCAL_KEY) or [None] * recon.num_frames
        missing = [name for name, value in zip(recon.frame_names, found) if not value]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise InputError(f"{len(missing)} of {recon.num_frames} frames have no focal length in their EXIF "
                             f"({shown}); video frames never do. Keep the intrinsics predicted by VGGT, "
                             "or type the focal length.")
        return with_known_focal_lengths(recon, [float(value) for value in found], "exif")
    if choice != "manual":
        raise InputError(f"unknown camera option {choice!r}; choose one of {INTRINSICS_SOURCES}")
    try:
        value = float(focal)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise InputError("type the focal length as a number (pixels or 35 mm-equivalent mm)") from error
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"the focal length must be a number > 0, got {value:g}")
    if unit == "px":
        focal_lengths = [value] * recon.num_frames
    elif unit == "mm35":
        focal_lengths = [focal_length_px_from_35mm(value, *recon.frame_transform(i).original_size)
                         for i in range(recon.num_frames)]
    else:
        raise InputError(f"unknown focal length unit {unit!r}; choose one of {FOCAL_UNITS}")
    return with_known_focal_lengths(recon, focal_lengths, "manual")


def predicted_focal_lengths_px(recon: Reconstruction) -> np.ndarray:
    """``[S]`` the network's focal length of each frame in its photo's pixels (mean of fx and fy)."""
    predicted = network_intrinsics(recon)
    focal = []
    for index in range(recon.num_frames):
        photo = recon.frame_transform(index).intrinsics_to_original(predicted[index])
        focal.append((photo[0, 0] + photo[1, 1]) / 2.0)
    return np.asarray(focal)


def _mean_label(values: Sequence[float]) -> str:
    values = np.asarray(values, dtype=np.float64)
    if len(values) > 1 and np.ptp(values) > 0.005 * np.mean(values):
        return f"{np.mean(values):,.0f} px (mean; {np.min(values):,.0f}–{np.max(values):,.0f})"
    return f"{np.mean(values):,.0f} px"


def focal_length_summary(recon: Reconstruction) -> str:
    """One line: predicted and EXIF focal lengths in photo pixels, and which ones the depth uses."""
    parts = [f"predicted {_mean_label(predicted_focal_lengths_px(recon))}"]
    exif = [value for value in recon.info.get(EXIF_FOCAL_KEY) or [] if value]
    if exif:
        count = len(recon.info[EXIF_FOCAL_KEY])
        parts.append(f"EXIF {_mean_label(exif)}" + (f" ({len(exif)} of {count} frames)" if len(exif) < count else ""))
    source = recon.info.get("intrinsics_source", "predicted")
    if source == "predicted" and _is_refined(recon):
        used = "depth unprojected with the focal length refined by bundle adjustment"
    elif source == "predicted":
        used = "depth unprojected with the predicted focal length"
    else:
        label = "the EXIF" if source == "exif" else f"the typed ({_mean_label(recon.info['known_focal_length_px'])})"
        used = (f"depth re-projected with {label} focal length; the network does not take intrinsics, "
                "its depth and poses are unchanged")
    return "Focal length: " + " · ".join(parts) + f" — {used}"
