"""The "Tracks" view, and the summary lines of the "Refine cameras with bundle adjustment" option.

Tracks view: the person clicks points on any frames (or asks for N automatic points on one), the
model's track head follows them across every frame, and each track is drawn on every frame in its
own colour (:func:`vggt_core.track_drawing.draw_tracks`). The tracking re-runs the model on the
stored frames, through the app's model provider and GPU slot (``run_tracking``, given by app.py).

The tracks are stored with the scene as a **new entry** (like a rescaled scene, see
:mod:`vggt_app.panels.derived`): stored entries never change, so a share link shows what its sender
saw, and one visitor of a shared link cannot change what other visitors of it see. The new
entry's link opens with the tracks drawn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from vggt_core import InputError
from vggt_core.frame_names import parse_frame_label as frame_index
from vggt_core.reconstruction import Reconstruction
from vggt_core.track_drawing import draw_tracks, marker_radius, track_colors

from ..store.entries import ReconstructionStore
from ..view_controls import ViewControls, frame_labels
from .derived import save_derived
from .viewer import ShowScene

REFINE_LABEL = "Refine cameras with bundle adjustment"
REFINE_INFO = ("Tracks points across the frames, then refines cameras and focal lengths with pycolmap's "
               "bundle adjustment (the paper's most accurate cameras). Takes longer.")

# Clicked or automatic points per tracking run: enough to see the tracker's behaviour, few
# enough that every track stays distinguishable in the pictures.
MAX_TRACK_POINTS = 64
DEFAULT_AUTOMATIC_POINTS = 16
# A scene holding more tracks (bundle adjustment tracks thousands) shows this many, evenly chosen.
MAX_DRAWN_TRACKS = 64

# (reconstruction, vggt_core.tracks.TrackQueries, gr.Progress) -> tracked copy; reports up to 0.9.
RunTracking = Callable[[Reconstruction, Any, Callable[[float, str], None]], Reconstruction]

LEGEND = "Filled disc: visible · hollow circle: not visible · white ring: where the point was picked."


# ---- points and pictures


def parse_track_points(text: str | None) -> list[list[float]]:
    """The picked points, ``[[frame, x, y], ...]`` in model-input pixels; [] for anything else."""
    try:
        points = json.loads(text) if text else []
        assert isinstance(points, list) and all(isinstance(p, list) and len(p) == 3 for p in points)
        return [[int(frame), float(x), float(y)] for frame, x, y in points]
    except (ValueError, TypeError, AssertionError):
        return []


def marked_track_frame(recon: Reconstruction, index: int, points: Sequence[Sequence[float]]) -> Image.Image:
    """Frame ``index`` with the points picked on it, each in the colour its track will get."""
    image = Image.fromarray(recon.images[index]).convert("RGB")
    draw = ImageDraw.Draw(image)
    radius = marker_radius(*recon.image_size_hw)
    colors = track_colors(len(points))
    for (frame, x, y), color in zip(points, colors):
        if int(frame) == index:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=tuple(int(c) for c in color),
                         outline=(255, 255, 255), width=2)
    return image


def drawn_track_indices(num_tracks: int) -> np.ndarray:
    """All tracks, or :data:`MAX_DRAWN_TRACKS` of them evenly spread over the list."""
    if num_tracks <= MAX_DRAWN_TRACKS:
        return np.arange(num_tracks)
    return np.unique(np.linspace(0, num_tracks - 1, MAX_DRAWN_TRACKS).round().astype(np.int64))


def tracks_gallery(recon: Reconstruction) -> list[tuple[np.ndarray, str]]:
    """One (picture, caption) per frame with the scene's tracks drawn; [] without tracks."""
    if recon.tracks is None or recon.tracks.shape[1] == 0:
        return []
    indices = drawn_track_indices(recon.tracks.shape[1])
    pictures = draw_tracks(recon, track_indices=indices)
    visibility = (recon.track_visibility[:, indices] >= 0.5 if recon.track_visibility is not None
                  else np.ones((recon.num_frames, len(indices)), dtype=bool))
    return [(picture, f"{index}: {name} · {int(visibility[index].sum())}/{len(indices)} visible")
            for index, (picture, name) in enumerate(zip(pictures, recon.frame_names))]


def tracks_note(recon: Reconstruction) -> str:
    if recon.tracks is None or recon.tracks.shape[1] == 0:
        return "Click points on a frame, or ask for automatic points, then press **Track**."
    num_tracks = recon.tracks.shape[1]
    shown = len(drawn_track_indices(num_tracks))
    what = f"{num_tracks:,} tracks" + (f", {shown} of them drawn" if shown < num_tracks else "")
    return f"This scene holds {what} across {recon.num_frames} frames. {LEGEND}"


