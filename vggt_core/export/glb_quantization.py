"""Smaller GLB point clouds: positions as 16-bit integers (glTF's ``KHR_mesh_quantization``).

A point costs 12 bytes instead of 16: three normalized int16 coordinates padded to 8 bytes
(glTF wants vertex attributes 4-byte aligned) plus the RGBA colour's 4 bytes. The
dequantization (scale and offset over the cloud's bounding box) is folded into the node's
matrix, so viewers that support the extension (three.js, Babylon.js, Blender, Gradio's
``Model3D``) draw the same cloud; the step is 1/65534 of the box, e.g. 0.15 mm for a 10 m scene.
The app uses it for the views it streams to the browser; downloaded files stay float32, which
every tool reads.
"""

from __future__ import annotations

import json
import struct

import numpy as np

__all__ = ["QUANTIZATION_EXTENSION", "quantize_point_positions"]

QUANTIZATION_EXTENSION = "KHR_mesh_quantization"
_GLB_MAGIC, _JSON_CHUNK, _BIN_CHUNK = 0x46546C67, 0x4E4F534A, 0x004E4942
_FLOAT, _SHORT = 5126, 5122
_INT16_MAX = 32767


def _read_glb(data: bytes) -> tuple[dict, bytes]:
    magic, version, _ = struct.unpack_from("<III", data, 0)
    if magic != _GLB_MAGIC or version != 2:
        raise ValueError("not a glTF 2.0 binary")
    offset, gltf, binary = 12, None, b""
    while offset < len(data):
        length, kind = struct.unpack_from("<II", data, offset)
        chunk = data[offset + 8:offset + 8 + length]
        if kind == _JSON_CHUNK:
            gltf = json.loads(chunk)
        elif kind == _BIN_CHUNK:
            binary = chunk
        offset += 8 + length
    if gltf is None:
        raise ValueError("GLB without a JSON chunk")
    return gltf, binary


def _write_glb(gltf: dict, binary: bytes) -> bytes:
    text = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([struct.pack("<III", _GLB_MAGIC, 2, total), struct.pack("<II", len(text), _JSON_CHUNK), text,
                     struct.pack("<II", len(binary), _BIN_CHUNK), binary])


def _repack_buffer_views(gltf: dict, binary: bytes, replaced: dict[int, bytes]) -> bytes:
    """The binary chunk with buffer views ``replaced`` (index -> new bytes) and the others
    copied, each 4-byte aligned; ``gltf``'s buffer views and buffer length are updated to match."""
    chunks = []
    for index, view in enumerate(gltf["bufferViews"]):
        if index in replaced:
            chunks.append(replaced[index])
        else:
            offset = view.get("byteOffset", 0)
            chunks.append(binary[offset:offset + view["byteLength"]])
    packed, offset = [], 0
    for index, chunk in enumerate(chunks):
        padding = -offset % 4
        packed.append(b"\0" * padding)
        offset += padding
        gltf["bufferViews"][index]["byteOffset"] = offset
        gltf["bufferViews"][index]["byteLength"] = len(chunk)
        packed.append(chunk)
        offset += len(chunk)
    repacked = b"".join(packed)
    gltf["buffers"][0]["byteLength"] = len(repacked)
    return repacked


def _node_matrix(node: dict) -> np.ndarray:
    """The node's local transform ``[4, 4]`` (row-major here; glTF stores column-major)."""
    if "matrix" in node:
        return np.asarray(node["matrix"], dtype=np.float64).reshape(4, 4).T
    matrix = np.eye(4)
    x, y, z, w = node.get("rotation", [0.0, 0.0, 0.0, 1.0])
    matrix[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    matrix[:3, :3] *= np.asarray(node.get("scale", [1.0, 1.0, 1.0]))[None, :]
    matrix[:3, 3] = node.get("translation", [0.0, 0.0, 0.0])
    return matrix


def quantize_point_positions(data: bytes, mesh_name: str = "points") -> bytes:
    """``data`` (a GLB) with the float32 positions of mesh ``mesh_name`` stored as normalized
    int16 and the dequantization folded into the nodes that draw it. Other meshes (camera
    frustums) are left as they are. A GLB without that mesh is returned unchanged.
    """
    gltf, binary = _read_glb(data)
    meshes = [index for index, mesh in enumerate(gltf.get("meshes", [])) if mesh.get("name") == mesh_name]
    if not meshes:
        return data
    mesh_index = meshes[0]
    accessor_index = gltf["meshes"][mesh_index]["primitives"][0]["attributes"]["POSITION"]
    accessor = gltf["accessors"][accessor_index]
    view_index = accessor["bufferView"]
    sharing = [a for i, a in enumerate(gltf["accessors"]) if a.get("bufferView") == view_index and i != accessor_index]
    if accessor["componentType"] != _FLOAT or sharing:
        return data
    view = gltf["bufferViews"][view_index]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    positions = np.frombuffer(binary, dtype="<f4", count=accessor["count"] * 3, offset=start).reshape(-1, 3)

    if "min" in accessor and "max" in accessor:  # glTF writers record the bounds (trimesh does)
        low, high = np.asarray(accessor["min"], np.float64), np.asarray(accessor["max"], np.float64)
    else:
        low, high = positions.min(axis=0).astype(np.float64), positions.max(axis=0).astype(np.float64)
    center, half = (low + high) / 2.0, (high - low) / 2.0
    half[~(half > 0)] = 1.0  # a flat axis (or a single point)
    # float32 arithmetic: a step is 1/65534 of the box, far above float32's rounding.
    scaled = (positions - center.astype(np.float32)) * (_INT16_MAX / half).astype(np.float32)
    np.rint(scaled, out=scaled)
    np.clip(scaled, -_INT16_MAX, _INT16_MAX, out=scaled)
    quantized = np.zeros((len(positions), 4), dtype="<i2")  # the 4th is padding to 8 bytes
    quantized[:, :3] = scaled
    dequantize = np.eye(4)
    dequantize[:3, :3] = np.diag(half)
    dequantize[:3, 3] = center

    binary = _repack_buffer_views(gltf, binary, {view_index: quantized.tobytes()})
    view.update(byteStride=8, target=34962)
    bounds = np.clip(np.rint((np.stack([low, high]) - center) / half * _INT16_MAX), -_INT16_MAX, _INT16_MAX)
    accessor.update(componentType=_SHORT, normalized=True, byteOffset=0,
                    min=bounds[0].astype(int).tolist(), max=bounds[1].astype(int).tolist())
    for node in gltf.get("nodes", []):
        if node.get("mesh") == mesh_index:
            matrix = _node_matrix(node) @ dequantize
            for key in ("translation", "rotation", "scale"):
                node.pop(key, None)
            node["matrix"] = matrix.T.reshape(-1).tolist()
    for key in ("extensionsUsed", "extensionsRequired"):
        names = gltf.setdefault(key, [])
        if QUANTIZATION_EXTENSION not in names:
            names.append(QUANTIZATION_EXTENSION)
    return _write_glb(gltf, binary)
