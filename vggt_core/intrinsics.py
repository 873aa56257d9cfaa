"""Known focal lengths: re-projecting VGGT's depth with the camera's real intrinsics.

VGGT does not take intrinsics as input: it predicts them, with the depth and the poses. When the
focal length is known (from the photos' EXIF, or typed in), we keep the network's depth and poses
and unproject the depth with the known intrinsics instead: focal length given, principal point at
the photo's centre, both mapped into model-input pixels through the frame's crop/pad transform.
The network's own intrinsics are kept in ``predicted_intrinsics`` and ``info["intrinsics_source"]``
says which ones ``intrinsics`` are, so that a later refinement (bundle adjustment) can keep a
known focal length fixed. See docs/scene.md, "Known focal lengths".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from .errors import InputError
from .exif import focal_length_px_from_35mm
from .geometry import unproject_depth_maps_in_frame_chunks
from .reconstruction import Reconstruction

__all__ = ["INTRINSICS_SOURCES", "FOCAL_UNITS", "intrinsics_for_focal_lengths", "with_known_focal_lengths",
           "with_predicted_intrinsics", "apply_camera_choice", "predicted_focal_lengths_px",
           "focal_length_summary"]

# What ``Reconstruction.info["intrinsics_source"]`` may say (absent means "predicted").
INTRINSICS_SOURCES = ("predicted", "exif", "manual")
# A typed focal length is in photo pixels or in 35 mm-equivalent millimetres.
FOCAL_UNITS = ("px", "mm35")
EXIF_FOCAL_KEY = "exif_focal_length_px"


def intrinsics_for_focal_lengths(recon: Reconstruction, focal_lengths_px: Sequence[float]) -> np.ndarray:
    """Model-input intrinsics ``[S, 3, 3]`` (float64) of cameras with focal length
    ``focal_lengths_px [S]`` (photo pixels, square pixels) and the principal point at each
    photo's centre."""
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
        matrices.append(transform.intrinsics_to_processed(photo))
    return np.stack(matrices)


def with_predicted_intrinsics(recon: Reconstruction) -> Reconstruction:
    """The reconstruction with the network's own intrinsics and the depth unprojected with them."""
    if recon.predicted_intrinsics is None:
        return recon
    info = {**recon.info, "intrinsics_source": "predicted"}
    info.pop("known_focal_length_px", None)
    return dataclasses.replace(
        recon, intrinsics=recon.predicted_intrinsics, predicted_intrinsics=None, frame_names=list(recon.frame_names),
        points_from_depth=unproject_depth_maps_in_frame_chunks(recon.depth, recon.extrinsics, recon.predicted_intrinsics),
        info=info)


def with_known_focal_lengths(recon: Reconstruction, focal_lengths_px: Sequence[float],
                             source: str = "manual") -> Reconstruction:
    """A copy whose depth branch is the predicted depth unprojected with known focal lengths.

    Args:
        recon: the reconstruction (its depth and poses are kept as predicted).
        focal_lengths_px: ``[S]`` focal length of each frame in its photo's pixels.
        source: ``"exif"`` or ``"manual"``, stored in ``info["intrinsics_source"]``.

    The point-map branch is left as the network predicted it: it does not depend on intrinsics.
    """
    if source not in ("exif", "manual"):
        raise InputError(f"the source of known focal lengths must be 'exif' or 'manual', got {source!r}")
    intrinsics = intrinsics_for_focal_lengths(recon, focal_lengths_px).astype(np.float32)
    predicted = recon.predicted_intrinsics if recon.predicted_intrinsics is not None else recon.intrinsics
    info = {**recon.info, "intrinsics_source": source,
            "known_focal_length_px": [round(float(f), 4) for f in focal_lengths_px]}
    return dataclasses.replace(
        recon, intrinsics=intrinsics, predicted_intrinsics=predicted.copy(), frame_names=list(recon.frame_names),
        points_from_depth=unproject_depth_maps_in_frame_chunks(recon.depth, recon.extrinsics, intrinsics), info=info)


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
                             f"({shown}); video frames never do. Choose 'predicted', or type the focal length.")
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
    predicted = recon.predicted_intrinsics if recon.predicted_intrinsics is not None else recon.intrinsics
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
    if source == "predicted":
        used = "depth unprojected with the predicted focal length"
    else:
        label = "the EXIF" if source == "exif" else f"the typed ({_mean_label(recon.info['known_focal_length_px'])})"
        used = (f"depth re-projected with {label} focal length; the network does not take intrinsics, "
                "its depth and poses are unchanged")
    return "Focal length: " + " · ".join(parts) + f" — {used}"
