"""VGGT Reconstruct, the browser app: photos or a video in; cameras, depth maps, a 3-D point cloud
and a share link out.

    python app.py                                # http://127.0.0.1:7860, weights from the Hub
    python app.py --checkpoint /path/model.pt    # a local checkpoint, no network needed
    python app.py --help                         # every flag and its environment variable

Importing this module starts nothing: ``build_app(settings)`` returns the ``gr.Blocks`` and
``main(argv)`` launches it. The app only uses the public API of ``vggt_core``.

How a request flows: the uploaded files become frames (``gather_input_frames``, ``decode_frames``),
the model runs once (``run_model``, the only step that holds the GPU), and the resulting
``Reconstruction`` is stored under an unguessable id; its share link is shown once it is durable. Everything after that (moving a display slider, downloading, opening the share
link in another browser) works from the stored reconstruction and never runs the model again.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import hashlib
import html
import io
import logging
import os
import re
import secrets
import shutil
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder as gradio_upload_folder
import torch
from PIL import Image

from vggt_core import VGGT, FrameLimitError, InputError, WeightsUnavailableError
from vggt_core import load_model, resolve_device
from vggt_core.config import tiny_config
from vggt_core.atomic_files import atomic_write_bytes
from vggt_core.depth_maps import colorize_confidence_maps, colorize_depth_maps
from vggt_core.derived_cache import CacheFullError, DerivedFileCache, remove_stale_process_folders
from vggt_core.export import (COLMAP_UNITS_FILE, export_colmap, export_depth_maps, export_glb, export_ply,
                              units_note, zip_folder)
from vggt_core.filtering import ViewSettings
from vggt_core.first_view import FirstView, load_first_view, save_first_view
from vggt_core.images import open_image_rgb
from vggt_core.model_worker import ModelWorker
from vggt_core.pipeline import DecodedFrames, InputFrame, decode_frames, gather_input_frames, is_video_file
from vggt_core.pipeline import reconstruct_decoded
from vggt_core.reconstruction import Reconstruction
from vggt_core.sky import SkyModelUnavailableError
from vggt_core.store import (PendingSave, ReconstructionStore, StoreError,
                             StoredReconstruction)
from vggt_core.storage_backends import StorageConfigurationError, open_entry_storage
from vggt_core.tracks import DEFAULT_MAX_QUERY_POINTS, track_reconstruction
from vggt_core.upload_limits import check_upload_sizes

from app_panels.settings import APP_DIR, RANDOM_TINY_CHECKPOINT, AppSettings, parse_settings
from app_panels.share_links import (DEFAULT_MAX_POINTS, DEFAULT_VIEW_SETTINGS, MAX_POINTS_LIMIT,
                                    SHARE_QUERY_PARAMETER, page_url_from_request, reconstruction_id_from_text,
                                    share_link, share_link_query, view_settings_from_query)
from app_panels.camera import CameraPanel
from app_panels.measure import MeasurePanel, scene_lines
from app_panels.memory import MemoryPanel
from app_panels.sky import HIDE_SKY_LABEL, SkyMasks
from app_panels.tracks import REFINE_INFO, REFINE_LABEL, TracksPanel, bundle_adjustment_lines, is_refined

logger = logging.getLogger("vggt_app")

EXAMPLES_DIR = APP_DIR / "assets" / "examples"

# The seconds ZeroGPU reserves a GPU for one reconstruction (VGGT-1B takes a few seconds for
# tens of frames; the margin covers the first call, which moves the weights to the GPU).
ZERO_GPU_DURATION_SECONDS = 120

GENERIC_ERROR_MESSAGE = ("Something went wrong on the server while handling this request. "
                         "It has been logged; please try again, perhaps with fewer or smaller files.")
CHECKPOINT_HINT = ("To run without downloading, start the app with a local checkpoint: "
                   "use --checkpoint /path/to/model.pt (or set VGGT_CHECKPOINT).")

ALL_FRAMES_CHOICE = "All"

BRANCH_CHOICES = [("Depth maps + cameras (more accurate)", "depth"), ("Point map head", "point")]


# ---------------------------------------------------------------------------------------------
# The model: loaded on first use, once per process
# ---------------------------------------------------------------------------------------------


class ModelProvider:
    """Loads the model the first time it is needed, so the page comes up at once.

    A lock makes concurrent first requests wait for one load instead of each loading 5 GB.
    A failed load is not remembered: the next request tries again (the network may be back).
    """

    def __init__(self, checkpoint: str, device: str | None = None):
        self.checkpoint = checkpoint
        self.device = device
        self._model: torch.nn.Module | None = None
        self._lock = threading.Lock()

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def get(self) -> torch.nn.Module:
        with self._lock:
            if self._model is None:
                started = time.perf_counter()
                self._model = self._load()
                logger.info("loaded %s in %.1f s", self.checkpoint, time.perf_counter() - started)
            return self._model

    def _load(self) -> torch.nn.Module:
        if self.checkpoint == RANDOM_TINY_CHECKPOINT:
            # Seeded so that every process builds the same weights, without disturbing the
            # global random state of whoever imported us.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = VGGT(tiny_config())
            return model.to(resolve_device(self.device)).eval()
        if _spaces_package() is not None:
            # ZeroGPU forbids initialising CUDA outside a spaces.GPU call: read the weights on
            # the CPU, then .to(device), which ZeroGPU defers until a GPU is attached.
            return load_model(self.checkpoint, device="cpu").to(resolve_device(self.device))
        return load_model(self.checkpoint, device=self.device)


def _spaces_package():
    """Hugging Face's ``spaces`` package (present on Spaces), or None."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return None
    return spaces


