"""The "Masks" panel: leave things out of the scene (people walking by, cars, a tripod).

Two ways in: upload mask images named after their photos (``IMG_0042.png`` masks
``IMG_0042.jpg``; white = leave out), matched, resized and explained by :mod:`vggt_core.masks`;
or paint over a frame in the browser's image editor. Either makes a **new entry** (like a
rescaled scene, see :mod:`vggt_app.panels.derived`) that stores only the masks beside its
parent's id, with its own share link: the masked pixels give no point, no mesh surface and
nothing in the downloads, for whoever opens that link.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr
import numpy as np

from vggt_core import InputError
from vggt_core.frame_names import parse_frame_label
from vggt_core.masks import load_masks_for_reconstruction, with_frame_mask
from vggt_core.reconstruction import Reconstruction

from ..errors import user_message
from ..store.entries import ReconstructionStore, StoredReconstruction
from ..uploads import uploaded_file_paths
from ..view_controls import ViewControls, frame_labels
from .derived import save_derived
from .viewer import ShowScene

HOW_TO = ("Leave things out of the points, the mesh and the downloads. **Upload masks** named like their "
          "photos (`IMG_0042.png` for `IMG_0042.jpg`; white = leave out), or **paint** over a frame below. "
          "Applying makes a new scene with its own share link; the original link stays as it was.")
# The brush: any opaque paint is "leave out" (vggt_core.masks.mask_image_to_bool).
BRUSH_COLOR = "#ff00ff"
# Already masked pixels are shown tinted with this colour behind the paint layer.
MASKED_TINT = np.array([255, 0, 255], dtype=np.float32)


def frame_with_mask(recon: Reconstruction, index: int) -> np.ndarray:
    """``[H, W, 3]`` uint8: frame ``index`` as the model saw it, its masked pixels tinted, to paint on."""
    image = recon.images[index].astype(np.float32)
    if recon.exclusion_masks is not None:
        masked = recon.exclusion_masks[index]
        image[masked] = 0.5 * image[masked] + 0.5 * MASKED_TINT
    return image.round().astype(np.uint8)


def painted_pixels(editor_value: Any, size_hw: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` bool: where any layer of the image editor's value holds paint.

    Args:
        editor_value: ``gr.ImageEditor``'s value (``type="numpy"``): a dict whose ``layers`` are
            ``[h, w, 4]`` RGBA arrays, transparent where nothing was painted.
        size_hw: the frame's ``(H, W)``; layers of another size (a resized canvas) are rejected.
    """
    layers = (editor_value.get("layers") or []) if isinstance(editor_value, dict) else []
    painted = np.zeros(size_hw, dtype=bool)
    for layer in layers:
        if layer is None:
            continue
        array = np.asarray(layer)
        if array.ndim != 3 or array.shape[-1] != 4:
            continue  # a layer without transparency cannot tell paint from the canvas
        if array.shape[:2] != tuple(size_hw):
            raise InputError(f"The painted layer is {array.shape[1]}×{array.shape[0]} but the frame is "
                             f"{size_hw[1]}×{size_hw[0]}; load the frame again and paint on it.")
        painted |= array[..., 3] >= 128
    return painted


