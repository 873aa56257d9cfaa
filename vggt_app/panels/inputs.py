"""The input column: photos or a video, the frames that will be reconstructed, the memory line
(with "Process in chunks" when the frames do not fit), the refine option, the Reconstruct button,
the examples, and opening a shared link."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from vggt_core import InputError
from vggt_core.filtering import ViewSettings

from ..errors import GENERIC_ERROR_MESSAGE, user_message
from ..runtime.models import spaces_package
from ..service import ReconstructionService, SceneView
from ..settings import APP_DIR
from ..share_links import (DEFAULT_VIEW_SETTINGS, SHARE_QUERY_PARAMETER, reconstruction_id_from_text,
                           share_link_query)
from ..store.entries import PendingSave, StoreError
from ..view_controls import ViewControls
from .memory import MemoryPanel
from .tracks import REFINE_INFO, REFINE_LABEL
from .viewer import ViewerPanel

logger = logging.getLogger("vggt_app")

EXAMPLES_DIR = APP_DIR / "assets" / "examples"


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


class InputsPanel:
    def __init__(self, service: ReconstructionService, viewer: ViewerPanel,
                 user_errors: Callable[[Callable], Callable]):
        self.service = service
        self.viewer = viewer
        self.user_errors = user_errors

    # ---- layout

    def build(self) -> None:
        """The input column's components (call inside that column)."""
        settings = self.service.settings
        self.files = gr.File(label="Photos or one video", file_count="multiple",
                             file_types=["image", ".heic", ".heif", "video"], height=200, elem_id="input-files")
        self.fps = gr.Slider(0.25, 10, value=settings.video_fps, step=0.25, label="Video frames per second",
                             info=f"Videos are sampled at this rate, at most {settings.max_frames} frames.")
        self.status = gr.Markdown(elem_id="input-status")
        self.memory = MemoryPanel(settings.max_frames, checkpoint=settings.checkpoint, device=settings.device,
                                  on_zero_gpu=spaces_package() is not None,
                                  file_paths=self.usable_paths,
                                  user_errors=self.user_errors)
        self.memory.build_and_wire(self.files, self.fps)
        self.gallery = gr.Gallery(label="Frames to reconstruct", columns=4, height=240, object_fit="cover",
                                  allow_preview=True, elem_id="input-gallery")
        self.refine = gr.Checkbox(value=False, label=REFINE_LABEL, info=REFINE_INFO, elem_id="refine-checkbox")
        self.reconstruct_button = gr.Button("Reconstruct", variant="primary", size="lg", elem_id="reconstruct-button")
        rows, labels = example_sets()
        if rows:
            gr.Examples(examples=rows, inputs=[self.files], example_labels=labels, label="Examples (synthetic scenes)")
        with gr.Accordion("Open a shared reconstruction", open=False):
            self.shared_link = gr.Textbox(label="Share link or id", placeholder="https://…?r=…",
                                          elem_id="open-shared-input")
            self.open_button = gr.Button("Open")

    # ---- handlers

    def usable_paths(self, files: Any) -> list[str]:
        """The files the memory line counts: the usable ones (the preview says what is wrong with the others)."""
        try:
            return self.service.screen(files).usable
        except InputError:
            return []

    def preview(self, files: Any, fps: float) -> tuple[list[tuple[str, str]], str]:
        return self.service.preview(files, fps)

    def reconstruct(self, files: Any, fps: float, refine: bool = False, request: gr.Request = None,
                    progress=gr.Progress(), **view: Any) -> dict:
        # Checked before the model runs, so bad controls cost no GPU time.
        settings = ViewControls.settings(view, num_frames=1, all_frames=True)
        pending = self.service.start_reconstruction(files, fps, progress, refine=bool(refine), request=request)
        return self.show_when_saved(pending, settings, request, progress)

    def reconstruct_in_chunks(self, files: Any, fps: float, chunk_size: float | None = 0, request: gr.Request = None,
                              progress=gr.Progress(), **view: Any) -> dict:
        """"Process in chunks": overlapping chunks of ``chunk_size`` frames (0: as many as fit),
        aligned into one scene, stored and shown like any other."""
        settings = ViewControls.settings(view, num_frames=1, all_frames=True)
        pending = self.service.start_reconstruction(files, fps, progress, request=request,
                                                    chunk_size=int(chunk_size or 0))
        return self.show_when_saved(pending, settings, request, progress)

    def show_when_saved(self, pending: PendingSave, settings: ViewSettings, request: gr.Request,
                        progress: Any) -> dict:
        """A new reconstruction's scene, returned once it is durable (its share link then works)."""
        progress(0.92, desc="Building the 3-D scene")  # while the writers save it
        scene = self.service.scene_view(pending.id, settings, self.viewer.page_url(request))
        progress(0.98, desc="Saving the reconstruction")
        pending.wait()  # the share link is shown only once it survives a crash
        self.service.save_first_view(pending.id, settings)
        return self.viewer.scene_updates(scene)

    def scene_and_frames(self, scene: SceneView) -> dict:
        """A scene opened from a link, with its input frames in the upload box, ready to run again
        (with other options, say)."""
        return {**self.viewer.scene_updates(scene), self.files: scene.input_frames}

    def open_from_page_url(self, request: gr.Request) -> dict:
        """On page load: show the reconstruction named by ``?r=<id>``, with the link's view."""
        query = {key: str(value) for key, value in dict(getattr(request, "query_params", {}) or {}).items()}
        requested = query.get(SHARE_QUERY_PARAMETER)
        if not requested:
            return gr.skip()
        try:
            return self.scene_and_frames(self.service.scene_view(requested, DEFAULT_VIEW_SETTINGS,
                                                                 self.viewer.page_url(request), query))
        except StoreError as error:  # unknown, expired, or storage busy right now
            message = str(error)
        except Exception:
            logger.exception("unexpected error while opening a shared reconstruction")
            message = GENERIC_ERROR_MESSAGE
        # Shown in the page as well as in a toast: the visitor came for this scene.
        gr.Warning(user_message(message))
        return {self.viewer.summary: f"⚠️ {user_message(message)}"}

    def open_shared(self, link_or_id: str, request: gr.Request = None, **view: Any) -> dict:
        # The current controls, unless the pasted link carries a view of its own.
        settings = ViewControls.settings(view, num_frames=1, all_frames=True)
        return self.scene_and_frames(self.service.scene_view(
            reconstruction_id_from_text(link_or_id), settings, self.viewer.page_url(request),
            share_link_query(link_or_id)))

    # ---- wiring

    def wire(self, demo: gr.Blocks) -> None:
        errors = self.user_errors
        view = self.viewer.controls.inputs
        self.files.change(errors(self.preview), [self.files, self.fps], [self.gallery, self.status],
                          api_name="preview", concurrency_limit=4)
        self.fps.release(errors(self.preview), [self.files, self.fps], [self.gallery, self.status],
                         api_visibility="private", concurrency_limit=4)
        # One model run at a time: a GPU holds one VGGT forward, and ZeroGPU grants one GPU.
        # Two at once: one decodes its inputs or builds its scene while the other holds the GPU
        # (GPU_SLOT: only the model's forward is serialised, on its low-priority thread).
        # The refine option comes after the view controls in the API (as it always has).
        self.reconstruct_button.click(errors(self.reconstruct), [self.files, self.fps], self.viewer.scene_outputs,
                                      inputs_kwargs={**view, "refine": self.refine}, api_name="reconstruct",
                                      concurrency_limit=2, concurrency_id="reconstruct", scroll_to_output=True,
                                      show_progress_on=[self.viewer.viewer])
        # Shown only when the memory line says the frames do not fit; the same outputs as Reconstruct.
        self.memory.chunks_button.click(errors(self.reconstruct_in_chunks), [self.files, self.fps,
                                                                             self.memory.chunk_size],
                                        self.viewer.scene_outputs, inputs_kwargs=view,
                                        api_name="reconstruct_in_chunks", concurrency_limit=2,
                                        concurrency_id="reconstruct", scroll_to_output=True,
                                        show_progress_on=[self.viewer.viewer])
        # Opened scenes also fill the upload box (appended to the API's outputs).
        opened_outputs = [*self.viewer.scene_outputs, self.files]
        self.open_button.click(errors(self.open_shared), [self.shared_link], opened_outputs,
                               inputs_kwargs=view, api_name="open_shared", concurrency_limit=8,
                               concurrency_id="view", show_progress_on=[self.viewer.viewer])
        # Page loads (which open ?r= links) must not queue behind each other.
        demo.load(self.open_from_page_url, None, opened_outputs, api_visibility="private",
                  show_progress_on=[self.viewer.viewer], concurrency_limit=8, concurrency_id="page-load")


__all__ = ["EXAMPLES_DIR", "InputsPanel", "example_sets"]
