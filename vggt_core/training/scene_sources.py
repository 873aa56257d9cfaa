"""Readers for the scene folders the trainer learns from.

Two layouts (see docs/training.md, "Data"):

- ours: ``<scene>/cameras.json`` listing frames with an image, a 3×4 camera-from-world
  extrinsic (OpenCV), a 3×3 pixel intrinsic (pixel centres at integer coordinates), and optional
  ``depth`` (``.npy`` z-depth, 0 = invalid) and ``mask`` (image, nonzero = usable pixel);
- COLMAP: ``<scene>/sparse/0/`` or ``<scene>/sparse/`` (``.bin`` or ``.txt``) with the photos in
  ``<scene>/images/``, and optionally dense depth in ``<scene>/stereo/depth_maps/<name>.geometric.bin``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

SCENE_FILE = "cameras.json"
SCENE_FORMAT = "vggt-scene"
SCENE_FORMAT_VERSION = 1
COLMAP_SPARSE_DIRS = ("sparse/0", "sparse")
COLMAP_DEPTH_SUFFIXES = (".geometric.bin", ".photometric.bin")
# COLMAP puts the centre of the top-left pixel at (0.5, 0.5); ours (the model's) at (0, 0).
COLMAP_PIXEL_CENTRE_OFFSET = 0.5
EXACT_COLMAP_MODELS = ("SIMPLE_PINHOLE", "PINHOLE")


@dataclass
class SceneFrame:
    """One frame of a scene. extrinsic: ``[3, 4]``; intrinsic: ``[3, 3]`` (float64)."""

    image_path: Path
    extrinsic: np.ndarray
    intrinsic: np.ndarray
    depth_path: Path | None = None
    mask_path: Path | None = None

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image [H, W, 3] uint8 RGB, depth [H, W] float32 or None)``; the mask zeroes depth."""
        with Image.open(self.image_path) as opened:
            image = np.asarray(opened.convert("RGB"))
        depth = None
        if self.depth_path is not None:
            depth = read_depth_map(self.depth_path)
            if depth.shape != image.shape[:2]:
                # Dense COLMAP depth is often computed at a smaller size than the photos.
                depth = np.asarray(Image.fromarray(depth, mode="F").resize(
                    (image.shape[1], image.shape[0]), Image.NEAREST))
            depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
        if self.mask_path is not None:
            with Image.open(self.mask_path) as opened:
                mask = np.asarray(opened.convert("L").resize((image.shape[1], image.shape[0]), Image.NEAREST)) > 0
            if depth is not None:
                depth = np.where(mask, depth, 0.0).astype(np.float32)
        return image, depth


@dataclass
class Scene:
    name: str
    frames: list[SceneFrame]

    @property
    def has_depth(self) -> bool:
        return all(frame.depth_path is not None for frame in self.frames)


def read_depth_map(path: Path) -> np.ndarray:
    """``[H, W]`` float32 from ``.npy`` or COLMAP's dense ``.bin`` (``w&h&c&`` header, column-major)."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(np.float32)
    with open(path, "rb") as handle:
        header = b""
        while header.count(b"&") < 3:
            byte = handle.read(1)
            if not byte:
                raise ValueError(f"{path} is not a COLMAP depth map (no w&h&c& header)")
            header += byte
        width, height, channels = (int(part) for part in header.decode().split("&")[:3])
        data = np.fromfile(handle, dtype=np.float32)
    if data.size != width * height * channels:
        raise ValueError(f"{path}: header says {width}x{height}x{channels}, file holds {data.size} values")
    return data.reshape((width, height, channels), order="F").transpose(1, 0, 2)[..., 0]


def write_colmap_depth_map(path: Path, depth: np.ndarray) -> None:
    """Write ``depth [H, W]`` in COLMAP's dense depth format (for tests and converters)."""
    height, width = depth.shape
    with open(path, "wb") as handle:
        handle.write(f"{width}&{height}&1&".encode())
        np.asarray(depth, dtype=np.float32)[..., None].transpose(1, 0, 2).reshape(-1, order="F").tofile(handle)


def write_scene_folder(directory: str | Path, images: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray,
                       depths: np.ndarray | None = None, masks: np.ndarray | None = None) -> Path:
    """Write a scene in our layout.

    Args:
        images: ``[S, H, W, 3]`` uint8; extrinsics: ``[S, 3, 4]``; intrinsics: ``[S, 3, 3]``;
        depths: ``[S, H, W]`` z-depth or None; masks: ``[S, H, W]`` bool or None.
    """
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for index, image in enumerate(images):
        entry = {"image": f"images/{index:04d}.png",
                 "extrinsic": np.asarray(extrinsics[index], dtype=np.float64).tolist(),
                 "intrinsic": np.asarray(intrinsics[index], dtype=np.float64).tolist()}
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(directory / entry["image"])
        if depths is not None:
            (directory / "depths").mkdir(exist_ok=True)
            entry["depth"] = f"depths/{index:04d}.npy"
            np.save(directory / entry["depth"], np.asarray(depths[index], dtype=np.float32))
        if masks is not None:
            (directory / "masks").mkdir(exist_ok=True)
            entry["mask"] = f"masks/{index:04d}.png"
            Image.fromarray(np.asarray(masks[index], dtype=np.uint8) * 255).save(directory / entry["mask"])
        frames.append(entry)
    document = {"format": SCENE_FORMAT, "version": SCENE_FORMAT_VERSION, "frames": frames}
    (directory / SCENE_FILE).write_text(json.dumps(document, indent=1))
    return directory