def _on_zero_gpu(function: Callable) -> Callable:
    """``spaces.GPU`` on a Hugging Face Space (a GPU is attached for the call on ZeroGPU, a no-op
    on other hardware); the function unchanged everywhere else."""
    spaces = _spaces_package()
    if spaces is None:
        return function
    return spaces.GPU(duration=ZERO_GPU_DURATION_SECONDS)(function)


@_on_zero_gpu
def run_model(model: torch.nn.Module, decoded: DecodedFrames, progress: Callable[[float, str], None],
              track_progress: Callable[[float, str], None] | None = None,
              max_tracks: int = DEFAULT_MAX_QUERY_POINTS) -> Reconstruction:
    """The only GPU work: on ZeroGPU a GPU is attached for exactly this call. The frames are
    decoded before, and the scene is built after, outside it. With ``track_progress`` the track
    head also follows up to ``max_tracks`` points across the frames (for bundle adjustment, which
    runs after, on the CPU)."""
    recon = reconstruct_decoded(model, decoded, progress=progress)
    if track_progress is None:
        return recon
    return track_reconstruction(model, recon, max_query_points=max_tracks, progress=track_progress)


@_on_zero_gpu
def run_tracking(model: torch.nn.Module, recon: Reconstruction, queries: Any,
                 progress: Callable[[float, str], None]) -> Reconstruction:
    """The Tracks view's GPU work: the model re-run on a stored scene's frames to track ``queries``."""
    return track_reconstruction(model, recon, queries, progress=progress)


def refine_cameras(recon: Reconstruction) -> tuple[Reconstruction, dict[str, Any]]:
    """Bundle adjustment of a tracked scene (CPU, outside the GPU slot): the refined scene and the
    report, or the scene unrefined and a report saying why: a failure never loses the scene."""
    from vggt_core.bundle_adjustment import bundle_adjust  # imports pycolmap: only when asked for

    try:
        result = bundle_adjust(recon)
        return result.reconstruction, result.report.as_dict()
    except Exception:
        logger.exception("bundle adjustment failed")
        return recon, {"refined": False, "message": "bundle adjustment failed on the server (logged)"}


# One model forward at a time in this process (one GPU, one copy of the weights), on one thread
# at a lower CPU priority than the requests of people looking at scenes (vggt_core.model_worker).
# Requests decode their inputs and build their scenes in parallel; only the forward waits here.
GPU_SLOT = ModelWorker()


class ProgressRange:
    """Maps a stage's own 0..1 progress into ``[start, end]`` of the overall progress bar."""

    def __init__(self, progress: Callable[..., Any], start: float, end: float):
        self.progress = progress
        self.start = start
        self.end = end

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        self.progress(self.start + (self.end - self.start) * fraction, desc=_sentence_case(message))


def _sentence_case(message: str) -> str:
    return message[:1].upper() + message[1:]


# ---------------------------------------------------------------------------------------------
# Rendering views, depth maps and downloads from a stored reconstruction
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedView:
    glb_path: Path
    num_points: int
    num_cameras: int
    confidence_threshold: float
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
        key, name = (stored.id, settings), f"view-{_settings_digest(settings)}.glb"
        with self.cache.build(stored.id, name) as (partial, existing):
            with self._lock:
                known = self._views.get(key)
            if existing is not None and known is not None:
                self._remember_view(key, known)
                return known
            # 12 instead of 16 bytes per point; Model3D draws it the same (tests/test_browser_glb.py).
            result = export_glb(stored.reconstruction, partial, settings, durable=False, quantize=True)
        rendered = RenderedView(self.cache.path(stored.id, name), result.num_points, result.num_cameras,
                                result.confidence_threshold, result.branch)
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
                  settings: ViewSettings) -> list[str]:
        """GLB, PLY and zipped COLMAP model of the current view, the raw predictions, and the
        depth maps at the photos' resolution (zipped).

        ``npz_source(path)`` puts the stored ``.npz`` at ``path`` (the store links or copies it).
        One ``.npz`` per reconstruction is shared by every view's bundle.
        """
        bundle = f"export-{_settings_digest(settings)}"
        keep = {"grace_s": self.DOWNLOAD_GRACE_S}
        names = [f"{bundle}/scene.glb", f"{bundle}/points.ply", f"{bundle}/colmap.zip", "npz/reconstruction.npz",
                 f"{bundle}/depth_maps.zip"]
        if not all(self.cache.get(stored.id, name) for name in names):
            self.cache.require_room()  # a new bundle may push the cap over, never a second one
        with self.cache.build(stored.id, f"{bundle}/scene.glb", **keep) as (partial, existing):
            if existing is None:
                export_glb(stored.reconstruction, partial, settings, durable=False)
        with self.cache.build(stored.id, f"{bundle}/points.ply", **keep) as (partial, existing):
            if existing is None:
                export_ply(stored.reconstruction, partial, settings, durable=False)
        with self.cache.build(stored.id, f"{bundle}/colmap.zip", **keep) as (partial, existing):
            if existing is None:
                # The unzipped model is a temporary folder inside the cache, gone after zipping.
                model_dir = partial.with_name(partial.name + ".model")
                try:
                    export_colmap(stored.reconstruction, model_dir / "sparse" / "0", settings, durable=False)
                    atomic_write_bytes(model_dir / COLMAP_UNITS_FILE, units_note(stored.reconstruction).encode(),
                                       durable=False)
                    zip_folder(model_dir, partial, durable=False)
                finally:
                    shutil.rmtree(model_dir, ignore_errors=True)
        with self.cache.build(stored.id, f"{bundle}/depth_maps.zip", **keep) as (partial, existing):
            if existing is None:
                depth_dir = partial.with_name(partial.name + ".maps")
                try:
                    export_depth_maps(stored.reconstruction, depth_dir, durable=False)
                    zip_folder(depth_dir, partial, durable=False)
                finally:
                    shutil.rmtree(depth_dir, ignore_errors=True)
        with self.cache.build(stored.id, "npz/reconstruction.npz", **keep) as (partial, existing):
            if existing is None:
                npz_source(partial)
        return [str(self.cache.path(stored.id, name)) for name in names]

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


