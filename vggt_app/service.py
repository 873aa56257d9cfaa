"""What the page's events do, independent of the layout (so it is easy to test).

How a request flows: the uploaded files become frames (``gather_input_frames``, ``decode_frames``),
the model runs once, or on overlapping chunks for frames that do not fit
(:func:`vggt_app.runtime.models.run_model`, the only step that holds the GPU; with ``--devices`` on
the device group, see :meth:`ReconstructionService.run_forward`), and the resulting
``Reconstruction`` is stored under an unguessable id; its share link is shown once it is durable.
Everything after that (moving a display slider, downloading, opening the share link in another
browser) works from the stored reconstruction and never runs the model again.

Results are plain values (:class:`SceneView`); the panels turn them into component updates.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from vggt_core import FrameLimitError, InputError, WeightsUnavailableError
from vggt_core.chunks import chunk_size_for_memory, default_overlap
from vggt_core.filtering import ViewSettings
from vggt_core.input_screening import InputScreening, RejectedInput, input_problem
from vggt_core.progress import ProgressRange
from vggt_core.pipeline import DecodedFrames, InputFrame, decode_frames, gather_input_frames, is_video_file
from vggt_core.reconstruction import Reconstruction

from .errors import user_message, warn_user
from .renderer import RenderedMesh, ViewRenderer, settings_digest
from .runtime.device_group import DeviceGroupStopped
from .runtime.memory_estimate import estimate_for_frames
from .runtime.models import (GPU_SLOT, ChunkLayout, ModelProvider, refine_cameras, run_model, run_refine_tracking,
                             run_tracking, spaces_package)
from .settings import AppSettings
from .share_links import share_link, view_settings_from_query
from .sky_masks import SkyMasks
from .store.client_quota import MODEL_RUN
from .store.entries import PendingSave, ReconstructionStore, StoreError, StoredReconstruction
from .store.first_view import FirstView, load_first_view, save_first_view
from .store.upload_limits import check_upload_sizes
from .summary import expiry_text, is_refined, summary_markdown
from .uploads import describe_inputs, frame_thumbnail, uploaded_file_paths
from .view_controls import ViewControls, frame_choices

logger = logging.getLogger("vggt_app")

SKY_SHOWN_LINE = "The sky is shown: the sky-segmentation model is not available on this server."
# What the viewer shows: the point cloud, or the mesh fused from the depth maps.
SHOW_POINTS, SHOW_MESH = "points", "mesh"


def mesh_line(mesh: RenderedMesh) -> str:
    """The summary's line about a shown mesh."""
    return (f"**Mesh shown**: {mesh.num_faces:,} faces, {mesh.num_vertices:,} vertices, fused from the depth maps "
            f"of all frames ({mesh.quality} quality, voxel {mesh.voxel_size:.3g}); the point count above is the "
            "point view's.")


def page_progress(progress: Callable[..., Any], start: float, end: float) -> ProgressRange:
    """A library progress callback (``fraction, message``) shown in ``[start, end]`` of the page's
    bar (``gr.Progress`` takes ``desc=``), its message in sentence case."""
    return ProgressRange(lambda fraction, message: progress(fraction, desc=message[:1].upper() + message[1:]),
                         start, end)


@dataclass(frozen=True)
class SceneView:
    """Everything the page shows for one stored reconstruction."""

    id: str
    glb_path: str
    summary: str
    gallery: list[tuple[str, str]]  # (image file, caption) per frame: input, depth, confidence
    frame_menu: list[str]  # "All", then one label per frame
    settings: ViewSettings  # what the viewer shows (all frames)
    share_link: str
    expiry_note: str
    input_frames: list[str] = dataclasses.field(default_factory=list)  # the frames as files, to run again


@dataclass(frozen=True)
class ViewUpdate:
    """What a view change re-renders: the viewer, the summary and the share link."""

    glb_path: str
    summary: str
    share_link: str
    sky_refused: bool = False  # "Hide sky" was asked for but the sky model is not at hand


