"""The "Camera" option: VGGT's predicted intrinsics, the photos' EXIF focal length, or a typed one.

VGGT does not take intrinsics as input, so this never re-runs the network: it re-projects the
predicted depth with the chosen focal length (:mod:`vggt_core.intrinsics`) and stores the result
as a new entry (see :mod:`vggt_app.panels.derived`), with its own share link.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from vggt_core import InputError
from vggt_core.intrinsics import apply_camera_choice

from ..store.entries import ReconstructionStore
from ..summary import is_refined
from ..view_controls import ViewControls

from .derived import save_derived
from .viewer import ShowScene

CAMERA_CHOICES = [("Predicted by VGGT", "predicted"), ("From the photos' EXIF", "exif"),
                  ("This focal length", "manual")]
FOCAL_UNIT_CHOICES = [("pixels (of the photo)", "px"), ("35 mm-equivalent mm", "mm35")]
HONEST_NOTE = ("VGGT does not take intrinsics as input. With a known focal length the predicted depth is "
               "**re-projected** with it (principal point at the photo's centre); the depth and the camera "
               "poses stay as predicted. The summary shows the predicted and the EXIF focal lengths.")


class CameraPanel:
    def __init__(self, store: ReconstructionStore, show: ShowScene, user_errors: Callable[[Callable], Callable]):
        self.store = store
        self.show = show
        self.user_errors = user_errors

    def apply(self, recon_id: str, choice: str, focal: Any, unit: str, request: gr.Request = None,
              **view: Any) -> dict:
        if not recon_id:
            raise InputError("Reconstruct something first; then choose its camera.")
        stored = self.store.load(recon_id)
        current = stored.reconstruction.info.get("intrinsics_source", "predicted")
        if choice == "predicted" and current == "predicted" and not is_refined(stored.reconstruction):
            return self.show(recon_id, view, request)  # nothing to change
        changed = apply_camera_choice(stored.reconstruction, choice, focal, unit)
        label = {"predicted": "predicted intrinsics", "exif": "EXIF focal length"}.get(choice, f"focal {focal} {unit}")
        return self.show(save_derived(self.store, stored, changed, label, request), view, request)

    def build_and_wire(self, recon_id_box: gr.Textbox, view_controls: ViewControls,
                       scene_outputs: Sequence[gr.components.Component]) -> None:
        with gr.Accordion("Camera: known focal length", open=False, elem_id="camera-panel"):
            gr.Markdown(HONEST_NOTE)
            choice = gr.Radio(CAMERA_CHOICES, value="predicted", label="Intrinsics", elem_id="camera-choice")
            with gr.Row():
                focal = gr.Number(label="Focal length", minimum=0, elem_id="camera-focal")
                unit = gr.Radio(FOCAL_UNIT_CHOICES, value="px", label="Unit", elem_id="camera-unit")
            apply = gr.Button("Apply camera", elem_id="camera-apply")

        apply.click(self.user_errors(self.apply), [recon_id_box, choice, focal, unit], list(scene_outputs),
                    inputs_kwargs=view_controls.inputs, api_name="apply_camera", concurrency_limit=2)


__all__ = ["CAMERA_CHOICES", "CameraPanel", "HONEST_NOTE"]
