"""COLMAP sparse model (cameras, images, points3D) of a reconstruction, via pycolmap.

Lets the cameras and points seed COLMAP, Gaussian-splatting or NeRF tools. Every frame gets
its own PINHOLE camera; by default it is expressed for the original photo, so the model
matches the user's files rather than the resized model input. COLMAP puts the centre of the
top-left pixel at (0.5, 0.5), i.e. continuous coordinates with the corner at 0, while the model's
pixel (u, v) sits at the integers (u, v): cameras and 2-D points are shifted by half a model
pixel before the crop/resize map (docs/architecture.md, "Pixel centres").

With point tracks the model holds real multi-view points: the sparse points of a bundle
adjustment (or the tracks triangulated from the current cameras), each with every observation
it was refined on, mapped to the photos' pixels like the intrinsics. Without tracks every point
of the selection is seen only by its own frame.

pycolmap is imported inside the functions: importing it installs glog's signal handlers.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import geometry
from ..atomic_files import atomic_directory, atomic_write_bytes
from ..filtering import PointSelection, ViewSettings, select_points
from ..images import FrameTransform
from ..reconstruction import Reconstruction

if TYPE_CHECKING:  # only for annotations; see the module docstring
    import pycolmap

__all__ = ["COLMAP_MODEL_SUBDIR", "COLMAP_UNITS_FILE", "DEFAULT_COLMAP_MAX_POINTS", "build_colmap_reconstruction",
           "build_colmap_reconstruction_with_tracks", "export_colmap", "units_note", "write_colmap_folder"]

# COLMAP tools load points one object at a time; beyond ~1e5 files get slow to use for little gain.
DEFAULT_COLMAP_MAX_POINTS = 100_000
MIN_FIELD_OF_VIEW_RAD = 1e-4
# The model sits in sparse/0 of the exported folder, the layout that COLMAP, nerfstudio and
# Gaussian-splatting loaders expect next to an images/ folder.
COLMAP_MODEL_SUBDIR = Path("sparse") / "0"
# COLMAP's files have no place for units: they go into this file beside sparse/.
COLMAP_UNITS_FILE = "units.txt"

logger = logging.getLogger(__name__)


def _exported_frame_transform(recon: Reconstruction, index: int, original_resolution: bool) -> FrameTransform:
    """How frame ``index``'s model pixels map to the exported image: its photo, or the model input."""
    if original_resolution:
        return recon.frame_transform(index)
    height, width = recon.image_size_hw
    return FrameTransform(name=recon.frame_names[index], original_size=(width, height), scale=(1.0, 1.0),
                          offset=(0.0, 0.0))


