"""The result of one model run: cameras, depth and points as numpy arrays.

A :class:`Reconstruction` holds everything the viewers and exporters need, as CPU numpy arrays,
so that changing a display setting never re-runs the model (the reference demo keeps a
``predictions.npz`` for the same reason). It is saved as one ``.npz`` that is read
back without pickle (:mod:`vggt_core.reconstruction_file`): an uploaded or stale file can never
execute code.

The model run that makes one is :func:`vggt_core.inference.reconstruct`; a ground-truth one of
a synthetic scene is :func:`vggt_core.synthetic.reconstruction_from_synthetic_scene`. Both are
re-exported here under their old names.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import InputError
from .geometry import unproject_depth_maps_in_frame_chunks
from .images import FrameTransform
from .progress import ProgressCallback

__all__ = [
    "Reconstruction",
    "reconstruct",
    "reconstruction_from_synthetic_scene",
    "ProgressCallback",
    "FILE_FORMAT_VERSION",
]


def __getattr__(name: str) -> Any:
    # The model run, the synthetic ground truth and the file format build Reconstructions, so
    # they import this module; importing them lazily keeps their old home working without an
    # import cycle.
    if name == "reconstruct":
        from .inference import reconstruct

        return reconstruct
    if name == "FILE_FORMAT_VERSION":
        from .reconstruction_file import FILE_FORMAT_VERSION

        return FILE_FORMAT_VERSION
    if name == "reconstruction_from_synthetic_scene":
        from .synthetic import reconstruction_from_synthetic_scene

        return reconstruction_from_synthetic_scene
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Every array field with its dtype (arrays are converted to it) and whether it may be None; the
# file format (vggt_core.reconstruction_file) stores the same fields. Up to track_confidence they
# were in format version 1; the rest came with version 2.
_ARRAY_FIELDS: tuple[tuple[str, type, bool], ...] = (
    ("images", np.uint8, False),
    ("extrinsics", np.float32, False),
    ("intrinsics", np.float32, False),
    ("depth", np.float32, False),
    ("depth_conf", np.float32, False),
    # Not stored since version 2 (recomputed from depth and cameras on load); version-1 files
    # and early version-2 files hold it, and it is then read as is.
    ("points_from_depth", np.float32, True),
    ("world_points", np.float32, True),
    ("world_points_conf", np.float32, True),
    ("pose_encoding", np.float32, True),
    ("original_sizes", np.int64, False),
    ("image_transforms", np.float64, False),
    ("query_points", np.float32, True),
    ("tracks", np.float32, True),
    ("track_visibility", np.float32, True),
    ("track_confidence", np.float32, True),
    ("track_query_frames", np.int64, True),
    ("sky_mask", np.bool_, True),
    ("predicted_intrinsics", np.float32, True),
    ("sparse_points", np.float32, True),
    ("sparse_point_colors", np.uint8, True),
    ("sparse_point_tracks", np.int64, True),
    ("sparse_observations", np.bool_, True),
    # Version 3.
    ("exclusion_masks", np.bool_, True),
)

def _default_frame_names(num_frames: int) -> list[str]:
    return [f"frame_{index:03d}" for index in range(num_frames)]


@dataclass
class Reconstruction:
    """Cameras, depth and points predicted for ``S`` frames of ``H × W`` model-input pixels.

    Camera conventions are those of :mod:`vggt_core.geometry` (world-to-camera ``[R | t]``,
    OpenCV axes). Intrinsics refer to the model-input frames; see
    :meth:`intrinsics_at_original_resolution` for the photos.

    Attributes:
        images: ``[S, H, W, 3]`` uint8, the frames the model saw.
        extrinsics: ``[S, 3, 4]`` float32 world-to-camera.
        intrinsics: ``[S, 3, 3]`` float32 in model-input pixels.
        depth: ``[S, H, W]`` float32 z-depth.
        depth_conf: ``[S, H, W]`` float32 confidence of the depth (≥ 1 for VGGT).
        points_from_depth: ``[S, H, W, 3]`` float32, the depth branch: ``depth`` unprojected
            with the predicted cameras.
        world_points: ``[S, H, W, 3]`` float32 from the point head, or None.
        world_points_conf: ``[S, H, W]`` float32, or None.
        pose_encoding: ``[S, 9]`` float32 raw camera-head output, or None.
        frame_names: ``S`` names (file names); default ``frame_000``, ``frame_001``, ...
        original_sizes: ``[S, 2]`` int64 ``(width, height)`` of the photos; default the
            model-input size.
        image_transforms: ``[S, 4]`` float64 ``(sx, sy, ox, oy)`` with
            ``model_input_xy = photo_xy · s + o`` (see :class:`vggt_core.images.FrameTransform`);
            default identity.
        query_points: ``[N, 2]`` float32 tracked pixels in model-input pixels, or None.
        tracks: ``[S, N, 2]`` float32 tracked positions per frame, or None.
        track_visibility: ``[S, N]`` float32 in [0, 1], or None.
        track_confidence: ``[S, N]`` float32, or None.
        track_query_frames: ``[N]`` int64, the frame each track's query point was picked in
            (its ``query_points`` are pixels of that frame), or None: every track starts in frame 0.
        sky_mask: ``[S, H, W]`` bool, True where a sky segmenter saw sky, or None (not computed).
        predicted_intrinsics: ``[S, 3, 3]`` float32, the network's own intrinsics when
            ``intrinsics`` were replaced by known focal lengths (see :mod:`vggt_core.intrinsics`)
            or refined by bundle adjustment, or None: ``intrinsics`` are the predicted ones.
        sparse_points: ``[P, 3]`` float32 world points triangulated from tracks and refined by
            bundle adjustment (:mod:`vggt_core.bundle_adjustment`), or None.
        sparse_point_colors: ``[P, 3]`` uint8 RGB of each sparse point (given with the points).
        sparse_point_tracks: ``[P]`` int64, the column of ``tracks`` each sparse point comes from.
        sparse_observations: ``[S, P]`` bool, True where frame ``s`` observes point ``p`` (at
            ``tracks[s, sparse_point_tracks[p]]``) and bundle adjustment used that observation.
        exclusion_masks: ``[S, H, W]`` bool, True for pixels the user masked out (people, cars):
            no point, mesh, track query or bundle-adjustment observation comes from them
            (:mod:`vggt_core.masks`), or None (no masks).
        info: JSON-serialisable facts about the scene that are not arrays (units, how the
            cameras were obtained, a refinement report ...); stored as JSON in the file.
    """

    images: np.ndarray
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    depth: np.ndarray
    depth_conf: np.ndarray
    points_from_depth: np.ndarray
    world_points: np.ndarray | None = None
    world_points_conf: np.ndarray | None = None
    pose_encoding: np.ndarray | None = None
    frame_names: list[str] = field(default_factory=list)
    original_sizes: np.ndarray | None = None
    image_transforms: np.ndarray | None = None
    query_points: np.ndarray | None = None
    tracks: np.ndarray | None = None
    track_visibility: np.ndarray | None = None
    track_confidence: np.ndarray | None = None
    track_query_frames: np.ndarray | None = None
    sky_mask: np.ndarray | None = None
    predicted_intrinsics: np.ndarray | None = None
    sparse_points: np.ndarray | None = None
    sparse_point_colors: np.ndarray | None = None
    sparse_point_tracks: np.ndarray | None = None
    sparse_observations: np.ndarray | None = None
    exclusion_masks: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
            raise InputError(f"images must have shape [S, H, W, 3] with S ≥ 1, got {images.shape}")
        if images.dtype != np.uint8:
            # Casting [0, 1] floats to uint8 would silently give a black image.
            raise InputError(f"images must be uint8 RGB, got {images.dtype}")
        num_frames, height, width = images.shape[:3]
        if self.original_sizes is None:
            self.original_sizes = np.tile(np.array([[width, height]], dtype=np.int64), (num_frames, 1))
        if self.image_transforms is None:
            self.image_transforms = np.tile(np.array([[1.0, 1.0, 0.0, 0.0]]), (num_frames, 1))
        if not self.frame_names:
            self.frame_names = _default_frame_names(num_frames)
        self.frame_names = [str(name) for name in self.frame_names]

        for name, dtype, _ in _ARRAY_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=dtype))

        expected = {
            "extrinsics": (num_frames, 3, 4),
            "intrinsics": (num_frames, 3, 3),
            "depth": (num_frames, height, width),
            "depth_conf": (num_frames, height, width),
            "points_from_depth": (num_frames, height, width, 3),
            "world_points": (num_frames, height, width, 3),
            "world_points_conf": (num_frames, height, width),
            "pose_encoding": (num_frames, 9),
            "original_sizes": (num_frames, 2),
            "image_transforms": (num_frames, 4),
            "sky_mask": (num_frames, height, width),
            "exclusion_masks": (num_frames, height, width),
            "predicted_intrinsics": (num_frames, 3, 3),
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise InputError(f"{name} must have shape {list(shape)}, got {list(value.shape)}")
        if len(self.frame_names) != num_frames:
            raise InputError(f"{len(self.frame_names)} frame names for {num_frames} frames")
        if (self.world_points is None) != (self.world_points_conf is None):
            raise InputError("world_points and world_points_conf must be given together")
        self._check_tracks(num_frames)
        self._check_sparse_points(num_frames)
        if not isinstance(self.info, dict):
            raise InputError(f"info must be a dict, got {type(self.info).__name__}")
        try:
            json.dumps(self.info, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise InputError(f"info must be JSON-serialisable ({error})") from error

    def _check_tracks(self, num_frames: int) -> None:
        track_fields = (self.query_points, self.tracks, self.track_visibility, self.track_confidence,
                        self.track_query_frames)
        if all(value is None for value in track_fields):
            return
        if self.tracks is None:
            raise InputError("track visibility, confidence or query points given without tracks")
        if self.tracks.ndim != 3 or self.tracks.shape[0] != num_frames or self.tracks.shape[2] != 2:
            raise InputError(f"tracks must have shape [{num_frames}, N, 2], got {list(self.tracks.shape)}")
        num_tracks = self.tracks.shape[1]
        for name, shape in (("query_points", (num_tracks, 2)),
                            ("track_visibility", (num_frames, num_tracks)),
                            ("track_confidence", (num_frames, num_tracks)),
                            ("track_query_frames", (num_tracks,))):
            value = getattr(self, name)
            if value is not None and value.shape != shape:
                raise InputError(f"{name} must have shape {list(shape)}, got {list(value.shape)}")
        if self.track_query_frames is not None and num_tracks and (
                self.track_query_frames.min() < 0 or self.track_query_frames.max() >= num_frames):
            raise InputError(f"track_query_frames must be frame indices in [0, {num_frames})")

    def _check_sparse_points(self, num_frames: int) -> None:
        sparse_fields = (self.sparse_points, self.sparse_point_colors, self.sparse_point_tracks,
                         self.sparse_observations)
        if all(value is None for value in sparse_fields):
            return
        if any(value is None for value in sparse_fields):
            raise InputError("sparse_points, sparse_point_colors, sparse_point_tracks and sparse_observations "
                             "must be given together")
        if self.sparse_points.ndim != 2 or self.sparse_points.shape[1] != 3:
            raise InputError(f"sparse_points must have shape [P, 3], got {list(self.sparse_points.shape)}")
        num_points = self.sparse_points.shape[0]
        for name, shape in (("sparse_point_colors", (num_points, 3)), ("sparse_point_tracks", (num_points,)),
                            ("sparse_observations", (num_frames, num_points))):
            value = getattr(self, name)
            if value.shape != shape:
                raise InputError(f"{name} must have shape {list(shape)}, got {list(value.shape)}")
        num_tracks = 0 if self.tracks is None else self.tracks.shape[1]
        if num_points and (self.sparse_point_tracks.min() < 0 or self.sparse_point_tracks.max() >= num_tracks):
            raise InputError(f"sparse_point_tracks must be track indices in [0, {num_tracks})")

    # ----------------------------------------------------------------------------------------

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size_hw(self) -> tuple[int, int]:
        """``(H, W)`` of the model-input frames."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def frame_transform(self, index: int) -> FrameTransform:
        """The :class:`FrameTransform` of frame ``index`` rebuilt from the stored arrays."""
        sx, sy, ox, oy = (float(value) for value in self.image_transforms[index])
        width, height = (int(value) for value in self.original_sizes[index])
        return FrameTransform(name=self.frame_names[index], original_size=(width, height),
                              scale=(sx, sy), offset=(ox, oy))

    def intrinsics_at_original_resolution(self) -> np.ndarray:
        """Intrinsics re-expressed in each frame's original photo pixels.

        Returns:
            ``[S, 3, 3]`` float64: ``A⁻¹·C·K`` with ``C`` the shift of half a model pixel (model
            pixel indices → corner-based coordinates) and ``A`` the photo → model-input affine
            map, in continuous pixel coordinates with (0, 0) at the top-left image corner: the
            convention of COLMAP, OpenCV and nerfstudio (docs/architecture.md, "Pixel centres").
        """
        return np.stack([self.frame_transform(index).model_intrinsics_to_photo(self.intrinsics[index])
                         for index in range(self.num_frames)])

    @property
    def units(self) -> str | None:
        """The length unit of the scene (``"m"``, ``"cm"`` ...), or None: VGGT's arbitrary units."""
        units = self.info.get("units")
        return str(units) if units else None

    @property
    def scale_factor(self) -> float:
        """Product of every :meth:`scaled` factor since the model run (1 for the model's own units)."""
        return float(self.info.get("scale_factor", 1.0))

    def scaled(self, factor: float, units: str | None = None) -> Reconstruction:
        """A copy with every length multiplied by ``factor``; this one is unchanged.

        Depth, both point maps, the sparse points and the camera translations (also in the pose
        encoding) are scaled; rotations, intrinsics, confidences, images and tracks (pixels) are not, so the
        cameras still see every point at the same pixel. ``info["scale_factor"]`` accumulates
        the factors and ``info["units"]`` becomes ``units`` (kept when None). See docs/scene.md.

        Raises:
            InputError: ``factor`` is not a finite number > 0.
        """
        try:
            factor = float(factor)
        except (TypeError, ValueError) as error:
            raise InputError(f"the scale factor must be a number, got {factor!r}") from error
        if not np.isfinite(factor) or factor <= 0.0:
            raise InputError(f"the scale factor must be a finite number > 0, got {factor:g}")
        extrinsics = self.extrinsics.copy()
        extrinsics[:, :, 3] *= factor
        pose_encoding = None
        if self.pose_encoding is not None:
            pose_encoding = self.pose_encoding.copy()
            pose_encoding[:, :3] *= factor  # [t(3), quaternion(4), fov_h, fov_w]
        info = dict(self.info)
        info["scale_factor"] = self.scale_factor * factor
        if units is not None:
            info["units"] = str(units)
        return dataclasses.replace(
            self,
            extrinsics=extrinsics,
            depth=self.depth * np.float32(factor),
            points_from_depth=self.points_from_depth * np.float32(factor),
            world_points=None if self.world_points is None else self.world_points * np.float32(factor),
            sparse_points=None if self.sparse_points is None else self.sparse_points * np.float32(factor),
            pose_encoding=pose_encoding,
            frame_names=list(self.frame_names),
            info=info,
        )

    # ----------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike | BinaryIO) -> Path | None:
        """Write one ``.npz`` at exactly ``path`` (atomically and durably), or into an open binary
        file; see :func:`vggt_core.reconstruction_file.save_reconstruction`."""
        from .reconstruction_file import save_reconstruction

        return save_reconstruction(self, path)

    def at_stored_precision(self) -> Reconstruction:
        """A copy whose arrays hold exactly what :meth:`save` then :meth:`load` give back
        (confidences rounded through float16), so a scene shown before and after a reload is
        the same scene."""
        from .reconstruction_file import at_stored_precision

        return at_stored_precision(self)

    @classmethod
    def load(cls, path: str | os.PathLike | BinaryIO) -> Reconstruction:
        """Read a file written by :meth:`save` (a path or an open binary file); see
        :func:`vggt_core.reconstruction_file.load_reconstruction`.

        Raises:
            InputError: the file is missing, not an npz, corrupt, holds pickled objects, lacks a
                required array or has inconsistent shapes.
        """
        from .reconstruction_file import load_reconstruction

        return load_reconstruction(path)

    @classmethod
    def from_bytes(cls, data: bytes, label: str = "reconstruction file") -> Reconstruction:
        """:meth:`load` of a file's content already in memory (errors as for :meth:`load`)."""
        buffer = io.BytesIO(data)
        buffer.name = label
        return cls.load(buffer)


# The old private name, still imported by benchmarks and older tests.
_unproject_in_chunks = unproject_depth_maps_in_frame_chunks
