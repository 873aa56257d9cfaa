"""The page's display controls and the :class:`ViewSettings` they stand for, both ways.

:class:`ViewControls` owns the eight components. Handlers receive their values by name (Gradio's
``inputs_kwargs``: ``def handler(recon_id, request=None, **view)``), turn them into settings with
:meth:`ViewControls.settings`, and set them with :meth:`ViewControls.updates`: no handler spells
out the controls or indexes into them. The names are also the API parameters of every endpoint
that takes the view (``/update_view``, ``/export``, ``/reconstruct`` …), in :data:`VIEW_CONTROL_NAMES`
order after the endpoint's own parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr

from vggt_core import InputError
from vggt_core.filtering import ViewSettings
from vggt_core.frame_names import frame_label, parse_frame_label
from vggt_core.reconstruction import Reconstruction

from .share_links import DEFAULT_MAX_POINTS, DEFAULT_VIEW_SETTINGS, MAX_POINTS_LIMIT

ALL_FRAMES_CHOICE = "All"
BRANCH_CHOICES = [("Depth maps + cameras (more accurate)", "depth"), ("Point map head", "point")]
HIDE_SKY_LABEL = "Hide sky"

# The controls' names: the keyword arguments handlers receive, and the API's parameter order.
VIEW_CONTROL_NAMES = ("confidence", "branch", "frame", "show_cameras", "filter_black", "filter_white", "max_points",
                      "hide_sky")


def frame_labels(recon: Reconstruction) -> list[str]:
    return [frame_label(index, name) for index, name in enumerate(recon.frame_names)]


def frame_choices(recon: Reconstruction) -> list[str]:
    return [ALL_FRAMES_CHOICE] + frame_labels(recon)


def parse_frame_choice(choice: str | None, num_frames: int) -> int | None:
    """``"All"`` → None; ``"3: name"`` → 3. Anything else is a user-visible InputError."""
    if choice in (None, "", ALL_FRAMES_CHOICE):
        return None
    return parse_frame_label(choice, num_frames)


def view_settings_from_values(values: Mapping[str, Any], *, num_frames: int) -> ViewSettings:
    """The controls' values by name (see :data:`VIEW_CONTROL_NAMES`; missing ones take the page's
    defaults) as checked :class:`ViewSettings`."""
    defaults = DEFAULT_VIEW_SETTINGS
    branch = values.get("branch", defaults.branch)
    max_points = values.get("max_points", defaults.max_points)
    confidence = values.get("confidence", defaults.confidence_threshold)
    if branch not in ("depth", "point"):
        raise InputError(f"Unknown prediction branch {branch!r}; choose 'depth' or 'point'.")
    if max_points is None or not 1 <= float(max_points) <= MAX_POINTS_LIMIT:
        raise InputError(f"The maximum number of points must lie between 1 and {MAX_POINTS_LIMIT:,}.")
    if confidence is None or not 0 <= float(confidence) <= 100:
        raise InputError("The confidence threshold is a percentile between 0 and 100.")
    return ViewSettings(confidence_threshold=float(confidence), threshold_is_percentile=True, branch=branch,
                        frame_index=parse_frame_choice(values.get("frame"), num_frames),
                        show_cameras=bool(values.get("show_cameras", defaults.show_cameras)),
                        filter_black_background=bool(values.get("filter_black", defaults.filter_black_background)),
                        filter_white_background=bool(values.get("filter_white", defaults.filter_white_background)),
                        max_points=int(max_points), hide_sky=bool(values.get("hide_sky", defaults.hide_sky)))


def view_values(settings: ViewSettings, frame_names: list[str] | None = None) -> dict[str, Any]:
    """The controls' values (by name) that show ``settings``; the frame as its menu label."""
    if settings.frame_index is None or frame_names is None:
        frame = ALL_FRAMES_CHOICE
    else:
        frame = frame_label(settings.frame_index, frame_names[settings.frame_index])
    return {"confidence": settings.confidence_threshold, "branch": settings.branch, "frame": frame,
            "show_cameras": settings.show_cameras, "filter_black": settings.filter_black_background,
            "filter_white": settings.filter_white_background, "max_points": settings.max_points,
            "hide_sky": settings.hide_sky}


