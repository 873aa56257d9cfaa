"""The page: the panels placed and wired together. Building it starts nothing."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .errors import show_user_errors
from .renderer import ViewRenderer
from .runtime.models import ModelProvider
from .service import ReconstructionService
from .settings import AppSettings
from .share_links import page_url_from_request
from .store.entries import ReconstructionStore
from .summary import untrained_banner_html
from .panels.camera import CameraPanel
from .panels.inputs import InputsPanel
from .panels.masks import MasksPanel
from .panels.measure import MeasurePanel
from .panels.tracks import TracksPanel
from .panels.viewer import ViewerPanel

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

# Gradio's own cleaner: every 10 minutes, delete its files older than an hour.
GRADIO_DELETE_CACHE = (600, 3600)


def launch_options(settings: AppSettings) -> dict[str, Any]:
    """Keyword arguments for ``demo.launch`` that belong to the app's look (Gradio 6 takes the
    theme and CSS at launch time)."""
    return {"theme": gr.themes.Soft(), "css": APP_CSS,
            # Refused while uploading; check_upload_sizes says the same by name afterwards.
            "max_file_size": int(settings.upload_limits.max_file_bytes)}


def build_service(settings: AppSettings, store: ReconstructionStore, derived_files: Any) -> ReconstructionService:
    """The service of a page: ``store``, a renderer writing into ``derived_files`` (a folder), the model."""
    renderer = ViewRenderer(derived_files, int(settings.cache_max_mb * 1e6))
    return ReconstructionService(settings, store, renderer, ModelProvider(settings.checkpoint, settings.device,
                                                                          settings.devices))


def build_page(service: ReconstructionService) -> gr.Blocks:
    """The whole page around ``service``."""
    settings = service.settings

    def page_url(request: gr.Request | None) -> str:
        return page_url_from_request(request, settings.public_url)

    viewer = ViewerPanel(service, page_url, show_user_errors)
    inputs = InputsPanel(service, viewer, show_user_errors)
    # Gradio serves our derived files where they are (they live in its cache folder); this
    # only ages out what Gradio stores itself: uploads and preview thumbnails.
    with gr.Blocks(title="VGGT Reconstruct", delete_cache=GRADIO_DELETE_CACHE) as demo:
        gr.Markdown(HOW_TO, elem_classes="vggt-howto")
        if settings.is_untrained:
            gr.HTML(untrained_banner_html(), elem_id="untrained-banner")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                inputs.build()
            with gr.Column(scale=3, min_width=400):
                viewer.build()
                panels_slot = gr.Column()  # Measure, Camera, Tracks and Masks, placed once the gallery exists
        viewer.build_gallery()
        viewer.wire()
        inputs.wire(demo)
        with panels_slot:
            for panel in (MeasurePanel(service.store, viewer.show_scene, show_user_errors),
                          CameraPanel(service.store, viewer.show_scene, show_user_errors),
                          TracksPanel(service.store, viewer.show_scene, show_user_errors, service.track),
                          MasksPanel(service.store, viewer.show_scene, show_user_errors)):
                panel.build_and_wire(viewer.recon_id_box, viewer.controls, viewer.scene_outputs)
        viewer.wire_new_scene_view()
    return demo


__all__ = ["APP_CSS", "GRADIO_DELETE_CACHE", "HOW_TO", "build_page", "build_service", "launch_options"]
