"""What the page shows of a stored reconstruction, as files: GLB scenes (points, or the fused mesh),
per-view pictures and the download files, in one bounded cache (see docs/store.md, *Derived files*).
The mesh is derived, never stored: its GLB is cached under (entry id, ``mesh_cache_key``)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vggt_core.depth_maps import colorize_confidence_maps, colorize_depth_maps
from vggt_core.errors import InputError, MeshError
from vggt_core.export import EXPORTERS, ExportRequest, default_export_formats, export_glb
from vggt_core.export.mesh import export_mesh_glb
from vggt_core.filtering import ViewSettings
from vggt_core.mesh import DEFAULT_MAX_FACES, Mesh, MeshQuality, fuse_depth_to_mesh, mesh_cache_key
from vggt_core.normals import colorize_normal_maps, normal_maps_from_depth

from .store.derived_cache import DerivedFileCache
from .store.entries import StoredReconstruction
from .view_controls import frame_label

# The stored reconstruction is this format's download, shared by every view's bundle.
NPZ_FORMAT = "npz"
# The registry's formats that write the fused mesh (they share one fusion per bundle).
MESH_FORMATS = ("mesh", "mesh-ply")
# The per-view pictures of the gallery, in the order they appear for each frame.
GALLERY_KINDS = ("input", "depth", "confidence", "normal")


@dataclass(frozen=True)
class RenderedView:
    glb_path: Path
    num_points: int
    num_cameras: int
    min_confidence: float  # the absolute confidence the shown points reach
    branch: str


@dataclass(frozen=True)
class RenderedMesh:
    glb_path: Path
    num_vertices: int
    num_faces: int
    voxel_size: float
    quality: str


class ViewRenderer:
    """Writes what the page shows (GLB scenes, depth-map images, download files) into a
    :class:`DerivedFileCache`, one group per reconstruction, under one byte cap
    (``--cache-max-mb``), least recently used out first, never while being served.

    The app puts the cache inside Gradio's own cache folder, so Gradio serves these files as
    they are instead of copying each one (see docs/store.md, "Derived files"). Parallel
    identical requests build a file once. The storage folder itself is never handed to Gradio.
    """

    # Facts about rendered views (a few hundred bytes each) kept for the summary line.
    MAX_VIEW_RECORDS = 4096

    # A download link may be clicked a while after it appeared: bundles are kept this long.
    DOWNLOAD_GRACE_S = 60.0

    # Fused meshes kept in memory for the downloads that follow a mesh view (up to ~15 MB each at
    # the default face budget): fusing takes seconds, the GLB alone cannot give the PLY back.
    MAX_MESHES = 2
    # Fusions at once: each takes seconds of CPU and up to a few hundred MB (vggt_core.mesh caps
    # its voxels), while view changes run 8 at a time.
    MESH_FUSIONS_AT_ONCE = 2

    def __init__(self, root: Path, max_bytes: int = 1024 * 10**6, serve_grace_s: float = 10.0):
        self.root = root
        self.cache = DerivedFileCache(root, max_bytes, serve_grace_s=serve_grace_s)
        self._views: OrderedDict[tuple[str, ViewSettings], RenderedView] = OrderedDict()
        self._mesh_views: OrderedDict[tuple[str, str], RenderedMesh] = OrderedDict()
        self._meshes: OrderedDict[tuple[str, str], Mesh] = OrderedDict()
        self._lock = threading.Lock()
        self._fusion_slots = threading.BoundedSemaphore(self.MESH_FUSIONS_AT_ONCE)

    def view(self, stored: StoredReconstruction, settings: ViewSettings) -> RenderedView:
        key, name = (stored.id, settings), f"view-{settings_digest(settings)}.glb"
        with self.cache.build(stored.id, name) as (partial, existing):
            with self._lock:
                known = self._views.get(key)
            if existing is not None and known is not None:
                self._remember_view(key, known)
                return known
            # 12 instead of 16 bytes per point; Model3D draws it the same (tests/test_browser_glb.py).
            result = export_glb(stored.reconstruction, partial, settings, durable=False, quantize=True)
        rendered = RenderedView(self.cache.path(stored.id, name), result.num_points, result.num_cameras,
                                result.min_confidence, result.branch)
        self._remember_view(key, rendered)
        return rendered

    def _remember_view(self, key: tuple[str, ViewSettings], rendered: RenderedView) -> None:
        with self._lock:
            self._views[key] = rendered
            self._views.move_to_end(key)
            while len(self._views) > self.MAX_VIEW_RECORDS:
                self._views.popitem(last=False)

    # ---- the fused mesh

    def mesh(self, stored: StoredReconstruction, settings: ViewSettings, quality: str) -> Mesh:
        """The mesh fused from the pixels ``settings`` keep, at ``quality`` (from memory when it
        was fused lately).

        Raises:
            MeshError: one frame, no pixel passes the filters, no surface (the message says so).
        """
        key = (stored.id, mesh_cache_key(settings, quality, DEFAULT_MAX_FACES))
        with self._lock:
            mesh = self._meshes.get(key)
            if mesh is not None:
                self._meshes.move_to_end(key)
                return mesh
        with self._fusion_slots:
            mesh = fuse_depth_to_mesh(stored.reconstruction, settings, quality=quality, max_faces=DEFAULT_MAX_FACES)
        with self._lock:
            self._meshes[key] = mesh
            while len(self._meshes) > self.MAX_MESHES:
                self._meshes.popitem(last=False)
        return mesh

    def mesh_view(self, stored: StoredReconstruction, settings: ViewSettings, quality: str) -> RenderedMesh:
        """The viewer's GLB of the fused mesh (with the cameras when ``settings.show_cameras``),
        cached like the point views under (entry id, mesh key, cameras)."""
        quality = _checked_quality(quality)
        mesh_key = mesh_cache_key(settings, quality, DEFAULT_MAX_FACES)
        name = f"mesh-{_digest(mesh_key + repr(bool(settings.show_cameras)))}.glb"
        key = (stored.id, name)
        with self.cache.build(stored.id, name) as (partial, existing):
            with self._lock:
                known = self._mesh_views.get(key)
            if existing is not None and known is not None:
                return known
            mesh = self.mesh(stored, settings, quality)
            export_mesh_glb(mesh, stored.reconstruction, partial, show_cameras=settings.show_cameras, durable=False)
        rendered = RenderedMesh(self.cache.path(stored.id, name), mesh.num_vertices, mesh.num_faces,
                                mesh.voxel_size, quality)
        with self._lock:
            self._mesh_views[key] = rendered
            while len(self._mesh_views) > self.MAX_VIEW_RECORDS:
                self._mesh_views.popitem(last=False)
        return rendered

    # ---- per-view pictures

    def depth_gallery(self, stored: StoredReconstruction) -> list[tuple[str, str]]:
        """(image file, caption) pairs, four per frame: the input, its depth, its confidence and
        its normals (:data:`GALLERY_KINDS`)."""
        recon = stored.reconstruction
        items, missing = [], []
        for index, name in enumerate(recon.frame_names):
            for kind in GALLERY_KINDS:
                file_name = f"{kind}-{index:04d}.jpg"
                path = self.cache.get(stored.id, file_name)
                items.append((str(path or self.cache.path(stored.id, file_name)), f"{frame_label(index, name)} · {kind}"))
                if path is None:
                    missing.append((index, kind, file_name))
        if missing:
            pictures = _gallery_pictures(recon, {kind for _, kind, _ in missing})
            for index, kind, file_name in missing:
                with self.cache.build(stored.id, file_name) as (partial, existing):
                    if existing is None:
                        Image.fromarray(pictures[kind][index]).save(partial, format="JPEG", quality=88)
        return items

    def downloads(self, stored: StoredReconstruction, npz_source: Callable[[Path], Path],
                  settings: ViewSettings, formats: Sequence[str] | None = None,
                  mesh_quality: str = MeshQuality.STANDARD.value,
                  on_left_out: Callable[[str], None] | None = None) -> list[str]:
        """One file per export format of the registry (``vggt_core.export.EXPORTERS``; by default
        its default formats) for the current view: each format's own download file.

        ``npz_source(path)`` puts the stored ``.npz`` at ``path`` (the store links or copies it):
        one ``.npz`` per reconstruction is shared by every view's bundle. The points are selected
        once for all the formats of a bundle; the mesh formats take the mesh at ``mesh_quality``
        (the one the viewer showed, from memory when it is still there). A scene that gives no
        mesh still gets its other formats: the mesh formats are left out and ``on_left_out``
        gets the reason (with only mesh formats asked for, the ``MeshError`` is raised).
        """
        names = list(default_export_formats() if formats is None else formats)
        unknown = [name for name in names if name not in EXPORTERS]
        if unknown or not names:
            raise InputError(f"Choose formats among {', '.join(EXPORTERS)}.")
        mesh_quality = _checked_quality(mesh_quality)
        bundle = f"export-{settings_digest(settings)}"
        if any(name in MESH_FORMATS for name in names):
            bundle += f"-{mesh_quality}"  # the mesh files differ by quality; the others are the same
        keep = {"grace_s": self.DOWNLOAD_GRACE_S}
        files = {name: ("npz/" if name == NPZ_FORMAT else f"{bundle}/") + EXPORTERS[name].file_name for name in names}
        if not all(self.cache.get(stored.id, file) for file in files.values()):
            self.cache.require_room()  # a new bundle may push the cap over, never a second one
        missing_mesh = any(name in MESH_FORMATS and not self.cache.get(stored.id, files[name]) for name in names)
        mesh = None
        if missing_mesh:
            try:
                mesh = self.mesh(stored, settings, mesh_quality)
            except MeshError as error:
                if all(name in MESH_FORMATS for name in names) or on_left_out is None:
                    raise
                files = {name: file for name, file in files.items() if name not in MESH_FORMATS}
                on_left_out(f"No mesh in the downloads: {error}")
        request = ExportRequest(stored.reconstruction, settings, durable=False, mesh_quality=mesh_quality,
                                mesh_max_faces=DEFAULT_MAX_FACES, mesh=mesh)
        for name, file in files.items():
            with self.cache.build(stored.id, file, **keep) as (partial, existing):
                if existing is not None:
                    continue
                if name == NPZ_FORMAT:
                    npz_source(partial)  # the stored file itself: no second serialisation
                else:
                    EXPORTERS[name].write(request, partial)
        return [str(self.cache.path(stored.id, file)) for file in files.values()]

    def input_frame_files(self, recon_id: str, gallery: Sequence[tuple[str, str]], frame_names: Sequence[str]) -> list[str]:
        """The scene's input frames as files named after the frames (for the upload box, so a scene
        opened from a link can be run again), copied from the gallery's "input" pictures."""
        inputs = [path for path, _ in gallery if Path(path).name.startswith("input-")]
        stems = [Path(name).stem or f"frame_{index:03d}" for index, name in enumerate(frame_names)]
        if len(set(stems)) != len(stems):
            stems = [f"{index:03d}_{stem}" for index, stem in enumerate(stems)]
        files = []
        for source, stem in zip(inputs, stems):
            name = f"frames/{stem}.jpg"
            with self.cache.build(recon_id, name) as (partial, existing):
                if existing is None:
                    partial.write_bytes(Path(source).read_bytes())
            files.append(str(self.cache.path(recon_id, name)))
        return files

    def picture_file(self, image: Image.Image) -> str:
        """A JPEG of ``image`` in the cache (named by its content), so that preview thumbnails,
        too, count towards the cap instead of piling up in Gradio's own folder."""
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        name = f"{hashlib.sha256(data).hexdigest()[:24]}.jpg"
        with self.cache.build("previews", name) as (partial, existing):
            if existing is None:
                partial.write_bytes(data)
        return str(self.cache.path("previews", name))

    def forget(self, recon_id: str) -> None:
        with self._lock:
            for records in (self._views, self._mesh_views, self._meshes):
                for key in [key for key in records if key[0] == recon_id]:
                    del records[key]
        self.cache.forget_group(recon_id)


