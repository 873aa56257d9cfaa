"""Depth and confidence maps at each photo's own resolution.

The model sees every photo resized and then cropped or padded (:class:`FrameTransform`). Each
photo pixel is mapped through that transform to the model-input pixel that contains its centre,
and takes that pixel's depth (nearest, not interpolated: an average across a depth edge would
be a surface that does not exist). Photo pixels that were cropped away get NaN.

Per frame ``<file stem>_depth.npy`` (float32 ``[H, W]``), ``<file stem>_confidence.npy`` (float32)
and ``<file stem>_depth.png`` (16-bit, ``depth · depth_scale`` rounded, 0 = no depth), plus one
``depth_scale.json`` with the scale, the scene's units, each frame's file stem and its
intrinsics at its photo's size (pixel centres at +0.5). The file stem
of frame ``i`` is the one every export uses, ``{i:03d}_<name>``
(:func:`vggt_core.frame_names.export_frame_file_name`). See docs/scene.md, "Depth at full
resolution".
Normal maps (:mod:`vggt_core.normals`) go beside them, mapped the same way:
``<file stem>_normal.npy`` (float32 ``[H, W, 3]``, unit normals in OpenCV camera axes, NaN where
undefined) and ``<file stem>_normal.png`` (the usual RGB encoding in OpenGL camera axes, black
where undefined); see docs/surfaces.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic_files import atomic_write_bytes, atomic_writer
from ..frame_names import export_frame_file_names
from ..normals import colorize_normal_maps, normal_maps_from_depth
from ..reconstruction import Reconstruction

__all__ = ["DEPTH_SCALE_FILE", "PNG_MAX", "depth_maps_at_original_resolution", "export_depth_maps",
           "frame_file_stems", "normal_map_at_original_resolution"]

DEPTH_SCALE_FILE = "depth_scale.json"
# The intrinsics' pixel convention, spelled out in the scale file (docs/architecture.md, "Pixel centres").
PIXEL_CENTRES_NOTE = ("intrinsics are in the photo's pixels with the image corner at (0, 0): pixel (i, j)'s centre is "
                      "at (i + 0.5, j + 0.5), as in COLMAP, OpenCV and nerfstudio")
PNG_MAX = 65535


def frame_file_stems(names: list[str]) -> list[str]:
    """File-name stems of the frames' depth files, unique and in frame order: ``a.jpg`` and
    ``a.png`` become ``000_a`` and ``001_a`` (:func:`vggt_core.frame_names.export_frame_file_names`)."""
    return export_frame_file_names(names)


def _source_indices(size: int, scale: float, offset: float, model_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Model-input index ``[size]`` containing each photo pixel centre along one axis, and
    whether it lies inside the model input."""
    centres = (np.arange(size, dtype=np.float64) + 0.5) * scale + offset
    indices = np.floor(centres).astype(np.int64)
    inside = (indices >= 0) & (indices < model_size)
    return np.clip(indices, 0, model_size - 1), inside


def _photo_pixel_sources(recon: Reconstruction, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For frame ``index``'s photo pixels: the model-input row ``[h]`` and column ``[w]`` each
    photo pixel centre falls in, and ``[h, w]`` whether it falls inside the model input."""
    transform = recon.frame_transform(index)
    width, height = transform.original_size
    model_height, model_width = recon.image_size_hw
    columns, columns_inside = _source_indices(width, transform.scale[0], transform.offset[0], model_width)
    rows, rows_inside = _source_indices(height, transform.scale[1], transform.offset[1], model_height)
    return rows, columns, rows_inside[:, None] & columns_inside[None, :]


def depth_maps_at_original_resolution(recon: Reconstruction, index: int) -> tuple[np.ndarray, np.ndarray]:
    """``(depth, confidence)`` of frame ``index``, each float32 ``[H, W]`` at the photo's size,
    NaN where the model saw no pixel (cropped away) or predicted no finite depth."""
    rows, columns, seen = _photo_pixel_sources(recon, index)
    depth = recon.depth[index][np.ix_(rows, columns)].astype(np.float32)
    confidence = recon.depth_conf[index][np.ix_(rows, columns)].astype(np.float32)
    seen &= np.isfinite(depth)
    depth[~seen] = np.nan
    confidence[~seen] = np.nan
    return depth, confidence


def _photo_intrinsics(recon: Reconstruction) -> dict[str, dict[str, float | int]]:
    """Per frame name, the pinhole camera of its depth map at the photo's size (pixel centres at +0.5)."""
    intrinsics = recon.intrinsics_at_original_resolution()
    cameras = {}
    for index, name in enumerate(recon.frame_names):
        width, height = (int(value) for value in recon.original_sizes[index])
        (fx, _, cx), (_, fy, cy), _ = intrinsics[index].tolist()
        cameras[name] = {"fx": fx, "fy": fy, "cx": cx, "cy": cy, "width": width, "height": height}
    return cameras


def normal_map_at_original_resolution(recon: Reconstruction, index: int, normals: np.ndarray) -> np.ndarray:
    """Frame ``index``'s normals ``normals [H, W, 3]`` (model-input pixels) at the photo's size,
    float32 ``[h, w, 3]``, NaN where the model saw no pixel (the same mapping as the depth)."""
    rows, columns, seen = _photo_pixel_sources(recon, index)
    mapped = normals[np.ix_(rows, columns)].astype(np.float32)
    mapped[~seen] = np.nan
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
        "pixel_centres": PIXEL_CENTRES_NOTE,
        "intrinsics": _photo_intrinsics(recon),
    }, indent=1).encode("utf-8"), durable=durable)
    written["scale"].append(scale_file)
    return written
