"""The "splatting bundle": photos plus a COLMAP model, as Gaussian-splatting and NeRF trainers read them.

Layout (one zip)::

    images/000_<name>.jpg ...   the photos at their original resolution
    sparse/0/cameras.bin        PINHOLE cameras with intrinsics at that resolution
    sparse/0/images.bin         poses and (with tracks) the 2-D observations
    sparse/0/points3D.bin       the initial points (multi-view tracks when there are tracks)
    transforms.json             the same cameras for nerfstudio, with sparse_pc.ply
    sparse_pc.ply

graphdeco's 3DGS (``-s bundle``), gsplat's ``simple_trainer.py --data_dir bundle`` and
nerfstudio (``ns-train splatfacto --data bundle``, or ``colmap --colmap-path sparse/0``) read it
as is. Where the photos come from is explained in :mod:`vggt_core.export.photos`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..filtering import PointSelection, ViewSettings
from ..reconstruction import Reconstruction
from .archive import write_zipped_folder
from .colmap import export_colmap
from .nerfstudio import export_nerfstudio
from .photos import OriginalImage, bundle_image_names

__all__ = ["SPLATTING_MODEL_SUBDIR", "export_splatting_bundle"]

SPLATTING_MODEL_SUBDIR = Path("sparse") / "0"


def export_splatting_bundle(recon: Reconstruction, path: str | os.PathLike,
                            originals: Sequence[OriginalImage | None] | None = None,
                            settings: ViewSettings = ViewSettings(), *, durable: bool = True,
                            selection: PointSelection | None = None) -> Path:
    """Write the bundle as one zip at ``path`` (atomically).

    Args:
        originals: per frame the original photo (path or PIL image), or None for the stored
            frames warped back to the photos' size.
        settings: choose the initial points when there are no tracks.
        selection: ``select_points(recon, settings)`` when the caller already has it (it is
            selected here otherwise); the COLMAP model thins it to its own cap.

    Returns:
        ``path`` as a :class:`Path`.
    """
    def fill(folder: Path) -> None:
        export_nerfstudio(recon, folder, originals, settings, durable=False, selection=selection)
        # The model's image names are the images/ folder's, so trainers find every photo.
        export_colmap(recon, folder / SPLATTING_MODEL_SUBDIR, settings, binary=True, original_resolution=True,
                      durable=False, image_names=bundle_image_names(recon), selection=selection)

    return write_zipped_folder(path, fill, durable=durable)
