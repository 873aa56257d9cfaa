"""What the page shows of a stored reconstruction, as files: GLB scenes, per-view pictures and
the download files, in one bounded cache (see docs/store.md, *Derived files*)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vggt_core.depth_maps import colorize_confidence_maps, colorize_depth_maps
from vggt_core.errors import InputError
from vggt_core.export import EXPORTERS, ExportRequest, default_export_formats, export_glb
from vggt_core.filtering import ViewSettings

from .store.derived_cache import DerivedFileCache
from .store.entries import StoredReconstruction
from .view_controls import frame_label

# The stored reconstruction is this format's download, shared by every view's bundle.
NPZ_FORMAT = "npz"


@dataclass(frozen=True)
class RenderedView:
    glb_path: Path
    num_points: int
    num_cameras: int
    min_confidence: float  # the absolute confidence the shown points reach
    branch: str


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

    def __init__(self, root: Path, max_bytes: int = 1024 * 10**6, serve_grace_s: float = 10.0):
        self.root = root
        self.cache = DerivedFileCache(root, max_bytes, serve_grace_s=serve_grace_s)
        self._views: OrderedDict[tuple[str, ViewSettings], RenderedView] = OrderedDict()
        self._lock = threading.Lock()

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

    def depth_gallery(self, stored: StoredReconstruction) -> list[tuple[str, str]]:
        """(image file, caption) triples per frame: the input, its depth, its confidence."""
        recon = stored.reconstruction
        items, missing = [], []
        for index, name in enumerate(recon.frame_names):
            for kind in ("input", "depth", "confidence"):
                file_name = f"{kind}-{index:04d}.jpg"
                path = self.cache.get(stored.id, file_name)
                items.append((str(path or self.cache.path(stored.id, file_name)), f"{frame_label(index, name)} · {kind}"))
                if path is None:
                    missing.append((index, kind, file_name))
        if missing:
            depth_images = colorize_depth_maps(recon.depth)
            confidence_images = colorize_confidence_maps(recon.depth_conf)
            pictures = {"input": recon.images, "depth": depth_images, "confidence": confidence_images}
            for index, kind, file_name in missing:
                with self.cache.build(stored.id, file_name) as (partial, existing):
                    if existing is None:
                        Image.fromarray(pictures[kind][index]).save(partial, format="JPEG", quality=88)
        return items

    def downloads(self, stored: StoredReconstruction, npz_source: Callable[[Path], Path],
                  settings: ViewSettings, formats: Sequence[str] | None = None) -> list[str]:
        """One file per export format of the registry (``vggt_core.export.EXPORTERS``; by default
        its default formats) for the current view: each format's own download file.

        ``npz_source(path)`` puts the stored ``.npz`` at ``path`` (the store links or copies it):
        one ``.npz`` per reconstruction is shared by every view's bundle. The points are selected
        once for all the formats of a bundle.
        """
        names = list(default_export_formats() if formats is None else formats)
        unknown = [name for name in names if name not in EXPORTERS]
        if unknown or not names:
            raise InputError(f"Choose formats among {', '.join(EXPORTERS)}.")
        bundle = f"export-{settings_digest(settings)}"
        keep = {"grace_s": self.DOWNLOAD_GRACE_S}
        files = {name: ("npz/" if name == NPZ_FORMAT else f"{bundle}/") + EXPORTERS[name].file_name for name in names}
        if not all(self.cache.get(stored.id, file) for file in files.values()):
            self.cache.require_room()  # a new bundle may push the cap over, never a second one
        request = ExportRequest(stored.reconstruction, settings, durable=False)
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
            for key in [key for key in self._views if key[0] == recon_id]:
                del self._views[key]
        self.cache.forget_group(recon_id)


def settings_digest(settings: ViewSettings) -> str:
    """A short stable name for ``settings``: the file names of its GLB and download bundle."""
    return hashlib.sha256(repr(dataclasses.astuple(settings)).encode()).hexdigest()[:16]


__all__ = ["RenderedView", "ViewRenderer", "settings_digest"]
