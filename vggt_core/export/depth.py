"""Depth and confidence maps at each photo's own resolution.

The model sees every photo resized and then cropped or padded (:class:`FrameTransform`). Each
photo pixel is mapped through that transform to the model-input pixel that contains its centre,
and takes that pixel's depth (nearest, not interpolated: an average across a depth edge would
be a surface that does not exist). Photo pixels that were cropped away get NaN.

Per frame ``<name>_depth.npy`` (float32 ``[H, W]``), ``<name>_confidence.npy`` (float32) and
``<name>_depth.png`` (16-bit, ``depth · depth_scale`` rounded, 0 = no depth), plus one
``depth_scale.json`` with the scale and the scene's units. See docs/scene.md, "Depth at full
resolution". Normal maps (:mod:`vggt_core.normals`) go beside them, mapped the same way:
``<name>_normal.npy`` (float32 ``[H, W, 3]``, unit normals in OpenCV camera axes, NaN where
undefined) and ``<name>_normal.png`` (the usual RGB encoding in OpenGL camera axes, black where
undefined); see docs/surfaces.md.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic_files import atomic_write_bytes, atomic_writer
from ..normals import colorize_normal_maps, normal_maps_from_depth
from ..reconstruction import Reconstruction

__all__ = ["DEPTH_SCALE_FILE", "PNG_MAX", "depth_maps_at_original_resolution", "export_depth_maps",
           "frame_file_stems", "normal_map_at_original_resolution"]

DEPTH_SCALE_FILE = "depth_scale.json"
PNG_MAX = 65535


def frame_file_stems(names: list[str]) -> list[str]:
    """File-name stems for frames: the name without its suffix, unsafe characters replaced,
    made unique (``a.jpg`` and ``a.png`` become ``a`` and ``a_1``)."""
    stems, seen = [], set()
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "frame"
        unique, number = stem, 1
        while unique in seen:
            unique, number = f"{stem}_{number}", number + 1
        seen.add(unique)
        stems.append(unique)
    return stems


def _source_indices(size: int, scale: float, offset: float, model_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Model-input index ``[size]`` containing each photo pixel centre along one axis, and
    whether it lies inside the model input."""
    centres = (np.arange(size, dtype=np.float64) + 0.5) * scale + offset
    indices = np.floor(centres).astype(np.int64)
    inside = (indices >= 0) & (indices < model_size)
    return np.clip(indices, 0, model_size - 1), inside


def depth_maps_at_original_resolution(recon: Reconstruction, index: int) -> tuple[np.ndarray, np.ndarray]:
    """``(depth, confidence)`` of frame ``index``, each float32 ``[H, W]`` at the photo's size,
    NaN where the model saw no pixel (cropped away) or predicted no finite depth."""
    transform = recon.frame_transform(index)
    width, height = transform.original_size
    model_height, model_width = recon.image_size_hw
    columns, columns_inside = _source_indices(width, transform.scale[0], transform.offset[0], model_width)
    rows, rows_inside = _source_indices(height, transform.scale[1], transform.offset[1], model_height)
    seen = rows_inside[:, None] & columns_inside[None, :]
    depth = recon.depth[index][np.ix_(rows, columns)].astype(np.float32)
    confidence = recon.depth_conf[index][np.ix_(rows, columns)].astype(np.float32)
    seen &= np.isfinite(depth)
    depth[~seen] = np.nan
    confidence[~seen] = np.nan
    return depth, confidence


def normal_map_at_original_resolution(recon: Reconstruction, index: int, normals: np.ndarray) -> np.ndarray:
    """Frame ``index``'s normals ``normals [H, W, 3]`` (model-input pixels) at the photo's size,
    float32 ``[h, w, 3]``, NaN where the model saw no pixel (the same mapping as the depth)."""
    transform = recon.frame_transform(index)
    width, height = transform.original_size
    model_height, model_width = recon.image_size_hw
    columns, columns_inside = _source_indices(width, transform.scale[0], transform.offset[0], model_width)
    rows, rows_inside = _source_indices(height, transform.scale[1], transform.offset[1], model_height)
    mapped = normals[np.ix_(rows, columns)].astype(np.float32)
    mapped[~(rows_inside[:, None] & columns_inside[None, :])] = np.nan
    return mapped


def _png_depth_scale(recon: Reconstruction) -> float:
    """One scale for every frame, so that the deepest valid depth fills the 16-bit range."""
    depth = recon.depth
    valid = np.isfinite(depth) & (depth > 0)
    deepest = float(depth[valid].max()) if valid.any() else 0.0
    return PNG_MAX / deepest if deepest > 0 else 1.0


def export_depth_maps(recon: Reconstruction, directory: str | os.PathLike, *,
                      durable: bool = True) -> dict[str, list[Path]]:
    """Write every frame's depth and confidence at its photo's resolution into ``directory``
    (each file atomically; ``durable=False`` skips the fsync).

    Returns:
        ``{"depth_npy": [...], "depth_png": [...], "confidence_npy": [...], "scale": [json],
        "normal_npy": [...], "normal_png": [...]}``, paths in frame order.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    depth_scale = _png_depth_scale(recon)
    written: dict[str, list[Path]] = {"depth_npy": [], "depth_png": [], "confidence_npy": [], "scale": [],
                                      "normal_npy": [], "normal_png": []}
    stems = frame_file_stems(recon.frame_names)
    normal_maps = normal_maps_from_depth(recon.depth, recon.intrinsics)
    for index, stem in enumerate(stems):
        normals = normal_map_at_original_resolution(recon, index, normal_maps[index])
        with atomic_writer(target / f"{stem}_normal.npy", durable=durable) as handle:
            np.save(handle, normals)
        with atomic_writer(target / f"{stem}_normal.png", durable=durable) as handle:
            Image.fromarray(colorize_normal_maps(normals)[0]).save(handle, format="PNG")
        written["normal_npy"].append(target / f"{stem}_normal.npy")
        written["normal_png"].append(target / f"{stem}_normal.png")
        depth, confidence = depth_maps_at_original_resolution(recon, index)
        with atomic_writer(target / f"{stem}_depth.npy", durable=durable) as handle:
            np.save(handle, depth)
        with atomic_writer(target / f"{stem}_confidence.npy", durable=durable) as handle:
            np.save(handle, confidence)
        valid = np.isfinite(depth) & (depth > 0)
        scaled = np.where(valid, depth, 0.0).astype(np.float64) * depth_scale
        # A valid depth never reads back as the "no depth" value 0.
        png = np.where(valid, np.clip(np.rint(scaled), 1, PNG_MAX), 0).astype(np.uint16)
        with atomic_writer(target / f"{stem}_depth.png", durable=durable) as handle:
            Image.fromarray(png).save(handle, format="PNG")
        written["depth_npy"].append(target / f"{stem}_depth.npy")
        written["depth_png"].append(target / f"{stem}_depth.png")
        written["confidence_npy"].append(target / f"{stem}_confidence.npy")
    scale_file = target / DEPTH_SCALE_FILE
    atomic_write_bytes(scale_file, json.dumps({
        "depth_scale": depth_scale,
        "meaning": "depth = png_value / depth_scale; png_value 0 means no depth (cropped away or invalid)",
        "units": recon.units or "arbitrary (VGGT's own scale)",
        "depth_kind": "z-depth along the camera axis",
        "frames": {name: stem for name, stem in zip(recon.frame_names, stems)},
    }, indent=1).encode("utf-8"), durable=durable)
    written["scale"].append(scale_file)
    return written
