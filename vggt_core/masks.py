"""Masks of things to leave out (people walking by, cars): the user's input, per photo.

A mask is an image the size of its photo, white (or any opaque paint) where the photo shows
something that must not end up in the scene. Masks are matched to photos by file stem
(``IMG_0042.png`` masks ``IMG_0042.jpg``), mapped into the model-input pixels through each
frame's :class:`~vggt_core.images.FrameTransform` and stored on the reconstruction as
``Reconstruction.exclusion_masks [S, H, W]`` (saved in the entry's npz, so they follow its
share link). Masked pixels give no point in any export (:func:`vggt_core.filtering.select_points`),
do not enter the mesh (:mod:`vggt_core.mesh`), get no automatic track query
(:func:`vggt_core.tracks.choose_query_points`) and are no bundle-adjustment observation.
See docs/surfaces.md, *Masks*.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .errors import InputError
from .images import FrameTransform
from .reconstruction import Reconstruction

__all__ = [
    "MaskSet",
    "MASK_SUFFIXES",
    "load_masks",
    "load_masks_for_reconstruction",
    "mask_image_to_bool",
    "photo_mask_to_model_pixels",
    "with_exclusion_masks",
    "with_frame_mask",
]

MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# A grey level at or above this is "leave out": JPEG-compressed white is not exactly 255.
_WHITE_THRESHOLD = 128


@dataclass
class MaskSet:
    """Masks matched to the frames of a reconstruction.

    Attributes:
        masks: ``[S, H, W]`` bool in model-input pixels, True = leave out.
        notes: one sentence per thing the user should know (a mask resized, a mask without a
            photo), ready to show.
        matched: ``S`` bools, True where a mask was given for that frame.
    """

    masks: np.ndarray
    notes: list[str] = field(default_factory=list)
    matched: list[bool] = field(default_factory=list)


def mask_image_to_bool(image: Image.Image | np.ndarray) -> np.ndarray:
    """``[h, w]`` bool, True where the mask says "leave out".

    White (grey ≥ 128) is leave-out. An image with an alpha channel that is not fully opaque is
    read as a painted layer (the browser's image editor): painted (alpha ≥ 128) is leave-out,
    whatever its colour.

    Args:
        image: a PIL image or an array ``[h, w]``, ``[h, w, 3]`` or ``[h, w, 4]`` (uint8, or bool).
    """
    array = np.asarray(image)
    if array.dtype == np.bool_:
        return array if array.ndim == 2 else array.any(axis=-1)
    if array.ndim == 3 and array.shape[-1] == 4 and (array[..., 3] < 255).any():
        return array[..., 3] >= _WHITE_THRESHOLD
    if array.ndim == 3:
        array = array[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if array.ndim != 2:
        raise InputError(f"a mask must be a grey, RGB or RGBA image, got shape {list(array.shape)}")
    if array.dtype.kind == "f" and array.max(initial=0.0) <= 1.0:
        array = array * 255.0
    return array >= _WHITE_THRESHOLD


def photo_mask_to_model_pixels(mask: np.ndarray, transform: FrameTransform,
                               model_size_hw: tuple[int, int]) -> np.ndarray:
    """A mask at the photo's size in the model-input pixels of its frame.

    Each model-input pixel takes the mask value at its centre mapped back into the photo
    (nearest): the same rule the depth export uses the other way round. Padding (outside the
    photo) is never masked.

    Args:
        mask: ``[h, w]`` bool at the photo's size ``transform.original_size`` (width h, w).
        transform: the frame's photo → model-input mapping.
        model_size_hw: ``(H, W)`` of the model input.

    Returns:
        ``[H, W]`` bool.
    """
    height, width = model_size_hw
    photo_height, photo_width = mask.shape
    columns = (np.arange(width, dtype=np.float64) + 0.5 - transform.offset[0]) / transform.scale[0]
    rows = (np.arange(height, dtype=np.float64) + 0.5 - transform.offset[1]) / transform.scale[1]
    column_index, row_index = np.floor(columns).astype(np.int64), np.floor(rows).astype(np.int64)
    columns_inside = (column_index >= 0) & (column_index < photo_width)
    rows_inside = (row_index >= 0) & (row_index < photo_height)
    sampled = mask[np.ix_(np.clip(row_index, 0, photo_height - 1), np.clip(column_index, 0, photo_width - 1))]
    return sampled & rows_inside[:, None] & columns_inside[None, :]


def _read_mask_file(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError) as error:
        raise InputError(f"mask {path.name} is not a readable image ({error})") from error


def _mask_files(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(sources, (str, os.PathLike)):
        folder = Path(sources)
        if not folder.is_dir():
            raise InputError(f"the mask folder {folder} does not exist")
        return sorted(path for path in folder.iterdir()
                      if path.is_file() and path.suffix.lower() in MASK_SUFFIXES)
    return [Path(source) for source in sources]


def load_masks(sources: str | os.PathLike | Iterable[str | os.PathLike], transforms: Sequence[FrameTransform],
               model_size_hw: tuple[int, int]) -> MaskSet:
    """Read mask images and match them to frames by file stem.

    Args:
        sources: a folder of mask images, or a list of mask files.
        transforms: one :class:`FrameTransform` per frame; its ``name`` is the photo's file name
            and its ``original_size`` the photo's ``(width, height)``.
        model_size_hw: ``(H, W)`` of the model input.

    Returns:
        A :class:`MaskSet`: frames without a mask are all False. A mask whose size differs from
        its photo is resized (nearest) with a note; a mask whose stem matches no photo, or a
        second mask for the same photo, is named in a note and not used.

    Raises:
        InputError: the folder does not exist or a mask file cannot be read.
    """
    height, width = model_size_hw
    stems: dict[str, int] = {}
    for index, transform in enumerate(transforms):
        stems.setdefault(Path(transform.name).stem, index)
    masks = np.zeros((len(transforms), height, width), dtype=bool)
    matched = [False] * len(transforms)
    notes: list[str] = []
    for path in _mask_files(sources):
        index = stems.get(path.stem)
        if index is None:
            notes.append(f"Mask {path.name} matches no photo (a mask needs its photo's file name stem); it was not used.")
            continue
        if matched[index]:
            notes.append(f"Mask {path.name} is a second mask for {transforms[index].name}; it was not used.")
            continue
        image = _read_mask_file(path)
        photo_width, photo_height = transforms[index].original_size
        if image.size != (photo_width, photo_height):
            notes.append(f"Mask {path.name} is {image.size[0]}×{image.size[1]} but its photo is "
                         f"{photo_width}×{photo_height}; it was resized to fit.")
            image = image.resize((photo_width, photo_height), Image.Resampling.NEAREST)
        masks[index] = photo_mask_to_model_pixels(mask_image_to_bool(image), transforms[index], model_size_hw)
        matched[index] = True
    return MaskSet(masks=masks, notes=notes, matched=matched)


def _frame_transforms(recon: Reconstruction) -> list[FrameTransform]:
    return [recon.frame_transform(index) for index in range(recon.num_frames)]


def with_exclusion_masks(recon: Reconstruction, masks: np.ndarray | None) -> Reconstruction:
    """A copy of ``recon`` with ``exclusion_masks`` replaced (None removes them; an all-False
    set is stored as None, so "no mask" has one representation). Stored sparse points lose
    their observations in masked pixels (see below).

    Args:
        masks: ``[S, H, W]`` bool in model-input pixels, or None.
    """
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        if not masks.any():
            masks = None
    masked = dataclasses.replace(recon, exclusion_masks=masks, frame_names=list(recon.frame_names))
    return _without_masked_sparse_observations(masked)


def _without_masked_sparse_observations(recon: Reconstruction) -> Reconstruction:
    """Sparse points (from an earlier bundle adjustment) lose their observations in masked pixels;
    a point left with fewer than two observations is dropped. Masks painted after a refinement
    thus also clear the COLMAP and nerfstudio points."""
    if recon.sparse_points is None or recon.exclusion_masks is None:
        return recon
    height, width = recon.image_size_hw
    tracks = recon.tracks[:, recon.sparse_point_tracks]  # [S, P, 2]
    # Track pixels have their centres at integers (docs/tracks.md).
    rows = np.clip(np.rint(np.nan_to_num(tracks[..., 1])).astype(np.int64), 0, height - 1)
    columns = np.clip(np.rint(np.nan_to_num(tracks[..., 0])).astype(np.int64), 0, width - 1)
    in_mask = recon.exclusion_masks[np.arange(recon.num_frames)[:, None], rows, columns]
    observations = recon.sparse_observations & ~in_mask
    keep = observations.sum(axis=0) >= 2
    return dataclasses.replace(recon, sparse_points=recon.sparse_points[keep],
                               sparse_point_colors=recon.sparse_point_colors[keep],
                               sparse_point_tracks=recon.sparse_point_tracks[keep],
                               sparse_observations=observations[:, keep], frame_names=list(recon.frame_names))


def load_masks_for_reconstruction(recon: Reconstruction,
                                  sources: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[Reconstruction, list[str]]:
    """:func:`load_masks` for the frames of ``recon``, stored on a copy of it.

    Masks already on ``recon`` for frames that get no new mask are kept.

    Returns:
        ``(reconstruction with exclusion_masks, notes)``.
    """
    mask_set = load_masks(sources, _frame_transforms(recon), recon.image_size_hw)
    combined = mask_set.masks
    if recon.exclusion_masks is not None:
        keep_old = ~np.asarray(mask_set.matched)
        combined = combined.copy()
        combined[keep_old] = recon.exclusion_masks[keep_old]
    return with_exclusion_masks(recon, combined), mask_set.notes


def with_frame_mask(recon: Reconstruction, frame_index: int, mask: Image.Image | np.ndarray) -> Reconstruction:
    """A copy of ``recon`` with frame ``frame_index``'s mask replaced by ``mask``: what the app
    stores after the user paints on a frame (or uploads one mask).

    Args:
        frame_index: the frame painted on.
        mask: an image (see :func:`mask_image_to_bool`) at the photo's size ``[h, w]`` or at the
            model-input size ``[H, W]`` (the frame as shown in the app); other sizes are resized
            to the photo's size.
    """
    if not 0 <= int(frame_index) < recon.num_frames:
        raise InputError(f"frame {frame_index} does not exist; the reconstruction has {recon.num_frames} frames")
    painted = mask_image_to_bool(mask)
    height, width = recon.image_size_hw
    transform = recon.frame_transform(int(frame_index))
    if painted.shape != (height, width):
        photo_width, photo_height = transform.original_size
        if painted.shape != (photo_height, photo_width):
            painted = np.asarray(Image.fromarray(painted).resize((photo_width, photo_height), Image.Resampling.NEAREST))
        painted = photo_mask_to_model_pixels(painted, transform, (height, width))
    masks = (np.zeros((recon.num_frames, height, width), dtype=bool) if recon.exclusion_masks is None
             else recon.exclusion_masks.copy())
    masks[int(frame_index)] = painted
    return with_exclusion_masks(recon, masks)
