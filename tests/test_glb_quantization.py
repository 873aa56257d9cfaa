"""Quantized GLB point clouds: 12 bytes per point and the same cloud, within one step."""

from __future__ import annotations

import json
import struct

import numpy as np

from vggt_core.export import export_glb
from vggt_core.export.glb_quantization import QUANTIZATION_EXTENSION, _read_glb
from vggt_core.filtering import ViewSettings
from vggt_core.reconstruction import reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene


def world_points(path) -> np.ndarray:
    """The point cloud in scene coordinates, decoded by hand as a viewer would."""
    gltf, binary = _read_glb(path.read_bytes())
    mesh = next(i for i, m in enumerate(gltf["meshes"]) if m["name"] == "points")
    accessor = gltf["accessors"][gltf["meshes"][mesh]["primitives"][0]["attributes"]["POSITION"]]
    view = gltf["bufferViews"][accessor["bufferView"]]
    stride = view.get("byteStride", 12)
    dtype = {5126: "<f4", 5122: "<i2"}[accessor["componentType"]]
    raw = np.frombuffer(binary, dtype=np.uint8, count=accessor["count"] * stride, offset=view["byteOffset"])
    values = raw.reshape(-1, stride)[:, :3 * np.dtype(dtype).itemsize].copy().view(dtype).astype(np.float64)
    if accessor.get("normalized"):
        values = np.maximum(values / 32767.0, -1.0)
    node = next(n for n in gltf["nodes"] if n.get("mesh") == mesh)
    matrix = np.asarray(node["matrix"]).reshape(4, 4).T
    return values @ matrix[:3, :3].T + matrix[:3, 3]


def test_quantized_views_are_a_quarter_smaller_and_draw_the_same_points(tmp_path):
    recon = reconstruction_from_synthetic_scene(render_scene("room", num_views=3, width=120, height=90))
    settings = ViewSettings(confidence_threshold=0)
    plain = export_glb(recon, tmp_path / "plain.glb", settings)
    small = export_glb(recon, tmp_path / "small.glb", settings, quantize=True)
    assert small.num_points == plain.num_points == 3 * 120 * 90
    plain_bytes, small_bytes = plain.path.stat().st_size, small.path.stat().st_size
    # 16 → 12 bytes per point (the JSON header differs by a few bytes).
    assert abs((plain_bytes - small_bytes) - 4 * plain.num_points) < 1000
    expected, decoded = world_points(plain.path), world_points(small.path)
    extent = np.ptp(expected, axis=0).max()
    assert np.abs(decoded - expected).max() <= extent / 32767  # within one quantization step
    gltf, binary = _read_glb(small.path.read_bytes())
    assert QUANTIZATION_EXTENSION in gltf["extensionsRequired"]
    accessor = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]
    view = gltf["bufferViews"][accessor["bufferView"]]
    raw = np.frombuffer(binary, "<i2", accessor["count"] * 4, view["byteOffset"]).reshape(-1, 4)[:, :3]
    assert accessor["min"] == raw.min(axis=0).tolist() and accessor["max"] == raw.max(axis=0).tolist()
    assert [m["name"] for m in gltf["meshes"]][:2] == ["points", "camera_000"]  # frustums untouched
    # A valid GLB container: the declared length is the file's.
    data = small.path.read_bytes()
    assert struct.unpack_from("<I", data, 8)[0] == len(data) and len(data) % 4 == 0
    json.dumps(gltf)
