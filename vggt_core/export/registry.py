"""Every export format, in one ordered registry: what each is called, which file it downloads as,
and how it is written.

The CLI's ``--export`` choices and help, :func:`vggt_core.export.export_all` and the app's
downloads (:func:`write_download`) all read :data:`EXPORTERS`, so a format added with
:func:`register_exporter` appears everywhere. Each :class:`Exporter` writes exactly one download
file; a format that is a folder of files (COLMAP, depth maps, nerfstudio) also says how to write
the folder, and its download file is that folder zipped.

The writers are imported when they run, not here: listing the formats (``--help``) does not
import trimesh, pycolmap or PIL.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..filtering import PointSelection, ViewSettings, select_points
from ..reconstruction import Reconstruction
from .archive import write_zipped_folder, zip_folder

__all__ = ["EXPORTERS", "ExportRequest", "Exporter", "default_export_formats", "export_formats", "get_exporter",
           "parse_export_formats", "register_exporter", "unregister_exporter", "write_download",
           "write_export_files"]


class ExportRequest:
    """What every exporter of one export run gets: the reconstruction, the view settings, the
    points they select (computed on first use, once for all the run's exporters), and options.

    Attributes:
        recon: the reconstruction.
        settings: the view settings (filters, branch, frame, ``max_points``).
        colmap_binary: COLMAP models as ``.bin`` (True) or ``.txt`` files.
        durable: fsync what is written (False for files rebuilt after a crash anyway).
        originals: per frame the original photo (path or PIL image) or None, for the formats
            that ship photos (nerfstudio, splatting); None: the stored frames warped back.
        mesh_quality, mesh_max_faces: the fused mesh's voxel size and face budget (the mesh
            formats; see :func:`vggt_core.mesh.fuse_depth_to_mesh`).
    """

    def __init__(self, recon: Reconstruction, settings: ViewSettings = ViewSettings(), *,
                 selection: PointSelection | None = None, colmap_binary: bool = True, durable: bool = True,
                 originals: Sequence | None = None, mesh_quality: str = "standard",
                 mesh_max_faces: int | None = None, mesh=None):
        self.recon = recon
        self.settings = settings
        self.colmap_binary = colmap_binary
        self.durable = durable
        self.originals = originals
        self.mesh_quality = mesh_quality
        self.mesh_max_faces = mesh_max_faces
        self._selection = selection
        self._mesh = mesh

    @property
    def selection(self) -> PointSelection:
        """``select_points(recon, settings)``, computed once (or as given)."""
        if self._selection is None:
            self._selection = select_points(self.recon, self.settings)
        return self._selection

    @property
    def mesh(self):
        """The fused :class:`vggt_core.mesh.Mesh` of the settings' pixels, computed once for the
        run's mesh formats (or as given)."""
        if self._mesh is None:
            from ..mesh import DEFAULT_MAX_FACES, fuse_depth_to_mesh

            max_faces = DEFAULT_MAX_FACES if self.mesh_max_faces is None else self.mesh_max_faces
            self._mesh = fuse_depth_to_mesh(self.recon, self.settings, quality=self.mesh_quality, max_faces=max_faces)
        return self._mesh

    def for_temporary_files(self) -> ExportRequest:
        """This request (sharing the selection and mesh computed so far) for files that only
        live until they are zipped, so not fsync-ed."""
        return ExportRequest(self.recon, self.settings, selection=self._selection, colmap_binary=self.colmap_binary,
                             durable=False, originals=self.originals, mesh_quality=self.mesh_quality,
                             mesh_max_faces=self.mesh_max_faces, mesh=self._mesh)

    @property
    def selection_unless_tracked(self) -> PointSelection | None:
        """The selection for writers whose points are the tracks when there are tracks (COLMAP,
        nerfstudio, splatting): None then, so that nothing is selected for nothing."""
        return None if self.recon.tracks is not None else self.selection


