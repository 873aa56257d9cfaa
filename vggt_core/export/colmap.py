"""COLMAP sparse model (cameras, images, points3D) of a reconstruction, via pycolmap.

Lets the cameras and points seed COLMAP, Gaussian-splatting or NeRF tools. Every frame gets
its own PINHOLE camera; by default it is expressed for the original photo, so the model
matches the user's files rather than the resized model input. COLMAP puts the centre of the
top-left pixel at (0.5, 0.5), i.e. continuous coordinates with the corner at 0, which is the
convention of :class:`vggt_core.images.FrameTransform` and hence of the rescaled intrinsics.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pycolmap

from .. import geometry
from ..atomic_files import atomic_directory
from ..filtering import PointSelection, ViewSettings, select_points
from ..reconstruction import Reconstruction

__all__ = ["DEFAULT_COLMAP_MAX_POINTS", "build_colmap_reconstruction", "export_colmap"]

# COLMAP tools load points one object at a time; beyond ~1e5 files get slow to use for little gain.
DEFAULT_COLMAP_MAX_POINTS = 100_000
MIN_FIELD_OF_VIEW_RAD = 1e-4

logger = logging.getLogger(__name__)


def _exported_cameras(recon: Reconstruction, original_resolution: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``(intrinsics [S, 3, 3] float64, sizes [S, 2] (width, height))`` written to the model."""
    if original_resolution:
        intrinsics, sizes = recon.intrinsics_at_original_resolution(), recon.original_sizes.astype(np.int64)
    else:
        height, width = recon.image_size_hw
        sizes = np.tile(np.array([[width, height]], dtype=np.int64), (recon.num_frames, 1))
        intrinsics = recon.intrinsics.astype(np.float64)
    return _with_valid_focal_lengths(intrinsics, sizes, recon.frame_names), sizes


def _with_valid_focal_lengths(intrinsics: np.ndarray, sizes: np.ndarray, names: list[str]) -> np.ndarray:
    """COLMAP refuses focal lengths that are not finite and positive. The camera head's field of
    view is ReLU-activated, so an untrained model can predict 0 (an infinite focal length); such
    a camera is written with the narrowest field of view, MIN_FIELD_OF_VIEW_RAD, and a warning.

    ``intrinsics``: ``[S, 3, 3]``; ``sizes``: ``[S, 2]`` (width, height). Returns a copy.
    """
    intrinsics = intrinsics.copy()
    for axis in (0, 1):  # fx with the width, fy with the height
        focal = intrinsics[:, axis, axis]
        bad = ~np.isfinite(focal) | (focal <= 0)
        if bad.any():
            narrowest = sizes[:, axis] / 2.0 / np.tan(MIN_FIELD_OF_VIEW_RAD / 2.0)
            focal[bad] = narrowest[bad]
            logger.warning("COLMAP export: %s predicted an invalid focal length; written with a %g rad "
                           "field of view", ", ".join(names[i] for i in np.flatnonzero(bad)), MIN_FIELD_OF_VIEW_RAD)
    return intrinsics


def _text_safe_name(name: str) -> str:
    """COLMAP's text format splits lines at spaces, so a name with spaces would not read back."""
    return "_".join(name.split(" "))


def build_colmap_reconstruction(recon: Reconstruction, selection: PointSelection,
                                original_resolution: bool = True,
                                image_names: list[str] | None = None) -> pycolmap.Reconstruction:
    """An in-memory COLMAP model: all frames' cameras and images, the selected points.

    Image ``i`` (id ``i + 1``) has camera ``i + 1`` and name ``recon.frame_names[i]``. Every
    3-D point has a one-element track: the frame it came from, with a 2-D point at its
    projection into that frame's exported camera (so the reprojection error is 0). Points
    behind their own camera (possible with the point branch) are left out, since they cannot
    be observed.

    Args:
        recon: the reconstruction.
        selection: the points to write (``select_points`` result).
        original_resolution: cameras for the original photos (True) or the model-input frames.
        image_names: names to write instead of ``recon.frame_names``.
    """
    names = list(image_names) if image_names is not None else recon.frame_names
    intrinsics, sizes = _exported_cameras(recon, original_resolution)
    extrinsics = recon.extrinsics.astype(np.float64)
    model = pycolmap.Reconstruction()

    # Per frame: the selected points it owns, in selection order, and their projections.
    owned_points: list[np.ndarray] = []
    for index in range(recon.num_frames):
        owned = np.flatnonzero(selection.frame_indices == index)
        pixels, depth = geometry.project_points(selection.points[owned].astype(np.float64),
                                                extrinsics[index], intrinsics[index])
        visible = np.isfinite(pixels).all(axis=1) & (depth > 0)
        owned, pixels = owned[visible], pixels[visible]
        owned_points.append(owned)

        fx, fy, cx, cy = intrinsics[index][[0, 1, 0, 1], [0, 1, 2, 2]]
        camera = pycolmap.Camera(model="PINHOLE", width=int(sizes[index, 0]),
                                 height=int(sizes[index, 1]), params=[fx, fy, cx, cy],
                                 camera_id=index + 1)
        model.add_camera_with_trivial_rig(camera)
        image = pycolmap.Image(name=names[index], keypoints=pixels,
                               camera_id=index + 1, image_id=index + 1)
        model.add_image_with_trivial_frame(image, pycolmap.Rigid3d(extrinsics[index]))

    points = selection.points.astype(np.float64)
    for index, owned in enumerate(owned_points):
        for point2d_index, point_index in enumerate(owned.tolist()):
            track = pycolmap.Track([pycolmap.TrackElement(index + 1, point2d_index)])
            model.add_point3D(points[point_index], track, selection.colors[point_index])
    return model


def export_colmap(recon: Reconstruction, directory: str | os.PathLike,
                  settings: ViewSettings = ViewSettings(), binary: bool = True,
                  original_resolution: bool = True,
                  max_points: int | None = DEFAULT_COLMAP_MAX_POINTS, *, durable: bool = True) -> Path:
    """Write a COLMAP sparse model (``cameras``, ``images``, ``points3D``, plus pycolmap's
    ``rigs``/``frames``) as ``.bin`` or ``.txt`` files into ``directory`` (created if needed),
    which is replaced as a whole (:func:`vggt_core.atomic_files.atomic_directory`).

    ``settings`` choose the points; the cameras of all frames are always written. The number of
    points is capped at the smaller of ``settings.max_points`` and ``max_points``. Image names
    are the frame names; in the text format spaces in them become underscores, because COLMAP
    cannot read names with spaces from text files.

    Returns:
        ``directory`` as a :class:`Path`.
    """
    caps = [cap for cap in (settings.max_points, max_points) if cap is not None]
    settings = dataclasses.replace(settings, max_points=min(caps) if caps else None)
    names = None if binary else [_text_safe_name(name) for name in recon.frame_names]
    model = build_colmap_reconstruction(recon, select_points(recon, settings), original_resolution,
                                        image_names=names)
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(target, durable=durable) as temporary:
        if binary:
            model.write_binary(str(temporary))
        else:
            model.write_text(str(temporary))
    return target
