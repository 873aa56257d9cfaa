"""The "Measure" panel: click two points on the input frames, see their distance, type the true
length and the whole scene (viewer, summary, downloads, share link) is rescaled to real units.

The measuring itself is :mod:`vggt_core.scale`; this module only turns clicks into photo pixels
and stores the rescaled reconstruction as a new entry (see :mod:`vggt_app.panels.derived`).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw, ImageFont

from vggt_core import InputError
from vggt_core.frame_names import parse_frame_label as frame_index
from vggt_core.reconstruction import Reconstruction
from vggt_core.scale import LENGTH_UNITS, distance_between_photo_pixels, scale_from_known_distance

from ..store.entries import ReconstructionStore
from ..view_controls import ViewControls, frame_labels
from .derived import save_derived
from .viewer import ShowScene

MARKER_COLORS = {"A": (255, 40, 40), "B": (30, 110, 255)}
DEFAULT_UNIT = "m"


def parse_points(text: str | None) -> list[list[float]]:
    try:
        points = json.loads(text) if text else []
        assert isinstance(points, list) and all(isinstance(p, list) and len(p) == 3 for p in points)
    except (ValueError, AssertionError):
        return []
    return points[-2:]


def draw_labelled_marker(draw: ImageDraw.ImageDraw, x: float, y: float, label: str, color: tuple[int, int, int],
                         radius: int) -> None:
    """A disc in ``color`` ringed white then black, and its label on a dark box beside it: visible
    on any texture, bright or dark."""
    outer = radius + 2
    draw.ellipse([x - outer, y - outer, x + outer, y + outer], fill=(0, 0, 0))
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 255, 255))
    inner = max(2, radius - 2)
    draw.ellipse([x - inner, y - inner, x + inner, y + inner], fill=color)
    font = ImageFont.load_default(size=max(10, 2 * radius))
    left, top = x + outer + 2, y - outer - 2 * radius
    box = draw.textbbox((left, top), label, font=font)
    draw.rectangle([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill=(0, 0, 0), outline=(255, 255, 255))
    draw.text((left, top), label, fill=color if sum(color) > 300 else (255, 255, 255), font=font)


def marked_frame(recon: Reconstruction, index: int, points: list[list[float]]) -> Image.Image:
    """The model-input frame ``index`` with the measured points of that frame drawn on it."""
    image = Image.fromarray(recon.images[index]).convert("RGB")
    draw = ImageDraw.Draw(image)
    radius = max(4, round(min(image.size) / 50))
    transform = recon.frame_transform(index)
    for label, (frame, x, y) in zip("AB", points):
        if int(frame) != index:
            continue
        cx, cy = transform.original_to_processed([x, y])
        draw_labelled_marker(draw, cx, cy, label, MARKER_COLORS[label], radius)
    return image


def describe(recon: Reconstruction, points: list[list[float]], branch: str) -> str:
    if not points:
        return "Click a first point (A) on the frame above."
    parts = [f"{label}: frame {int(f)} at ({x:.0f}, {y:.0f}) px" for label, (f, x, y) in zip("AB", points)]
    if len(points) < 2:
        return " · ".join(parts) + " — now click a second point (B), on this or another frame."
    distance = distance_between_photo_pixels(recon, points[0], points[1], branch=branch)
    unit = recon.units or "scene units"
    return " · ".join(parts) + f" — **distance {distance:.4g} {unit}**"


class MeasurePanel:
    # Sessions whose latest rescale is remembered (one id each): bounded, for a server that runs for weeks.
    MAX_SESSIONS_REMEMBERED = 1024

    def __init__(self, store: ReconstructionStore, show: ShowScene, user_errors: Callable[[Callable], Callable]):
        self.store = store
        self.show = show
        self.user_errors = user_errors
        # Per browser session, the scene its last Rescale made. Kept on the server because the
        # page's scene-id change and a hidden box's update arrive in no fixed order.
        self._rescaled_by_session: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def _remember_rescale(self, request: gr.Request | None, new_id: str) -> None:
        session = getattr(request, "session_hash", None)
        if not session:
            return
        with self._lock:
            self._rescaled_by_session[session] = new_id
            self._rescaled_by_session.move_to_end(session)
            while len(self._rescaled_by_session) > self.MAX_SESSIONS_REMEMBERED:
                self._rescaled_by_session.popitem(last=False)

    def _just_rescaled(self, request: gr.Request | None, recon_id: str) -> bool:
        session = getattr(request, "session_hash", None)
        with self._lock:
            return bool(session) and self._rescaled_by_session.pop(session, None) == recon_id

    # ---- handlers (also API endpoints)

    def frame(self, recon_id: str, choice: Any, points_text: str) -> Image.Image | None:
        if not recon_id:
            return None
        recon = self.store.load(recon_id).reconstruction
        return marked_frame(recon, frame_index(choice, recon.num_frames), parse_points(points_text))

    def reset(self, recon_id: str, request: gr.Request = None) -> tuple:
        """A new scene on the page: its first frame and no points; except the scene this panel has
        just made by a rescale, which keeps its points and the distance in the new unit (set by
        :meth:`apply`)."""
        if not recon_id or self._just_rescaled(request, recon_id):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        recon = self.store.load(recon_id).reconstruction
        choices = frame_labels(recon)
        return (gr.Dropdown(choices=choices, value=choices[0]), marked_frame(recon, 0, []), "[]",
                describe(recon, [], "depth"))

    def point(self, recon_id: str, choice: Any, x: float, y: float, points_text: str, branch: str) -> tuple:
        """A click at ``(x, y)`` pixels of the shown (model-input) frame: the next point A or B."""
        if not recon_id:
            raise InputError("Reconstruct something first; then measure on its frames.")
        recon = self.store.load(recon_id).reconstruction
        index = frame_index(choice, recon.num_frames)
        height, width = recon.image_size_hw
        if not (0 <= float(x) < width and 0 <= float(y) < height):
            raise InputError(f"The point ({x}, {y}) lies outside the {width}×{height} frame.")
        # The pixel's centre, in the photo's pixels (the unit of scale_from_known_distance).
        photo_x, photo_y = recon.frame_transform(index).processed_to_original([int(x) + 0.5, int(y) + 0.5])
        points = parse_points(points_text)
        points = [] if len(points) >= 2 else points
        points.append([index, round(float(photo_x), 3), round(float(photo_y), 3)])
        try:
            text = describe(recon, points, branch)
        except InputError as error:
            points.pop()
            text = f"⚠️ {error}"
        return marked_frame(recon, index, points), json.dumps(points), text

    def select(self, recon_id: str, choice: Any, points_text: str, branch: str, event: gr.SelectData) -> tuple:
        x, y = event.index[:2]
        return self.point(recon_id, choice, x, y, points_text, branch)

    def apply(self, recon_id: str, points_text: str, length: float, unit: str, request: gr.Request = None,
              **view: Any) -> dict:
        if not recon_id:
            raise InputError("Reconstruct something first.")
        points = parse_points(points_text)
        if len(points) != 2:
            raise InputError("Click two points on the frames first (A and B).")
        if unit not in LENGTH_UNITS:
            raise InputError(f"Unknown unit {unit!r}; choose one of {', '.join(LENGTH_UNITS)}.")
        stored = self.store.load(recon_id)
        branch = str(view.get("branch", "depth"))
        factor = scale_from_known_distance(stored.reconstruction, points[0], points[1], length, branch=branch)
        scaled = stored.reconstruction.scaled(factor, units=unit)
        new_id = save_derived(self.store, stored, scaled, f"scaled ×{factor:.6g} to {unit}", request)
        self._remember_rescale(request, new_id)
        gr.Info(f"Scene rescaled: {float(length):g} {unit} between A and B (×{factor:.4g}).")
        # The panel keeps A and B and now measures in the new unit.
        return {**self.show(new_id, view, request), self.result: describe(scaled, points, branch),
                self.rescaled: new_id}

    # ---- layout and wiring

    def build_and_wire(self, recon_id_box: gr.Textbox, view_controls: ViewControls,
                       scene_outputs: Sequence[gr.components.Component]) -> None:
        """Place the panel (call where it should appear) and connect its events."""
        with gr.Accordion("Measure: set a real-world scale", open=False, elem_id="measure-panel"):
            gr.Markdown("Click two points on the frames (they may lie in different frames); their distance "
                        "is shown in scene units. Type their true length to rescale the scene, its downloads "
                        "and its share link.")
            frame = gr.Dropdown([], label="Frame", elem_id="measure-frame", interactive=True,
                                allow_custom_value=True)
            image = gr.Image(label="Click to place A, then B", interactive=False, type="pil", height=300,
                             elem_id="measure-image", buttons=[])
            result = gr.Markdown(elem_id="measure-result")
            points = gr.Textbox(value="[]", visible=False, elem_id="measure-points")
            with gr.Row():
                length = gr.Number(label="True length of A–B", minimum=0, elem_id="measure-length")
                unit = gr.Dropdown(list(LENGTH_UNITS), value=DEFAULT_UNIT, label="Unit", elem_id="measure-unit")
            apply = gr.Button("Rescale the scene", elem_id="measure-apply")
            # The id a Rescale made, for API clients (apply_scale's last output).
            rescaled = gr.Textbox(visible=False, elem_id="measure-rescaled")
        self.result, self.rescaled = result, rescaled
        branch = view_controls.branch
        recon_id_box.change(self.user_errors(self.reset), [recon_id_box], [frame, image, points, result],
                            api_visibility="private")
        frame.input(self.user_errors(self.frame), [recon_id_box, frame, points], [image], api_name="measure_frame")
        image.select(self.user_errors(self.select), [recon_id_box, frame, points, branch], [image, points, result],
                     api_visibility="private")
        # What a click does, for API clients (x, y in pixels of the shown frame).
        x_box = gr.Number(visible=False)
        y_box = gr.Number(visible=False)
        hidden_button = gr.Button(visible=False)
        hidden_button.click(self.user_errors(self.point), [recon_id_box, frame, x_box, y_box, points, branch],
                            [image, points, result], api_name="measure_point")

        apply.click(self.user_errors(self.apply), [recon_id_box, points, length, unit],
                    [*scene_outputs, result, rescaled],
                    inputs_kwargs=view_controls.inputs, api_name="apply_scale", concurrency_limit=2)


__all__ = ["MeasurePanel", "marked_frame"]
