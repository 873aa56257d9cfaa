"""How a frame is named outside the reconstruction: in exported files and in frame pickers.

One rule for files: frame ``i`` named ``name`` becomes ``{i:03d}_{stem}{suffix}`` wherever an
export writes a file for it (the splatting bundle's and nerfstudio's ``images/``, the COLMAP
model inside the splatting bundle, the depth maps). The index makes the names unique and keeps
them in frame order; the stem keeps them recognisable; only characters that are safe in every
file system, in zip archives and in COLMAP's space-separated text format remain.

One rule for labels: ``"{i}: {name}"`` in lists the user picks a frame from, parsed back by
:func:`parse_frame_label`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError

__all__ = ["MAX_STEM_CHARACTERS", "export_frame_file_name", "export_frame_file_names", "frame_label",
           "parse_frame_label"]

# Characters kept in file names; runs of anything else become one underscore.
_UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")
# Long stems are cut so that names stay well under file-system limits with the prefix and suffix.
MAX_STEM_CHARACTERS = 80
_LABEL_INDEX = re.compile(r"\s*(\d+)\s*:")


def export_frame_file_name(index: int, name: str, suffix: str = "") -> str:
    """The file name of frame ``index`` (named ``name``, e.g. ``"IMG 0001.JPG"``) in every export:
    ``{index:03d}_{stem}{suffix}`` (``"001_IMG_0001.jpg"`` with ``suffix=".jpg"``).

    The stem is ``name`` without its suffix, unsafe characters replaced by ``_``, leading and
    trailing dots and underscores stripped, at most :data:`MAX_STEM_CHARACTERS` characters, and
    ``frame`` when nothing is left (e.g. for ``".."``).
    """
    if index < 0:
        raise ValueError(f"a frame index is >= 0, got {index}")
    stem = _UNSAFE_CHARACTERS.sub("_", Path(name).stem).strip("._")[:MAX_STEM_CHARACTERS] or "frame"
    return f"{index:03d}_{stem}{suffix}"


def export_frame_file_names(names: Sequence[str], suffix: str = "") -> list[str]:
    """:func:`export_frame_file_name` of every frame, in frame order (unique by construction)."""
    return [export_frame_file_name(index, name, suffix) for index, name in enumerate(names)]


def frame_label(index: int, name: str) -> str:
    """How frame ``index`` is listed for the user to pick: ``"3: IMG_0004.JPG"``."""
    return f"{index}: {name}"


def parse_frame_label(label: object, num_frames: int) -> int:
    """The frame index of a :func:`frame_label` (only the leading ``"3:"`` is read, so a label of
    a renamed frame still works).

    Raises:
        InputError: the label does not start with ``"<index>:"``, or names no frame of ``num_frames``.
    """
    match = _LABEL_INDEX.match(str(label))
    if not match:
        raise InputError(f"Unknown frame {label!r}; choose one of the listed frames.")
    index = int(match.group(1))
    if index >= num_frames:
        raise InputError(f"Frame {index} does not exist; the reconstruction has {num_frames} frames.")
    return index
