"""A coloured surface mesh fused from the depth maps (TSDF fusion), built on demand.

The depth maps of all frames are fused into a truncated signed distance field on a regular voxel
grid (Curless & Levoy's running weighted average, as in KinectFusion and Open3D's
``ScalableTSDFVolume``), integrated with vectorised numpy over the voxels near the points; scikit-image's
``marching_cubes`` extracts the zero level set and ``fast-simplification`` (quadric decimation)
brings it to a face budget. Why not Open3D: see docs/surfaces.md, *Mesh*.

Only the pixels the current view shows are fused: the same confidence threshold, background,
sky and exclusion-mask filters as :func:`vggt_core.filtering.select_points`, always on the depth
branch (fusion needs depth along camera rays). The mesh is derived data: the app builds it when
asked and caches it (:func:`mesh_cache_key`); it is never stored with the entry.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass

import numpy as np

from .errors import MeshError
from .filtering import ViewSettings, select_points
from .reconstruction import Reconstruction

__all__ = ["Mesh", "MeshQuality", "MESH_QUALITIES", "DEFAULT_MAX_FACES", "fuse_depth_to_mesh",
           "fusion_pixel_mask", "mesh_cache_key", "voxel_size_for"]


class MeshQuality(str, enum.Enum):
    """Voxel size as a fraction of the scene's extent (the diagonal of the confident points'
    robust bounding box): more voxels, finer detail, more time and memory."""

    DRAFT = "draft"
    STANDARD = "standard"
    FINE = "fine"


MESH_QUALITIES = tuple(quality.value for quality in MeshQuality)
# Voxels along the scene's diagonal. 256 on the synthetic room (diagonal 8.3) is a 3.2 cm voxel.
_VOXELS_PER_DIAGONAL = {MeshQuality.DRAFT: 128, MeshQuality.STANDARD: 256, MeshQuality.FINE: 400}
DEFAULT_MAX_FACES = 500_000
# The truncation band in voxels: wide enough that every voxel next to the surface gets a
# measurement from a few views, narrow enough not to fill thin gaps.
_TRUNCATION_VOXELS = 3.0
# How far behind an observed surface (in truncation bands, along the camera axis) voxels are
# still marked as inside; see _integrate.
_BEHIND_TRUNCATIONS = 3.0
# The bounding box ignores this fraction of the confident points on each side (stray points),
# then grows by a margin of a few voxels so the surface never touches the grid's border.
_BOUNDS_PERCENTILES = (0.5, 99.5)
_BOUNDS_MARGIN_VOXELS = 4
# Pixel stride of the points that set the bounds and the voxels near the surface.
_POINT_STRIDE = 2
# Points used to estimate the bounds: percentiles of an even subset barely move.
_BOUNDS_SAMPLES = 500_000
# Never build a grid bigger than this (voxels); the voxel grows instead (≈ 1.3 GB of float32
# state at 40 M voxels).
_MAX_VOXELS = 40_000_000


@dataclass
class Mesh:
    """A triangle mesh in world coordinates (the reconstruction's OpenCV world axes).

    Attributes:
        vertices: ``[V, 3]`` float32 world positions.
        faces: ``[F, 3]`` int64 vertex indices, counter-clockwise seen from the free space the
            cameras looked through (the normals point towards the cameras).
        vertex_colors: ``[V, 3]`` uint8 RGB, the weighted mean colour of the photos at each vertex.
        voxel_size: the fusion's voxel edge length (world units).
        num_faces_before_simplification: faces marching cubes produced.
        units: the scene's length unit, or None (VGGT's arbitrary units).
    """

    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: np.ndarray
    voxel_size: float
    num_faces_before_simplification: int
    units: str | None = None

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])


def mesh_cache_key(settings: ViewSettings, quality: MeshQuality | str = MeshQuality.STANDARD,
                   max_faces: int | None = DEFAULT_MAX_FACES) -> str:
    """A short string naming everything besides the reconstruction that a mesh depends on, so an
    app can cache meshes per (entry id, key). Settings that do not change the mesh (frame,
    point cap, cameras, branch) are left out."""
    return json.dumps({"conf": float(settings.confidence_threshold), "pct": bool(settings.threshold_is_percentile),
                       "black": bool(settings.filter_black_background), "white": bool(settings.filter_white_background),
                       "sky": bool(settings.hide_sky), "quality": MeshQuality(quality).value,
                       "faces": None if max_faces is None else int(max_faces)}, sort_keys=True)


def _fusion_settings(settings: ViewSettings) -> ViewSettings:
    # All frames, no cap, the depth branch: the filters keep their meaning, the mesh covers the scene.
    return dataclasses.replace(settings, frame_index=None, max_points=None, branch="depth")


def fusion_pixel_mask(recon: Reconstruction, settings: ViewSettings = ViewSettings()) -> np.ndarray:
    """``[S, H, W]`` bool: the pixels that :func:`fuse_depth_to_mesh` integrates, i.e. those
    :func:`~vggt_core.filtering.select_points` keeps (all frames, depth branch, no point cap;
    exclusion masks and the sky, when hidden, left out) with a finite positive depth."""
    selection = select_points(recon, _fusion_settings(settings))
    num_frames, height, width = recon.depth.shape
    mask = np.zeros(num_frames * height * width, dtype=bool)
    mask[selection.frame_indices.astype(np.int64) * (height * width) + selection.pixel_indices] = True
    mask = mask.reshape(num_frames, height, width)
    return mask & np.isfinite(recon.depth) & (recon.depth > 0)


def voxel_size_for(points: np.ndarray, quality: MeshQuality | str = MeshQuality.STANDARD) -> float:
    """The voxel edge for ``quality``: the robust bounding box's diagonal of ``points [N, 3]``
    divided by the quality's voxel count."""
    low, high = _robust_bounds(points)
    return float(np.linalg.norm(high - low)) / _VOXELS_PER_DIAGONAL[MeshQuality(quality)]


