"""The fused mesh (:mod:`vggt_core.mesh`) as GLB and PLY.

The GLB uses the point cloud's scene alignment (:func:`vggt_core.export.glb.alignment_transform`
of the first camera) on its root, so a viewer that swaps the point scene for the mesh scene keeps
the same view; camera frustums can be added as in the point scene. Both files hold the world
coordinates of the reconstruction; the PLY has no alignment (like ``points.ply``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import trimesh

from ..atomic_files import atomic_write_bytes
from ..mesh import Mesh
from ..reconstruction import Reconstruction
from .glb import (FRUSTUM_DEPTH_FRACTION, OPENCV_TO_GLTF, alignment_transform, camera_color, frustum_mesh,
                  scene_scale)

__all__ = ["MESH_GLB_NAME", "MESH_PLY_NAME", "build_mesh_scene", "export_mesh_glb", "export_mesh_ply",
           "mesh_glb_bytes", "mesh_ply_bytes"]

MESH_GLB_NAME = "mesh.glb"
MESH_PLY_NAME = "mesh.ply"


def _trimesh_of(mesh: Mesh) -> trimesh.Trimesh:
    rgba = np.full((mesh.num_vertices, 4), 255, dtype=np.uint8)
    rgba[:, :3] = mesh.vertex_colors
    return trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, vertex_colors=rgba, process=False)


def build_mesh_scene(mesh: Mesh, recon: Reconstruction, *, show_cameras: bool = False) -> trimesh.Scene:
    """The viewer scene of a mesh: geometry ``mesh`` plus optional ``camera_000``, ... frustums,
    with the root transform of the point scene (first camera at the origin, glTF axes).

    ``scene.metadata`` (the glTF scene's ``extras``) holds ``num_vertices``, ``num_faces``,
    ``voxel_size``, ``alignment``, ``units`` and ``scale_factor``.
    """
    scene = trimesh.Scene()
    scene.add_geometry(_trimesh_of(mesh), geom_name="mesh", node_name="mesh")
    if show_cameras:
        scale = scene_scale(mesh.vertices)
        for index in range(recon.num_frames):
            frustum = frustum_mesh(recon.extrinsics[index], recon.intrinsics[index], recon.image_size_hw,
                                   FRUSTUM_DEPTH_FRACTION * scale, camera_color(index, recon.num_frames))
            if len(frustum.faces) and np.isfinite(frustum.vertices).all():
                scene.add_geometry(frustum, geom_name=f"camera_{index:03d}", node_name=f"camera_{index:03d}")
    alignment = alignment_transform(recon.extrinsics[0])
    if not np.isfinite(alignment).all():
        alignment = OPENCV_TO_GLTF.copy()
    scene.apply_transform(alignment)
    scene.metadata.update({
        "num_vertices": mesh.num_vertices, "num_faces": mesh.num_faces, "voxel_size": mesh.voxel_size,
        "alignment": alignment.tolist(), "units": recon.units or "arbitrary", "scale_factor": recon.scale_factor,
    })
    return scene


def mesh_glb_bytes(mesh: Mesh, recon: Reconstruction, *, show_cameras: bool = False) -> bytes:
    """The GLB file of :func:`build_mesh_scene` as bytes (for a viewer or a download)."""
    return build_mesh_scene(mesh, recon, show_cameras=show_cameras).export(file_type="glb")


def mesh_ply_bytes(mesh: Mesh) -> bytes:
    """Binary PLY with per-vertex RGB colours, world coordinates, as bytes."""
    buffer = io.BytesIO()
    _trimesh_of(mesh).export(buffer, file_type="ply", encoding="binary")
    return buffer.getvalue()


def export_mesh_glb(mesh: Mesh, recon: Reconstruction, path: str | os.PathLike, *, show_cameras: bool = False,
                    durable: bool = True) -> Path:
    """Write :func:`mesh_glb_bytes` atomically at ``path``."""
    target = Path(path)
    atomic_write_bytes(target, mesh_glb_bytes(mesh, recon, show_cameras=show_cameras), durable=durable)
    return target


def export_mesh_ply(mesh: Mesh, path: str | os.PathLike, *, durable: bool = True) -> Path:
    """Write :func:`mesh_ply_bytes` atomically at ``path``."""
    target = Path(path)
    atomic_write_bytes(target, mesh_ply_bytes(mesh), durable=durable)
    return target
