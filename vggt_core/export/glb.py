"""glTF-binary scene of a reconstruction: the coloured point cloud plus camera frustums.

Follows the reference demo's ``predictions_to_glb`` (docs/architecture.md, *Display filters and the GLB*): same filters, same
camera colours (``gist_rainbow`` by frame index), frustum size relative to the scene, and the
same scene alignment for VGGT's predictions.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import trimesh

from .. import geometry
from ..atomic_files import atomic_write_bytes
from ..filtering import PointSelection, ViewSettings, evenly_spaced_subset, select_points
from ..reconstruction import Reconstruction
from .glb_points import replace_point_cloud
from .glb_quantization import quantize_point_positions

__all__ = [
    "GlbExport",
    "CAMERA_COLORMAP",
    "OPENCV_TO_GLTF",
    "alignment_transform",
    "camera_color",
    "frustum_mesh",
    "scene_scale",
    "build_scene",
    "export_glb",
]

CAMERA_COLORMAP = "gist_rainbow"
SCENE_SCALE_SAMPLES = 200_000

# OpenCV camera axes (x right, y down, z forward) → glTF asset axes (+Y up, +Z forward,
# −X right: "the front of a glTF asset faces +Z"). The reference builds the same matrix as
# diag(1,−1,−1)·RotY(180°).
OPENCV_TO_GLTF = np.diag([-1.0, -1.0, 1.0, 1.0])

# Frustum depth and edge thickness as fractions of the scene scale. 0.1 is the reference's.
FRUSTUM_DEPTH_FRACTION = 0.1
FRUSTUM_EDGE_WIDTH_FRACTION = 0.002

# Shown when no point survives the filters, so viewers still get a loadable scene.
_PLACEHOLDER_POINT = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
_PLACEHOLDER_COLOR = np.array([[255, 255, 255]], dtype=np.uint8)


@dataclass
class GlbExport:
    """What :func:`export_glb` wrote. Usable as a path (``os.fspath(result)``).

    Attributes:
        path: the ``.glb`` file.
        num_points: points drawn (0 when only the placeholder point was written).
        num_cameras: frustums drawn.
        min_confidence: the lowest confidence a point needed, an absolute confidence value
            (what ``ViewSettings.confidence_threshold`` turned into when it is a percentile).
        branch: the prediction branch used (``"depth"`` or ``"point"``).
    """

    path: Path
    num_points: int
    num_cameras: int
    min_confidence: float
    branch: str

    @property
    def confidence_threshold(self) -> float:
        """The old name of :attr:`min_confidence` (read-only)."""
        return self.min_confidence

    def __fspath__(self) -> str:
        return os.fspath(self.path)


def camera_color(index: int, num_frames: int) -> np.ndarray:
    """RGBA uint8 ``[4]`` of camera ``index``: ``gist_rainbow(index / num_frames)``.

    Truncated (not rounded) to integers as in the reference, so camera 0 is (255, 0, 40).
    """
    rgba = matplotlib.colormaps[CAMERA_COLORMAP](index / max(num_frames, 1))
    rgb = (np.asarray(rgba[:3]) * 255.0).astype(np.uint8)
    return np.concatenate([rgb, np.array([255], dtype=np.uint8)])


def alignment_transform(extrinsic: np.ndarray) -> np.ndarray:
    """World → viewer transform ``[4, 4]`` that puts the reference camera at the origin.

    ``OPENCV_TO_GLTF · E_ref``: the world is first moved into the reference camera's frame
    (``E_ref``, world-to-camera), then its axes are renamed for glTF. Afterwards that camera
    looks along +Z with +Y up, which is how glTF viewers (Y-up, front faces +Z) present a model,
    so the opening view matches the first photo instead of an arbitrary world orientation.

    The reference writes ``inv(E_0)·diag(−1,−1,1,1)``. VGGT predicts ``E_0 = I``, where the two
    agree; for any other reference camera (a selected frame, ground-truth cameras) only this
    form actually puts that camera at the origin.

    Args:
        extrinsic: ``[3, 4]`` or ``[4, 4]`` world-to-camera of the reference camera.
    """
    return OPENCV_TO_GLTF @ geometry.extrinsics_to_4x4(np.asarray(extrinsic, dtype=np.float64))


def scene_scale(points: np.ndarray) -> float:
    """``‖p95 − p5‖`` of per-axis percentiles of ``points [N, 3]`` (1 when empty or flat).

    Only frustum sizes depend on it, so beyond ``SCENE_SCALE_SAMPLES`` points an even subset
    is used: the percentiles barely move and re-rendering a large scene stays interactive.
    """
    if len(points) == 0:
        return 1.0
    subset = evenly_spaced_subset(len(points), SCENE_SCALE_SAMPLES)
    if subset is not None:
        points = points[subset]
    low, high = np.percentile(points, [5.0, 95.0], axis=0)
    scale = float(np.linalg.norm(high - low))
    return scale if np.isfinite(scale) and scale > 0.0 else 1.0


def _perpendicular_pair(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors ``[3]`` perpendicular to ``direction [3]`` and to each other."""
    unit = direction / np.linalg.norm(direction)
    helper = np.eye(3)[int(np.argmin(np.abs(unit)))]  # the axis least parallel to the edge
    first = np.cross(unit, helper)
    first /= np.linalg.norm(first)
    return first, np.cross(unit, first)


