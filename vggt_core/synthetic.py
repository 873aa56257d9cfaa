"""Deterministic ray-cast scenes with exact depth and cameras, for examples and tests.

Each scene is a set of analytic surfaces (the inside of a room box, axis-aligned boxes, spheres,
vertical capped cylinders) with procedural colour textures chosen so that image features are
distinctive and trackable. Cameras sit on a smooth arc and look at the scene centre.

The depth is exact for the unprojection pixel convention (docs/architecture.md, *Conventions*): the ray of integer pixel ``(u, v)``
has camera-frame direction ``((u − c_x)/f_x, (v − c_y)/f_y, 1)``. Because that direction has unit
z, the ray parameter of the hit *is* the z-depth, and
``geometry.unproject_depth_map_to_world_points(depth, extrinsics, intrinsics)`` lands on the
surfaces up to float32 rounding.

World axes follow OpenCV: x right, y **down**, z forward; floors are at positive y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # the reconstruction type imports torch; the scenes are numpy only
    from .reconstruction import Reconstruction

__all__ = [
    "SyntheticScene",
    "SCENE_NAMES",
    "render_scene",
    "save_scene_images",
    "save_training_scene",
    "scene_surface_distance",
    "scene_extent",
    "reconstruction_from_synthetic_scene",
]

SCENE_NAMES = ("room", "table")

_NO_HIT = np.inf
_MIN_HIT_DISTANCE = 1e-6  # ignore self-intersections right at the ray origin
_LIGHT_DIRECTION = np.array([0.35, -0.8, -0.45]) / np.linalg.norm([0.35, -0.8, -0.45])


@dataclass
class SyntheticScene:
    """One rendered scene.

    Attributes:
        name: scene name, one of :data:`SCENE_NAMES`.
        images: ``[S, H, W, 3]`` uint8 RGB.
        depth: ``[S, H, W]`` float32 z-depth along the camera axis (not the ray length).
        extrinsics: ``[S, 3, 4]`` float32 world-to-camera ``[R | t]``, OpenCV axes.
        intrinsics: ``[S, 3, 3]`` float32, principal point ``(W/2, H/2)``, square pixels.
    """

    name: str
    images: np.ndarray
    depth: np.ndarray
    extrinsics: np.ndarray
    intrinsics: np.ndarray

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size_hw(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])


# --------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------


def _hash_to_unit(cells: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random values in [0, 1) per integer lattice cell.

    Args:
        cells: ``[N, 3]`` int64 cell indices.
        salt: mixes the seed and the surface id so that every surface gets its own pattern.

    Returns:
        ``[N]`` float64.
    """
    # Wrapping uint64 arithmetic is the point here (a splitmix-style integer hash).
    value = (cells[:, 0].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ cells[:, 1].astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
             ^ cells[:, 2].astype(np.uint64) * np.uint64(0x165667B19E3779F9)
             ^ np.uint64((salt * 0x27D4EB2F165667C5) % (1 << 64)))
    value ^= value >> np.uint64(31)
    value *= np.uint64(0xBF58476D1CE4E5B9)
    value ^= value >> np.uint64(29)
    return (value >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class _Texture:
    """A solid (3-D) procedural texture: the colour is a function of the world hit point.

    Solid textures need no surface parametrisation; the ``offset`` keeps flat surfaces away from
    cell boundaries, where float rounding would make the pattern flicker between views.
    """

    base_rgb: tuple[float, float, float]
    pattern: str  # "cells", "checker" or "stripes"
    cell_size: float
    accent_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    offset: tuple[float, float, float] = (0.137, 0.291, 0.413)

    def colour(self, points: np.ndarray, salt: int) -> np.ndarray:
        """Albedo ``[N, 3]`` in [0, 1] for hit points ``[N, 3]``."""
        base = np.asarray(self.base_rgb)
        accent = np.asarray(self.accent_rgb)
        scaled = (points + np.asarray(self.offset)) / self.cell_size
        cells = np.floor(scaled).astype(np.int64)
        if self.pattern == "cells":
            # Every cell its own random tint: each neighbourhood looks unique, good for matching.
            tint = np.stack([_hash_to_unit(cells, salt + channel) for channel in range(3)], -1)
            albedo = 0.45 * base + 0.55 * tint
        elif self.pattern == "checker":
            parity = (cells.sum(axis=1) & 1).astype(np.float64)[:, None]
            albedo = base * (1.0 - parity) + accent * parity
        elif self.pattern == "stripes":
            phase = scaled.sum(axis=1)
            band = (0.5 + 0.5 * np.sin(2.0 * math.pi * phase))[:, None]
            albedo = base * (1.0 - band) + accent * band
        else:
            raise ValueError(f"unknown texture pattern {self.pattern!r}")
        # Fine blocky speckle adds corners at a smaller scale than the main pattern.
        fine_cells = np.floor(scaled * 4.0).astype(np.int64)
        speckle = _hash_to_unit(fine_cells, salt + 101)[:, None]
        albedo = albedo * (0.75 + 0.5 * speckle)
        return np.clip(albedo, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Analytic surfaces
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Box:
    """Axis-aligned box. ``inside=True`` is a room: rays start inside and hit its inner faces."""

    centre: tuple[float, float, float]
    half_size: tuple[float, float, float]
    texture: _Texture
    inside: bool = False
    # Optional per-face textures in the order (-x, +x, -y, +y, -z, +z); distinct walls make the
    # room's views easier to tell apart and to match.
    face_textures: tuple[_Texture, ...] | None = None

    def albedo(self, points: np.ndarray, salt: int) -> np.ndarray:
        """Colour ``[N, 3]`` of hit points ``[N, 3]`` that lie on this box."""
        if self.face_textures is None:
            return self.texture.colour(points, salt)
        relative = (points - np.asarray(self.centre)) / np.asarray(self.half_size)
        axis = np.abs(relative).argmax(axis=1)
        face = 2 * axis + (relative[np.arange(len(points)), axis] > 0)
        colours = np.empty_like(points)
        for index, texture in enumerate(self.face_textures):
            mask = face == index
            if mask.any():
                colours[mask] = texture.colour(points[mask], salt + 17 * index)
        return colours

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slab test. ``origins``/``directions`` ``[N, 3]`` → ``(t [N], normals [N, 3])``."""
        centre, half = np.asarray(self.centre), np.asarray(self.half_size)
        # Exact zeros would give 0/0 = NaN for rays lying in a slab plane; nudge them.
        safe = np.where(directions == 0.0, 1e-30, directions)
        t_low = (centre - half - origins) / safe
        t_high = (centre + half - origins) / safe
        t_enter_axes = np.minimum(t_low, t_high)
        t_exit_axes = np.maximum(t_low, t_high)
        t_enter = t_enter_axes.max(axis=1)
        t_exit = t_exit_axes.min(axis=1)
        rows = np.arange(len(origins))
        if self.inside:
            axis = t_exit_axes.argmin(axis=1)
            t = np.where(t_exit > _MIN_HIT_DISTANCE, t_exit, _NO_HIT)
            sign = -np.sign(safe[rows, axis])  # inner faces point back into the room
        else:
            axis = t_enter_axes.argmax(axis=1)
            hit = (t_enter <= t_exit) & (t_enter > _MIN_HIT_DISTANCE)
            t = np.where(hit, t_enter, _NO_HIT)
            sign = -np.sign(safe[rows, axis])
        normals = np.zeros_like(origins)
        normals[rows, axis] = sign
        return t, normals

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Unsigned distance ``[N]`` of ``points [N, 3]`` to the box surface."""
        offset = np.abs(points - np.asarray(self.centre)) - np.asarray(self.half_size)
        outside = np.linalg.norm(np.maximum(offset, 0.0), axis=1)
        inside = np.minimum(offset.max(axis=1), 0.0)
        return np.abs(outside + inside)


@dataclass(frozen=True)
class _Sphere:
    centre: tuple[float, float, float]
    radius: float
    texture: _Texture

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest hit in front of the origin. ``[N, 3]`` inputs → ``(t [N], normals [N, 3])``."""
        centre = np.asarray(self.centre)
        relative = origins - centre
        a = np.einsum("ij,ij->i", directions, directions)
        half_b = np.einsum("ij,ij->i", directions, relative)
        c = np.einsum("ij,ij->i", relative, relative) - self.radius ** 2
        discriminant = half_b ** 2 - a * c
        root = np.sqrt(np.maximum(discriminant, 0.0))
        t_near = (-half_b - root) / a
        t_far = (-half_b + root) / a
        t = np.where(t_near > _MIN_HIT_DISTANCE, t_near, t_far)
        t = np.where((discriminant >= 0.0) & (t > _MIN_HIT_DISTANCE), t, _NO_HIT)
        hit_points = origins + np.where(np.isfinite(t), t, 0.0)[:, None] * directions
        normals = (hit_points - centre) / self.radius
        return t, normals

    def albedo(self, points: np.ndarray, salt: int) -> np.ndarray:
        """Colour ``[N, 3]`` of hit points ``[N, 3]``."""
        return self.texture.colour(points, salt)

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Unsigned distance ``[N]`` of ``points [N, 3]`` to the sphere."""
        return np.abs(np.linalg.norm(points - np.asarray(self.centre), axis=1) - self.radius)


@dataclass(frozen=True)
class _Cylinder:
    """Capped cylinder with a vertical (y) axis, spanning ``y_top <= y <= y_bottom``."""

    centre_xz: tuple[float, float]
    radius: float
    y_top: float
    y_bottom: float
    texture: _Texture

    def intersect(self, origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest hit of side or caps. ``[N, 3]`` inputs → ``(t [N], normals [N, 3])``."""
        cx, cz = self.centre_xz
        rel_x, rel_z = origins[:, 0] - cx, origins[:, 2] - cz
        dir_x, dir_z = directions[:, 0], directions[:, 2]

        # Side: circle in the xz plane, valid only between the caps.
        a = dir_x ** 2 + dir_z ** 2
        half_b = dir_x * rel_x + dir_z * rel_z
        c = rel_x ** 2 + rel_z ** 2 - self.radius ** 2
        discriminant = half_b ** 2 - a * c
        with np.errstate(divide="ignore", invalid="ignore"):
            t_side = (-half_b - np.sqrt(np.maximum(discriminant, 0.0))) / a
        side_y = origins[:, 1] + t_side * directions[:, 1]
        side_ok = ((discriminant >= 0.0) & (a > 0.0) & (t_side > _MIN_HIT_DISTANCE)
                   & (side_y >= self.y_top) & (side_y <= self.y_bottom))
        t_side = np.where(side_ok, t_side, _NO_HIT)

        # Caps: the nearer of the two discs.
        safe_dy = np.where(directions[:, 1] == 0.0, 1e-30, directions[:, 1])
        t_caps = []
        for cap_y in (self.y_top, self.y_bottom):
            t_cap = (cap_y - origins[:, 1]) / safe_dy
            cap_x = rel_x + t_cap * dir_x
            cap_z = rel_z + t_cap * dir_z
            cap_ok = (t_cap > _MIN_HIT_DISTANCE) & (cap_x ** 2 + cap_z ** 2 <= self.radius ** 2)
            t_caps.append(np.where(cap_ok, t_cap, _NO_HIT))

        t_all = np.stack([t_side] + t_caps, axis=1)
        which = t_all.argmin(axis=1)
        t = t_all[np.arange(len(origins)), which]
        hit = origins + np.where(np.isfinite(t), t, 0.0)[:, None] * directions
        side_normals = np.stack([(hit[:, 0] - cx) / self.radius, np.zeros(len(t)),
                                 (hit[:, 2] - cz) / self.radius], axis=1)
        cap_normals = np.zeros_like(hit)
        cap_normals[:, 1] = np.where(which == 1, -1.0, 1.0)
        normals = np.where((which == 0)[:, None], side_normals, cap_normals)
        return t, normals

    def albedo(self, points: np.ndarray, salt: int) -> np.ndarray:
        """Colour ``[N, 3]`` of hit points ``[N, 3]``."""
        return self.texture.colour(points, salt)

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Unsigned distance ``[N]`` of ``points [N, 3]`` to the capped cylinder's surface."""
        cx, cz = self.centre_xz
        radial = np.hypot(points[:, 0] - cx, points[:, 2] - cz) - self.radius
        y_mid = 0.5 * (self.y_top + self.y_bottom)
        axial = np.abs(points[:, 1] - y_mid) - 0.5 * (self.y_bottom - self.y_top)
        outside = np.hypot(np.maximum(radial, 0.0), np.maximum(axial, 0.0))
        inside = np.minimum(np.maximum(radial, axial), 0.0)
        return np.abs(outside + inside)


@dataclass(frozen=True)
class _SceneLayout:
    """Fixed geometry of a scene plus where its cameras go."""

    surfaces: tuple
    look_at: tuple[float, float, float]
    orbit_radius: float
    orbit_height: float  # camera y (negative is above the floor level y = 0 reference)
    arc_degrees: float
    field_of_view_degrees: float = 60.0  # horizontal
    camera_jitter: float = 0.02


def _room_layout() -> _SceneLayout:
    floor_y = 1.5
    surfaces = (
        # The room comes first: its faces get salts 0.. and it encloses every camera.
        _Box((0.0, 0.0, 0.0), (2.6, 1.5, 2.6),
             _Texture((0.55, 0.45, 0.35), "cells", 0.35), inside=True,
             face_textures=(
                 _Texture((0.75, 0.3, 0.3), "cells", 0.3),                               # -x wall
                 _Texture((0.3, 0.65, 0.35), "stripes", 0.25, accent_rgb=(0.9, 0.9, 0.7)),  # +x
                 _Texture((0.85, 0.85, 0.8), "cells", 0.5),                              # ceiling
                 _Texture((0.5, 0.35, 0.2), "checker", 0.4, accent_rgb=(0.85, 0.75, 0.55)),  # floor
                 _Texture((0.3, 0.4, 0.8), "cells", 0.3),                                # -z wall
                 _Texture((0.8, 0.6, 0.2), "checker", 0.3, accent_rgb=(0.25, 0.2, 0.5)),   # +z
             )),
        _Box((-0.7, floor_y - 0.35, 0.4), (0.35, 0.35, 0.35),
             _Texture((0.85, 0.25, 0.2), "checker", 0.14, accent_rgb=(0.95, 0.9, 0.3))),
        _Box((0.8, floor_y - 0.25, -0.5), (0.3, 0.25, 0.45),
             _Texture((0.2, 0.35, 0.8), "stripes", 0.22, accent_rgb=(0.9, 0.95, 1.0))),
        _Sphere((0.3, floor_y - 0.4, 0.9), 0.4,
                _Texture((0.25, 0.7, 0.3), "cells", 0.12)),
        _Sphere((-0.4, floor_y - 0.25, -0.8), 0.25,
                _Texture((0.8, 0.5, 0.9), "checker", 0.09, accent_rgb=(0.2, 0.1, 0.3))),
    )
    return _SceneLayout(surfaces, look_at=(0.0, 0.9, 0.0), orbit_radius=1.9, orbit_height=0.1,
                        arc_degrees=70.0)


def _table_layout() -> _SceneLayout:
    table_top = 0.0  # y of the upper face of the table
    floor_y = 0.75
    top_thickness = 0.06
    leg_half = 0.04
    legs = tuple(
        _Box((x, 0.5 * (table_top + top_thickness + floor_y), z),
             (leg_half, 0.5 * (floor_y - table_top - top_thickness), leg_half),
             _Texture((0.3, 0.2, 0.12), "stripes", 0.05, accent_rgb=(0.45, 0.3, 0.2)))
        for x in (-0.85, 0.85) for z in (-0.45, 0.45)
    )
    surfaces = (
        _Box((0.0, floor_y - 2.0, 0.0), (4.0, 2.0, 4.0),
             _Texture((0.6, 0.6, 0.65), "cells", 0.4), inside=True,
             face_textures=(
                 _Texture((0.7, 0.5, 0.5), "cells", 0.4),
                 _Texture((0.5, 0.7, 0.5), "cells", 0.4),
                 _Texture((0.9, 0.9, 0.9), "cells", 0.6),
                 _Texture((0.45, 0.45, 0.5), "checker", 0.5, accent_rgb=(0.75, 0.75, 0.7)),
                 _Texture((0.5, 0.55, 0.75), "stripes", 0.3, accent_rgb=(0.9, 0.85, 0.7)),
                 _Texture((0.75, 0.7, 0.5), "cells", 0.4),
             )),
        _Box((0.0, table_top + 0.5 * top_thickness, 0.0), (0.95, 0.5 * top_thickness, 0.55),
             _Texture((0.65, 0.42, 0.25), "cells", 0.08)),
        *legs,
        _Box((-0.45, table_top - 0.15, 0.1), (0.15, 0.15, 0.2),
             _Texture((0.9, 0.3, 0.25), "checker", 0.07, accent_rgb=(1.0, 0.95, 0.8))),
        _Sphere((0.35, table_top - 0.18, -0.15), 0.18,
                _Texture((0.2, 0.55, 0.85), "cells", 0.06)),
        _Cylinder((0.05, 0.3), 0.12, table_top - 0.35, table_top,
                  _Texture((0.3, 0.75, 0.35), "stripes", 0.07, accent_rgb=(0.95, 0.95, 0.6))),
        _Sphere((-0.1, table_top - 0.08, -0.35), 0.08,
                _Texture((0.95, 0.75, 0.2), "checker", 0.04, accent_rgb=(0.4, 0.1, 0.1))),
    )
    return _SceneLayout(surfaces, look_at=(0.0, -0.1, 0.0), orbit_radius=1.6, orbit_height=-0.9,
                        arc_degrees=80.0)


_LAYOUTS: dict[str, Callable[[], _SceneLayout]] = {"room": _room_layout, "table": _table_layout}


def _layout(name: str) -> _SceneLayout:
    if name not in _LAYOUTS:
        raise ValueError(f"unknown synthetic scene {name!r}; choose one of {SCENE_NAMES}")
    return _LAYOUTS[name]()


def scene_surface_distance(name: str, points: np.ndarray) -> np.ndarray:
    """Distance of each point to the nearest analytic surface of a scene.

    Args:
        name: one of :data:`SCENE_NAMES`.
        points: ``[N, 3]`` world points (any float dtype).

    Returns:
        ``[N]`` float64 unsigned distances (0 on a surface).
    """
    world = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    distances = [surface.distance(world) for surface in _layout(name).surfaces]
    return np.min(np.stack(distances, axis=0), axis=0)


def scene_extent(name: str) -> float:
    """Diagonal length of the scene's enclosing room, a scale for relative tolerances."""
    room = _layout(name).surfaces[0]
    return float(2.0 * np.linalg.norm(room.half_size))


# --------------------------------------------------------------------------------------------
# Cameras and rendering
# --------------------------------------------------------------------------------------------


def _look_at_extrinsic(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-to-camera ``[3, 4]`` for a camera at ``centre [3]`` looking at ``target [3]``.

    OpenCV axes with the world's +y as "down", so the horizon stays level.
    """
    forward = target - centre
    forward = forward / np.linalg.norm(forward)
    right = np.cross(np.array([0.0, 1.0, 0.0]), forward)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward], axis=0)
    return np.concatenate([rotation, (-rotation @ centre)[:, None]], axis=1)


def _camera_path(layout: _SceneLayout, num_views: int, rng: np.random.Generator) -> np.ndarray:
    """``[S, 3, 4]`` float64 extrinsics along an arc around the look-at point."""
    target = np.asarray(layout.look_at, dtype=np.float64)
    half_arc = math.radians(layout.arc_degrees) / 2.0
    fractions = np.linspace(0.0, 1.0, num_views) if num_views > 1 else np.array([0.5])
    extrinsics = []
    for fraction in fractions:
        angle = -half_arc + 2.0 * half_arc * fraction
        # A gentle bob in height gives vertical parallax as well as horizontal.
        height = layout.orbit_height - 0.1 * math.sin(math.pi * fraction)
        centre = np.array([target[0] + layout.orbit_radius * math.sin(angle), height,
                           target[2] - layout.orbit_radius * math.cos(angle)])
        centre = centre + rng.uniform(-layout.camera_jitter, layout.camera_jitter, size=3)
        extrinsics.append(_look_at_extrinsic(centre, target))
    return np.stack(extrinsics, axis=0)


def _intrinsics(width: int, height: int, horizontal_fov_degrees: float) -> np.ndarray:
    """``[3, 3]`` float64 pinhole with square pixels and principal point ``(W/2, H/2)``."""
    focal = (width / 2.0) / math.tan(math.radians(horizontal_fov_degrees) / 2.0)
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def _cast_rays(layout: _SceneLayout, origins: np.ndarray, directions: np.ndarray,
               salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Trace rays ``[N, 3]`` (directions with camera-frame z = 1) against every surface.

    Returns:
        ``(t [N], rgb [N, 3])``: ray parameter of the nearest hit (= z-depth) and shaded colour.
    """
    best_t = np.full(len(origins), _NO_HIT)
    best_surface = np.full(len(origins), -1)
    best_normals = np.zeros_like(origins)
    for index, surface in enumerate(layout.surfaces):
        t, normals = surface.intersect(origins, directions)
        closer = t < best_t
        best_t = np.where(closer, t, best_t)
        best_surface = np.where(closer, index, best_surface)
        best_normals[closer] = normals[closer]
    if not np.all(np.isfinite(best_t)):
        raise RuntimeError("a synthetic camera ray escaped the scene; the layout is not closed")

    hit_points = origins + best_t[:, None] * directions
    albedo = np.empty_like(hit_points)
    for index, surface in enumerate(layout.surfaces):
        mask = best_surface == index
        if mask.any():
            albedo[mask] = surface.albedo(hit_points[mask], salt + 1000 * index)

    # Two-sided Lambert: flip normals towards the viewer so inner room faces are lit too.
    facing = np.einsum("ij,ij->i", best_normals, directions) > 0.0
    best_normals[facing] *= -1.0
    lambert = np.clip(best_normals @ -_LIGHT_DIRECTION, 0.0, 1.0)
    shading = 0.45 + 0.55 * lambert
    return best_t, albedo * shading[:, None]


def render_scene(name: str = "room", num_views: int = 8, width: int = 168, height: int = 126,
                 seed: int = 0) -> SyntheticScene:
    """Ray-cast a synthetic scene from cameras on an arc.

    Args:
        name: one of :data:`SCENE_NAMES`.
        num_views: number of cameras ``S`` (>= 1).
        width, height: image size in pixels.
        seed: changes the texture colours and a small camera jitter; geometry is fixed per name,
            so :func:`scene_surface_distance` holds for every seed. Same arguments → same bytes.

    Returns:
        A :class:`SyntheticScene` with ``images [S, H, W, 3]`` uint8, ``depth [S, H, W]`` float32,
        ``extrinsics [S, 3, 4]`` and ``intrinsics [S, 3, 3]`` float32.
    """
    if num_views < 1 or width < 1 or height < 1:
        raise ValueError("num_views, width and height must be positive")
    layout = _layout(name)
    rng = np.random.default_rng(seed)
    # Render with the float32-rounded cameras so that the stored depth agrees with them exactly.
    extrinsics = _camera_path(layout, num_views, rng).astype(np.float32)
    intrinsics = np.broadcast_to(
        _intrinsics(width, height, layout.field_of_view_degrees).astype(np.float32),
        (num_views, 3, 3)).copy()
    salt = int(rng.integers(0, 2 ** 31))

    columns, rows = np.meshgrid(np.arange(width, dtype=np.float64),
                                np.arange(height, dtype=np.float64))
    images = np.empty((num_views, height, width, 3), dtype=np.uint8)
    depth = np.empty((num_views, height, width), dtype=np.float32)
    for view in range(num_views):
        rotation = extrinsics[view, :, :3].astype(np.float64)
        translation = extrinsics[view, :, 3].astype(np.float64)
        fx, fy = float(intrinsics[view, 0, 0]), float(intrinsics[view, 1, 1])
        cx, cy = float(intrinsics[view, 0, 2]), float(intrinsics[view, 1, 2])
        camera_directions = np.stack([(columns - cx) / fx, (rows - cy) / fy,
                                      np.ones_like(columns)], axis=-1).reshape(-1, 3)
        directions = camera_directions @ rotation  # Rᵀ·d for row vectors
        origin = -rotation.T @ translation
        origins = np.broadcast_to(origin, directions.shape)
        t, rgb = _cast_rays(layout, origins, directions, salt)
        depth[view] = t.reshape(height, width)
        images[view] = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).reshape(height, width, 3)
    return SyntheticScene(name=name, images=images, depth=depth, extrinsics=extrinsics,
                          intrinsics=intrinsics)


def save_scene_images(scene: SyntheticScene, directory: str | Path) -> list[Path]:
    """Write the views as ``000.png``, ``001.png``, ... into ``directory`` (created if needed).

    Returns:
        The written paths in view order.
    """
    from PIL import Image  # local import: rendering itself needs only numpy

    from .atomic_files import atomic_path

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(scene.images):
        path = target / f"{index:03d}.png"
        with atomic_path(path, durable=False) as partial:
            Image.fromarray(image).save(partial, format="PNG")
        paths.append(path)
    return paths


def save_training_scene(scene: SyntheticScene, directory: str | Path) -> Path:
    """Write ``scene`` as a training scene folder (images, cameras.json, exact depth maps) that
    :class:`vggt_core.training.SceneDataset` reads.

    Returns:
        ``directory`` as a :class:`Path`.
    """
    from .training.scene_sources import write_scene_folder  # the folder format lives with its reader

    return write_scene_folder(directory, scene.images, scene.extrinsics, scene.intrinsics, depths=scene.depth)


# ------------------------------------------------------------------------------------------
# Ground-truth reconstructions of the scenes
# ------------------------------------------------------------------------------------------


def _synthetic_tracks(depth: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray, num_tracks: int,
                      noise_px: float, seed: int) -> dict[str, np.ndarray]:
    """True tracks of surface points: track ``n`` starts at a random pixel of frame ``n mod S``
    (``depth [S, H, W]``, cameras ``[S, 3, 4]``/``[S, 3, 3]``), is projected into every frame and
    is visible where it is inside the frame and not hidden (its depth matches the depth map)."""
    rng = np.random.default_rng(seed)
    num_frames, height, width = depth.shape
    frames = np.arange(num_tracks) % num_frames
    columns = rng.integers(0, width, num_tracks)
    rows = rng.integers(0, height, num_tracks)
    z = depth[frames, rows, columns].astype(np.float64)
    k = intrinsics[frames].astype(np.float64)
    camera = np.stack([(columns - k[:, 0, 2]) / k[:, 0, 0] * z, (rows - k[:, 1, 2]) / k[:, 1, 1] * z, z], axis=1)
    rotation, translation = extrinsics[frames, :, :3].astype(np.float64), extrinsics[frames, :, 3].astype(np.float64)
    world = np.einsum("nji,nj->ni", rotation, camera - translation)
    from .geometry import project_points

    pixels, point_depth = project_points(world, extrinsics.astype(np.float64),
                                                  intrinsics.astype(np.float64))
    x_index = np.clip(np.round(pixels[..., 0]).astype(np.int64), 0, width - 1)
    y_index = np.clip(np.round(pixels[..., 1]).astype(np.int64), 0, height - 1)
    seen_depth = depth[np.arange(num_frames)[:, None], y_index, x_index]
    visible = ((pixels[..., 0] >= 0) & (pixels[..., 0] <= width - 1) & (pixels[..., 1] >= 0)
               & (pixels[..., 1] <= height - 1) & (point_depth > 0)
               & (np.abs(seen_depth - point_depth) <= 0.01 * np.abs(point_depth)))
    noisy = pixels + rng.normal(0.0, noise_px, pixels.shape)
    queries = np.stack([columns, rows], axis=1).astype(np.float64)
    noisy[frames, np.arange(num_tracks)] = queries  # a query point is exact in its own frame
    visible[frames, np.arange(num_tracks)] = True
    return {"tracks": noisy.astype(np.float32), "track_visibility": visible.astype(np.float32),
            "track_confidence": visible.astype(np.float32), "query_points": queries.astype(np.float32),
            "track_query_frames": frames.astype(np.int64)}


def reconstruction_from_synthetic_scene(scene: SyntheticScene, *, num_tracks: int = 0, track_noise_px: float = 0.0,
                                        seed: int = 0) -> "Reconstruction":
    """A ground-truth :class:`Reconstruction` of a :class:`vggt_core.synthetic.SyntheticScene`.

    True cameras and depth, all confidences 1, and the point branch equal to the depth branch,
    so everything downstream (filtering, viewers, exporters) can be checked against the exact
    scene surfaces. Frames are named ``<scene>_000``, ...

    With ``num_tracks`` > 0 it also holds true point tracks: surface points seen from a random
    pixel of frame ``n mod S``, projected into every frame with Gaussian noise of
    ``track_noise_px`` pixels (exact in their query frame), visible where not hidden.
    """
    from .geometry import extrinsics_intrinsics_to_pose_encoding, unproject_depth_maps_in_frame_chunks
    from .reconstruction import Reconstruction

    depth = np.asarray(scene.depth, dtype=np.float32)
    extrinsics = np.asarray(scene.extrinsics, dtype=np.float32)
    intrinsics = np.asarray(scene.intrinsics, dtype=np.float32)
    points = unproject_depth_maps_in_frame_chunks(depth, extrinsics, intrinsics)
    height, width = depth.shape[1:]
    tracks = (_synthetic_tracks(depth, extrinsics, intrinsics, int(num_tracks), float(track_noise_px), seed)
              if num_tracks > 0 else {})
    return Reconstruction(
        images=scene.images,
        extrinsics=extrinsics,
        intrinsics=intrinsics,
        depth=depth,
        depth_conf=np.ones_like(depth),
        points_from_depth=points,
        world_points=points.copy(),
        world_points_conf=np.ones_like(depth),
        pose_encoding=extrinsics_intrinsics_to_pose_encoding(
            extrinsics, intrinsics, (height, width)),
        frame_names=[f"{scene.name}_{index:03d}" for index in range(depth.shape[0])],
        **tracks,
    )
