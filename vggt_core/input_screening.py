"""Which of a person's files can be reconstructed, and why the others cannot: checked when the
files arrive, so that one bad photo among fifty never costs the other forty-nine.

Each file is opened as it will be read for the model (the photo decoded, the video's first frame
decoded), and a photo's size is checked with the preprocessing's own rules
(:func:`vggt_core.images.image_size_problem`). Reasons are sentences that name the file by its own
name, never a server path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .images import DEFAULT_TARGET_SIZE, image_size_problem, open_image_rgb
from .pipeline import is_video_file


@dataclass(frozen=True)
class RejectedInput:
    name: str  # the file's own name
    reason: str  # why it cannot be used, without the name


@dataclass(frozen=True)
class InputScreening:
    usable: list[str] = field(default_factory=list)  # paths, in the given order
    rejected: list[RejectedInput] = field(default_factory=list)

    def rejected_sentence(self) -> str:
        """``"Left out 2 files: a.txt (not a readable image file), b.png (image is too small …)."``"""
        if not self.rejected:
            return ""
        items = "; ".join(f"{item.name} ({item.reason})" for item in self.rejected)
        count = len(self.rejected)
        return f"Left out {count} file{'s' if count != 1 else ''}: {items}."


def _reason(error: InputError, name: str) -> str:
    """The message without its leading ``"<name>: "``."""
    text = str(error)
    for prefix in (f"{name}: ", f"{name} "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def input_problem(path: str | os.PathLike, mode: str = "crop", target_size: int = DEFAULT_TARGET_SIZE) -> str | None:
    """Why the photo or video at ``path`` cannot be reconstructed (a phrase), or None."""
    name = Path(path).name
    try:
        if is_video_file(path):
            from .video import probe_video

            probe_video(path)  # opens the file and decodes its first frame
            return None
        width, height = open_image_rgb(path, name).size
    except InputError as error:
        return _reason(error, name)
    return image_size_problem(width, height, mode, target_size)


def screen_input_files(paths: Sequence[str | os.PathLike], mode: str = "crop",
                       target_size: int = DEFAULT_TARGET_SIZE) -> InputScreening:
    """Split ``paths`` into the files that can be reconstructed and the others with their reasons."""
    usable, rejected = [], []
    for path in paths:
        problem = input_problem(path, mode, target_size)
        if problem is None:
            usable.append(os.fspath(path))
        else:
            rejected.append(RejectedInput(Path(path).name, problem))
    return InputScreening(usable, rejected)


__all__ = ["InputScreening", "RejectedInput", "input_problem", "screen_input_files"]