def read_scene_folder(directory: Path) -> Scene:
    document = json.loads((directory / SCENE_FILE).read_text())
    if document.get("format") != SCENE_FORMAT:
        raise ValueError(f"{directory / SCENE_FILE} is not a {SCENE_FORMAT!r} file")
    if int(document.get("version", 0)) > SCENE_FORMAT_VERSION:
        raise ValueError(f"{directory / SCENE_FILE} has version {document['version']}; this reader knows "
                         f"up to {SCENE_FORMAT_VERSION}")
    frames = []
    for index, entry in enumerate(document["frames"]):
        extrinsic = np.asarray(entry["extrinsic"], dtype=np.float64)
        intrinsic = np.asarray(entry["intrinsic"], dtype=np.float64)
        if extrinsic.shape != (3, 4) or intrinsic.shape != (3, 3):
            raise ValueError(f"{directory / SCENE_FILE} frame {index}: extrinsic must be 3x4 and intrinsic 3x3")
        frames.append(SceneFrame(
            image_path=directory / entry["image"], extrinsic=extrinsic, intrinsic=intrinsic,
            depth_path=directory / entry["depth"] if entry.get("depth") else None,
            mask_path=directory / entry["mask"] if entry.get("mask") else None))
    missing = [frame.image_path for frame in frames if not frame.image_path.is_file()]
    if missing:
        raise ValueError(f"{directory}: {len(missing)} image(s) listed in {SCENE_FILE} are missing, e.g. {missing[0]}")
    return Scene(name=directory.name, frames=frames)


def colmap_sparse_dir(directory: Path) -> Path | None:
    for relative in COLMAP_SPARSE_DIRS:
        candidate = directory / relative
        if any((candidate / f"cameras{suffix}").is_file() for suffix in (".bin", ".txt")):
            return candidate
    return None


def read_colmap_scene(directory: Path, images_dir: str = "images") -> Scene:
    """A COLMAP sparse model, its photos and any dense depth maps.

    Cameras with distortion (e.g. SIMPLE_RADIAL) are used as pinholes with a warning: undistort
    them first (``colmap image_undistorter``) for exact supervision.
    """
    import pycolmap

    sparse = colmap_sparse_dir(directory)
    if sparse is None:
        raise ValueError(f"{directory} has no COLMAP model in {' or '.join(COLMAP_SPARSE_DIRS)}")
    model = pycolmap.Reconstruction(str(sparse))
    frames = []
    distorted = set()
    for image_id in sorted(model.reg_image_ids()):
        image = model.image(image_id)
        camera = model.camera(image.camera_id)
        if camera.model.name not in EXACT_COLMAP_MODELS:
            distorted.add(camera.model.name)
        intrinsic = np.asarray(camera.calibration_matrix(), dtype=np.float64).copy()
        intrinsic[:2, 2] -= COLMAP_PIXEL_CENTRE_OFFSET
        extrinsic = np.asarray(image.cam_from_world().matrix(), dtype=np.float64)
        image_path = directory / images_dir / image.name
        depth_path = None
        for suffix in COLMAP_DEPTH_SUFFIXES:
            candidate = directory / "stereo" / "depth_maps" / f"{image.name}{suffix}"
            if candidate.is_file():
                depth_path = candidate
                break
        frames.append(SceneFrame(image_path=image_path, extrinsic=extrinsic, intrinsic=intrinsic,
                                 depth_path=depth_path))
    if distorted:
        logger.warning("%s: COLMAP camera model(s) %s have distortion, which training ignores; undistort the "
                       "images first for exact supervision", directory, ", ".join(sorted(distorted)))
    missing = [frame.image_path for frame in frames if not frame.image_path.is_file()]
    if missing:
        raise ValueError(f"{directory}: {len(missing)} image(s) of the COLMAP model are missing, e.g. {missing[0]}")
    return Scene(name=directory.name, frames=frames)


def read_scene(directory: Path) -> Scene:
    if (directory / SCENE_FILE).is_file():
        return read_scene_folder(directory)
    if colmap_sparse_dir(directory) is not None:
        return read_colmap_scene(directory)
    raise ValueError(f"{directory} is neither a scene folder ({SCENE_FILE}) nor a COLMAP scene (sparse/)")


def is_scene_dir(directory: Path) -> bool:
    return (directory / SCENE_FILE).is_file() or colmap_sparse_dir(directory) is not None
