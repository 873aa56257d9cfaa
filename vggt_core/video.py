"""Sampling still frames from a video file with PyAV.

Frames are chosen by presentation time (one per ``1/fps`` seconds), then thinned evenly to
at most ``max_frames``. To keep memory bounded on long videos the file is read twice: a cheap
demux pass collects the frame timestamps (no decoding), then a decode pass converts only the
chosen frames to images and stops after the last one.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import av
import numpy as np
from PIL import Image

from .errors import InputError

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts"}
)

# Timestamps are rationals turned into floats; this absorbs the rounding so a frame stamped
# 0.9999999 s still counts as "at" the 1 s sampling instant.
_TIME_TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a video without decoding it all."""

    duration_s: float
    fps: float
    """Average frame rate (0.0 when the container does not say)."""
    frame_count: int
    """Number of video frames (from the header, or counted by demuxing when it is missing)."""
    width: int
    """Width of the upright frames that :func:`extract_frames` returns."""
    height: int
    """Height of the upright frames that :func:`extract_frames` returns."""
    rotation: int
    """Degrees counter-clockwise, in (-180, 180], the stored frames are turned to display upright."""


# ----------------------------------------------------------------------------------------------
# Frame selection (pure functions)
# ----------------------------------------------------------------------------------------------


def sample_at_rate(
    times_s: Sequence[float], fps: float, video_fps: float | None = None
) -> list[int]:
    """Indices of the frames at or just after t = k/fps, k = 0, 1, ...

    ``times_s``: presentation times in ascending order, relative to the first frame.
    When ``fps`` reaches the video's own rate every frame is kept.
    """
    if video_fps and fps >= video_fps:
        return list(range(len(times_s)))
    chosen = []
    next_instant = 0  # k of the next sampling instant k/fps
    for index, time_s in enumerate(times_s):
        if time_s + _TIME_TOLERANCE_S >= next_instant / fps:
            chosen.append(index)
            # A frame after a gap can cover several instants; it is used once and the
            # sampling resumes at the first instant after it.
            next_instant = math.floor((time_s + _TIME_TOLERANCE_S) * fps) + 1
    return chosen


def thin_evenly(count: int, max_frames: int | None) -> list[int]:
    """Positions round(linspace(0, count-1, max_frames)) of the items to keep out of ``count``."""
    if max_frames is None or count <= max_frames:
        return list(range(count))
    positions = np.round(np.linspace(0, count - 1, max_frames)).astype(int)
    return positions.tolist()


def choose_frame_indices(
    times_s: Sequence[float],
    fps: float,
    max_frames: int | None = None,
    video_fps: float | None = None,
) -> list[int]:
    """Sample at ``fps`` (:func:`sample_at_rate`), then thin to ``max_frames`` (:func:`thin_evenly`)."""
    sampled = sample_at_rate(times_s, fps, video_fps)
    return [sampled[position] for position in thin_evenly(len(sampled), max_frames)]


# ----------------------------------------------------------------------------------------------
# Rotation metadata
# ----------------------------------------------------------------------------------------------


def rotation_from_display_matrix(matrix: Sequence[int]) -> float:
    """Counter-clockwise display rotation in degrees from FFmpeg's 9-int32 display matrix.

    Same formula as FFmpeg's ``av_display_rotation_get`` (16.16 fixed point entries); used
    when PyAV is too old to expose ``VideoFrame.rotation``.
    """
    a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
    scale_x, scale_y = math.hypot(a, c), math.hypot(b, d)
    if scale_x == 0 or scale_y == 0:
        return 0.0
    return -math.degrees(math.atan2(b / scale_y, a / scale_x))


def _quarter_turns(rotation_ccw: float) -> int | None:
    """Counter-clockwise quarter turns (0..3) in ``rotation_ccw``; None unless a multiple of 90."""
    turns = rotation_ccw / 90
    if abs(turns - round(turns)) > 1e-5:
        return None
    return round(turns) % 4


_TRANSPOSE_FOR_QUARTER_TURNS = {
    1: Image.Transpose.ROTATE_90,
    2: Image.Transpose.ROTATE_180,
    3: Image.Transpose.ROTATE_270,
}


def rotate_upright(image: Image.Image, rotation_ccw: float) -> Image.Image:
    """Turn a decoded frame counter-clockwise by ``rotation_ccw`` degrees so it displays upright."""
    quarter_turns = _quarter_turns(rotation_ccw)
    if quarter_turns is None:
        return image.rotate(rotation_ccw, resample=Image.Resampling.BICUBIC, expand=True)
    if quarter_turns == 0:
        return image
    # Lossless pixel shuffles for the usual phone orientations.
    return image.transpose(_TRANSPOSE_FOR_QUARTER_TURNS[quarter_turns])


