"""File exports of a :class:`~vggt_core.reconstruction.Reconstruction`.

``glb`` (viewer scene), ``ply`` (point cloud), ``colmap`` (sparse model, also zipped),
``npz`` (the full reconstruction, reloadable with ``Reconstruction.load``), ``depth`` (depth
and confidence maps at the photos' resolution, also zipped), ``nerfstudio`` (``transforms.json``
with the photos, also zipped) and ``splatting`` (a zip of ``images/`` + ``sparse/0/`` for
Gaussian-splatting trainers). The formats are listed, and written, by the registry
(:mod:`vggt_core.export.registry`); frames' files are named by :mod:`vggt_core.frame_names`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..filtering import ViewSettings
from ..reconstruction import Reconstruction
from .archive import zip_folder
from .colmap import (COLMAP_MODEL_SUBDIR, COLMAP_UNITS_FILE, build_colmap_reconstruction,
                     build_colmap_reconstruction_with_tracks, export_colmap, units_note, write_colmap_folder)
from .depth import export_depth_maps
from .glb import GlbExport, build_scene, export_glb
from .nerfstudio import export_nerfstudio, nerfstudio_transforms
from .photos import OriginalImage
from .ply import export_ply, write_ply
from .registry import (EXPORTERS, Exporter, ExportRequest, default_export_formats, export_formats, get_exporter,
                       parse_export_formats, register_exporter, unregister_exporter, write_download,
                       write_export_files)
from .splatting import export_splatting_bundle

__all__ = [
    "COLMAP_MODEL_SUBDIR",
    "COLMAP_UNITS_FILE",
    "DEFAULT_EXPORT_FORMATS",
    "EXPORTERS",
    "EXPORT_FORMATS",
    "ExportRequest",
    "Exporter",
    "GlbExport",
    "build_colmap_reconstruction",
    "build_colmap_reconstruction_with_tracks",
    "build_scene",
    "default_export_formats",
    "export_all",
    "export_colmap",
    "export_depth_maps",
    "export_formats",
    "export_glb",
    "export_nerfstudio",
    "export_npz",
    "export_ply",
    "export_splatting_bundle",
    "get_exporter",
    "nerfstudio_transforms",
    "parse_export_formats",
    "register_exporter",
    "units_note",
    "unregister_exporter",
    "write_colmap_folder",
    "write_download",
    "write_ply",
    "zip_folder",
]

# File names inside the export directory (the registry's; kept under their old names).
GLB_NAME = EXPORTERS["glb"].file_name
PLY_NAME = EXPORTERS["ply"].file_name
NPZ_NAME = EXPORTERS["npz"].file_name
COLMAP_DIR_NAME = EXPORTERS["colmap"].folder_name
DEPTH_DIR_NAME = EXPORTERS["depth"].folder_name
NERFSTUDIO_DIR_NAME = EXPORTERS["nerfstudio"].folder_name
SPLATTING_ZIP_NAME = EXPORTERS["splatting"].file_name


def __getattr__(name: str) -> Any:
    # The format lists follow the registry (a format registered later is included).
    if name == "EXPORT_FORMATS":
        return export_formats()
    if name == "DEFAULT_EXPORT_FORMATS":
        return default_export_formats()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def export_npz(recon: Reconstruction, path: str | os.PathLike) -> Path:
    """The whole reconstruction as one ``.npz`` (same as ``recon.save(path)``)."""
    return recon.save(path)


def export_all(recon: Reconstruction, directory: str | os.PathLike,
               formats: Sequence[str] | None = None,
               settings: ViewSettings = ViewSettings(), colmap_binary: bool = True, *,
               durable: bool = True, originals: Sequence[OriginalImage | None] | None = None,
               mesh_quality: str = "standard", mesh_max_faces: int | None = None) -> dict[str, Path]:
    """Write the requested formats (default: the registry's default formats) into ``directory``
    (created if needed), in registry order; the points are selected once for all of them. The
    COLMAP model in COLMAP's binary format, or its text format with ``colmap_binary=False``.
    Every file is written atomically; ``durable=False`` skips the fsync calls. ``originals``
    (per frame a photo path or PIL image) go into the nerfstudio and splatting exports; without
    them the stored frames are warped back to the photos' size (:mod:`vggt_core.export.photos`).
    ``mesh_quality`` and ``mesh_max_faces`` (None: the default budget) shape the fused mesh of
    the ``mesh`` and ``mesh-ply`` formats, fused once for both.

    Returns:
        ``{"glb": scene.glb, "ply": points.ply, "colmap": colmap/sparse/0 (the model),
        "colmap_zip": colmap.zip (holding sparse/0/... and units.txt), "npz": reconstruction.npz,
        "depth"/"depth_zip", "nerfstudio": nerfstudio/transforms.json, "nerfstudio_zip",
        "splatting": splatting.zip, "mesh": mesh.glb, "mesh-ply": mesh.ply}`` for the formats asked for (a registered folder format
        ``name`` gives ``name`` and ``name_zip``).

    Raises:
        InputError: an unknown format name.
    """
    request = ExportRequest(recon, settings, colmap_binary=colmap_binary, durable=durable, originals=originals,
                            mesh_quality=mesh_quality, mesh_max_faces=mesh_max_faces)
    return write_export_files(request, directory, default_export_formats() if formats is None else formats)