class MasksPanel:
    def __init__(self, store: ReconstructionStore, show: ShowScene, user_errors: Callable[[Callable], Callable]):
        self.store = store
        self.show = show
        self.user_errors = user_errors

    # ---- handlers

    def apply_files(self, recon_id: str, files: Any, request: gr.Request = None, **view: Any) -> dict:
        """Masks uploaded as files, matched to the photos by file stem, as a new entry."""
        if not recon_id:
            raise InputError("Reconstruct something first; then mask it.")
        paths = uploaded_file_paths(files)
        if not paths:
            raise InputError("Add mask images first (named like their photos; white = leave out).")
        stored = self.store.load(recon_id)
        masked, notes = load_masks_for_reconstruction(stored.reconstruction, paths)
        used = len(paths) - _unused(notes)
        if used == 0:
            raise InputError(" ".join(notes) + " The photos are: " + ", ".join(stored.reconstruction.frame_names) + ".")
        for note in notes:
            gr.Warning(user_message(note))
        return self._show_masked(stored, masked, f"masks from {used} file(s)", request, view)

    def apply_painted(self, recon_id: str, mask_frame: str, editor_value: Any, request: gr.Request = None,
                      **view: Any) -> dict:
        """The paint on frame ``mask_frame`` (its menu label) added to that frame's mask, as a new entry."""
        if not recon_id:
            raise InputError("Reconstruct something first; then mask it.")
        stored = self.store.load(recon_id)
        recon = stored.reconstruction
        index = parse_frame_label(mask_frame, recon.num_frames)
        painted = painted_pixels(editor_value, recon.image_size_hw)
        if not painted.any():
            raise InputError("Paint over what to leave out first (any colour), then apply.")
        if recon.exclusion_masks is not None:
            painted |= recon.exclusion_masks[index]  # painting adds to what was masked before
        masked = with_frame_mask(recon, index, painted)
        return self._show_masked(stored, masked, f"mask painted on frame {index}", request, view)

    def _show_masked(self, stored: StoredReconstruction, masked: Reconstruction, change: str, request: Any,
                     view: dict) -> dict:
        """Store ``masked`` (made from ``stored``) as a derived entry and show it with its link."""
        if masked.exclusion_masks is None and stored.reconstruction.exclusion_masks is None:
            raise InputError("The masks leave nothing out (all black); nothing changed.")
        return self.show(save_derived(self.store, stored, masked, change, request), view, request)

    def frame(self, recon_id: str, frame: str | None) -> Any:
        """The image editor showing ``frame`` (masked pixels tinted), with an empty paint layer."""
        if not recon_id:
            return gr.skip()
        recon = self.store.load(recon_id).reconstruction
        index = parse_frame_label(frame, recon.num_frames) if frame else 0
        return {"background": frame_with_mask(recon, index), "layers": [], "composite": None}

    def reset(self, recon_id: str) -> tuple[Any, Any]:
        """A new scene: its frames in the menu, its first frame in the editor."""
        if not recon_id:
            return gr.skip(), gr.skip()
        recon = self.store.load(recon_id).reconstruction
        labels = frame_labels(recon)
        return gr.Dropdown(choices=labels, value=labels[0]), self.frame(recon_id, labels[0])

    # ---- layout and wiring

    def build_and_wire(self, recon_id_box: gr.Textbox, view_controls: ViewControls,
                       scene_outputs: Sequence[gr.components.Component]) -> None:
        errors = self.user_errors
        with gr.Accordion("Masks: leave things out", open=False, elem_id="masks-panel"):
            gr.Markdown(HOW_TO)
            mask_files = gr.File(label="Mask images (named like their photos)", file_count="multiple",
                                 file_types=["image"], elem_id="mask-files")
            apply_files = gr.Button("Apply uploaded masks", elem_id="masks-apply-files")
            # Any label is accepted here and checked by the handler (API clients name frames directly).
            frame = gr.Dropdown([], label="Paint on frame", allow_custom_value=True, elem_id="mask-frame")
            editor = gr.ImageEditor(label="Paint over what to leave out", type="numpy", image_mode="RGBA",
                                    format="png", sources=(), transforms=(), layers=False, height=360,
                                    brush=gr.Brush(colors=[BRUSH_COLOR], color_mode="fixed", default_size=12),
                                    elem_id="mask-editor")
            apply_painted = gr.Button("Apply painted mask", elem_id="masks-apply-painted")

        recon_id_box.change(errors(self.reset), [recon_id_box], [frame, editor], api_visibility="private",
                            show_progress="hidden")
        frame.input(errors(self.frame), [recon_id_box, frame], [editor], api_visibility="private",
                    show_progress="hidden")
        apply_files.click(errors(self.apply_files), [recon_id_box, mask_files], list(scene_outputs),
                          inputs_kwargs=view_controls.inputs, api_name="apply_masks", concurrency_limit=2,
                          show_progress_on=[scene_outputs[0]])
        apply_painted.click(errors(self.apply_painted), [recon_id_box, frame, editor], list(scene_outputs),
                            inputs_kwargs=view_controls.inputs, api_name="apply_painted_mask", concurrency_limit=2,
                            show_progress_on=[scene_outputs[0]])


def _unused(notes: Sequence[str]) -> int:
    """How many mask files the notes name as not used (no matching photo, a second mask)."""
    return sum("not used" in note for note in notes)


__all__ = ["BRUSH_COLOR", "HOW_TO", "MasksPanel", "frame_with_mask", "painted_pixels"]
