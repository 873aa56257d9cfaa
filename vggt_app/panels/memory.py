"""Memory before running: the input preview's estimate line, the one-click "thin evenly" button,
and, when the frames do not fit, the "Process in chunks" button (wired by the inputs panel).

The estimate is :func:`vggt_core.pipeline.estimate_memory`, the same one the out-of-memory guard
applies when Reconstruct is pressed; here it runs on the photos' headers only, before any weights
are loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from vggt_core import FrameLimitError, InputError
from vggt_core.chunks import chunk_size_for_memory
from vggt_core.filtering import evenly_spaced_subset
from vggt_core.pipeline import InputFrame, MemoryEstimate, gather_input_frames, is_video_file

from ..runtime.memory_estimate import estimate_for_frames

GIB = 2 ** 30
MIN_VIDEO_FPS = 0.25  # the slider's lowest value and step


def _device_name(device: str) -> str:
    return "the GPU" if device.startswith("cuda") else "Apple's GPU" if device.startswith("mps") else "the CPU"


def memory_line(estimate: MemoryEstimate, frame_limit: int) -> tuple[str, int | None]:
    """The preview's memory sentence, and the frame count to thin to (None: nothing to thin)."""
    line = (f"**{estimate.num_frames} frame{'s' if estimate.num_frames != 1 else ''}** at "
            f"{estimate.width}×{estimate.height} model input · estimated peak memory "
            f"{estimate.needed_bytes / GIB:.1f} GiB")
    if estimate.available_bytes is None:
        line += " · the device reports no free-memory figure"
        fitting = estimate.num_frames
    else:
        line += f" · {_device_name(estimate.device)} has {estimate.available_bytes / GIB:.1f} GiB free"
        fitting = estimate.num_frames if estimate.fits else int(estimate.max_frames or 0)
    target = min(fitting, frame_limit)
    if target >= estimate.num_frames:
        return line + ".", None
    if estimate.fits is False:
        if target == 0:
            return line + ". ⚠️ **Will not fit**, not even one frame: use smaller photos or another device.", None
        return line + f". ⚠️ **Will not fit**: about {target} frames would.", target
    return line + f". ⚠️ At most {frame_limit} frames per reconstruction here.", target


def chunk_offer(estimate: MemoryEstimate, frame_limit: int) -> int | None:
    """The chunk size to offer "Process in chunks" with, or None: only when the frames do not fit
    (chunks are slower and approximate), they are within the frame limit (chunks do not lift
    it), and at least two frames fit (a chunk needs two)."""
    if estimate.fits is not False or estimate.num_frames > frame_limit:
        return None
    return chunk_size_for_memory(estimate)


def chunks_button_update(chunk_size: int | None) -> Any:
    if chunk_size is None:
        return gr.Button(visible=False)
    return gr.Button(f"Process in chunks of {chunk_size} frames", visible=True)


def gather_without_limit(paths: Sequence[str], fps: float, frame_limit: int) -> list[InputFrame]:
    """The frames, even beyond the limit for photos (to say how many there are and thin them)."""
    try:
        return gather_input_frames(paths, fps=fps, max_frames=frame_limit)
    except FrameLimitError:
        return gather_input_frames(paths, fps=fps, max_frames=None)


def thinned_inputs(paths: Sequence[str], fps: float, target: int, frame_limit: int) -> tuple[list[str], float]:
    """Photos thinned evenly, or the video frame rate lowered, so at most ``target`` frames remain.

    Returns:
        ``(paths to keep, frames per second for videos)``.

    Raises:
        InputError: nothing left to thin (e.g. more photos than ``target`` next to a video).
    """
    if target < 1:
        raise InputError("Not even one frame would fit; thinning cannot help.")
    videos = [p for p in paths if is_video_file(p)]
    photos = [p for p in paths if not is_video_file(p)]
    if not videos:
        keep = evenly_spaced_subset(len(photos), target)
        return ([photos[i] for i in keep] if keep is not None else list(photos)), fps
    if len(photos) + len(videos) > target:
        raise InputError(f"{len(photos)} photos and {len(videos)} video(s) cannot be thinned to {target} frames; "
                         "remove some photos.")
    new_fps = float(fps)
    while new_fps > MIN_VIDEO_FPS:
        new_fps = max(MIN_VIDEO_FPS, (round(new_fps / MIN_VIDEO_FPS) - 1) * MIN_VIDEO_FPS)
        if len(gather_without_limit(paths, new_fps, frame_limit)) <= target:
            return list(paths), new_fps
    raise InputError(f"Even at {MIN_VIDEO_FPS:g} frames per second the video gives more than {target} frames; "
                     "cut it shorter.")


