"""The reconstruction file: one ``.npz`` holding a :class:`~vggt_core.reconstruction.Reconstruction`,
read back without pickle, so an uploaded or stale file can never execute code.

Format 1 held the model's arrays; format 2 adds optional arrays and an ``info`` JSON; format 3
(current) adds the user's ``exclusion_masks`` (docs/architecture.md, *The reconstruction file*). Fields that are None are absent; frame names
are a unicode array; the depth branch's points are not stored (they follow from depth and
cameras and are recomputed on load) and confidences are stored in float16.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import numpy as np

from .atomic_files import atomic_writer
from .errors import InputError
from .geometry import unproject_depth_maps_in_frame_chunks
from .reconstruction import _ARRAY_FIELDS, Reconstruction

__all__ = ["FILE_FORMAT_VERSION", "STORED_DTYPES", "at_stored_precision", "load_reconstruction",
           "save_reconstruction"]

# Version 1: the arrays of Reconstruction up to track_confidence. Version 2 adds the optional
# fields after it and the ``info`` JSON; version-1 files still load (the new fields are then absent).
# Version 3 adds the optional ``exclusion_masks`` (docs/surfaces.md); older files load without them.
FILE_FORMAT_VERSION = 3
_FORMAT_KEY = "__format_version__"
_INFO_KEY = "__info_json__"

# Arrays stored at a lower precision than they are used at (see docs/store.md, "What is stored"):
# confidences only rank and threshold points, and float16 keeps 3 significant digits.
STORED_DTYPES: dict[str, type] = {"depth_conf": np.float16, "world_points_conf": np.float16}
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def save_reconstruction(recon: Reconstruction, path: str | os.PathLike | BinaryIO) -> Path | None:
    """Write one ``.npz`` at exactly ``path`` (no suffix is appended), or into an open binary file.

    Fields that are None are simply absent from the file; names are a unicode array, so
    :func:`load_reconstruction` needs no pickle. ``points_from_depth`` is left out (loading
    recomputes it) and confidences are stored as float16; the arrays are not compressed, which
    makes saving 50 frames take under a second instead of ~15 s for 20% fewer bytes
    (``benchmarks/bench_save.py``). A path is written atomically and durably
    (:mod:`vggt_core.atomic_files`): a reader never sees half a file.

    Returns:
        ``path`` as a :class:`Path`, or None for an open file.
    """
    arrays: dict[str, np.ndarray] = {_FORMAT_KEY: np.array(FILE_FORMAT_VERSION)}
    for name, _, _ in _ARRAY_FIELDS:
        value = getattr(recon, name)
        if value is not None and name != "points_from_depth":
            arrays[name] = _to_stored_precision(name, value)
    arrays["frame_names"] = np.array(recon.frame_names, dtype=np.str_)
    arrays[_INFO_KEY] = np.array(json.dumps(recon.info, allow_nan=False), dtype=np.str_)
    if hasattr(path, "write"):
        np.savez(path, **arrays)
        return None
    target = Path(path)
    with atomic_writer(target) as handle:
        np.savez(handle, **arrays)
    return target


def at_stored_precision(recon: Reconstruction) -> Reconstruction:
    """A copy of ``recon`` whose arrays hold exactly what saving then loading gives back
    (confidences rounded through float16)."""
    changes = {name: _to_stored_precision(name, getattr(recon, name)).astype(np.float32)
               for name in STORED_DTYPES if getattr(recon, name) is not None}
    return dataclasses.replace(recon, **changes)


def load_reconstruction(path: str | os.PathLike | BinaryIO) -> Reconstruction:
    """Read a file written by :func:`save_reconstruction` (a path or an open binary file).

    Raises:
        InputError: the file is missing, not an npz, corrupt, holds pickled objects, lacks a
            required array or has inconsistent shapes.
    """
    label = getattr(path, "name", None) if hasattr(path, "read") else Path(path).name
    label = Path(str(label)).name if label else "reconstruction file"
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except FileNotFoundError as error:
        raise InputError(f"Reconstruction file {label} does not exist") from error
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        # ValueError also covers object arrays, which would need pickle.
        raise InputError(f"{label} is not a readable reconstruction file ({error})") from error
    return _from_arrays(contents, label)


def _from_arrays(contents: Mapping[str, np.ndarray], label: str) -> Reconstruction:
    if _FORMAT_KEY not in contents:
        raise InputError(f"{label} is not a reconstruction file (no format version)")
    try:
        version = int(np.asarray(contents[_FORMAT_KEY]))
    except (TypeError, ValueError) as error:
        raise InputError(f"{label} has an unreadable format version") from error
    if version > FILE_FORMAT_VERSION:
        raise InputError(f"{label} was written by a newer version (format {version})")
    kwargs: dict[str, Any] = {}
    for name, _, optional in _ARRAY_FIELDS:
        if name in contents:
            kwargs[name] = contents[name]
        elif not optional:
            raise InputError(f"{label} lacks the array {name!r}")
    if "frame_names" not in contents or contents["frame_names"].dtype.kind != "U":
        raise InputError(f"{label} lacks the frame names")
    kwargs["frame_names"] = contents["frame_names"].tolist()
    if _INFO_KEY in contents:
        info_text = contents[_INFO_KEY]
        try:
            info = json.loads(str(info_text)) if info_text.dtype.kind == "U" else None
        except ValueError:
            info = None
        if not isinstance(info, dict):
            raise InputError(f"{label} has unreadable scene information")
        kwargs["info"] = info
    for name, dtype, _ in _ARRAY_FIELDS:
        value = kwargs.get(name)
        if value is not None and name in STORED_DTYPES and value.dtype == np.dtype(STORED_DTYPES[name]):
            kwargs[name] = value = value.astype(dtype)
        # Casting silently would hide a file written by something else; refuse instead.
        if value is not None and value.dtype != np.dtype(dtype):
            raise InputError(f"{label}: {name} has dtype {value.dtype}, expected {np.dtype(dtype)}")
    if kwargs.get("points_from_depth") is None:
        kwargs["points_from_depth"] = _points_from_depth_of_arrays(kwargs, label)
    try:
        return Reconstruction(**kwargs)
    except InputError as error:
        raise InputError(f"{label} is inconsistent: {error}") from error


def _to_stored_precision(name: str, value: np.ndarray) -> np.ndarray:
    """``value`` in the dtype :meth:`Reconstruction.save` writes for field ``name``."""
    stored = STORED_DTYPES.get(name)
    if stored is None:
        return value
    # Beyond float16's range a confidence would become inf; the largest finite value still
    # ranks above every other.
    return np.clip(value, -_FLOAT16_MAX, _FLOAT16_MAX).astype(stored)


def _points_from_depth_of_arrays(kwargs: Mapping[str, Any], label: str) -> np.ndarray:
    """The depth branch's points recomputed from the loaded depth and cameras."""
    try:
        depth = np.asarray(kwargs["depth"], dtype=np.float32)
        extrinsics = np.asarray(kwargs["extrinsics"], dtype=np.float32)
        intrinsics = np.asarray(kwargs["intrinsics"], dtype=np.float32)
        return unproject_depth_maps_in_frame_chunks(depth, extrinsics, intrinsics)
    except (KeyError, ValueError, IndexError, RuntimeError) as error:  # shapes that do not fit
        raise InputError(f"{label} is inconsistent: {error}") from error
