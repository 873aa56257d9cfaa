"""The viewer column: the 3-D scene (points, or the mesh fused from the depth maps), its summary,
the view controls, the share link and the downloads; and the per-view gallery (input, depth,
confidence, normals) under the page.

:class:`ViewerPanel` also turns a :class:`~vggt_app.service.SceneView` into the updates of every
output a newly shown scene sets (:attr:`ViewerPanel.scene_outputs`), for the other panels too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

from vggt_core import InputError
from vggt_core.export import EXPORTERS, default_export_formats
from vggt_core.mesh import MESH_QUALITIES

from ..service import SHOW_MESH, SHOW_POINTS, ReconstructionService, SceneView
from ..view_controls import ViewControls

# (id, the view controls' values by name, request) -> the scene outputs' updates.
ShowScene = Callable[[str, Mapping[str, Any], Any], dict]

SHOW_CHOICES = [("Points", SHOW_POINTS), ("Mesh", SHOW_MESH)]
DEFAULT_MESH_QUALITY = "standard"


class ViewerPanel:
    def __init__(self, service: ReconstructionService, page_url: Callable[[Any], str],
                 user_errors: Callable[[Callable], Callable]):
        self.service = service
        self.page_url = page_url
        self.user_errors = user_errors

    # ---- layout

    def build(self) -> None:
        """The viewer column's components (call inside that column)."""
        self.viewer = gr.Model3D(label="3-D reconstruction", height=520, clear_color=(0.96, 0.96, 0.97, 1.0),
                                 elem_id="scene-viewer")
        self.summary = gr.Markdown("Add photos or a video, then press **Reconstruct**.", elem_id="summary")
        self.controls = ViewControls(sky_info=self.service.sky.checkbox_info())
        with gr.Row():
            self.show = gr.Radio(SHOW_CHOICES, value=SHOW_POINTS, label="Show", elem_id="show-radio",
                                 info="Mesh: the depth maps of all frames fused into a surface (takes seconds).")
            self.mesh_quality = gr.Dropdown(list(MESH_QUALITIES), value=DEFAULT_MESH_QUALITY, label="Mesh quality",
                                            info="Finer is slower; the mesh downloads use it too.",
                                            elem_id="mesh-quality")
        self.share_box = gr.Textbox(label="Share link", interactive=False, buttons=["copy"],
                                    placeholder="Appears after a reconstruction", elem_id="share-link")
        with gr.Accordion("Downloads", open=False):
            gr.Markdown("Files of the current view (its points, filters and cameras); the `.npz` holds all raw "
                        "predictions (load with `Reconstruction.load`).")
            self.download_formats = gr.CheckboxGroup(
                [(f"{exporter.file_name}: {exporter.description}", name) for name, exporter in EXPORTERS.items()],
                value=list(default_export_formats()), label="Formats", elem_id="download-formats")
            self.downloads_button = gr.Button("Prepare downloads", elem_id="downloads-button")
            self.downloads = gr.File(label="Files", file_count="multiple", interactive=False, elem_id="downloads")
        self.recon_id_box = gr.Textbox(visible=False, elem_id="reconstruction-id")

    def build_gallery(self) -> None:
        """The per-view gallery (call where it should appear: under the columns)."""
        self.gallery = gr.Gallery(label="Per view: input, depth (near = warm), confidence (bright = sure), "
                                        "normals (facing the camera = light blue)",
                                  columns=8, height="auto", object_fit="contain", elem_id="depth-gallery")

    @property
    def scene_outputs(self) -> list[gr.components.Component]:
        """Everything a newly shown reconstruction sets, in the API's order; the view controls
        come last because a share link may carry their values."""
        c = self.controls
        return [self.viewer, self.summary, self.gallery, c.frame, self.recon_id_box, self.share_box, self.downloads,
                c.confidence, c.branch, c.show_cameras, c.filter_black, c.filter_white, c.max_points, c.hide_sky]

    def scene_updates(self, scene: SceneView) -> dict[gr.components.Component, Any]:
        return {self.viewer: scene.glb_path, self.summary: scene.summary, self.gallery: scene.gallery,
                self.recon_id_box: scene.id, self.share_box: gr.Textbox(value=scene.share_link, info=scene.expiry_note),
                self.downloads: None,  # clears the downloads of the previous reconstruction
                **self.controls.updates(scene.settings, scene.frame_menu)}

    def show_scene(self, recon_id: str, view: Mapping[str, Any], request: Any) -> dict:
        """A stored (e.g. rescaled) reconstruction with the page's current view controls."""
        settings = ViewControls.settings(view, num_frames=1, all_frames=True)
        return self.scene_updates(self.service.scene_view(recon_id, settings, self.page_url(request)))

    # ---- handlers

    def update_view(self, recon_id: str, request: gr.Request = None, *, may_untick_sky: bool = False,
                    show: str = SHOW_POINTS, mesh_quality: str = DEFAULT_MESH_QUALITY, **view: Any) -> dict:
        """Re-render the viewer (points, or the mesh with ``show="mesh"``), the summary and the link.
        A mesh that cannot be fused raises its message: the page keeps the previous scene."""
        if not recon_id:
            return gr.skip()  # nothing reconstructed yet
        update = self.service.view_update(recon_id, view, self.page_url(request), show=show or SHOW_POINTS,
                                          mesh_quality=mesh_quality)
        outputs = {self.viewer: update.glb_path, self.summary: update.summary, self.share_box: update.share_link}
        if update.sky_refused and may_untick_sky:
            outputs[self.controls.hide_sky] = False  # only the control that failed changes
        return outputs

    def update_view_from_sky_checkbox(self, recon_id: str, request: gr.Request = None, **view: Any) -> dict:
        """:meth:`update_view` that may also untick "Hide sky" (when the sky model is missing)."""
        return self.update_view(recon_id, request, may_untick_sky=True, **view)

    def prepare_downloads(self, recon_id: str, formats: list[str] | None = None,
                          mesh_quality: str = DEFAULT_MESH_QUALITY, **view: Any) -> list[str]:
        if not recon_id:
            raise InputError("Reconstruct something first; then its files can be downloaded.")
        if formats is not None and not formats:
            raise InputError("Tick at least one format to download.")
        return self.service.downloads(recon_id, view, formats, mesh_quality)

    def mesh_for_a_new_scene(self, recon_id: str, request: gr.Request = None, *, show: str = SHOW_POINTS,
                             **view: Any) -> dict:
        """A newly shown scene arrives as points; while *Show* says Mesh, its mesh replaces them."""
        if show != SHOW_MESH:
            return gr.skip()
        return self.update_view(recon_id, request, show=show, **view)

    # ---- wiring

    def wire(self) -> None:
        errors = self.user_errors
        confidence = self.controls.confidence
        view_outputs = [self.viewer, self.summary, self.share_box]
        # After the view controls in the API (older clients leave them out: points, standard).
        view_inputs = {**self.controls.inputs, "show": self.show, "mesh_quality": self.mesh_quality}
        for control in [*self.controls.components, self.show, self.mesh_quality]:
            is_sky = control is self.controls.hide_sky
            # always_last: while a slider is dragged only the final position is rendered.
            control.change(errors(self.update_view_from_sky_checkbox if is_sky else self.update_view),
                           [self.recon_id_box], view_outputs + ([control] if is_sky else []),
                           inputs_kwargs=view_inputs,
                           api_name="update_view" if control is confidence else None,
                           api_visibility="public" if control is confidence else "private",
                           trigger_mode="always_last", show_progress_on=[self.viewer], concurrency_limit=8,
                           concurrency_id="view")
        # The formats come after the view controls in the API (older clients may leave them out).
        self.downloads_button.click(errors(self.prepare_downloads), [self.recon_id_box], [self.downloads],
                                    inputs_kwargs={**self.controls.inputs, "formats": self.download_formats,
                                                   "mesh_quality": self.mesh_quality},
                                    api_name="export", concurrency_limit=2)

    def wire_new_scene_view(self) -> None:
        """While *Show* says Mesh, a newly shown scene's mesh replaces its points. Wired after the
        other panels: their resets on a new id must run first (the Measure panel's reads the id
        it has just rescaled; a dependency registered before it changes what it reads)."""
        view_inputs = {**self.controls.inputs, "show": self.show, "mesh_quality": self.mesh_quality}
        self.recon_id_box.change(self.user_errors(self.mesh_for_a_new_scene), [self.recon_id_box],
                                 [self.viewer, self.summary, self.share_box], inputs_kwargs=view_inputs,
                                 api_visibility="private", show_progress_on=[self.viewer], concurrency_limit=8,
                                 concurrency_id="view")


__all__ = ["DEFAULT_MESH_QUALITY", "SHOW_CHOICES", "ShowScene", "ViewerPanel"]