# ``write(request, path)`` writes the one download file at ``path`` and returns the path to report.
WriteFile = Callable[[ExportRequest, Path], Path]
_NAME = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class Exporter:
    """One export format.

    Attributes:
        name: what users type (``--export glb,ply``): lower case, no commas.
        file_name: the download file's name (``scene.glb``, ``colmap.zip``); :func:`export_all`
            writes it into its folder under this name.
        description: one line for the CLI's help.
        write: ``write(request, path) -> Path`` writes the download file at ``path``.
        default: written when no formats are named.
        folder_name: for a folder format, the folder :func:`export_all` also leaves unzipped
            (``colmap``); None for single-file formats.
        write_folder: for a folder format, ``write_folder(request, folder) -> Path`` fills
            ``folder`` and returns the path :func:`export_all` reports for it (its ``write``
            zips that folder).
    """

    name: str
    file_name: str
    description: str
    write: WriteFile
    default: bool = False
    folder_name: str | None = None
    write_folder: WriteFile | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"an export format's name is lower-case letters, digits, '-' and '_', "
                             f"got {self.name!r}")
        if (self.folder_name is None) != (self.write_folder is None):
            raise ValueError(f"export format {self.name!r}: folder_name and write_folder go together")


def folder_exporter(name: str, file_name: str, folder_name: str, description: str, write_folder: WriteFile, *,
                    default: bool = False) -> Exporter:
    """An :class:`Exporter` whose download file is the zip of the folder ``write_folder`` fills."""
    def write(request: ExportRequest, path: Path) -> Path:
        return write_zipped_folder(path, lambda folder: write_folder(request.for_temporary_files(), folder),
                                   durable=request.durable)

    return Exporter(name=name, file_name=file_name, description=description, write=write, default=default,
                    folder_name=folder_name, write_folder=write_folder)


EXPORTERS: dict[str, Exporter] = {}


def register_exporter(exporter: Exporter, *, replace: bool = False) -> Exporter:
    """Add ``exporter`` after the others (``replace=True``: in place of one of the same name)."""
    if exporter.name in EXPORTERS and not replace:
        raise ValueError(f"an export format named {exporter.name!r} is already registered")
    EXPORTERS[exporter.name] = exporter
    return exporter


def unregister_exporter(name: str) -> Exporter:
    """Remove and return the format ``name`` (KeyError when there is none)."""
    return EXPORTERS.pop(name)


def export_formats() -> tuple[str, ...]:
    """The registered formats' names, in registry order."""
    return tuple(EXPORTERS)


def default_export_formats() -> tuple[str, ...]:
    """The formats written when none are named, in registry order."""
    return tuple(name for name, exporter in EXPORTERS.items() if exporter.default)


def get_exporter(name: str) -> Exporter:
    """The format ``name``; raises ``InputError`` naming the choices when there is none."""
    try:
        return EXPORTERS[name]
    except KeyError:
        raise InputError(f"unknown export format {name!r}; choose from {','.join(EXPORTERS)}") from None


def parse_export_formats(text: str) -> list[str]:
    """``"glb, PLY"`` → ``["glb", "ply"]``; raises ``InputError`` for unknown names or none."""
    formats = [item.strip().lower() for item in text.split(",") if item.strip()]
    unknown = [item for item in formats if item not in EXPORTERS]
    if unknown or not formats:
        raise InputError(f"unknown export format(s) {unknown or text!r}; choose from {','.join(EXPORTERS)}")
    return formats


def write_download(name: str, recon: Reconstruction, path: str | os.PathLike,
                   settings: ViewSettings = ViewSettings(), *, selection: PointSelection | None = None,
                   durable: bool = False, originals: Sequence | None = None, colmap_binary: bool = True,
                   mesh=None) -> Path:
    """Write format ``name``'s one download file at ``path`` (a zip for folder formats; the COLMAP
    zip holds ``sparse/0/...`` and ``units.txt``), atomically.

    Args:
        selection: ``select_points(recon, settings)`` when the caller already has it.
        durable: fsync the file (off by default: downloads are rebuilt when lost).
        originals: per frame the original photo, for the formats that ship photos.
        mesh: the fused mesh when the caller already has it (the mesh formats).
    """
    request = ExportRequest(recon, settings, selection=selection, colmap_binary=colmap_binary, durable=durable,
                            originals=originals, mesh=mesh)
    return get_exporter(name).write(request, Path(path))


