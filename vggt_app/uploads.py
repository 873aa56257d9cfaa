"""What Gradio hands over for an upload, as paths, descriptions and thumbnails."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from vggt_core.images import open_image_rgb
from vggt_core.pipeline import InputFrame, is_video_file


def uploaded_file_paths(files: Any) -> list[str]:
    """Gradio gives a list of paths (or one path, or None) for a multiple-file upload."""
    if not files:
        return []
    if isinstance(files, (str, os.PathLike)):
        return [os.fspath(files)]
    return [os.fspath(getattr(item, "name", item)) for item in files]


def describe_inputs(paths: Sequence[str]) -> str:
    """``"3 photos, walk.mp4"``: what a reconstruction was made from, for its metadata."""
    videos = [Path(p).name for p in paths if is_video_file(p)]
    photos = len(paths) - len(videos)
    parts = ([f"{photos} photo{'s' if photos != 1 else ''}"] if photos else []) + videos
    return ", ".join(parts)


def frame_thumbnail(frame: InputFrame, size: int = 320) -> Image.Image:
    image = open_image_rgb(frame.source, frame.name) if not isinstance(frame.source, Image.Image) else frame.source
    image = image.copy()
    image.thumbnail((size, size))
    return image


__all__ = ["describe_inputs", "frame_thumbnail", "uploaded_file_paths"]