def upright_size(width: int, height: int, rotation_ccw: float) -> tuple[int, int]:
    """(width, height) of a ``width`` x ``height`` frame after :func:`rotate_upright`."""
    quarter_turns = _quarter_turns(rotation_ccw)
    if quarter_turns is None:
        # PIL's expand=True keeps the bounding box of the rotated frame.
        return Image.new("1", (width, height)).rotate(rotation_ccw, expand=True).size
    return (height, width) if quarter_turns % 2 else (width, height)


def _frame_rotation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> float:
    """Counter-clockwise display rotation of a decoded frame, from whichever metadata exists."""
    rotation = getattr(frame, "rotation", None)
    if rotation is None:
        rotation = _rotation_from_side_data(frame)
    if not rotation:
        # Old muxers wrote a "rotate" tag meaning degrees *clockwise*.
        tag = stream.metadata.get("rotate")
        try:
            rotation = -float(tag) if tag is not None else 0.0
        except ValueError:
            rotation = 0.0
    return float(rotation or 0.0)


def _rotation_from_side_data(frame: av.VideoFrame) -> float:
    try:
        for side_data in frame.side_data:
            if "DISPLAYMATRIX" in str(getattr(side_data, "type", "")).upper():
                return rotation_from_display_matrix(struct.unpack("<9i", bytes(side_data)[:36]))
    except (TypeError, struct.error, AttributeError):
        pass
    return 0.0


# ----------------------------------------------------------------------------------------------
# Opening files
# ----------------------------------------------------------------------------------------------


def _check_video_path(video_path: str | os.PathLike) -> Path:
    path = Path(video_path)
    if not path.exists():
        raise InputError(f"{path.name}: video file not found")
    if path.is_dir():
        raise InputError(f"{path.name} is a folder, not a video file")
    return path


