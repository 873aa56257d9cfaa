"""File exports of a :class:`~vggt_core.reconstruction.Reconstruction`.

``glb`` (viewer scene), ``ply`` (point cloud), ``colmap`` (sparse model, also zipped),
``npz`` (the full reconstruction, reloadable with ``Reconstruction.load``) and ``depth`` (depth
and confidence maps at the photos' resolution, also zipped).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Sequence

from ..atomic_files import atomic_write_bytes, atomic_writer
from ..config import EXPORT_FORMATS
from ..errors import InputError
from ..filtering import ViewSettings
from ..reconstruction import Reconstruction
from .colmap import build_colmap_reconstruction, export_colmap
from .depth import export_depth_maps
from .glb import GlbExport, build_scene, export_glb
from .ply import export_ply, write_ply

__all__ = [
    "EXPORT_FORMATS",
    "GlbExport",
    "build_colmap_reconstruction",
    "build_scene",
    "export_all",
    "export_colmap",
    "export_depth_maps",
    "export_glb",
    "export_npz",
    "export_ply",
    "write_ply",
    "zip_folder",
]

# File names inside the export directory. The COLMAP model sits in sparse/0, the layout that
# COLMAP, nerfstudio and Gaussian-splatting loaders expect next to an images/ folder.
GLB_NAME = "scene.glb"
PLY_NAME = "points.ply"
NPZ_NAME = "reconstruction.npz"
COLMAP_DIR_NAME = "colmap"
COLMAP_MODEL_SUBDIR = Path("sparse") / "0"
DEPTH_DIR_NAME = "depth_maps"
# COLMAP's files have no place for units: they go into this file beside sparse/.
COLMAP_UNITS_FILE = "units.txt"


def zip_folder(folder: str | os.PathLike, path: str | os.PathLike, *, durable: bool = True) -> Path:
    """Zip everything under ``folder`` (names relative to it) into ``path``, atomically."""
    source, target = Path(folder), Path(path)
    with atomic_writer(target, durable=durable) as handle:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(source.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(source).as_posix())
    return target


def export_npz(recon: Reconstruction, path: str | os.PathLike) -> Path:
    """The whole reconstruction as one ``.npz`` (same as ``recon.save(path)``)."""
    return recon.save(path)


def export_all(recon: Reconstruction, directory: str | os.PathLike,
               formats: Sequence[str] = EXPORT_FORMATS,
               settings: ViewSettings = ViewSettings(), colmap_binary: bool = True, *,
               durable: bool = True) -> dict[str, Path]:
    """Write the requested formats into ``directory`` (created if needed); the COLMAP model in
    COLMAP's binary format, or its text format with ``colmap_binary=False``. Every file is
    written atomically; ``durable=False`` skips the fsync calls.

    Returns:
        ``{"glb": scene.glb, "ply": points.ply, "colmap": colmap/sparse/0 (the model),
        "colmap_zip": colmap.zip (holding sparse/0/...), "npz": reconstruction.npz}`` for the
        formats asked for.

    Raises:
        InputError: an unknown format name.
    """
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown:
        raise InputError(f"unknown export format(s) {unknown}; choose from {EXPORT_FORMATS}")
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "glb" in formats:
        written["glb"] = export_glb(recon, target / GLB_NAME, settings, durable=durable).path
    if "ply" in formats:
        written["ply"] = export_ply(recon, target / PLY_NAME, settings, durable=durable)
    if "colmap" in formats:
        colmap_root = target / COLMAP_DIR_NAME
        if colmap_root.exists():
            shutil.rmtree(colmap_root)  # stale files of an earlier export must not mix in
        written["colmap"] = export_colmap(recon, colmap_root / COLMAP_MODEL_SUBDIR, settings,
                                          binary=colmap_binary, durable=durable)
        atomic_write_bytes(colmap_root / COLMAP_UNITS_FILE, units_note(recon).encode("utf-8"), durable=durable)
        written["colmap_zip"] = zip_folder(colmap_root, target / f"{COLMAP_DIR_NAME}.zip", durable=durable)
    if "npz" in formats:
        written["npz"] = export_npz(recon, target / NPZ_NAME)
    if "depth" in formats:
        depth_root = target / DEPTH_DIR_NAME
        if depth_root.exists():
            shutil.rmtree(depth_root)
        export_depth_maps(recon, depth_root)
        written["depth"] = depth_root
        written["depth_zip"] = zip_folder(depth_root, target / f"{DEPTH_DIR_NAME}.zip", durable=durable)
    return written


def units_note(recon: Reconstruction) -> str:
    """One line naming the scene's length unit (and how it was scaled), for formats without a field."""
    if recon.units is None:
        return "units: arbitrary (VGGT's own scale; not metric)\n"
    return f"units: {recon.units} (scaled by {recon.scale_factor:.9g} from VGGT's own scale)\n"