def _gallery_pictures(recon, kinds: set[str]) -> dict[str, np.ndarray]:
    """The gallery's pictures of every frame, ``[S, H, W, 3]`` uint8 per kind, only of ``kinds``
    (a normal map costs a pass over every depth map)."""
    makers = {"input": lambda: recon.images,
              "depth": lambda: colorize_depth_maps(recon.depth),
              "confidence": lambda: colorize_confidence_maps(recon.depth_conf),
              "normal": lambda: colorize_normal_maps(normal_maps_from_depth(recon.depth, recon.intrinsics))}
    return {kind: makers[kind]() for kind in kinds}


def _checked_quality(quality: str | None) -> str:
    """``quality`` as a :class:`MeshQuality` value (None: standard); an unknown one is the user's mistake."""
    try:
        return MeshQuality(quality or MeshQuality.STANDARD.value).value
    except ValueError as error:
        choices = ", ".join(item.value for item in MeshQuality)
        raise InputError(f"Unknown mesh quality {quality!r}; choose one of {choices}.") from error


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def settings_digest(settings: ViewSettings) -> str:
    """A short stable name for ``settings``: the file names of its GLB and download bundle."""
    return _digest(repr(dataclasses.astuple(settings)))


__all__ = ["GALLERY_KINDS", "MESH_FORMATS", "RenderedMesh", "RenderedView", "ViewRenderer", "settings_digest"]