def _open_video(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` and return the container and its first video stream (caller closes)."""
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
        logger.info("%s: %s", path, error)  # the details for the operator; the person gets a sentence
        raise InputError(f"{path.name}: not a readable video file (damaged, or not a video)") from error
    if not container.streams.video:
        container.close()
        raise InputError(f"{path.name}: the file contains no video stream")
    stream = container.streams.video[0]
    # Multi-threaded decoding; harmless for codecs that cannot use it.
    stream.thread_type = "AUTO"
    return container, stream


def _stream_fps(stream: av.video.stream.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


# ----------------------------------------------------------------------------------------------
# Timelines: which frames exist and when
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Timeline:
    """Frames in presentation order: their times and the key that identifies them when decoding.

    ``keys_are_pts``: keys are presentation timestamps (matched against ``frame.pts``);
    otherwise they are positions in decoding output order.
    """

    times_s: list[float]
    keys: list[int]
    keys_are_pts: bool
    video_fps: float | None


def _timeline_from_packets(path: Path) -> _Timeline | None:
    """Frame timestamps from a demux-only pass; None when the packets lack timestamps."""
    container, stream = _open_video(path)
    try:
        pts_values = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the end-of-stream marker, not a frame
                if packet.pts is None:
                    return None
                pts_values.append(packet.pts)
        except av.error.FFmpegError as error:
            logger.warning("%s: stopped reading at a damaged part of the file (%s)", path.name, error)
        time_base = stream.time_base
        video_fps = _stream_fps(stream)
    finally:
        container.close()
    if time_base is None:
        return None
    pts_values.sort()
    first = pts_values[0] if pts_values else 0
    times = [float((pts - first) * time_base) for pts in pts_values]
    return _Timeline(times, pts_values, keys_are_pts=True, video_fps=video_fps)


def _timeline_from_decoding(path: Path) -> _Timeline:
    """Frame timestamps from actually decoding (slower; for streams without packet timestamps)."""
    times = []
    container, stream = _open_video(path)
    video_fps = _stream_fps(stream)
    try:
        for position, frame in enumerate(_decoded_frames(container, stream, path)):
            # Without timestamps, assume a constant rate (1 fps if even that is unknown).
            times.append(frame.time if frame.time is not None else position / (video_fps or 1.0))
    finally:
        container.close()
    if times:
        first = times[0]
        times = [time_s - first for time_s in times]
    return _Timeline(times, list(range(len(times))), keys_are_pts=False, video_fps=video_fps)


def _decoded_frames(container, stream, path: Path):
    """Yield decoded frames; a damaged tail ends the stream with a warning instead of failing."""
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as error:
        logger.warning("%s: stopped decoding at a damaged part of the file (%s)", path.name, error)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------


def _check_sampling(fps: float, max_frames: int | None, label: str) -> None:
    is_number = isinstance(fps, numbers.Real) and not isinstance(fps, bool)
    fps_ok = is_number and math.isfinite(fps) and fps > 0
    if not fps_ok:
        raise InputError(f"{label}: frames per second must be a positive number, got {fps!r}")
    max_frames_ok = max_frames is None or (
        isinstance(max_frames, numbers.Integral) and not isinstance(max_frames, bool) and max_frames >= 1
    )
    if not max_frames_ok:
        raise InputError(f"{label}: max_frames must be a positive whole number, got {max_frames!r}")


def _decode_chosen(path: Path, chosen_keys: set[int], keys_are_pts: bool) -> list[Image.Image]:
    """Decode ``path`` and return upright RGB images of the frames whose key is chosen."""
    images = []
    remaining = set(chosen_keys)
    container, stream = _open_video(path)
    try:
        for position, frame in enumerate(_decoded_frames(container, stream, path)):
            key = frame.pts if keys_are_pts else position
            if key not in remaining:
                continue
            remaining.discard(key)
            images.append(rotate_upright(frame.to_image(), _frame_rotation(frame, stream)))
            if not remaining:
                break  # no need to decode the rest of the video
    finally:
        container.close()
    return images


def extract_frames(
    video_path: str | os.PathLike, fps: float = 1.0, max_frames: int | None = None
) -> list[Image.Image]:
    """Upright RGB frames sampled from a video: one per ``1/fps`` s, at most ``max_frames``.

    Each sample is the first frame at or after t = k/fps (time measured from the first frame);
    if more than ``max_frames`` are sampled, ``round(linspace(0, n-1, max_frames))`` of them
    are kept. Raises :class:`InputError` naming the file for anything unusable.
    """
    path = _check_video_path(video_path)
    _check_sampling(fps, max_frames, path.name)

    timeline = _timeline_from_packets(path)
    if timeline is not None and timeline.times_s:
        images = _decode_timeline_sample(path, timeline, fps, max_frames)
        if images is not None:
            return images
        logger.info("%s: packet timestamps do not match decoded frames; re-reading", path.name)

    timeline = _timeline_from_decoding(path)
    if not timeline.times_s:
        raise InputError(f"{path.name}: the video has no decodable frames")
    images = _decode_timeline_sample(path, timeline, fps, max_frames)
    if not images:
        raise InputError(f"{path.name}: the video has no decodable frames")
    return images


def _decode_timeline_sample(
    path: Path, timeline: _Timeline, fps: float, max_frames: int | None
) -> list[Image.Image] | None:
    """Decode the frames chosen from ``timeline``; None if some chosen frame never turned up."""
    chosen = choose_frame_indices(timeline.times_s, fps, max_frames, timeline.video_fps)
    chosen_keys = {timeline.keys[index] for index in chosen}
    images = _decode_chosen(path, chosen_keys, timeline.keys_are_pts)
    if len(images) != len(chosen_keys):
        return None
    return images


def probe_video(video_path: str | os.PathLike) -> VideoInfo:
    """Duration, frame rate, frame count, upright size and rotation of a video.

    Decodes only the first frame (to read its rotation and check that it decodes).
    """
    path = _check_video_path(video_path)
    container, stream = _open_video(path)
    try:
        fps = _stream_fps(stream) or 0.0
        duration_s = _duration_s(container, stream)
        first_frame = next(iter(_decoded_frames(container, stream, path)), None)
        if first_frame is None:
            raise InputError(f"{path.name}: the video has no decodable frames")
        rotation = _frame_rotation(first_frame, stream)
        width, height = upright_size(first_frame.width, first_frame.height, rotation)
        frame_count = stream.frames
    finally:
        container.close()
    if not frame_count:
        frame_count = _count_packets(path)
    return VideoInfo(
        duration_s=duration_s,
        fps=fps,
        frame_count=int(frame_count),
        width=width,
        height=height,
        rotation=_normalised_degrees(rotation),
    )


def _normalised_degrees(rotation: float) -> int:
    """Whole degrees in (-180, 180], so a half turn always reads 180."""
    degrees = int(round(rotation)) % 360
    return degrees - 360 if degrees > 180 else degrees


def _duration_s(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _count_packets(path: Path) -> int:
    container, stream = _open_video(path)
    try:
        return sum(1 for packet in container.demux(stream) if packet.size > 0)
    except av.error.FFmpegError:
        return 0
    finally:
        container.close()
