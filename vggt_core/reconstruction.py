"""The result of one model run, its file format, and the run itself.

A :class:`Reconstruction` holds everything the viewers and exporters need, as CPU numpy arrays,
so that changing a display setting never re-runs the model (the reference demo keeps a
``predictions.npz`` for the same reason). It is saved as one ``.npz`` that is read
back without pickle: an uploaded or stale file can never execute code.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Sequence

import numpy as np
import torch

from . import geometry
from .atomic_files import atomic_writer
from .errors import InputError
from .images import FrameTransform

__all__ = [
    "Reconstruction",
    "reconstruct",
    "reconstruction_from_synthetic_scene",
    "ProgressCallback",
    "FILE_FORMAT_VERSION",
]

ProgressCallback = Callable[[float, str], None]

# Version 1: the arrays below up to track_confidence. Version 2 adds the optional fields after it
# and the ``info`` JSON; version-1 files still load (the new fields are then absent). Version 3
# adds the optional ``exclusion_masks`` (the user's masks, docs/surfaces.md); older files load
# without them.
FILE_FORMAT_VERSION = 3
_FORMAT_KEY = "__format_version__"
_INFO_KEY = "__info_json__"

# Stored dtype of every array field; (field name, dtype, may be None).
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
    # Version 2.
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

# Arrays stored at a lower precision than they are used at (see docs/store.md, "What is stored"):
# confidences only rank and threshold points, and float16 keeps 3 significant digits.
_STORED_DTYPES: dict[str, type] = {"depth_conf": np.float16, "world_points_conf": np.float16}
_FLOAT16_MAX = float(np.finfo(np.float16).max)

# Model outputs kept (each [1, S, ...]); anything else it returns (e.g. the input images or
# the per-iteration pose list) is not needed and not copied.
_MODEL_OUTPUT_KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf",
                      "track", "vis", "conf")

# Unprojecting a few frames at a time bounds the float64 intermediates of the reference-exact
# unprojection (3 × [S, H, W, 3] float64) for long videos.
_UNPROJECT_FRAMES_PER_CHUNK = 16


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
            ``intrinsics`` were replaced by known focal lengths (see :mod:`vggt_core.intrinsics`),
            or None: ``intrinsics`` are the predicted ones.
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
            ``[S, 3, 3]`` float64: ``A⁻¹·K`` with ``A`` the photo → model-input affine map, in
            continuous pixel coordinates with (0, 0) at the top-left image corner (the
            convention COLMAP also uses).
        """
        return np.stack([self.frame_transform(index).intrinsics_to_original(self.intrinsics[index])
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
        """Write one ``.npz`` at exactly ``path`` (no suffix is appended), or into an open
        binary file.

        Fields that are None are simply absent from the file; names are a unicode array, so
        :meth:`load` needs no pickle. ``points_from_depth`` is left out (:meth:`load` recomputes
        it) and confidences are stored as float16; the arrays are not compressed, which makes
        saving 50 frames take under a second instead of ~15 s for 20% fewer bytes
        (``benchmarks/bench_save.py``). A path is written atomically and durably
        (:mod:`vggt_core.atomic_files`): a reader never sees half a file.
        """
        arrays: dict[str, np.ndarray] = {_FORMAT_KEY: np.array(FILE_FORMAT_VERSION)}
        for name, _, _ in _ARRAY_FIELDS:
            value = getattr(self, name)
            if value is not None and name != "points_from_depth":
                arrays[name] = _to_stored_precision(name, value)
        arrays["frame_names"] = np.array(self.frame_names, dtype=np.str_)
        arrays[_INFO_KEY] = np.array(json.dumps(self.info, allow_nan=False), dtype=np.str_)
        if hasattr(path, "write"):
            np.savez(path, **arrays)
            return None
        target = Path(path)
        with atomic_writer(target) as handle:
            np.savez(handle, **arrays)
        return target

    def at_stored_precision(self) -> Reconstruction:
        """A copy whose arrays hold exactly what :meth:`save` then :meth:`load` give back
        (confidences rounded through float16), so a scene shown before and after a reload is
        the same scene."""
        changes = {name: _to_stored_precision(name, getattr(self, name)).astype(np.float32)
                   for name in _STORED_DTYPES if getattr(self, name) is not None}
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, path: str | os.PathLike | BinaryIO) -> Reconstruction:
        """Read a file written by :meth:`save` (a path or an open binary file).

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
        return cls._from_arrays(contents, label)

    @classmethod
    def from_bytes(cls, data: bytes, label: str = "reconstruction file") -> Reconstruction:
        """:meth:`load` of a file's content already in memory (errors as for :meth:`load`)."""
        buffer = io.BytesIO(data)
        buffer.name = label
        return cls.load(buffer)

    @classmethod
    def _from_arrays(cls, contents: Mapping[str, np.ndarray], label: str) -> Reconstruction:
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
            if value is not None and name in _STORED_DTYPES and value.dtype == np.dtype(_STORED_DTYPES[name]):
                kwargs[name] = value = value.astype(dtype)
            # Casting silently would hide a file written by something else; refuse instead.
            if value is not None and value.dtype != np.dtype(dtype):
                raise InputError(f"{label}: {name} has dtype {value.dtype}, expected {np.dtype(dtype)}")
        if kwargs.get("points_from_depth") is None:
            kwargs["points_from_depth"] = _points_from_depth_of_arrays(kwargs, label)
        try:
            return cls(**kwargs)
        except InputError as error:
            raise InputError(f"{label} is inconsistent: {error}") from error


def _to_stored_precision(name: str, value: np.ndarray) -> np.ndarray:
    """``value`` in the dtype :meth:`Reconstruction.save` writes for field ``name``."""
    stored = _STORED_DTYPES.get(name)
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
        return _unproject_in_chunks(depth, extrinsics, intrinsics)
    except (KeyError, ValueError, IndexError, RuntimeError) as error:  # shapes that do not fit
        raise InputError(f"{label} is inconsistent: {error}") from error


# --------------------------------------------------------------------------------------------
# Running the model
# --------------------------------------------------------------------------------------------


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _validate_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Check the model-input batch ``[S, 3, H, W]`` in [0, 1] and return it as a float tensor."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise InputError(f"images must be a tensor [S, 3, H, W], got {type(images).__name__}")
    if images.ndim == 5 and images.shape[0] == 1:
        images = images[0]
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise InputError(f"images must have shape [S, 3, H, W], got {list(images.shape)}")
    if not images.is_floating_point():
        raise InputError(f"images must be floating point in [0, 1], got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise InputError("images contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise InputError(f"image values must lie in [0, 1], got [{low:.3g}, {high:.3g}]")
    return images


def _validate_query_points(query_points: Any, height: int, width: int) -> torch.Tensor | None:
    """``[N, 2]`` or ``[1, N, 2]`` pixel queries → float32 tensor ``[1, N, 2]`` (None if empty)."""
    if query_points is None:
        return None
    points = torch.as_tensor(np.asarray(query_points) if not isinstance(query_points, torch.Tensor)
                             else query_points).to(torch.float32)
    if points.ndim == 3 and points.shape[0] == 1:
        points = points[0]
    if points.ndim != 2 or points.shape[1] != 2:
        raise InputError(f"query points must have shape [N, 2], got {list(points.shape)}")
    if points.shape[0] == 0:
        return None
    if not bool(torch.isfinite(points).all()):
        raise InputError("query points contain NaN or infinite values")
    outside = ((points[:, 0] < 0) | (points[:, 0] > width)
               | (points[:, 1] < 0) | (points[:, 1] > height))
    if bool(outside.any()):
        raise InputError(f"query points must lie inside the {width}×{height} model-input frame")
    return points[None]


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Batch-squeezed float32 CPU copy of a model output ``[1, ...]``."""
    return tensor[0].detach().to(device="cpu", dtype=torch.float32).numpy()


def _unproject_in_chunks(depth: np.ndarray, extrinsics: np.ndarray,
                         intrinsics: np.ndarray) -> np.ndarray:
    """``depth [S, H, W]`` with cameras ``[S, 3, 4]``/``[S, 3, 3]`` → float32 ``[S, H, W, 3]``."""
    points = np.empty(depth.shape + (3,), dtype=np.float32)
    for start in range(0, depth.shape[0], _UNPROJECT_FRAMES_PER_CHUNK):
        chunk = slice(start, start + _UNPROJECT_FRAMES_PER_CHUNK)
        points[chunk] = geometry.unproject_depth_map_to_world_points(
            depth[chunk], extrinsics[chunk], intrinsics[chunk])
    return points


def _camera_depth_of_points(points: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """z of world ``points [S, H, W, 3]`` in each frame's camera ``[S, 3, 4]`` → ``[S, H, W]``."""
    rotation_z = extrinsics[:, 2, :3]
    return (np.einsum("shwc,sc->shw", points, rotation_z)
            + extrinsics[:, None, None, 2, 3]).astype(np.float32)


def reconstruct(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    query_points: Any = None,
    frames_chunk_size: int = 8,
    progress: ProgressCallback | None = None,
    frame_names: Sequence[str] | None = None,
    transforms: Sequence[FrameTransform] | None = None,
) -> Reconstruction:
    """Run the model on a batch of frames and collect a :class:`Reconstruction`.

    Args:
        model: a VGGT-like module (see :class:`vggt_core.model.VGGT`) whose forward takes
            ``images [1, S, 3, H, W]`` and returns at least ``pose_enc`` and ``depth`` or
            ``world_points``. It runs on the device of its parameters.
        images: ``[S, 3, H, W]`` float in [0, 1] (as from :func:`vggt_core.images.load_images`).
        query_points: optional ``[N, 2]`` pixels (x, y) in model-input pixels to track.
        frames_chunk_size: frames per chunk in the dense heads (memory vs speed).
        progress: optional ``progress(fraction, message)`` called at each stage.
        frame_names: ``S`` names; default the transforms' names, else ``frame_000``, ...
        transforms: ``S`` :class:`FrameTransform` from ``load_images(..., return_transforms=True)``
            to record the photos' sizes and the photo → model-input mapping.

    Returns:
        The reconstruction, all arrays on the CPU.

    Raises:
        InputError: bad images, query points, names or transforms.
        RuntimeError: the model lacks the camera head, or both the depth and point heads.
    """
    report = progress if progress is not None else (lambda fraction, message: None)
    batch = _validate_images(images)
    num_frames, _, height, width = batch.shape
    queries = _validate_query_points(query_points, height, width)
    if transforms is not None and len(transforms) != num_frames:
        raise InputError(f"{len(transforms)} frame transforms for {num_frames} frames")
    if frame_names is not None and len(frame_names) != num_frames:
        raise InputError(f"{len(frame_names)} frame names for {num_frames} frames")

    device = _model_device(model)
    report(0.0, "running the model")
    outputs = model(batch.to(device=device, dtype=torch.float32)[None],
                    query_points=None if queries is None else queries.to(device),
                    frames_chunk_size=frames_chunk_size)
    # Copy to the CPU right away and drop the device tensors, so a long video does not keep
    # gigabytes of GPU memory alive while the rest runs on numpy.
    arrays = {key: _to_numpy(outputs[key]) for key in _MODEL_OUTPUT_KEYS
              if isinstance(outputs.get(key), torch.Tensor)}
    del outputs
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if "pose_enc" not in arrays:
        raise RuntimeError("the model has no camera head, so it cannot give cameras")
    report(0.7, "decoding cameras")
    pose_encoding = arrays["pose_enc"]
    extrinsics, intrinsics = geometry.pose_encoding_to_extrinsics_intrinsics(
        pose_encoding, (height, width))

    world_points = arrays.get("world_points")
    world_points_conf = arrays.get("world_points_conf")
    if "depth" in arrays:
        depth = arrays["depth"][..., 0] if arrays["depth"].ndim == 4 else arrays["depth"]
        depth_conf = arrays.get("depth_conf", np.ones_like(depth))
    elif world_points is not None:
        # Without a depth head the point map stands in for it: its camera-frame z is a depth.
        depth = _camera_depth_of_points(world_points, extrinsics)
        depth_conf = (world_points_conf if world_points_conf is not None
                      else np.ones_like(depth))
    else:
        raise RuntimeError("the model has neither a depth nor a point head")

    report(0.8, "unprojecting depth")
    points_from_depth = _unproject_in_chunks(depth, extrinsics, intrinsics)

    report(0.95, "collecting the reconstruction")
    # Rounding (not the reference's truncation) recovers the original 8-bit values exactly;
    # x/255·255 in float32 can land just below the integer.
    frames_uint8 = np.round(batch.detach().cpu().permute(0, 2, 3, 1).numpy() * 255.0).astype(np.uint8)
    names = list(frame_names) if frame_names is not None else (
        [transform.name for transform in transforms] if transforms is not None else None)
    original_sizes = image_transforms = None
    if transforms is not None:
        original_sizes = np.array([transform.original_size for transform in transforms], dtype=np.int64)
        image_transforms = np.array([[*transform.scale, *transform.offset] for transform in transforms],
                                    dtype=np.float64)

    tracks = arrays.get("track")
    reconstruction = Reconstruction(
        images=frames_uint8,
        extrinsics=extrinsics,
        intrinsics=intrinsics,
        depth=depth,
        depth_conf=depth_conf,
        points_from_depth=points_from_depth,
        world_points=world_points if world_points_conf is not None else None,
        world_points_conf=world_points_conf if world_points is not None else None,
        pose_encoding=pose_encoding,
        frame_names=names or [],
        original_sizes=original_sizes,
        image_transforms=image_transforms,
        query_points=None if queries is None or tracks is None else queries[0].numpy(),
        tracks=tracks,
        track_visibility=arrays.get("vis") if tracks is not None else None,
        track_confidence=arrays.get("conf") if tracks is not None else None,
    )
    report(1.0, "done")
    return reconstruction


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
    pixels, point_depth = geometry.project_points(world, extrinsics.astype(np.float64),
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


def reconstruction_from_synthetic_scene(scene: Any, *, num_tracks: int = 0, track_noise_px: float = 0.0,
                                        seed: int = 0) -> Reconstruction:
    """A ground-truth :class:`Reconstruction` of a :class:`vggt_core.synthetic.SyntheticScene`.

    True cameras and depth, all confidences 1, and the point branch equal to the depth branch,
    so everything downstream (filtering, viewers, exporters) can be checked against the exact
    scene surfaces. Frames are named ``<scene>_000``, ...

    With ``num_tracks`` > 0 it also holds true point tracks: surface points seen from a random
    pixel of frame ``n mod S``, projected into every frame with Gaussian noise of
    ``track_noise_px`` pixels (exact in their query frame), visible where not hidden.
    """
    depth = np.asarray(scene.depth, dtype=np.float32)
    extrinsics = np.asarray(scene.extrinsics, dtype=np.float32)
    intrinsics = np.asarray(scene.intrinsics, dtype=np.float32)
    points = _unproject_in_chunks(depth, extrinsics, intrinsics)
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
        pose_encoding=geometry.extrinsics_intrinsics_to_pose_encoding(
            extrinsics, intrinsics, (height, width)),
        frame_names=[f"{scene.name}_{index:03d}" for index in range(depth.shape[0])],
        **tracks,
    )