class MemoryPanel:
    """The memory line under the input preview and its "thin evenly" button."""

    def __init__(self, frame_limit: int, *, checkpoint: str, device: str | None, on_zero_gpu: bool,
                 file_paths: Callable[[Any], list[str]], user_errors: Callable[[Callable], Callable]):
        self.frame_limit = frame_limit
        self.checkpoint = checkpoint
        self.device = device
        self.on_zero_gpu = on_zero_gpu
        self.file_paths = file_paths
        self.user_errors = user_errors

    def status(self, files: Any, fps: float) -> tuple[str, Any, int, Any]:
        """(memory line, thin button update, frames to thin to or 0, "Process in chunks" button
        update). The buttons are no API values: API clients get (line, frames to thin to)."""
        paths = self.file_paths(files)
        hidden = gr.Button(visible=False)
        if not paths:
            return "", hidden, 0, hidden
        try:
            frames = gather_without_limit(paths, float(fps), self.frame_limit)
            estimate = estimate_for_frames(frames, checkpoint=self.checkpoint, device=self.device,
                                           on_zero_gpu=self.on_zero_gpu)
        except InputError:
            return "", hidden, 0, hidden  # the preview line already explains it
        line, target = memory_line(estimate, self.frame_limit)
        chunks = chunks_button_update(chunk_offer(estimate, self.frame_limit))
        if target is None:
            return line, hidden, 0, chunks
        return line, gr.Button(f"Thin evenly to {target} frames", visible=True), target, chunks

    def thin(self, files: Any, fps: float, target: int) -> tuple[list[str], float]:
        paths = self.file_paths(files)
        if not paths:
            raise InputError("Add some photos or a video first.")
        kept, new_fps = thinned_inputs(paths, float(fps), int(target), self.frame_limit)
        if new_fps != float(fps):
            gr.Info(f"Video sampled at {new_fps:g} frames per second instead of {float(fps):g}.")
        return kept, new_fps

    def build_and_wire(self, input_files: gr.File, video_fps: gr.Slider) -> gr.Markdown:
        """Place the line and the buttons (call inside the input column) and connect them. The
        inputs panel wires :attr:`chunks_button` and :attr:`chunk_size` (it shows the scene)."""
        line = gr.Markdown(elem_id="memory-status")
        button = gr.Button("Thin evenly", visible=False, size="sm", elem_id="thin-button")
        target = gr.Number(value=0, visible=False, precision=0, elem_id="thin-target")
        self.chunks_button = gr.Button("Process in chunks", visible=False, size="sm", elem_id="chunks-button")
        # 0: as many frames per chunk as fit (the server's estimate when the run starts, the
        # same one that labels the button); API clients may give a size.
        self.chunk_size = gr.Number(value=0, visible=False, precision=0, elem_id="chunk-size")
        outputs = [line, button, target, self.chunks_button]
        status = self.user_errors(self.status)
        input_files.change(status, [input_files, video_fps], outputs, api_name="memory_preview",
                           concurrency_limit=4)
        video_fps.release(status, [input_files, video_fps], outputs, api_visibility="private",
                          concurrency_limit=4)
        # Changing the files runs the preview and this line again, for the thinned input.
        button.click(self.user_errors(self.thin), [input_files, video_fps, target], [input_files, video_fps],
                     api_name="thin_inputs", concurrency_limit=4).then(
            status, [input_files, video_fps], outputs, api_visibility="private")
        return line


__all__ = ["MemoryPanel", "chunk_offer", "estimate_for_frames", "memory_line", "thinned_inputs"]