class ViewControls:
    """The display controls of the page (build inside the layout, once)."""

    def __init__(self, sky_info: str | None = None, defaults: ViewSettings = DEFAULT_VIEW_SETTINGS):
        with gr.Group():
            with gr.Row():
                confidence = gr.Slider(0, 100, value=defaults.confidence_threshold, step=1,
                                       label="Confidence threshold (percentile)",
                                       info="Hide the least confident points: 50 hides half of them.",
                                       elem_id="confidence-slider")
                max_points = gr.Slider(10_000, MAX_POINTS_LIMIT, value=DEFAULT_MAX_POINTS, step=10_000,
                                       label="Maximum points shown", elem_id="max-points-slider")
            with gr.Row():
                branch = gr.Radio(BRANCH_CHOICES, value=defaults.branch, label="Points from", elem_id="branch-radio")
                frame = gr.Dropdown([ALL_FRAMES_CHOICE], value=ALL_FRAMES_CHOICE, label="Show points of frame",
                                    elem_id="frame-dropdown")
            with gr.Row():
                show_cameras = gr.Checkbox(value=defaults.show_cameras, label="Show cameras")
                filter_black = gr.Checkbox(value=False, label="Hide black background")
                filter_white = gr.Checkbox(value=False, label="Hide white background")
                hide_sky = gr.Checkbox(value=False, label=HIDE_SKY_LABEL, info=sky_info, elem_id="hide-sky-checkbox")
        self.by_name: dict[str, gr.components.Component] = {
            "confidence": confidence, "branch": branch, "frame": frame, "show_cameras": show_cameras,
            "filter_black": filter_black, "filter_white": filter_white, "max_points": max_points,
            "hide_sky": hide_sky}
        assert tuple(self.by_name) == VIEW_CONTROL_NAMES

    def __getattr__(self, name: str) -> gr.components.Component:
        by_name = self.__dict__.get("by_name", {})
        if name in by_name:
            return by_name[name]
        raise AttributeError(name)

    @property
    def inputs(self) -> dict[str, gr.components.Component]:
        """For an event's ``inputs_kwargs``: the handler gets each control's value by name."""
        return dict(self.by_name)

    @property
    def components(self) -> list[gr.components.Component]:
        return list(self.by_name.values())

    @staticmethod
    def settings(values: Mapping[str, Any], num_frames: int, *, all_frames: bool = False) -> ViewSettings:
        """The settings the values stand for; ``all_frames`` ignores the frame menu (a new scene,
        whose frames the menu does not list yet)."""
        if all_frames:
            values = {**values, "frame": ALL_FRAMES_CHOICE}
        return view_settings_from_values(values, num_frames=num_frames)

    def updates(self, settings: ViewSettings, frame_menu: list[str] | None = None) -> dict[gr.components.Component, Any]:
        """Output values that make the controls show ``settings``; with ``frame_menu`` (the
        scene's frame choices, "All" first) the frame menu is refilled."""
        names = [label.split(": ", 1)[1] for label in frame_menu[1:]] if frame_menu else None
        values = view_values(settings, names)
        updates: dict[gr.components.Component, Any] = {self.by_name[name]: value for name, value in values.items()}
        if frame_menu is not None:
            updates[self.frame] = gr.Dropdown(choices=frame_menu, value=values["frame"])
        return updates


__all__ = ["ALL_FRAMES_CHOICE", "BRANCH_CHOICES", "HIDE_SKY_LABEL", "VIEW_CONTROL_NAMES", "ViewControls", "frame_choices",
           "frame_label", "frame_labels", "parse_frame_choice", "view_settings_from_values",
           "view_values"]