def frustum_mesh(extrinsic: np.ndarray, intrinsic: np.ndarray, image_size_hw: tuple[int, int],
                 depth: float, color: np.ndarray) -> trimesh.Trimesh:
    """A wireframe pyramid for one camera, in world coordinates.

    The apex is the camera centre; the base is the image rectangle at z-depth ``depth`` in
    front of the camera, so the pyramid shows the true field of view and aspect ratio. glTF
    viewers draw triangles, not lines, so every edge is two thin crossed ribbons (visible from
    any side), and each triangle also exists with reversed winding, because back faces are
    culled.

    Args:
        extrinsic: ``[3, 4]`` world-to-camera.
        intrinsic: ``[3, 3]`` in the pixels of ``image_size_hw``.
        image_size_hw: ``(H, W)``.
        depth: distance of the base in front of the camera (world units).
        color: RGBA uint8 ``[4]``.

    Returns:
        A mesh whose vertex 0 is the apex. Edges of zero length (degenerate intrinsics) are
        left out; non-finite cameras give non-finite vertices, which :func:`build_scene` skips.
    """
    height, width = image_size_hw
    fx, fy, cx, cy = intrinsic[0, 0], intrinsic[1, 1], intrinsic[0, 2], intrinsic[1, 2]
    corners_px = np.array([[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]])
    corners_cam = np.column_stack([(corners_px[:, 0] - cx) / fx * depth,
                                   (corners_px[:, 1] - cy) / fy * depth,
                                   np.full(4, depth)])
    camera_to_world = geometry.invert_se3(np.asarray(extrinsic, dtype=np.float64))
    apex = camera_to_world[:3, 3]
    corners = corners_cam @ camera_to_world[:3, :3].T + apex

    edges = [(apex, corner) for corner in corners]
    edges += [(corners[k], corners[(k + 1) % 4]) for k in range(4)]
    width_world = depth * (FRUSTUM_EDGE_WIDTH_FRACTION / FRUSTUM_DEPTH_FRACTION)
    vertices, faces = [], []
    for start, end in edges:
        length = np.linalg.norm(end - start)
        if not np.isfinite(length) or length <= 1e-9 * depth:
            continue  # a degenerate camera (e.g. zero field of view) collapses some edges
        base = len(vertices)
        vertices += [start, end]
        for offset in _perpendicular_pair(end - start):
            ribbon = len(vertices)
            vertices += [start + width_world * offset, end + width_world * offset]
            # Ribbon quad: start, end, end+offset, start+offset.
            faces += [[base, base + 1, ribbon + 1], [base, ribbon + 1, ribbon]]
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    faces = np.concatenate([faces, faces[:, ::-1]], axis=0)
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    colors = np.tile(np.asarray(color, dtype=np.uint8), (len(vertices), 1))
    return trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=False)


def _point_cloud(selection: PointSelection) -> trimesh.PointCloud:
    points, colors = selection.points, selection.colors
    if selection.num_points == 0:
        points, colors = _PLACEHOLDER_POINT, _PLACEHOLDER_COLOR
    return trimesh.PointCloud(vertices=points, colors=_rgba(colors))


def _rgba(colors: np.ndarray) -> np.ndarray:
    """``[N, 3]`` uint8 RGB -> ``[N, 4]`` opaque RGBA."""
    rgba = np.full((len(colors), 4), 255, dtype=np.uint8)
    rgba[:, :3] = colors
    return rgba


def _first_point(selection: PointSelection) -> PointSelection:
    return dataclasses.replace(selection, points=selection.points[:1], colors=selection.colors[:1],
                               confidence=selection.confidence[:1], frame_indices=selection.frame_indices[:1],
                               pixel_indices=selection.pixel_indices[:1])