def _exported_cameras(recon: Reconstruction, original_resolution: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``(intrinsics [S, 3, 3] float64, sizes [S, 2] (width, height))`` written to the model, with
    pixel centres at +0.5 (docs/architecture.md, "Pixel centres")."""
    transforms = [_exported_frame_transform(recon, index, original_resolution) for index in range(recon.num_frames)]
    sizes = np.array([transform.original_size for transform in transforms], dtype=np.int64)
    intrinsics = np.stack([transform.model_intrinsics_to_photo(recon.intrinsics[index].astype(np.float64))
                           for index, transform in enumerate(transforms)])
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
                                image_names: list[str] | None = None) -> "pycolmap.Reconstruction":
    """An in-memory COLMAP model: all frames' cameras and images, the selected points.

    With tracks (``recon.tracks``), see :func:`build_colmap_reconstruction_with_tracks` instead;
    this function always writes the selection.

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
    import pycolmap

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


def build_colmap_reconstruction_with_tracks(recon: Reconstruction, original_resolution: bool = True,
                                            image_names: list[str] | None = None) -> "pycolmap.Reconstruction":
    """An in-memory COLMAP model whose points3D are multi-view tracks.

    The points are ``recon.sparse_points`` with their ``sparse_observations`` (after
    :func:`vggt_core.bundle_adjust`), else the tracks triangulated from the current cameras
    (:func:`vggt_core.bundle_adjustment.with_triangulated_tracks`). Image ``i`` (id ``i + 1``)
    has camera ``i + 1``; its 2-D points are the tracked positions in the photo's pixels; every
    point's error is its mean reprojection error there.
    """
    import pycolmap

    from ..bundle_adjustment import with_triangulated_tracks

    sparse = with_triangulated_tracks(recon)
    names = list(image_names) if image_names is not None else recon.frame_names
    intrinsics, sizes = _exported_cameras(recon, original_resolution)
    extrinsics = recon.extrinsics.astype(np.float64)
    observations = sparse.sparse_observations
    if sparse.sparse_points is None:
        observations = np.zeros((recon.num_frames, 0), dtype=bool)
    columns = sparse.sparse_point_tracks if sparse.sparse_points is not None else np.zeros(0, np.int64)
    model = pycolmap.Reconstruction()
    point2d_index = np.full(observations.shape, -1, dtype=np.int64)
    for index in range(recon.num_frames):
        seen = np.flatnonzero(observations[index])
        pixels = _exported_frame_transform(recon, index, original_resolution).model_pixels_to_photo(
            recon.tracks[index, columns[seen]].astype(np.float64)).reshape(-1, 2)
        point2d_index[index, seen] = np.arange(len(seen))
        fx, fy, cx, cy = intrinsics[index][[0, 1, 0, 1], [0, 1, 2, 2]]
        model.add_camera_with_trivial_rig(pycolmap.Camera(
            model="PINHOLE", width=int(sizes[index, 0]), height=int(sizes[index, 1]), params=[fx, fy, cx, cy],
            camera_id=index + 1))
        image = pycolmap.Image(name=names[index], keypoints=pixels, camera_id=index + 1, image_id=index + 1)
        model.add_image_with_trivial_frame(image, pycolmap.Rigid3d(extrinsics[index]))
    if sparse.sparse_points is not None:
        for point in range(len(columns)):
            frames = np.flatnonzero(observations[:, point])
            track = pycolmap.Track([pycolmap.TrackElement(int(frame) + 1, int(point2d_index[frame, point]))
                                    for frame in frames])
            model.add_point3D(sparse.sparse_points[point].astype(np.float64), track,
                              sparse.sparse_point_colors[point])
    model.update_point_3d_errors()
    return model


def export_colmap(recon: Reconstruction, directory: str | os.PathLike,
                  settings: ViewSettings = ViewSettings(), binary: bool = True,
                  original_resolution: bool = True,
                  max_points: int | None = DEFAULT_COLMAP_MAX_POINTS, *, durable: bool = True,
                  image_names: list[str] | None = None, selection: PointSelection | None = None) -> Path:
    """Write a COLMAP sparse model (``cameras``, ``images``, ``points3D``, plus pycolmap's
    ``rigs``/``frames``) as ``.bin`` or ``.txt`` files into ``directory`` (created if needed),
    which is replaced as a whole (:func:`vggt_core.atomic_files.atomic_directory`).

    ``settings`` choose the points; the cameras of all frames are always written. When the
    reconstruction has tracks that give sound points and no rejected refinement
    (:func:`vggt_core.bundle_adjustment.track_points_for_export`), the points are its multi-view
    tracks instead (:func:`build_colmap_reconstruction_with_tracks`) and ``settings`` are not used. The number of
    points is capped at the smaller of ``settings.max_points`` and ``max_points``. Image names
    are the frame names; in the text format spaces in them become underscores, because COLMAP
    cannot read names with spaces from text files. ``image_names`` replaces the frame names
    (e.g. the file names of an ``images/`` folder written beside the model). Without
    ``image_names`` the model names the user's own photos, so that it can be used with them.

    ``selection`` is ``select_points(recon, settings)`` when the caller already has it; it is then
    thinned evenly to ``max_points`` instead of selecting again (so with more than ``max_points``
    points the subset may differ from a fresh selection with the smaller cap; both are even).

    Returns:
        ``directory`` as a :class:`Path`.
    """
    names = list(image_names) if image_names is not None else recon.frame_names
    names = names if binary else [_text_safe_name(name) for name in names]
    from ..bundle_adjustment import track_points_for_export

    # Tracks only when they give sound points and their refinement (if any) was not rejected.
    if track_points_for_export(recon) is not None:
        model = build_colmap_reconstruction_with_tracks(recon, original_resolution, image_names=names)
    else:
        if selection is None:
            caps = [cap for cap in (settings.max_points, max_points) if cap is not None]
            selection = select_points(recon, dataclasses.replace(settings, max_points=min(caps) if caps else None))
        model = build_colmap_reconstruction(recon, selection.thinned(max_points), original_resolution,
                                            image_names=names)
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(target, durable=durable) as temporary:
        if binary:
            model.write_binary(str(temporary))
        else:
            model.write_text(str(temporary))
    return target


def units_note(recon: Reconstruction) -> str:
    """One line naming the scene's length unit (and how it was scaled), for formats without a field."""
    if recon.units is None:
        return "units: arbitrary (VGGT's own scale; not metric)\n"
    return f"units: {recon.units} (scaled by {recon.scale_factor:.9g} from VGGT's own scale)\n"


def write_colmap_folder(recon: Reconstruction, root: str | os.PathLike, settings: ViewSettings = ViewSettings(), *,
                        binary: bool = True, durable: bool = True, selection: PointSelection | None = None) -> Path:
    """The COLMAP export as a folder: the model in ``root/sparse/0`` (:func:`export_colmap`, at the
    photos' resolution, named after the frames) and :data:`COLMAP_UNITS_FILE` beside ``sparse/``.
    ``root`` is replaced, so no file of an earlier export mixes in.

    Returns:
        The model folder ``root/sparse/0``.
    """
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    model = export_colmap(recon, root / COLMAP_MODEL_SUBDIR, settings, binary=binary, durable=durable,
                          selection=selection)
    atomic_write_bytes(root / COLMAP_UNITS_FILE, units_note(recon).encode("utf-8"), durable=durable)
    return model
