"""nerfstudio's ``transforms.json`` (with the photos beside it) of a reconstruction.

nerfstudio reads camera-to-world matrices in OpenGL axes (x right, y up, z backwards), so the
OpenCV world-to-camera extrinsics are inverted and their y and z camera axes flipped.
Intrinsics are per frame, in the pixels of the photos written to ``images/`` (the original
resolution; see :mod:`vggt_core.export.photos` for where those come from), with COLMAP's and
nerfstudio's convention of pixel centres at +0.5. ``sparse_pc.ply`` holds the points a
Gaussian-splatting trainer (splatfacto) starts from: the multi-view tracks when there are
tracks, else the points that pass the view settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import geometry
from ..atomic_files import atomic_write_bytes
from ..filtering import PointSelection, ViewSettings, select_points
from ..reconstruction import Reconstruction
from .photos import OriginalImage, bundle_image_names, write_photos
from .ply import write_ply

__all__ = ["NERFSTUDIO_IMAGES_DIR", "NERFSTUDIO_PLY_NAME", "TRANSFORMS_NAME", "export_nerfstudio",
           "nerfstudio_transforms"]

TRANSFORMS_NAME = "transforms.json"
NERFSTUDIO_IMAGES_DIR = "images"
NERFSTUDIO_PLY_NAME = "sparse_pc.ply"
# OpenCV camera axes → OpenGL camera axes (y and z flipped).
_OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])


def nerfstudio_transforms(recon: Reconstruction, image_names: Sequence[str] | None = None,
                          ply_file: str | None = NERFSTUDIO_PLY_NAME) -> dict[str, Any]:
    """The ``transforms.json`` content: one frame per view with ``file_path``,
    ``transform_matrix`` (camera-to-world, OpenGL axes, 4×4) and its own ``fl_x, fl_y, cx, cy, w, h``."""
    from .colmap import _exported_cameras  # valid focal lengths at the photos' resolution

    names = list(image_names) if image_names is not None else bundle_image_names(recon)
    intrinsics, sizes = _exported_cameras(recon, original_resolution=True)
    camera_to_world = geometry.invert_se3(geometry.extrinsics_to_4x4(recon.extrinsics.astype(np.float64)))
    frames = []
    for index in range(recon.num_frames):
        matrix = camera_to_world[index] @ _OPENCV_TO_OPENGL
        frames.append({
            "file_path": f"{NERFSTUDIO_IMAGES_DIR}/{names[index]}",
            "transform_matrix": matrix.tolist(),
            "fl_x": float(intrinsics[index, 0, 0]), "fl_y": float(intrinsics[index, 1, 1]),
            "cx": float(intrinsics[index, 0, 2]), "cy": float(intrinsics[index, 1, 2]),
            "w": int(sizes[index, 0]), "h": int(sizes[index, 1]),
            "colmap_im_id": index + 1,
        })
    content: dict[str, Any] = {"camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
                               "frames": frames}
    if ply_file is not None:
        content["ply_file_path"] = ply_file
    return content


def _initial_points(recon: Reconstruction, settings: ViewSettings, selection: PointSelection | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(points [P, 3], colours [P, 3] uint8, confidence [P])`` for the trainer to start from:
    the tracks' points, else ``selection`` (selected from ``settings`` when None)."""
    from ..bundle_adjustment import track_points_for_export

    sparse = track_points_for_export(recon)
    if sparse is not None:
        # The "confidence" of a track point: how many frames observe it.
        return (sparse.sparse_points, sparse.sparse_point_colors,
                sparse.sparse_observations.sum(axis=0).astype(np.float32))
    if selection is None:
        selection = select_points(recon, settings)
    return selection.points, selection.colors, selection.confidence


def export_nerfstudio(recon: Reconstruction, directory: str | os.PathLike,
                      originals: Sequence[OriginalImage | None] | None = None,
                      settings: ViewSettings = ViewSettings(), *, durable: bool = True,
                      selection: PointSelection | None = None) -> Path:
    """Write ``transforms.json``, ``images/`` and ``sparse_pc.ply`` into ``directory``.

    Args:
        originals: per frame the original photo (path or PIL image), or None: the stored
            frames are warped back to the photos' size (:mod:`vggt_core.export.photos`).
        settings: choose the initial points when there are no tracks.
        selection: ``select_points(recon, settings)`` when the caller already has it (it is
            selected here otherwise, and only when there are no tracks).

    Returns:
        The path of ``transforms.json``.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    names = bundle_image_names(recon)
    write_photos(recon, target / NERFSTUDIO_IMAGES_DIR, originals, durable=durable)
    points, colors, confidence = _initial_points(recon, settings, selection)
    write_ply(target / NERFSTUDIO_PLY_NAME, points, colors, confidence,
              comments=(f"units {recon.units or 'arbitrary'}",), durable=durable)
    content = nerfstudio_transforms(recon, names)
    return atomic_write_bytes(target / TRANSFORMS_NAME, json.dumps(content, indent=2).encode("utf-8"),
                              durable=durable)
