"""SceneDataset: sequences of frames with cameras and depth, processed as the reference does.

A sample is one sequence of ``S`` frames of one scene, in the batch format the losses read
(see :func:`vggt_core.training.normalize_ground_truth`). See docs/training.md, "Data".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .augment import ColorAugmentation
from .frame_processing import process_frame, target_shape_for_aspect, unproject
from .scene_sources import Scene, is_scene_dir, read_scene

MIN_FRAMES, MAX_FRAMES = 2, 24
MAX_IMAGES_PER_BATCH = 48
ASPECT_RANGE = (0.33, 1.0)


class SceneDataset(torch.utils.data.Dataset):
    """Scenes under ``root`` (a scene folder itself, or a folder of scene folders).

    Args:
        root: the data folder.
        frames_per_scene: ``S``, or ``(low, high)`` to draw ``S`` uniformly from ``{low..high}``
            per batch (reference: 2..24).
        image_width: ``W_t`` (reference 518). ``H_t`` follows the drawn aspect ratio.
        aspect_range: ``H/W`` is ``round(U(low, high), 2)`` per batch; ``(1, 1)`` gives squares.
        augment: colour jitter, scale crop and resize margin (training); False for validation.
        allow_duplicate_frames: sample frames with replacement, as the reference (True), or
            without while the scene has enough frames.
        patch_size: image sides are multiples of it.
        seed: for reproducible sampling.
    """

    def __init__(self, root: str | os.PathLike, *, frames_per_scene: int | tuple[int, int] = (MIN_FRAMES, MAX_FRAMES),
                 image_width: int = 518, aspect_range: tuple[float, float] = ASPECT_RANGE, augment: bool = True,
                 allow_duplicate_frames: bool = True, patch_size: int = 14, seed: int = 42,
                 color_augmentation: ColorAugmentation | None = None):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"training data folder {root} does not exist")
        directories = [root] if is_scene_dir(root) else sorted(p for p in root.iterdir() if is_scene_dir(p))
        if not directories:
            raise ValueError(f"{root} holds no scene: expected cameras.json or a COLMAP sparse/ model, in it or in "
                             "its subfolders")
        self.scenes: list[Scene] = [read_scene(directory) for directory in directories]
        for scene in self.scenes:
            if not scene.frames:
                raise ValueError(f"scene {scene.name} has no frames")
        if isinstance(frames_per_scene, int):
            frames_per_scene = (frames_per_scene, frames_per_scene)
        low, high = frames_per_scene
        if not MIN_FRAMES <= low <= high <= MAX_FRAMES:
            raise ValueError(f"frames per scene must lie in {MIN_FRAMES}..{MAX_FRAMES}, got {frames_per_scene}")
        if image_width % patch_size:
            raise ValueError(f"image width {image_width} is not a multiple of the patch size {patch_size}")
        self.frames_range = (low, high)
        self.image_width = image_width
        self.aspect_range = aspect_range
        self.augment = augment
        self.allow_duplicate_frames = allow_duplicate_frames
        self.patch_size = patch_size
        self.color_augmentation = color_augmentation or ColorAugmentation()
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict:
        num_frames, aspect = self.draw_batch_shape()
        return self.sample(index, num_frames, aspect)

    def draw_batch_shape(self) -> tuple[int, float]:
        """``(S, aspect)`` for one batch: every sequence of a batch shares them."""
        num_frames = int(self.rng.integers(self.frames_range[0], self.frames_range[1] + 1))
        aspect = round(float(self.rng.uniform(*self.aspect_range)), 2) if self.augment else self.aspect_range[1]
        return num_frames, aspect

    def sample(self, scene_index: int, num_frames: int, aspect: float) -> dict:
        """One sequence: ``images [S,3,H,W]``, ``depths [S,H,W]``, ``extrinsics [S,3,4]``,
        ``intrinsics [S,3,3]``, ``cam_points``/``world_points [S,H,W,3]``, ``point_masks [S,H,W]``,
        ``ids [S]``, ``depth_available`` (scalar bool), ``seq_name``. Frame 0 is the reference."""
        scene = self.scenes[scene_index]
        count = len(scene.frames)
        replace = self.allow_duplicate_frames or count < num_frames
        ids = self.rng.choice(count, size=num_frames, replace=replace)
        target_hw = target_shape_for_aspect(aspect, self.image_width, self.patch_size)
        fields: dict[str, list] = {key: [] for key in ("images", "depths", "extrinsics", "intrinsics", "cam_points",
                                                         "world_points", "point_masks")}
        depth_available = True
        for frame_id in ids.tolist():
            frame = scene.frames[frame_id]
            image, depth = frame.load()
            depth_available &= depth is not None
            processed = process_frame(image, depth, frame.intrinsic, target_hw, self.rng if self.augment else None)
            cam_points, world_points, mask = unproject(processed.depth, frame.extrinsic, processed.intrinsic)
            fields["images"].append(torch.from_numpy(processed.image.copy()).permute(2, 0, 1).float() / 255.0)
            fields["depths"].append(torch.from_numpy(processed.depth))
            fields["extrinsics"].append(torch.from_numpy(frame.extrinsic.astype(np.float32)))
            fields["intrinsics"].append(torch.from_numpy(processed.intrinsic.astype(np.float32)))
            fields["cam_points"].append(torch.from_numpy(cam_points))
            fields["world_points"].append(torch.from_numpy(world_points))
            fields["point_masks"].append(torch.from_numpy(mask))
        sample = {key: torch.stack(values) for key, values in fields.items()}
        if self.augment:
            sample["images"] = self.color_augmentation(sample["images"], self.generator)
        sample["ids"] = torch.from_numpy(ids.astype(np.int64))
        sample["depth_available"] = torch.tensor(depth_available)
        sample["seq_name"] = scene.name
        return sample

    def sample_batch(self, batch_size: int | None = None, max_images: int = MAX_IMAGES_PER_BATCH) -> dict:
        """A collated batch ``[B, S, ...]`` of random scenes with one drawn ``S`` and aspect.

        ``batch_size`` None: ``B = max(1, max_images // S)`` as the reference.
        """
        num_frames, aspect = self.draw_batch_shape()
        size = batch_size if batch_size is not None else max(1, max_images // num_frames)
        scene_ids = self.rng.integers(0, len(self.scenes), size=size)
        return collate([self.sample(int(i), num_frames, aspect) for i in scene_ids])


def collate(samples: list[dict]) -> dict:
    """Stack per-sequence samples into a batch (strings become a list)."""
    batch = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch
