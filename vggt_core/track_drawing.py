"""Point tracks drawn on the frames they were tracked in: one picture per frame, one colour per track.

Used by the app's Tracks view; a notebook user can call :func:`draw_tracks` on any
:class:`~vggt_core.reconstruction.Reconstruction` that holds tracks (from
``vggt_core.tracks.track_reconstruction``). Only PIL is needed.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .errors import InputError
from .reconstruction import Reconstruction

__all__ = ["draw_tracks", "track_colors", "marker_radius"]

# Consecutive hues a golden-ratio turn apart stay distinct for any number of tracks.
_GOLDEN_RATIO_TURN = 0.618033988749895


def track_colors(num_tracks: int) -> np.ndarray:
    """``[N, 3]`` uint8 RGB, one bright, saturated colour per track; track ``i`` always gets the
    same colour whatever ``N`` is (so a point marked before tracking keeps its colour)."""
    colors = []
    for index in range(num_tracks):
        hue = (index * _GOLDEN_RATIO_TURN) % 1.0
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
        colors.append((round(red * 255), round(green * 255), round(blue * 255)))
    return np.array(colors, dtype=np.uint8).reshape(num_tracks, 3)


def marker_radius(height: int, width: int) -> int:
    """Radius in pixels of a track's marker on an ``height × width`` frame."""
    return max(3, round(min(height, width) / 80))


def draw_tracks(recon: Reconstruction, *, track_indices: Sequence[int] | np.ndarray | None = None,
                min_visibility: float = 0.5, trail: int | None = None) -> list[np.ndarray]:
    """One picture per frame with every (chosen) track drawn on it.

    On frame ``s`` each track is a marker at its position ``tracks[s, i]``: a filled disc when
    ``track_visibility[s, i] ≥ min_visibility``, a hollow circle when it is not (the tracker
    thinks the point is hidden or outside the frame there). Its path is a line through its
    visible positions in the frames before (the last ``trail`` of them, or all with None), and
    in its query frame the marker gets a white ring: that is where the point was picked.

    Args:
        recon: a reconstruction with ``tracks [S, N, 2]`` (model-input pixels, x then y);
            ``track_visibility [S, N]`` (all visible when absent) and ``track_query_frames [N]``
            are used when present.
        track_indices: which of the ``N`` tracks to draw (default all); track ``i`` keeps the
            colour ``track_colors(N)[i]``.
        min_visibility: visibility at or above which a point counts as visible.
        trail: how many earlier frames the path reaches back; None for all, 0 for none.

    Returns:
        ``S`` RGB pictures, each ``[H, W, 3]`` uint8 (the model-input frames with the tracks).

    Raises:
        InputError: the reconstruction has no tracks, or a track index does not exist.
    """
    if recon.tracks is None:
        raise InputError("This reconstruction has no point tracks to draw.")
    tracks = np.asarray(recon.tracks, dtype=np.float64)
    num_frames, num_tracks = tracks.shape[:2]
    if recon.track_visibility is not None:
        visible = np.asarray(recon.track_visibility) >= min_visibility
    else:
        visible = np.ones((num_frames, num_tracks), dtype=bool)
    visible &= np.isfinite(tracks).all(axis=-1)
    indices = np.arange(num_tracks) if track_indices is None else np.asarray(track_indices, dtype=np.int64).ravel()
    if indices.size and (indices.min() < 0 or indices.max() >= num_tracks):
        raise InputError(f"Track indices must lie in [0, {num_tracks}).")
    if trail is not None and trail < 0:
        raise InputError(f"trail must be ≥ 0 or None, got {trail}")
    query_frames = recon.track_query_frames
    colors = [tuple(int(c) for c in color) for color in track_colors(num_tracks)]
    height, width = recon.image_size_hw
    radius = marker_radius(height, width)

    pictures = []
    for frame in range(num_frames):
        image = Image.fromarray(recon.images[frame]).convert("RGB")
        draw = ImageDraw.Draw(image)
        first = 0 if trail is None else max(0, frame - trail)
        for track in indices:
            color = colors[track]
            path = [tuple(tracks[s, track]) for s in range(first, frame + 1) if visible[s, track]]
            if len(path) >= 2:
                draw.line(path, fill=color, width=max(1, radius // 3))
        # Markers after every path, so that no line covers a point.
        for track in indices:
            if not np.isfinite(tracks[frame, track]).all():
                continue
            x, y = tracks[frame, track]
            box = [x - radius, y - radius, x + radius, y + radius]
            color = colors[track]
            if visible[frame, track]:
                draw.ellipse(box, fill=color, outline=(0, 0, 0), width=1)
            else:
                draw.ellipse(box, outline=color, width=max(2, radius // 2))
            if query_frames is not None and int(query_frames[track]) == frame:
                ring = radius + max(2, radius // 2)
                draw.ellipse([x - ring, y - ring, x + ring, y + ring], outline=(255, 255, 255), width=2)
        pictures.append(np.asarray(image, dtype=np.uint8))
    return pictures