def build_scene(recon: Reconstruction, settings: ViewSettings = ViewSettings(),
                selection: PointSelection | None = None, *, stand_in_points: bool = False) -> trimesh.Scene:
    """The viewer scene: geometry ``points`` plus ``camera_000``, ``camera_001``, ...

    Geometry is stored in world coordinates and the scene root carries
    :func:`alignment_transform` of the first (or the selected) camera.

    Args:
        recon: the reconstruction.
        settings: filters and whether to draw cameras (only the selected one when a single
            frame is selected).
        selection: reuse an already computed ``select_points(recon, settings)``.
        stand_in_points: the ``points`` geometry holds only the first selected point (everything
            else, including the metadata, as for the whole cloud), for writers that put the
            cloud's bytes in afterwards (:func:`export_glb`).

    Returns:
        The scene. ``scene.metadata`` holds ``num_points`` (drawn, 0 for the placeholder),
        ``num_cameras``, ``confidence_threshold``, ``branch``, ``alignment`` (4×4 nested
        list), ``units`` and ``scale_factor``; glTF export keeps them as the scene's ``extras``.
    """
    if selection is None:
        selection = select_points(recon, settings)
    scene = trimesh.Scene()
    cloud = _point_cloud(_first_point(selection) if stand_in_points else selection)
    scene.add_geometry(cloud, geom_name="points", node_name="points")

    scale = scene_scale(selection.points)
    camera_indices = ([] if not settings.show_cameras else
                      [settings.frame_index] if settings.frame_index is not None else
                      list(range(recon.num_frames)))
    for index in camera_indices:
        mesh = frustum_mesh(recon.extrinsics[index], recon.intrinsics[index], recon.image_size_hw,
                            FRUSTUM_DEPTH_FRACTION * scale, camera_color(index, recon.num_frames))
        if len(mesh.faces) == 0 or not np.isfinite(mesh.vertices).all():
            continue  # a broken prediction must not make the whole scene unloadable
        name = f"camera_{index:03d}"
        scene.add_geometry(mesh, geom_name=name, node_name=name)

    reference = settings.frame_index if settings.frame_index is not None else 0
    alignment = alignment_transform(recon.extrinsics[reference])
    if not np.isfinite(alignment).all():
        alignment = OPENCV_TO_GLTF.copy()  # keep the file loadable; the axes are still renamed
    scene.apply_transform(alignment)
    scene.metadata.update({
        "num_points": selection.num_points,
        "num_cameras": len(scene.geometry) - 1,
        # The file's key predates the name min_confidence; readers of the GLB's extras use it.
        "confidence_threshold": float(selection.min_confidence),
        "branch": selection.branch,
        "alignment": alignment.tolist(),
        # glTF means metres; VGGT's lengths are arbitrary until scaled (docs/scene.md).
        "units": recon.units or "arbitrary",
        "scale_factor": recon.scale_factor,
    })
    return scene


def export_glb(recon: Reconstruction, path: str | os.PathLike,
               settings: ViewSettings = ViewSettings(), *, durable: bool = True,
               quantize: bool = False, selection: PointSelection | None = None) -> GlbExport:
    """Write :func:`build_scene` as a ``.glb`` file (atomically; ``durable=False`` skips the
    fsync, for files that are rebuilt after a crash anyway) and report what it shows.

    ``quantize`` stores the point positions as 16-bit integers (12 instead of 16 bytes per
    point, see :mod:`vggt_core.export.glb_quantization`); viewers without glTF's
    ``KHR_mesh_quantization`` cannot read such a file. ``selection`` is
    ``select_points(recon, settings)`` when the caller already has it.
    """
    if selection is None:
        selection = select_points(recon, settings)
    # trimesh writes the cameras and the node tree; the cloud's bytes go in directly, which is
    # several times faster than trimesh's own point export (see glb_points).
    scene = build_scene(recon, settings, selection, stand_in_points=True)
    target = Path(path)
    data = scene.export(file_type="glb")
    if selection.num_points > 1:
        data = replace_point_cloud(data, selection.points, _rgba(selection.colors))
    if quantize:
        data = quantize_point_positions(data)
    atomic_write_bytes(target, data, durable=durable)
    return GlbExport(path=target, num_points=selection.num_points,
                     num_cameras=int(scene.metadata["num_cameras"]),
                     min_confidence=float(selection.min_confidence), branch=selection.branch)