def write_export_files(request: ExportRequest, directory: str | os.PathLike,
                       formats: Sequence[str]) -> dict[str, Path]:
    """Write ``formats`` (in registry order) into ``directory``: each format's download file, and
    for folder formats also the folder (replaced as a whole) with the zip as ``<name>_zip``."""
    unknown = sorted(set(formats) - set(EXPORTERS))
    if unknown:
        raise InputError(f"unknown export format(s) {unknown}; choose from {export_formats()}")
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, exporter in list(EXPORTERS.items()):
        if name not in formats:
            continue
        if exporter.write_folder is None:
            written[name] = exporter.write(request, target / exporter.file_name)
            continue
        folder = target / exporter.folder_name
        if folder.exists():
            shutil.rmtree(folder)  # stale files of an earlier export must not mix in
        written[name] = exporter.write_folder(request, folder)
        written[f"{name}_zip"] = zip_folder(folder, target / exporter.file_name, durable=request.durable)
    return written


# ------------------------------------------------------------------------------------------------
# The built-in formats, in the order they are listed and written
# ------------------------------------------------------------------------------------------------


def _write_glb(request: ExportRequest, path: Path) -> Path:
    from .glb import export_glb

    return export_glb(request.recon, path, request.settings, durable=request.durable,
                      selection=request.selection).path


def _write_ply(request: ExportRequest, path: Path) -> Path:
    from .ply import export_ply

    return export_ply(request.recon, path, request.settings, durable=request.durable, selection=request.selection)


def _write_colmap_folder(request: ExportRequest, folder: Path) -> Path:
    from .colmap import write_colmap_folder

    return write_colmap_folder(request.recon, folder, request.settings, binary=request.colmap_binary,
                               durable=request.durable, selection=request.selection_unless_tracked)


def _write_npz(request: ExportRequest, path: Path) -> Path:
    return request.recon.save(path)


def _write_depth_folder(request: ExportRequest, folder: Path) -> Path:
    from .depth import export_depth_maps

    export_depth_maps(request.recon, folder, durable=request.durable)
    return folder


def _write_nerfstudio_folder(request: ExportRequest, folder: Path) -> Path:
    from .nerfstudio import export_nerfstudio

    return export_nerfstudio(request.recon, folder, request.originals, request.settings, durable=request.durable,
                             selection=request.selection_unless_tracked)


def _write_splatting(request: ExportRequest, path: Path) -> Path:
    from .splatting import export_splatting_bundle

    return export_splatting_bundle(request.recon, path, request.originals, request.settings,
                                   durable=request.durable, selection=request.selection_unless_tracked)


def _write_mesh_glb(request: ExportRequest, path: Path) -> Path:
    from .mesh import export_mesh_glb

    return export_mesh_glb(request.mesh, request.recon, path, durable=request.durable)


def _write_mesh_ply(request: ExportRequest, path: Path) -> Path:
    from .mesh import export_mesh_ply

    return export_mesh_ply(request.mesh, path, durable=request.durable)


for _exporter in (
    Exporter("glb", "scene.glb", "glTF scene of the points and cameras", _write_glb, default=True),
    Exporter("ply", "points.ply", "point cloud with colours and confidences", _write_ply, default=True),
    folder_exporter("colmap", "colmap.zip", "colmap", "COLMAP sparse model in sparse/0 (zipped too)",
                    _write_colmap_folder, default=True),
    Exporter("npz", "reconstruction.npz", "the whole reconstruction, reloadable", _write_npz, default=True),
    folder_exporter("depth", "depth_maps.zip", "depth_maps",
                    "depth and confidence maps at the photos' resolution (zipped too)", _write_depth_folder,
                    default=True),
    folder_exporter("nerfstudio", "nerfstudio.zip", "nerfstudio", "transforms.json with the photos (zipped too)",
                    _write_nerfstudio_folder),
    Exporter("splatting", "splatting.zip", "a zip of images/ + sparse/0/ for Gaussian-splatting trainers",
             _write_splatting),
    Exporter("mesh", "mesh.glb", "the depth maps fused into a coloured triangle mesh (glTF)", _write_mesh_glb),
    Exporter("mesh-ply", "mesh.ply", "the same mesh as a PLY with vertex colours", _write_mesh_ply),
):
    register_exporter(_exporter)
del _exporter