class TracksPanel:
    def __init__(self, store: ReconstructionStore, show: ShowScene, user_errors: Callable[[Callable], Callable],
                 run_tracking: RunTracking):
        self.store = store
        self.show = show
        self.user_errors = user_errors
        self.run_tracking = run_tracking

    def _load(self, recon_id: str) -> Reconstruction:
        if not recon_id:
            raise InputError("Reconstruct something first; then track points on its frames.")
        return self.store.load(recon_id).reconstruction

    # ---- handlers (also API endpoints)

    def reset(self, recon_id: str, choice: Any, drawn_for: str) -> tuple:
        """A new scene on the page: its first frame, no picked points, and its stored tracks
        drawn (skipped when the tracking handler has just drawn them)."""
        if not recon_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        recon = self._load(recon_id)
        labels = frame_labels(recon)
        value = labels[frame_index(choice, recon.num_frames)] if recon_id == drawn_for and choice else labels[0]
        frame = gr.Dropdown(choices=labels, value=value)
        image = marked_track_frame(recon, frame_index(value, recon.num_frames), [])
        if recon_id == drawn_for:
            return frame, image, "[]", gr.skip(), gr.skip()
        return frame, image, "[]", tracks_note(recon), tracks_gallery(recon)

    def frame(self, recon_id: str, choice: Any, points_text: str) -> Image.Image | None:
        if not recon_id:
            return None
        recon = self._load(recon_id)
        return marked_track_frame(recon, frame_index(choice, recon.num_frames), parse_track_points(points_text))

    def point(self, recon_id: str, choice: Any, x: float, y: float, points_text: str) -> tuple:
        """A click at ``(x, y)`` pixels of the shown frame (the model-input frame, shown at its
        own size, so these are model-input pixels): one more point to track."""
        recon = self._load(recon_id)
        index = frame_index(choice, recon.num_frames)
        height, width = recon.image_size_hw
        if x is None or y is None or not (0 <= float(x) < width and 0 <= float(y) < height):
            raise InputError(f"The point ({x}, {y}) lies outside the {width}×{height} frame.")
        points = parse_track_points(points_text)
        if len(points) >= MAX_TRACK_POINTS:
            raise InputError(f"At most {MAX_TRACK_POINTS} points can be tracked at once; press "
                             "**Clear points** or track these first.")
        # Integer pixel coordinates are pixel centres for the track head.
        points.append([index, float(int(x)), float(int(y))])
        message = (f"{len(points)} point{'s' if len(points) != 1 else ''} picked (the last on frame {index} at "
                   f"({int(x)}, {int(y)}) px); press **Track clicked points**.")
        return marked_track_frame(recon, index, points), json.dumps(points), message

    def select(self, recon_id: str, choice: Any, points_text: str, event: gr.SelectData) -> tuple:
        x, y = event.index[:2]
        return self.point(recon_id, choice, x, y, points_text)

    def clear(self, recon_id: str, choice: Any) -> tuple:
        recon = self._load(recon_id)
        return (marked_track_frame(recon, frame_index(choice, recon.num_frames), []), "[]",
                "No points picked: click on the frame.")

    def track(self, recon_id: str, queries_of: Callable[[Reconstruction], Any], view: Mapping[str, Any],
              request: Any, progress: Callable[..., Any]) -> dict:
        """Track the queries ``queries_of(recon)`` gives, store the result as a new entry, show it."""
        stored = self.store.load(recon_id)
        recon = stored.reconstruction
        queries = queries_of(recon)
        started = time.perf_counter()
        tracked = self.run_tracking(recon, queries, progress)
        seconds = time.perf_counter() - started
        num_points = int(tracked.tracks.shape[1])
        frames = sorted({int(frame) for frame in np.asarray(queries.frames)})
        progress(0.92, desc="Saving the tracks")
        new_id = save_derived(self.store, stored, tracked,
                              f"tracked {num_points} points from frame{'s' if len(frames) > 1 else ''} "
                              f"{', '.join(map(str, frames))}", request)
        gallery = tracks_gallery(tracked)
        note = (f"**Tracked {num_points} point{'s' if num_points != 1 else ''}** from frame"
                f"{'s' if len(frames) > 1 else ''} {', '.join(map(str, frames))} across {tracked.num_frames} "
                f"frames in {seconds:.1f} s; saved with the scene (new share link). {LEGEND}")
        return {**self.show(new_id, view, request), self.gallery: gallery, self.note: note, self.points: "[]",
                self.drawn_for: new_id}

    def clicked_queries(self, points_text: str) -> Callable[[Reconstruction], Any]:
        from vggt_core.tracks import TrackQueries

        points = parse_track_points(points_text)
        if not points:
            raise InputError("Click points on a frame first, or ask for automatic points.")
        if len(points) > MAX_TRACK_POINTS:
            raise InputError(f"At most {MAX_TRACK_POINTS} points can be tracked at once.")

        def queries_of(recon: Reconstruction):
            if any(not 0 <= frame < recon.num_frames for frame, _, _ in points):
                raise InputError("A picked point lies on a frame this scene does not have; clear the points.")
            return TrackQueries(frames=np.array([p[0] for p in points], dtype=np.int64),
                                points=np.array([p[1:] for p in points], dtype=np.float32))

        return queries_of

    @staticmethod
    def automatic_queries(choice: Any, count: Any) -> Callable[[Reconstruction], Any]:
        from vggt_core.tracks import choose_query_points

        try:
            number = float(count)
        except (TypeError, ValueError):
            number = 0.0
        if not (number.is_integer() and 1 <= number <= MAX_TRACK_POINTS):
            raise InputError(f"Choose between 1 and {MAX_TRACK_POINTS} automatic points (got {count}).")

        def queries_of(recon: Reconstruction):
            frame = frame_index(choice, recon.num_frames)
            return choose_query_points(recon, num_query_frames=1, max_points=int(number), query_frames=[frame])

        return queries_of

    # ---- layout and wiring

    def build_and_wire(self, recon_id_box: gr.Textbox, view_controls: ViewControls,
                       scene_outputs: Sequence[gr.components.Component]) -> None:
        """Place the panel (call where it should appear) and connect its events."""
        with gr.Accordion("Tracks: follow points across the frames", open=False, elem_id="tracks-panel"):
            gr.Markdown("Click points on a frame (switch frames to pick on others too), or ask for automatic "
                        "points; the model's track head follows each one through every frame. The tracks are "
                        f"saved with the scene under a new share link. At most {MAX_TRACK_POINTS} points.")
            frame = gr.Dropdown([], label="Frame", elem_id="tracks-frame", interactive=True, allow_custom_value=True)
            image = gr.Image(label="Click to pick points", interactive=False, type="pil", height=300,
                             elem_id="tracks-image", buttons=[])
            points = gr.Textbox(value="[]", visible=False, elem_id="tracks-points")
            drawn_for = gr.Textbox(visible=False, elem_id="tracks-drawn-for")
            with gr.Row():
                track_clicked = gr.Button("Track clicked points", variant="primary", elem_id="tracks-run")
                clear = gr.Button("Clear points", elem_id="tracks-clear")
            with gr.Row():
                # No minimum/maximum here: automatic_queries says what is allowed, in the panel's words.
                count = gr.Number(value=DEFAULT_AUTOMATIC_POINTS, elem_id="tracks-count",
                                  label=f"Automatic points on this frame (1–{MAX_TRACK_POINTS})")
                track_automatic = gr.Button("Track automatic points", elem_id="tracks-auto")
            note = gr.Markdown(elem_id="tracks-note")
            gallery = gr.Gallery(label="Tracks on every frame (one colour per track)", columns=4, height="auto",
                                 object_fit="contain", format="jpeg", elem_id="tracks-gallery")
        errors = self.user_errors
        recon_id_box.change(errors(self.reset), [recon_id_box, frame, drawn_for], [frame, image, points, note, gallery],
                            api_name="tracks_view")
        frame.input(errors(self.frame), [recon_id_box, frame, points], [image], api_visibility="private")
        image.select(errors(self.select), [recon_id_box, frame, points], [image, points, note],
                     api_visibility="private")
        clear.click(errors(self.clear), [recon_id_box, frame], [image, points, note], api_visibility="private")
        # What a click does, for API clients (x, y in pixels of the shown, model-input frame).
        x_box, y_box, hidden_button = gr.Number(visible=False), gr.Number(visible=False), gr.Button(visible=False)
        hidden_button.click(errors(self.point), [recon_id_box, frame, x_box, y_box, points], [image, points, note],
                            api_name="tracks_point")
        self.gallery, self.note, self.points, self.drawn_for = gallery, note, points, drawn_for
        outputs = [*scene_outputs, gallery, note, points, drawn_for]

        def track_points(recon_id, points_text, request: gr.Request = None, progress=gr.Progress(), **view):
            self._load(recon_id)  # "no scene yet" comes before any other complaint
            return self.track(recon_id, self.clicked_queries(points_text), view, request, progress)

        def track_automatic_points(recon_id, frame_choice, number, request: gr.Request = None,
                                   progress=gr.Progress(), **view):
            self._load(recon_id)
            return self.track(recon_id, self.automatic_queries(frame_choice, number), view, request, progress)

        # In the reconstruction's concurrency group: tracking runs the model too.
        track_clicked.click(errors(track_points), [recon_id_box, points], outputs, inputs_kwargs=view_controls.inputs,
                            api_name="track_points", concurrency_limit=2, concurrency_id="reconstruct",
                            show_progress_on=[scene_outputs[0]])
        track_automatic.click(errors(track_automatic_points), [recon_id_box, frame, count], outputs,
                              inputs_kwargs=view_controls.inputs, api_name="track_automatic", concurrency_limit=2,
                              concurrency_id="reconstruct", show_progress_on=[scene_outputs[0]])


__all__ = ["REFINE_INFO", "REFINE_LABEL", "TracksPanel", "tracks_gallery"]