def _robust_bounds(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(points) > _BOUNDS_SAMPLES:
        points = points[np.linspace(0, len(points) - 1, _BOUNDS_SAMPLES).astype(np.int64)]
    low, high = np.percentile(points, _BOUNDS_PERCENTILES, axis=0)
    return low.astype(np.float64), high.astype(np.float64)


@dataclass
class _Volume:
    """The TSDF grid, stored only for the ``M`` voxels near a confident point (the rest never
    lie in a truncation band). ``origin`` is the centre of voxel (0, 0, 0); ``active [M]`` holds
    the flat indices (x-major, then y, then z, over ``shape``) of the stored voxels."""

    origin: np.ndarray
    voxel_size: float
    shape: tuple[int, int, int]
    tsdf: np.ndarray          # [M] float32 in [-1, 1]
    weight: np.ndarray        # [M] float32 number of observations
    color_sum: np.ndarray     # [M, 3] float32 Σ rgb of the colour samples
    color_count: np.ndarray   # [M] float32 number of colour samples
    active: np.ndarray        # [M] int64 flat voxel indices, sorted


def _voxels_near_points(points: np.ndarray, low: np.ndarray, voxel_size: float,
                        shape: tuple[int, int, int]) -> np.ndarray:
    """Sorted flat indices ``[M]`` of the voxels within the truncation band (plus one voxel) of
    ``points [N, 3]``; ``low`` is the centre of voxel (0, 0, 0)."""
    from scipy.ndimage import binary_dilation

    index = np.rint((points - low.astype(np.float32)) * np.float32(1.0 / voxel_size)).astype(np.int32)
    inside = ((index[:, 0] >= 0) & (index[:, 0] < shape[0]) & (index[:, 1] >= 0) & (index[:, 1] < shape[1])
              & (index[:, 2] >= 0) & (index[:, 2] < shape[2]))
    occupied = np.zeros(shape, dtype=bool)
    occupied.reshape(-1)[np.ravel_multi_index(index[inside].T, shape)] = True
    band = binary_dilation(occupied, iterations=int(np.ceil(_TRUNCATION_VOXELS)) + 1)
    return np.flatnonzero(band)


def _voxel_centres(volume: _Volume) -> np.ndarray:
    """``[3, M]`` float32 world centres of the stored voxels (coordinate-major, so that each
    coordinate is one contiguous row for the per-frame arithmetic)."""
    index = np.stack(np.unravel_index(volume.active, volume.shape), axis=0).astype(np.float32)
    return index * np.float32(volume.voxel_size) + volume.origin.astype(np.float32)[:, None]


def _integrate(volume: _Volume, centres: np.ndarray, depth: np.ndarray, usable: np.ndarray, image: np.ndarray,
               extrinsic: np.ndarray, intrinsic: np.ndarray) -> None:
    """Fuse one frame: ``depth [H, W]``, ``usable [H, W]`` bool, ``image [H, W, 3]`` uint8,
    ``extrinsic [3, 4]`` world-to-camera, ``intrinsic [3, 3]``; ``centres [3, M]`` of the stored voxels."""
    height, width = depth.shape
    truncation = np.float32(_TRUNCATION_VOXELS * volume.voxel_size)
    rotation = extrinsic[:, :3].astype(np.float32)
    translation = extrinsic[:, 3].astype(np.float32)
    camera = rotation @ centres
    camera += translation[:, None]
    x, y, z = camera
    in_front = z > 1e-6
    inverse_z = np.divide(1.0, z, out=np.zeros_like(z), where=in_front)
    # Depth pixels have their centres at integer coordinates (docs/architecture.md, *Conventions*).
    u = np.rint(x * inverse_z * np.float32(intrinsic[0, 0]) + np.float32(intrinsic[0, 2]))
    v = np.rint(y * inverse_z * np.float32(intrinsic[1, 1]) + np.float32(intrinsic[1, 2]))
    inside = in_front & (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)
    # Dense over all stored voxels (masked arithmetic, one gather per image): with numpy on one
    # core this is faster and steadier than compacting the visible voxels first.
    pixel = np.where(inside, v * width + u, 0).astype(np.int64)
    depth_flat = np.where(usable, depth, 0.0).astype(np.float32).reshape(-1)
    observed_depth = depth_flat[pixel] * inside
    signed_distance = observed_depth - z
    # Voxels far behind the observed surface are unknown (occluded), not inside an object. The
    # distance is measured along the camera axis, which exceeds the distance to the surface by
    # 1/cos(viewing angle): seen at a grazing angle, a voxel one voxel under a floor is several
    # truncation bands "behind" it. Such voxels are still counted as inside (clamped to -1),
    # up to _BEHIND_TRUNCATIONS bands, so that the surface keeps observed voxels on both sides.
    update = (observed_depth > 0) & (signed_distance >= -_BEHIND_TRUNCATIONS * truncation)
    measured = np.clip(signed_distance / truncation, np.float32(-1.0), np.float32(1.0))
    new_weight = volume.weight + update
    np.copyto(volume.tsdf, (volume.tsdf * volume.weight + measured) / np.maximum(new_weight, np.float32(1.0)),
              where=update)
    volume.weight[:] = new_weight
    # Colour only from the truncation band in front of the surface and behind it: a voxel in
    # free space far in front would take the colour of whatever lies behind it.
    near = update & (measured < 1.0)
    near_voxels = np.flatnonzero(near)
    colors = image.reshape(-1, 3)[pixel[near_voxels]].astype(np.float32)
    volume.color_sum[near_voxels] += colors
    volume.color_count[near_voxels] += 1.0


def _sample_colors(volume: _Volume, points: np.ndarray) -> np.ndarray:
    """Trilinear mean colour ``[P, 3]`` uint8 at world ``points [P, 3]`` from the colour sums
    (each corner weighted by its number of samples, so unseen voxels do not darken it)."""
    grid = (points.astype(np.float64) - volume.origin) / volume.voxel_size
    base = np.floor(grid)
    fraction = grid - base
    base = base.astype(np.int64)
    shape = np.asarray(volume.shape)
    color_total = np.zeros((len(points), 3))
    weight_total = np.zeros(len(points))
    for corner in range(8):
        offset = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        index = base + offset
        valid = ((index >= 0) & (index < shape)).all(axis=1)
        index = np.clip(index, 0, shape - 1)
        flat = (index[:, 0] * volume.shape[1] + index[:, 1]) * volume.shape[2] + index[:, 2]
        position = np.minimum(np.searchsorted(volume.active, flat), len(volume.active) - 1)
        stored = volume.active[position] == flat
        coefficient = np.where(offset.astype(bool), fraction, 1.0 - fraction).prod(axis=1) * valid * stored
        color_total += coefficient[:, None] * volume.color_sum[position]
        weight_total += coefficient * volume.color_count[position]
    colors = color_total / np.maximum(weight_total, 1e-6)[:, None]
    return np.clip(np.rint(colors), 0, 255).astype(np.uint8)


def _faces_between_observed_voxels(grid_vertices: np.ndarray, faces: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """The faces ``[F', 3]`` of ``faces [F, 3]`` whose vertices all lie on a voxel edge with two
    observed ends. ``grid_vertices [V, 3]`` are in voxel units; ``observed`` is the
    ``[X, Y, Z]`` bool grid. A vertex between a measured voxel and an unmeasured one (whose
    value is the initial +1) marks no surface: it is where the measurements end."""
    upper = np.asarray(observed.shape) - 1
    low_corner = np.clip(np.floor(grid_vertices).astype(np.int64), 0, upper)
    high_corner = np.clip(np.ceil(grid_vertices).astype(np.int64), 0, upper)
    good = (observed[low_corner[:, 0], low_corner[:, 1], low_corner[:, 2]]
            & observed[high_corner[:, 0], high_corner[:, 1], high_corner[:, 2]])
    return faces[good[faces].all(axis=1)]


def _without_unused_vertices(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``vertices [V, 3]`` reduced to those ``faces [F, 3]`` use, and the faces renumbered."""
    used, inverse = np.unique(faces.reshape(-1), return_inverse=True)
    return vertices[used], inverse.reshape(faces.shape).astype(np.int64)


def _simplify(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation of ``vertices [V, 3]``, ``faces [F, 3]`` to at most about ``max_faces``."""
    import fast_simplification

    reduction = 1.0 - max_faces / len(faces)
    simplified_vertices, simplified_faces = fast_simplification.simplify(
        vertices.astype(np.float32), faces.astype(np.int32), target_reduction=reduction)
    return np.asarray(simplified_vertices, dtype=np.float32), np.asarray(simplified_faces, dtype=np.int64)


def fuse_depth_to_mesh(recon: Reconstruction, settings: ViewSettings = ViewSettings(), *,
                       quality: MeshQuality | str = MeshQuality.STANDARD,
                       max_faces: int | None = DEFAULT_MAX_FACES,
                       voxel_size: float | None = None) -> Mesh:
    """Fuse the depth maps of every frame into a coloured triangle mesh.

    Args:
        recon: the reconstruction (depth, cameras and frames are used).
        settings: the current view's filters; only the pixels they keep are fused (see
            :func:`fusion_pixel_mask`). ``frame_index``, ``branch`` and ``max_points`` are ignored.
        quality: the voxel size, relative to the scene's extent (:class:`MeshQuality`).
        max_faces: simplify to at most this many faces (None: keep marching cubes' mesh).
        voxel_size: an explicit voxel edge in world units instead of ``quality``.

    Returns:
        The :class:`Mesh`, in world coordinates.

    Raises:
        MeshError: a single frame, no pixel passes the filters, or the fused volume holds no
            surface; the message says what to change.
    """
    from skimage.measure import marching_cubes

    try:
        quality = MeshQuality(quality)
    except ValueError as error:
        raise MeshError(f"unknown mesh quality {quality!r}; choose one of {MESH_QUALITIES}") from error
    if max_faces is not None and int(max_faces) < 4:
        raise MeshError(f"the face budget must be at least 4, got {max_faces}")
    if recon.num_frames < 2:
        raise MeshError("a mesh needs at least two frames: one depth map cannot be fused into a surface "
                         "(show the points instead)")
    usable = fusion_pixel_mask(recon, settings)
    if not usable.any():
        raise MeshError("no pixel passes the current filters, so there is nothing to build a mesh from: "
                         "lower the confidence threshold")
    # Every other row and column: the bounds and the voxels near the surface need far fewer
    # points than the fused pixels (a pixel covers a fraction of a voxel at any usual quality),
    # and the band around them is several voxels wide.
    points = recon.points_from_depth[:, ::_POINT_STRIDE, ::_POINT_STRIDE][usable[:, ::_POINT_STRIDE, ::_POINT_STRIDE]]
    points = points[np.isfinite(points).all(axis=1)]
    if len(points) == 0:
        points = recon.points_from_depth[usable]
    low, high = _robust_bounds(points)
    if voxel_size is None:
        voxel_size = float(np.linalg.norm(high - low)) / _VOXELS_PER_DIAGONAL[quality]
    if not np.isfinite(voxel_size) or voxel_size <= 0:
        raise MeshError("the confident points all lie at one place, so there is no surface to build")
    margin = _BOUNDS_MARGIN_VOXELS * voxel_size
    low, high = low - margin, high + margin
    shape = tuple(int(np.ceil(extent / voxel_size)) + 1 for extent in high - low)
    while np.prod(shape, dtype=np.int64) > _MAX_VOXELS:
        voxel_size *= 1.25
        shape = tuple(int(np.ceil(extent / voxel_size)) + 1 for extent in high - low)
    active = _voxels_near_points(points, low, float(voxel_size), shape)
    count = len(active)
    volume = _Volume(origin=low, voxel_size=float(voxel_size), shape=shape,
                     tsdf=np.ones(count, np.float32), weight=np.zeros(count, np.float32),
                     color_sum=np.zeros((count, 3), np.float32), color_count=np.zeros(count, np.float32),
                     active=active)
    centres = _voxel_centres(volume)
    for frame in range(recon.num_frames):
        # A frame whose camera is not finite (a broken prediction) cannot place its depth.
        cameras_finite = np.isfinite(recon.extrinsics[frame]).all() and np.isfinite(recon.intrinsics[frame]).all()
        if usable[frame].any() and cameras_finite:
            _integrate(volume, centres, recon.depth[frame], usable[frame], recon.images[frame],
                       recon.extrinsics[frame], recon.intrinsics[frame])
    del centres

    observed_flat = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=bool)
    tsdf_flat = np.ones(observed_flat.shape, dtype=np.float32)
    observed_flat[active[volume.weight > 0]] = True
    tsdf_flat[active] = volume.tsdf
    observed, tsdf = observed_flat.reshape(shape), tsdf_flat.reshape(shape)
    if not observed.any() or tsdf[observed].min() > 0 or tsdf[observed].max() < 0:
        raise MeshError("the fused depth maps hold no surface: the frames do not overlap enough")
    # Marching cubes only in cubes whose eight corners were all observed: unobserved voxels
    # (behind surfaces, outside every view) would otherwise make a surface where a measured
    # value meets the unknown. scikit-image tests the mask at a cube's first corner.
    cubes = observed.copy()
    for axis in range(3):
        shifted = np.zeros_like(cubes)
        index = [slice(None)] * 3
        index[axis] = slice(None, -1)
        source = [slice(None)] * 3
        source[axis] = slice(1, None)
        shifted[tuple(index)] = cubes[tuple(source)]
        cubes &= shifted
    vertices, faces, _, _ = marching_cubes(tsdf, level=0.0, spacing=(voxel_size,) * 3, mask=cubes,
                                           allow_degenerate=False)
    faces = _faces_between_observed_voxels(vertices / voxel_size, faces, observed)
    if len(faces) == 0:
        raise MeshError("the fused depth maps hold no surface: the frames do not overlap enough")
    vertices, faces = _without_unused_vertices(vertices, faces)
    # scikit-image winds faces so that their normals point towards increasing values: here
    # the free space the cameras looked through.
    faces = faces.astype(np.int64)
    vertices = (vertices + low).astype(np.float32)
    num_faces = len(faces)
    if max_faces is not None and num_faces > int(max_faces):
        vertices, faces = _simplify(vertices, faces, int(max_faces))
    colors = _sample_colors(volume, vertices)
    return Mesh(vertices=vertices, faces=faces, vertex_colors=colors, voxel_size=float(voxel_size),
                num_faces_before_simplification=num_faces, units=recon.units)