def _settings_digest(settings: ViewSettings) -> str:
    return hashlib.sha256(repr(dataclasses.astuple(settings)).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Small presentation helpers
# ---------------------------------------------------------------------------------------------


def frame_label(index: int, name: str) -> str:
    return f"{index}: {name}"


def frame_choices(recon: Reconstruction) -> list[str]:
    return [ALL_FRAMES_CHOICE] + [frame_label(i, name) for i, name in enumerate(recon.frame_names)]


def parse_frame_choice(choice: str | None, num_frames: int) -> int | None:
    """``"All"`` → None; ``"3: name"`` → 3. Anything else is a user-visible InputError."""
    if choice in (None, "", ALL_FRAMES_CHOICE):
        return None
    match = re.match(r"\s*(\d+)\s*:", str(choice))
    if not match or int(match.group(1)) >= num_frames:
        raise InputError(f"Unknown frame {choice!r}; choose 'All' or one of the listed frames.")
    return int(match.group(1))


# The display controls, in the order every handler receives them.
VIEW_CONTROL_NAMES = ("confidence", "branch", "frame", "show_cameras", "filter_black", "filter_white", "max_points",
                      "hide_sky")


def view_settings_from_controls(confidence_percentile: float, branch: str, frame_choice: str | None,
                                show_cameras: bool, filter_black: bool, filter_white: bool,
                                max_points: float, hide_sky: bool = False, *, num_frames: int) -> ViewSettings:
    """The controls' values (see :data:`VIEW_CONTROL_NAMES`) as checked :class:`ViewSettings`."""
    if branch not in ("depth", "point"):
        raise InputError(f"Unknown prediction branch {branch!r}; choose 'depth' or 'point'.")
    if max_points is None or not 1 <= float(max_points) <= MAX_POINTS_LIMIT:
        raise InputError(f"The maximum number of points must lie between 1 and {MAX_POINTS_LIMIT:,}.")
    return ViewSettings(confidence_threshold=float(confidence_percentile), threshold_is_percentile=True,
                        branch=branch, frame_index=parse_frame_choice(frame_choice, num_frames),
                        show_cameras=bool(show_cameras), filter_black_background=bool(filter_black),
                        filter_white_background=bool(filter_white), max_points=int(max_points),
                        hide_sky=bool(hide_sky))


def summary_markdown(stored: StoredReconstruction, view: RenderedView) -> str:
    recon = stored.reconstruction
    height, width = recon.image_size_hw
    info = stored.metadata
    first_line = f"**{recon.num_frames} frames** at {width}×{height} px"
    if "seconds" in info:  # absent for reconstructions that were not made by this app's model run
        first_line += f" · reconstructed in {float(info['seconds']):.1f} s"
    lines = [
        first_line,
        f"**{view.num_points:,} points shown** · {view.num_cameras} cameras · "
        f"{'depth' if view.branch == 'depth' else 'point map'} branch, confidence ≥ {view.confidence_threshold:.3g}",
    ]
    lines += scene_lines(recon) + bundle_adjustment_lines(recon, info)
    if info.get("untrained"):
        lines.append("⚠️ Made with an **untrained** model: the geometry is meaningless.")
    return "  \n".join(lines)


def untrained_banner_html() -> str:
    return ("<div class='vggt-banner' role='alert'>⚠️ <strong>Untrained model.</strong> This server runs "
            f"<code>--checkpoint {RANDOM_TINY_CHECKPOINT}</code>, a tiny network with random weights for "
            "development: every result it shows is meaningless. Start the app with real weights "
            "(the default <code>facebook/VGGT-1B</code> or a local file) for real reconstructions.</div>")


def controls_from_view_settings(settings: ViewSettings, recon: Reconstruction) -> list[Any]:
    """The values of the view controls that show ``settings``, in :data:`VIEW_CONTROL_NAMES` order."""
    frame = (ALL_FRAMES_CHOICE if settings.frame_index is None
             else frame_label(settings.frame_index, recon.frame_names[settings.frame_index]))
    return [settings.confidence_threshold, settings.branch, frame, settings.show_cameras,
            settings.filter_black_background, settings.filter_white_background, settings.max_points,
            settings.hide_sky]


def user_message(text: str) -> str:
    """Gradio renders error messages as HTML; file names come from users, so escape them."""
    return html.escape(text, quote=False)


def show_user_errors(handler: Callable) -> Callable:
    """Turn every failure of an event handler into a message: never a traceback on the page."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except WeightsUnavailableError as error:
            message = str(error)
            if "--checkpoint" not in message and not isinstance(error, SkyModelUnavailableError):
                message = f"{message}\n{CHECKPOINT_HINT}"
            logger.warning("weights unavailable: %s", error)
            raise gr.Error(user_message(message), duration=None) from None
        except (FrameLimitError, InputError, StoreError, CacheFullError) as error:
            raise gr.Error(user_message(str(error))) from None
        except Exception:
            logger.exception("unexpected error in %s", handler.__name__)
            raise gr.Error(GENERIC_ERROR_MESSAGE) from None

    return wrapper


def _file_paths(files: Any) -> list[str]:
    """Gradio gives a list of paths (or one path, or None) for a multiple-file upload."""
    if not files:
        return []
    if isinstance(files, (str, os.PathLike)):
        return [os.fspath(files)]
    return [os.fspath(getattr(item, "name", item)) for item in files]


def _describe_inputs(paths: Sequence[str]) -> str:
    videos = [Path(p).name for p in paths if is_video_file(p)]
    photos = len(paths) - len(videos)
    parts = ([f"{photos} photo{'s' if photos != 1 else ''}"] if photos else []) + videos
    return ", ".join(parts)


def _thumbnail(frame: InputFrame, size: int = 320) -> Image.Image:
    image = open_image_rgb(frame.source, frame.name) if not isinstance(frame.source, Image.Image) else frame.source
    image = image.copy()
    image.thumbnail((size, size))
    return image


# ---------------------------------------------------------------------------------------------
# Event handlers
# ---------------------------------------------------------------------------------------------


class ReconstructionService:
    """What the page's events do, independent of the layout (so it is easy to test)."""

    def __init__(self, settings: AppSettings, store: ReconstructionStore, renderer: ViewRenderer,
                 models: ModelProvider):
        self.settings = settings
        self.store = store
        self.renderer = renderer
        self.models = models
        self.sky = SkyMasks(store, settings.sky_model)
        self._prefetch_slot = threading.Semaphore(1)

    # ---- before running

    def preview(self, files: Any, fps: float) -> tuple[list[tuple[str, str]], str]:
        """Frames that would be reconstructed, as small thumbnail files, and a one-line status."""
        try:
            paths = self._checked_paths(files)
            if not paths:
                return [], ""
            frames = gather_input_frames(paths, fps=float(fps), max_frames=self.settings.max_frames)
            thumbnails = [(self.renderer.picture_file(_thumbnail(frame)), frame.name) for frame in frames]
        except (InputError, WeightsUnavailableError) as error:
            # A warning rather than an error: the upload stays in place so the user can fix it.
            gr.Warning(user_message(str(error)))
            return [], f"⚠️ {user_message(str(error))}"
        video_note = f" (video sampled at {float(fps):g} frames/s)" if any(map(is_video_file, paths)) else ""
        status = (f"{len(frames)} frame{'s' if len(frames) != 1 else ''} ready{video_note}; "
                  f"at most {self.settings.max_frames} per reconstruction.")
        return thumbnails, status

    # ---- running the model

    def reconstruct(self, files: Any, fps: float, progress: Callable[..., Any]) -> str:
        """Run the model on the uploaded files, store the result, return its id once durable."""
        return self.start_reconstruction(files, fps, progress).wait()

    def start_reconstruction(self, files: Any, fps: float, progress: Callable[..., Any],
                             refine: bool = False) -> PendingSave:
        """Run the model (and with ``refine`` track points and bundle-adjust the cameras) and hand
        the result to the store's writers. The id can be shown at once (from memory);
        :meth:`PendingSave.wait` before showing it as a share link."""
        paths = self._checked_paths(files)
        if not paths:
            raise InputError("Add some photos or a video first.")
        progress(0.0, desc="Reading the inputs")
        frames = gather_input_frames(paths, fps=float(fps), max_frames=self.settings.max_frames)
        decoded = decode_frames(frames)
        model_end = 0.6 if refine else 0.85
        started = time.perf_counter()
        reconstruction = self.on_gpu(lambda model, frames=decoded: run_model(
            model, frames, ProgressRange(progress, 0.1, model_end),
            ProgressRange(progress, model_end, 0.72) if refine else None, self.settings.refine_tracks), progress)
        seconds = time.perf_counter() - started
        del decoded
        metadata = {"seconds": round(seconds, 3), "checkpoint": self.settings.checkpoint,
                    "untrained": self.settings.is_untrained, "inputs": _describe_inputs(paths),
                    "num_frames": reconstruction.num_frames}
        if refine:
            progress(0.74, desc="Refining the cameras (bundle adjustment)")
            reconstruction, metadata["bundle_adjustment"] = refine_cameras(reconstruction)
        progress(0.87, desc="Saving the reconstruction")
        pending = self.store.save_async(reconstruction, metadata)
        logger.info("reconstructed %d frames in %.1f s", reconstruction.num_frames, seconds)
        return pending

    def on_gpu(self, work: Callable[[torch.nn.Module], Reconstruction], progress: Callable[..., Any]) -> Reconstruction:
        """``work(model)`` holding the GPU slot; the model is loaded first, outside it."""
        if not self.models.is_loaded:
            progress(0.05, desc="Loading the model weights (first run only)")
        model = self.models.get()
        return GPU_SLOT.run(lambda: work(model), on_wait=lambda: progress(
            0.08, desc="Waiting for the GPU (another reconstruction is running)"))

    def track(self, recon: Reconstruction, queries: Any, progress: Callable[..., Any]) -> Reconstruction:
        """The Tracks view's tracking of ``queries`` on a stored scene (see :func:`run_tracking`)."""
        return self.on_gpu(lambda model: run_tracking(model, recon, queries, ProgressRange(progress, 0.1, 0.9)),
                           progress)

    def _checked_paths(self, files: Any) -> list[str]:
        paths = _file_paths(files)
        check_upload_sizes(paths, self.settings.upload_limits)
        return paths

    # ---- showing a stored reconstruction

    def view_settings(self, stored: StoredReconstruction, controls: Sequence[Any]) -> ViewSettings:
        """``controls``: the values of the view controls, in the order of :data:`VIEW_CONTROL_NAMES`."""
        return view_settings_from_controls(*controls, num_frames=stored.reconstruction.num_frames)

    def scene_outputs(self, recon_id: str, base: ViewSettings, page_url: str,
                      link_query: Mapping[str, str] | None = None) -> tuple:
        """Every output of the page (see ``scene_outputs`` in :func:`build_app`) for a stored
        reconstruction, viewed with ``base`` for all frames, overridden by a share link's
        view parameters ``link_query``."""
        base = dataclasses.replace(base, frame_index=None)
        fast = self._first_view_outputs(recon_id, base, page_url, link_query)
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
        confidence, branch, frame, show_cameras, black, white, max_points, hide_sky = \
            controls_from_view_settings(settings, recon)
        return (str(view.glb_path), summary_markdown(stored, view), self.renderer.depth_gallery(stored),
                gr.Dropdown(choices=frame_choices(recon), value=frame), stored.id,
                gr.Textbox(value=share_link(page_url, stored.id, settings, is_refined(recon)),
                           info=self.expiry_note(stored)),
                None,  # clears the downloads of the previous reconstruction
                confidence, branch, show_cameras, black, white, max_points, hide_sky)

    # ---- the first view of a link, from a few megabytes (vggt_core.first_view)

    def save_first_view(self, recon_id: str, settings: ViewSettings) -> None:
        """Keep what the page showed for a new scene beside it, so its link opens without the
        arrays. Best effort: without it, a link still opens, only more slowly."""
        settings = dataclasses.replace(settings, frame_index=None)  # as scene_outputs shows it
        if settings.hide_sky:
            return  # its pictures depend on a mask computed later; such links load the scene
        try:
            stored = self.store.load(recon_id)
            view = self.renderer.view(stored, settings)
            gallery = [(Path(path).name, caption, Path(path).read_bytes())
                       for path, caption in self.renderer.depth_gallery(stored)]
            save_first_view(self.store, recon_id, FirstView(
                settings_key=_settings_digest(settings), num_frames=stored.reconstruction.num_frames,
                summary=summary_markdown(stored, view), frame_choices=frame_choices(stored.reconstruction),
                glb=Path(view.glb_path).read_bytes(), gallery=gallery))
        except (StoreError, OSError) as error:
            logger.warning("could not keep the first view of %s (%s)", recon_id, error)

    def _first_view_outputs(self, recon_id: str, base: ViewSettings, page_url: str,
                            link_query: Mapping[str, str] | None) -> tuple | None:
        """The page's outputs from the entry's first view when the link asks for that view; None
        otherwise. The full scene is then read in the background for the next view change."""
        first = load_first_view(self.store, recon_id)
        if first is None:
            return None
        settings, ignored = view_settings_from_query(link_query or {}, base, first.num_frames)
        if ignored or settings.hide_sky or _settings_digest(settings) != first.settings_key:
            return None
        metadata = self.store.metadata(recon_id)
        glb_name = f"view-{_settings_digest(settings)}.glb"
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
        confidence, branch, frame, show_cameras, black, white, max_points, hide_sky = \
            [settings.confidence_threshold, settings.branch, ALL_FRAMES_CHOICE, settings.show_cameras,
             settings.filter_black_background, settings.filter_white_background, settings.max_points,
             settings.hide_sky]
        expires = datetime.fromtimestamp(float(metadata["created_at"]) + self.store.ttl_seconds, tz=timezone.utc)
        return (str(self.renderer.cache.path(recon_id, glb_name)), first.summary, gallery,
                gr.Dropdown(choices=first.frame_choices, value=frame), recon_id,
                gr.Textbox(value=share_link(page_url, recon_id, settings), info=_expiry_text(expires)),
                None, confidence, branch, show_cameras, black, white, max_points, hide_sky)

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

    def view_outputs(self, recon_id: str, controls: Sequence[Any], page_url: str) -> tuple[str, str, str]:
        """The viewer's GLB, the summary and the share link after a view control changed."""
        stored = self.store.load(recon_id)
        settings = self.sky.apply(stored, self.view_settings(stored, controls))
        view = self.renderer.view(stored, settings)
        return (str(view.glb_path), summary_markdown(stored, view),
                share_link(page_url, stored.id, settings, is_refined(stored.reconstruction)))

    def downloads(self, recon_id: str, controls: Sequence[Any]) -> list[str]:
        stored = self.store.load(recon_id)
        settings = self.sky.apply(stored, self.view_settings(stored, controls))
        return self.renderer.downloads(stored, functools.partial(self.store.copy_npz, recon_id), settings)

    def expiry_note(self, stored: StoredReconstruction) -> str:
        return _expiry_text(datetime.fromtimestamp(self.store.expires_at(stored), tz=timezone.utc))


def _expiry_text(expires: datetime) -> str:
    return f"Anyone with this link can view this reconstruction until {expires:%Y-%m-%d %H:%M} UTC."


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

APP_CSS = """
.vggt-banner { background: #fff4d6; color: #5c3d00; border: 1px solid #f0b429; border-radius: 8px;
               padding: 10px 14px; margin-bottom: 4px; }
.vggt-howto ol { margin-top: 0; }
"""

HOW_TO = """
# VGGT Reconstruct
Turn a few photos or a short video into a 3-D point cloud with the cameras that took them.

1. **Add photos** (several views of the same scene) **or one video** — or pick an example below.
2. Press **Reconstruct**. The first run also loads the model.
3. Explore the scene, adjust the display settings (no re-run needed), download the results
   or copy the share link.
"""


def example_sets(examples_dir: Path = EXAMPLES_DIR) -> tuple[list[list[list[str]]], list[str]]:
    """``gr.Examples`` rows (one multi-file value each) and labels, one per example folder."""
    rows, labels = [], []
    if not examples_dir.is_dir():
        return rows, labels
    for folder in sorted(p for p in examples_dir.iterdir() if p.is_dir()):
        images = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if images:
            rows.append([images])
            labels.append(f"{folder.name.replace('_', ' ').capitalize()} ({len(images)} views)")
    return rows, labels


def launch_options(settings: AppSettings) -> dict[str, Any]:
    """Keyword arguments for ``demo.launch`` that belong to the app's look (Gradio 6 takes the
    theme and CSS at launch time)."""
    return {"theme": gr.themes.Soft(), "css": APP_CSS,
            # Refused while uploading; check_upload_sizes says the same by name afterwards.
            "max_file_size": int(settings.upload_limits.max_file_bytes)}


# Gradio's own cleaner: every 10 minutes, delete its files older than an hour.
GRADIO_DELETE_CACHE = (600, 3600)


def derived_files_folder() -> Path:
    """A fresh folder for this process's derived files inside Gradio's cache folder (so Gradio
    serves them without copying), after removing those of processes that crashed."""
    parent = Path(gradio_upload_folder()) / "vggt-derived"
    remove_stale_process_folders(parent)
    folder = parent / f"{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir(parents=True)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def storage_cache_folder() -> Path:
    """This process's local cache of a URL storage's entries (see vggt_core.storage_cache), after
    removing those of processes that crashed."""
    parent = APP_DIR / "app-data" / "storage-cache"
    remove_stale_process_folders(parent)
    folder = parent / f"{os.getpid()}-{secrets.token_hex(4)}"
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def open_store(settings: AppSettings) -> ReconstructionStore:
    """The reconstruction store of ``settings`` (a folder or a URL storage), pruned once."""
    storage = open_entry_storage(settings.storage_location, cache_folder=storage_cache_folder(),
                                 cache_max_bytes=int(settings.storage_cache_mb * 1e6))
    store = ReconstructionStore(storage=storage, ttl_seconds=settings.storage_ttl_hours * 3600,
                                max_bytes=int(settings.storage_max_mb * 1e6))
    store.prune()
    return store


def build_app(settings: AppSettings, store: ReconstructionStore | None = None) -> gr.Blocks:
    """The whole page (with a store of its own unless given one). Starts nothing."""
    store = store if store is not None else open_store(settings)
    service = ReconstructionService(settings, store, ViewRenderer(derived_files_folder(), int(settings.cache_max_mb * 1e6)),
                                    ModelProvider(settings.checkpoint, settings.device))
    defaults = DEFAULT_VIEW_SETTINGS

    # Gradio serves our derived files where they are (they live in its cache folder); this
    # only ages out what Gradio stores itself: uploads and preview thumbnails.
    with gr.Blocks(title="VGGT Reconstruct", delete_cache=GRADIO_DELETE_CACHE) as demo:
        gr.Markdown(HOW_TO, elem_classes="vggt-howto")
        if settings.is_untrained:
            gr.HTML(untrained_banner_html(), elem_id="untrained-banner")

        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                input_files = gr.File(label="Photos or one video", file_count="multiple",
                                      file_types=["image", ".heic", ".heif", "video"], height=200, elem_id="input-files")
                video_fps = gr.Slider(0.25, 10, value=settings.video_fps, step=0.25,
                                      label="Video frames per second",
                                      info=f"Videos are sampled at this rate, at most {settings.max_frames} frames.")
                input_status = gr.Markdown(elem_id="input-status")
                MemoryPanel(settings.max_frames, untrained=settings.is_untrained, device=settings.device,
                            on_zero_gpu=_spaces_package() is not None, file_paths=_file_paths,
                            user_errors=show_user_errors).build_and_wire(input_files, video_fps)
                input_gallery = gr.Gallery(label="Frames to reconstruct", columns=4, height=240,
                                           object_fit="cover", allow_preview=True, elem_id="input-gallery")
                refine_checkbox = gr.Checkbox(value=False, label=REFINE_LABEL, info=REFINE_INFO,
                                              elem_id="refine-checkbox")
                reconstruct_button = gr.Button("Reconstruct", variant="primary", size="lg",
                                               elem_id="reconstruct-button")
                rows, labels = example_sets()
                if rows:
                    gr.Examples(examples=rows, inputs=[input_files], example_labels=labels,
                                label="Examples (synthetic scenes)")
                with gr.Accordion("Open a shared reconstruction", open=False):
                    shared_link_input = gr.Textbox(label="Share link or id", placeholder="https://…?r=…",
                                                   elem_id="open-shared-input")
                    open_button = gr.Button("Open")

            with gr.Column(scale=3, min_width=400):
                viewer = gr.Model3D(label="3-D reconstruction", height=520, clear_color=(0.96, 0.96, 0.97, 1.0),
                                    elem_id="scene-viewer")
                summary = gr.Markdown("Add photos or a video, then press **Reconstruct**.", elem_id="summary")
                with gr.Group():
                    with gr.Row():
                        confidence_slider = gr.Slider(0, 100, value=defaults.confidence_threshold, step=1,
                                               label="Confidence threshold (percentile)",
                                               info="Hide the least confident points: 50 hides half of them.",
                                               elem_id="confidence-slider")
                        max_points_slider = gr.Slider(10_000, MAX_POINTS_LIMIT, value=DEFAULT_MAX_POINTS, step=10_000,
                                               label="Maximum points shown", elem_id="max-points-slider")
                    with gr.Row():
                        branch_radio = gr.Radio(BRANCH_CHOICES, value=defaults.branch, label="Points from",
                                          elem_id="branch-radio")
                        frame_dropdown = gr.Dropdown([ALL_FRAMES_CHOICE], value=ALL_FRAMES_CHOICE,
                                            label="Show points of frame", elem_id="frame-dropdown")
                    with gr.Row():
                        cameras_checkbox = gr.Checkbox(value=defaults.show_cameras, label="Show cameras")
                        black_checkbox = gr.Checkbox(value=False, label="Hide black background")
                        white_checkbox = gr.Checkbox(value=False, label="Hide white background")
                        sky_checkbox = gr.Checkbox(value=False, label=HIDE_SKY_LABEL, info=service.sky.checkbox_info(),
                                                   elem_id="hide-sky-checkbox")
                share_box = gr.Textbox(label="Share link", interactive=False, buttons=["copy"],
                                       placeholder="Appears after a reconstruction", elem_id="share-link")
                with gr.Accordion("Downloads", open=False):
                    gr.Markdown("GLB scene, PLY point cloud and COLMAP model (zip) of the current view, "
                                "all raw predictions (.npz, load with `Reconstruction.load`) and depth maps "
                                "at the photos' resolution (zip).")
                    downloads_button = gr.Button("Prepare downloads", elem_id="downloads-button")
                    downloads = gr.File(label="Files", file_count="multiple", interactive=False,
                                        elem_id="downloads")
                recon_id_box = gr.Textbox(visible=False, elem_id="reconstruction-id")
                panels_slot = gr.Column()  # Measure and Camera, filled once the controls exist

        depth_gallery = gr.Gallery(label="Per view: input, depth (near = warm), confidence (bright = sure)",
                                   columns=6, height="auto", object_fit="contain", elem_id="depth-gallery")

        # In the order of VIEW_CONTROL_NAMES.
        view_controls = [confidence_slider, branch_radio, frame_dropdown, cameras_checkbox, black_checkbox,
                         white_checkbox, max_points_slider, sky_checkbox]
        # Everything a newly shown reconstruction sets; the view controls come last because a
        # share link may carry their values.
        scene_outputs = [viewer, summary, depth_gallery, frame_dropdown, recon_id_box, share_box, downloads,
                         confidence_slider, branch_radio, cameras_checkbox, black_checkbox, white_checkbox,
                         max_points_slider, sky_checkbox]

        def page_url(request: gr.Request | None) -> str:
            return page_url_from_request(request, settings.public_url)

        # Gradio passes inputs positionally, so each handler spells out the view controls in the
        # order of VIEW_CONTROL_NAMES; the API parameters get the same names.
        @show_user_errors
        def preview_inputs(files, fps):
            return service.preview(files, fps)

        @show_user_errors
        def reconstruct(files, fps, confidence, branch, frame, show_cameras, filter_black, filter_white,
                        max_points, hide_sky=False, refine=False, request: gr.Request = None, progress=gr.Progress()):
            # Checked before the model runs, so bad controls cost no GPU time.
            view = view_settings_from_controls(confidence, branch, ALL_FRAMES_CHOICE, show_cameras, filter_black,
                                               filter_white, max_points, hide_sky, num_frames=1)
            pending = service.start_reconstruction(files, fps, progress, refine=bool(refine))
            progress(0.92, desc="Building the 3-D scene")  # while the writers save it
            outputs = service.scene_outputs(pending.id, view, page_url(request))
            progress(0.98, desc="Saving the reconstruction")
            pending.wait()  # the share link is shown only once it survives a crash
            service.save_first_view(pending.id, view)
            return outputs

        @show_user_errors
        def update_view(recon_id, confidence, branch, frame, show_cameras, filter_black, filter_white, max_points,
                        hide_sky=False, request: gr.Request = None):
            if not recon_id:
                return gr.skip(), gr.skip(), gr.skip()  # nothing reconstructed yet
            controls = [confidence, branch, frame, show_cameras, filter_black, filter_white, max_points, hide_sky]
            return service.view_outputs(recon_id, controls, page_url(request))

        @show_user_errors
        def prepare_downloads(recon_id, confidence, branch, frame, show_cameras, filter_black, filter_white,
                              max_points, hide_sky=False):
            if not recon_id:
                raise InputError("Reconstruct something first; then its files can be downloaded.")
            controls = [confidence, branch, frame, show_cameras, filter_black, filter_white, max_points, hide_sky]
            return service.downloads(recon_id, controls)

        @show_user_errors
        def open_shared(link_or_id, confidence, branch, frame, show_cameras, filter_black, filter_white,
                        max_points, hide_sky=False, request: gr.Request = None):
            # The current controls, unless the pasted link carries a view of its own.
            view = view_settings_from_controls(confidence, branch, ALL_FRAMES_CHOICE, show_cameras, filter_black,
                                               filter_white, max_points, hide_sky, num_frames=1)
            return service.scene_outputs(reconstruction_id_from_text(link_or_id), view, page_url(request),
                                         share_link_query(link_or_id))

        def open_from_page_url(request: gr.Request):
            """On page load: show the reconstruction named by ``?r=<id>``, with the link's view."""
            query = {key: str(value) for key, value in dict(getattr(request, "query_params", {}) or {}).items()}
            requested = query.get(SHARE_QUERY_PARAMETER)
            if not requested:
                return tuple(gr.skip() for _ in scene_outputs)
            try:
                return service.scene_outputs(requested, DEFAULT_VIEW_SETTINGS, page_url(request), query)
            except StoreError as error:  # unknown, expired, or storage busy right now
                message = str(error)
            except Exception:
                logger.exception("unexpected error while opening a shared reconstruction")
                message = GENERIC_ERROR_MESSAGE
            # Shown in the page as well as in a toast: the visitor came for this scene.
            gr.Warning(user_message(message))
            return (gr.skip(), f"⚠️ {user_message(message)}") + tuple(gr.skip() for _ in scene_outputs[2:])

        input_files.change(preview_inputs, [input_files, video_fps], [input_gallery, input_status],
                           api_name="preview", concurrency_limit=4)
        video_fps.release(preview_inputs, [input_files, video_fps], [input_gallery, input_status],
                          api_visibility="private", concurrency_limit=4)
        # One model run at a time: a GPU holds one VGGT forward, and ZeroGPU grants one GPU.
        # Two at once: one decodes its inputs or builds its scene while the other holds the GPU
        # (GPU_SLOT: only the model's forward is serialised, on its low-priority thread).
        reconstruct_button.click(reconstruct, [input_files, video_fps, *view_controls, refine_checkbox], scene_outputs,
                                 api_name="reconstruct", concurrency_limit=2, concurrency_id="reconstruct",
                                 scroll_to_output=True)
        for control in view_controls:
            # always_last: while a slider is dragged only the final position is rendered.
            control.change(update_view, [recon_id_box, *view_controls], [viewer, summary, share_box],
                           api_name="update_view" if control is confidence_slider else None,
                           api_visibility="public" if control is confidence_slider else "private",
                           trigger_mode="always_last", show_progress="minimal", concurrency_limit=8,
                           concurrency_id="view")
        downloads_button.click(prepare_downloads, [recon_id_box, *view_controls], [downloads],
                               api_name="export", concurrency_limit=2)
        open_button.click(open_shared, [shared_link_input, *view_controls], scene_outputs,
                          api_name="open_shared", concurrency_limit=8, concurrency_id="view")
        # Page loads (which open ?r= links) must not queue behind each other.
        demo.load(open_from_page_url, None, scene_outputs, api_visibility="private",
                  show_progress="minimal", concurrency_limit=8, concurrency_id="page-load")

        def show_scene(recon_id, controls, request):
            """A stored (e.g. rescaled) reconstruction with the page's current view controls."""
            view = view_settings_from_controls(*controls[:2], ALL_FRAMES_CHOICE, *controls[3:], num_frames=1)
            return service.scene_outputs(recon_id, view, page_url(request))

        with panels_slot:
            MeasurePanel(store, show_scene, show_user_errors).build_and_wire(recon_id_box, view_controls, scene_outputs)
            CameraPanel(store, show_scene, show_user_errors).build_and_wire(recon_id_box, view_controls, scene_outputs)
            TracksPanel(store, show_scene, show_user_errors, service.track).build_and_wire(
                recon_id_box, view_controls, scene_outputs)
    return demo


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX`` would), unless the operator set that.

    Every worker thread otherwise gets its own arena, and the large short-lived numpy arrays of
    view changes leave each one fragmented: in the 8-user soak test RSS reached 2.6 GB after 4
    minutes (and kept growing) without this, 1.8 GB (flat) with it. A no-op off glibc. Returns whether the cap was set.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-8, arenas))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(argv)
    limit_malloc_arenas()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.is_untrained:
        logger.warning("running with %s: an untrained model, results are meaningless", RANDOM_TINY_CHECKPOINT)
    try:
        store = open_store(settings)
    except StorageConfigurationError as error:  # a bad --storage: say why, no traceback
        raise SystemExit(f"app.py: {error}") from None
    demo = build_app(settings, store)
    demo.queue(max_size=32)
    exit_cleanly_on_sigterm()
    try:
        demo.launch(server_name=settings.host, server_port=settings.port, share=settings.share,
                    **launch_options(settings))
    finally:
        demo.close()  # no new requests; then every save already handed to the writers completes
        store.close()
        logger.info("stopped; every reconstruction in flight is saved")


def exit_cleanly_on_sigterm() -> None:
    """SIGTERM (a Space restart, ``kill``) becomes ``SystemExit(0)`` in the main thread, so
    :func:`main` finishes the store's writes and Python shuts down normally (no share link it
    has shown breaks). pycolmap is imported first because glog, inside it, replaces the SIGTERM
    handler with its "*** Aborted ... stack trace" one when it is first imported, and a later
    import from a worker thread (first COLMAP export or bundle adjustment) could not be undone
    there: only the main thread may set signal handlers."""
    try:
        import pycolmap  # noqa: F401
    except ImportError:
        pass

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the writes short
        logger.info("SIGTERM: finishing the reconstructions being saved, then exiting")
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    main()