class ReconstructionService:
    # Verdicts on uploaded files kept (path, size, mtime -> problem): a few hundred bytes each.
    MAX_SCREENED_FILES = 4096

    def __init__(self, settings: AppSettings, store: ReconstructionStore, renderer: ViewRenderer,
                 models: ModelProvider):
        self.settings = settings
        self.store = store
        self.renderer = renderer
        self.models = models
        self.sky = SkyMasks(store, settings.sky_model)
        self._prefetch_slot = threading.Semaphore(1)
        self._screened: OrderedDict[tuple[str, int, int], str | None] = OrderedDict()
        self._screened_lock = threading.Lock()

    # ---- before running

    def preview(self, files: Any, fps: float) -> tuple[list[tuple[str, str]], str]:
        """Frames that would be reconstructed, as small thumbnail files, and a one-line status
        that names the files left out (unreadable, too small) and why."""
        try:
            screening = self.screen(files)
            if not screening.usable and not screening.rejected:
                return [], ""
            left_out = screening.rejected_sentence()
            if left_out:
                gr.Warning(user_message(left_out))  # at upload, beside the control it concerns
            if not screening.usable:
                return [], f"⚠️ {user_message(left_out)} Nothing left to reconstruct."
            frames = gather_input_frames(screening.usable, fps=float(fps), max_frames=self.settings.max_frames)
            thumbnails = [(self.renderer.picture_file(frame_thumbnail(frame)), frame.name) for frame in frames]
        except (InputError, WeightsUnavailableError) as error:
            # A warning rather than an error: the upload stays in place so the user can fix it.
            gr.Warning(user_message(str(error)))
            return [], f"⚠️ {user_message(str(error))}"
        video_note = (f" (video sampled at {float(fps):g} frames/s)"
                      if any(map(is_video_file, screening.usable)) else "")
        status = (f"{len(frames)} frame{'s' if len(frames) != 1 else ''} ready{video_note}; "
                  f"at most {self.settings.max_frames} per reconstruction.")
        if left_out:
            status += f"  \n⚠️ {user_message(left_out)}"
        return thumbnails, status

    def screen(self, files: Any) -> InputScreening:
        """The uploaded files split into usable and rejected ones (each file checked once: a
        preview, the memory line and Reconstruct ask about the same upload)."""
        paths = self._checked_paths(files)
        usable, rejected = [], []
        for path in paths:
            problem = self._input_problem(path)
            if problem is None:
                usable.append(path)
            else:
                rejected.append(RejectedInput(Path(path).name, problem))
        return InputScreening(usable, rejected)

    def _input_problem(self, path: str) -> str | None:
        try:
            stat = os.stat(path)
        except OSError:
            return "the upload is gone; add the file again"
        key = (path, stat.st_size, stat.st_mtime_ns)
        with self._screened_lock:
            if key in self._screened:
                self._screened.move_to_end(key)
                return self._screened[key]
        problem = input_problem(path)
        with self._screened_lock:
            self._screened[key] = problem
            while len(self._screened) > self.MAX_SCREENED_FILES:
                self._screened.popitem(last=False)
        return problem

    # ---- running the model

    def reconstruct(self, files: Any, fps: float, progress: Callable[..., Any]) -> str:
        """Run the model on the uploaded files, store the result, return its id once durable."""
        return self.start_reconstruction(files, fps, progress).wait()

    def start_reconstruction(self, files: Any, fps: float, progress: Callable[..., Any],
                             refine: bool = False, request: Any = None, chunk_size: int | None = None) -> PendingSave:
        """Run the model (and with ``refine`` track points and bundle-adjust the cameras) and hand
        the result to the store's writers. The id can be shown at once (from memory);
        :meth:`PendingSave.wait` before showing it as a share link. ``request``'s client is
        rate-limited and its key recorded with the entry (see vggt_app.store.client_quota).

        ``chunk_size``: None runs the model once on all frames; a number runs it on overlapping
        chunks of that many frames aligned into one scene ("Process in chunks"; 0: as many as
        the memory estimate fits, the size the page's button offers). Not with ``refine``:
        tracking runs the model on all frames at once.
        """
        client = self.store.client_quota.admit(request, MODEL_RUN) if self.store.client_quota is not None else None
        screening = self.screen(files)
        paths = screening.usable
        if not paths:
            raise InputError(screening.rejected_sentence() + " Nothing left to reconstruct." if screening.rejected
                             else "Add some photos or a video first.")
        if refine and chunk_size is not None:
            raise InputError("Refining the cameras needs every frame in one run; it cannot be combined with chunks.")
        if screening.rejected:
            gr.Warning(user_message(f"Reconstructing the {len(paths)} usable file{'s' if len(paths) != 1 else ''}. "
                                    + screening.rejected_sentence()))
        progress(0.0, desc="Reading the inputs")
        frames = gather_input_frames(paths, fps=float(fps), max_frames=self.settings.max_frames)
        chunks = None if chunk_size is None else self.chunk_layout(frames, int(chunk_size))
        decoded = decode_frames(frames)
        model_end = 0.6 if refine else 0.85
        started = time.perf_counter()
        reconstruction = self.run_forward(decoded, progress, model_end=model_end, refine=refine, chunks=chunks)
        seconds = time.perf_counter() - started
        del decoded
        metadata = {"seconds": round(seconds, 3), "checkpoint": self.settings.checkpoint,
                    "untrained": self.settings.is_untrained, "inputs": describe_inputs(paths),
                    "num_frames": reconstruction.num_frames}
        if chunks is not None:
            metadata["chunks"] = {"size": chunks.size, "overlap": chunks.overlap}
        if client is not None:
            metadata["client"] = client
        if refine:
            progress(0.74, desc="Refining the cameras (bundle adjustment)")
            reconstruction, metadata["bundle_adjustment"] = refine_cameras(reconstruction)
        progress(0.87, desc="Saving the reconstruction")
        pending = self.store.save_async(reconstruction, metadata)
        logger.info("reconstructed %d frames in %.1f s%s", reconstruction.num_frames, seconds,
                    f" in chunks of {chunks.size}" if chunks is not None else "")
        return pending

    def chunk_layout(self, frames: Sequence[InputFrame], chunk_size: int) -> ChunkLayout:
        """The chunks for ``frames``: ``chunk_size`` frames each (0: as many as the memory line's
        estimate fits), overlapping by a quarter of a chunk (at least one frame)."""
        if chunk_size == 0:
            estimate = estimate_for_frames(frames, checkpoint=self.settings.checkpoint, device=self.settings.device,
                                           on_zero_gpu=spaces_package() is not None)
            fitting = chunk_size_for_memory(estimate)
            if fitting is None:
                raise FrameLimitError("Not even two frames fit in memory here, so chunks cannot help."
                                      if estimate.fits is False else "This device gives no free-memory figure: "
                                      "choose a chunk size (2 or more frames).")
            chunk_size = fitting
        if chunk_size < 2:
            raise InputError(f"A chunk needs at least 2 frames, got {chunk_size}.")
        return ChunkLayout(chunk_size, default_overlap(chunk_size))

    def run_forward(self, decoded: DecodedFrames, progress: Callable[..., Any], *, model_end: float,
                    refine: bool = False, chunks: ChunkLayout | None = None) -> Reconstruction:
        """The model on ``decoded`` (progress from 0.1 to ``model_end``; tracking for ``refine``
        after it, up to 0.72): on the device group while it works (and has a frame per device),
        else on the in-process model. When the group stops (a worker died), the user is told and
        the run is repeated on one device, as every later one will be."""
        forward_progress = page_progress(progress, 0.1, model_end)
        track_progress = page_progress(progress, model_end, 0.72) if refine else None
        group = self.models.device_group
        # Each device needs at least one frame of every run (a chunk, or all frames).
        frames_per_run = min(len(decoded.names), chunks.size if chunks is not None else len(decoded.names))
        if group is not None and group.is_usable and frames_per_run >= len(group.devices):
            try:
                recon = self._forward_on_group(decoded, forward_progress, chunks, progress)
            except DeviceGroupStopped as stopped:
                warn_user(str(stopped))
            else:
                if track_progress is None:
                    return recon
                # Tracking is not sharded: it runs on the in-process model.
                return self.on_gpu(lambda model: run_refine_tracking(model, recon, self.settings.refine_tracks,
                                                                      track_progress), progress)
        return self.on_gpu(lambda model, frames=decoded: run_model(
            model, frames, forward_progress, track_progress, self.settings.refine_tracks, chunks=chunks), progress)

    def _forward_on_group(self, decoded: DecodedFrames, forward_progress: Callable[[float, str], None],
                          chunks: ChunkLayout | None, progress: Callable[..., Any]) -> Reconstruction:
        group = self.models.device_group
        if not group.is_started:
            progress(0.05, desc=f"Starting the workers on {', '.join(group.devices)} (first run only)")
        # One forward at a time, as on one device: the group serves one job at a time, and the
        # workers it starts inherit the forward thread's lower CPU priority.
        return GPU_SLOT.run(lambda: group.run(lambda started: run_model(
            started.model, decoded, forward_progress, chunks=chunks, check_memory=False)), on_wait=lambda: progress(
                0.08, desc="Waiting for the GPU (another reconstruction is running)"))

    def on_gpu(self, work: Callable[[torch.nn.Module], Reconstruction], progress: Callable[..., Any]) -> Reconstruction:
        """``work(model)`` holding the GPU slot; the model is loaded first, outside it."""
        if not self.models.is_loaded:
            progress(0.05, desc="Loading the model weights (first run only)")
        model = self.models.get()
        return GPU_SLOT.run(lambda: work(model), on_wait=lambda: progress(
            0.08, desc="Waiting for the GPU (another reconstruction is running)"))

    def track(self, recon: Reconstruction, queries: Any, progress: Callable[..., Any]) -> Reconstruction:
        """The Tracks view's tracking of ``queries`` on a stored scene (see ``run_tracking``)."""
        return self.on_gpu(lambda model: run_tracking(model, recon, queries, page_progress(progress, 0.1, 0.9)),
                           progress)

    def _checked_paths(self, files: Any) -> list[str]:
        paths = uploaded_file_paths(files)
        check_upload_sizes(paths, self.settings.upload_limits)
        return paths

    # ---- showing a stored reconstruction

    def view_settings(self, stored: StoredReconstruction, view: Mapping[str, Any]) -> ViewSettings:
        """``view``: the view controls' values by name (see :class:`ViewControls`)."""
        return ViewControls.settings(view, stored.reconstruction.num_frames)

    def scene_view(self, recon_id: str, base: ViewSettings, page_url: str,
                   link_query: Mapping[str, str] | None = None) -> SceneView:
        """What the page shows for a stored reconstruction, viewed with ``base`` for all frames,
        overridden by a share link's view parameters ``link_query``."""
        base = dataclasses.replace(base, frame_index=None)
        fast = self._first_view(recon_id, base, page_url, link_query)
        if fast is not None:
            return fast
        stored = self.store.load(recon_id)
        recon = stored.reconstruction
        settings, ignored = view_settings_from_query(link_query or {}, base, recon.num_frames)
        if ignored:
            gr.Warning(user_message(f"The link's view settings {', '.join(ignored)} are not valid; "
                                    "showing the defaults for those."))
        settings = self.sky.apply(stored, settings)
        view = self.renderer.view(stored, settings)
        gallery = self.renderer.depth_gallery(stored)
        return SceneView(id=stored.id, glb_path=str(view.glb_path), summary=summary_markdown(stored, view),
                         gallery=gallery, frame_menu=frame_choices(recon),
                         settings=settings, share_link=share_link(page_url, stored.id, settings, is_refined(recon)),
                         expiry_note=self.expiry_note(stored),
                         input_frames=self.renderer.input_frame_files(stored.id, gallery, recon.frame_names))

    # ---- the first view of a link, from a few megabytes (vggt_app.store.first_view)

    def save_first_view(self, recon_id: str, settings: ViewSettings) -> None:
        """Keep what the page showed for a new scene beside it, so its link opens without the
        arrays. Best effort: without it, a link still opens, only more slowly."""
        settings = dataclasses.replace(settings, frame_index=None)  # as scene_view shows it
        if settings.hide_sky:
            return  # its pictures depend on a mask computed later; such links load the scene
        try:
            stored = self.store.load(recon_id)
            view = self.renderer.view(stored, settings)
            gallery = [(Path(path).name, caption, Path(path).read_bytes())
                       for path, caption in self.renderer.depth_gallery(stored)]
            save_first_view(self.store, recon_id, FirstView(
                settings_key=settings_digest(settings), num_frames=stored.reconstruction.num_frames,
                summary=summary_markdown(stored, view), frame_choices=frame_choices(stored.reconstruction),
                glb=Path(view.glb_path).read_bytes(), gallery=gallery, refined=is_refined(stored.reconstruction)))
        except (StoreError, OSError) as error:
            logger.warning("could not keep the first view of %s (%s)", recon_id, error)

    def _first_view(self, recon_id: str, base: ViewSettings, page_url: str,
                    link_query: Mapping[str, str] | None) -> SceneView | None:
        """The scene from the entry's first view when the link asks for that view; None
        otherwise. The full scene is then read in the background for the next view change."""
        first = load_first_view(self.store, recon_id)
        if first is None:
            return None
        settings, ignored = view_settings_from_query(link_query or {}, base, first.num_frames)
        if ignored or settings.hide_sky or settings_digest(settings) != first.settings_key:
            return None
        metadata = self.store.metadata(recon_id)
        glb_name = f"view-{settings_digest(settings)}.glb"
        with self.renderer.cache.build(recon_id, glb_name) as (partial, existing):
            if existing is None:
                partial.write_bytes(first.glb)
        gallery = []
        for name, caption, data in first.gallery:
            with self.renderer.cache.build(recon_id, name) as (partial, existing):
                if existing is None:
                    partial.write_bytes(data)
            gallery.append((str(self.renderer.cache.path(recon_id, name)), caption))
        self._prefetch(recon_id)
        expires = datetime.fromtimestamp(float(metadata["created_at"]) + self.store.ttl_seconds, tz=timezone.utc)
        frame_names = [label.split(": ", 1)[1] for label in first.frame_choices[1:]]
        return SceneView(id=recon_id, glb_path=str(self.renderer.cache.path(recon_id, glb_name)), summary=first.summary,
                         gallery=gallery, frame_menu=first.frame_choices, settings=settings,
                         share_link=share_link(page_url, recon_id, settings, first.refined),
                         expiry_note=expiry_text(expires),
                         input_frames=self.renderer.input_frame_files(recon_id, gallery, frame_names))

    def _prefetch(self, recon_id: str) -> None:
        """Read the full scene in the background (one at a time; skipped when one is running)."""
        if not self._prefetch_slot.acquire(blocking=False):
            return

        def load() -> None:
            try:
                self.store.load(recon_id)
            except Exception as error:  # noqa: BLE001  (the next view change reports it)
                logger.info("prefetching %s failed: %s", recon_id, error)
            finally:
                self._prefetch_slot.release()

        threading.Thread(target=load, name="store-prefetch", daemon=True).start()

    def view_update(self, recon_id: str, view: Mapping[str, Any], page_url: str, *, show: str = SHOW_POINTS,
                    mesh_quality: str | None = None) -> ViewUpdate:
        """The viewer's GLB, the summary and the share link after a view control changed; with
        ``show="mesh"`` the GLB is the mesh fused at ``mesh_quality`` from the pixels the view keeps.

        Raises:
            MeshError: no mesh can be fused (one frame, nothing passes the filters).
        """
        if show not in (SHOW_POINTS, SHOW_MESH):
            raise InputError(f"Unknown view {show!r}; choose {SHOW_POINTS!r} or {SHOW_MESH!r}.")
        stored = self.store.load(recon_id)
        asked = self.view_settings(stored, view)
        settings = self.sky.apply(stored, asked)
        rendered = self.renderer.view(stored, settings)
        summary = summary_markdown(stored, rendered)
        glb_path = rendered.glb_path
        if show == SHOW_MESH:
            mesh = self.renderer.mesh_view(stored, settings, mesh_quality)
            glb_path = mesh.glb_path
            summary += "  \n" + mesh_line(mesh)
        if asked.hide_sky and not settings.hide_sky:
            summary += "  \n" + SKY_SHOWN_LINE
        return ViewUpdate(str(glb_path), summary,
                          share_link(page_url, stored.id, settings, is_refined(stored.reconstruction)),
                          sky_refused=asked.hide_sky and not settings.hide_sky)

    def downloads(self, recon_id: str, view: Mapping[str, Any], formats: Sequence[str] | None = None,
                  mesh_quality: str | None = None) -> list[str]:
        """The download files of ``formats`` (names of ``vggt_core.export.EXPORTERS``; None: the
        default ones) for the current view; the mesh formats at ``mesh_quality`` (None: standard)."""
        stored = self.store.load(recon_id)
        settings = self.sky.apply(stored, self.view_settings(stored, view))
        return self.renderer.downloads(stored, functools.partial(self.store.copy_npz, recon_id), settings, formats,
                                       mesh_quality or "standard",
                                       on_left_out=lambda reason: warn_user(reason, sticky=False))

    def expiry_note(self, stored: StoredReconstruction) -> str:
        return expiry_text(datetime.fromtimestamp(self.store.expires_at(stored), tz=timezone.utc))


__all__ = ["SHOW_MESH", "SHOW_POINTS", "ReconstructionService", "SceneView", "ViewUpdate", "mesh_line",
           "page_progress"]
