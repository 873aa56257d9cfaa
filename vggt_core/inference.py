"""One model run: a batch of model-input frames -> :class:`~vggt_core.reconstruction.Reconstruction`.

This is the only place that calls the network's forward for a reconstruction; it copies the
outputs to numpy at once and decodes cameras, depth and the depth branch's points. Files,
frames and memory checks are :mod:`vggt_core.pipeline`'s business.
"""

from __future__ import annotations

import contextlib

from typing import Any, Sequence

import numpy as np
import torch

from . import geometry
from .config import DEFAULT_FRAMES_CHUNK_SIZE
from .errors import InputError
from .geometry import unproject_depth_maps_in_frame_chunks
from .images import FrameTransform
from .progress import ProgressCallback, ignore_progress
from .reconstruction import Reconstruction

__all__ = ["reconstruct"]

# Model outputs kept (each [1, S, ...]); anything else it returns (e.g. the input images or
# the per-iteration pose list) is not needed and not copied.
_MODEL_OUTPUT_KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf",
                      "track", "vis", "conf")


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


def _camera_depth_of_points(points: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """z of world ``points [S, H, W, 3]`` in each frame's camera ``[S, 3, 4]`` → ``[S, H, W]``."""
    rotation_z = extrinsics[:, 2, :3]
    return (np.einsum("shwc,sc->shw", points, rotation_z)
            + extrinsics[:, None, None, 2, 3]).astype(np.float32)


@contextlib.contextmanager
def _reporting_each_block(model: torch.nn.Module, report: ProgressCallback, start: float, end: float):
    """Report ``[start, end]`` as the aggregator's alternating-attention blocks finish, so a
    progress bar moves during the forward (most of a run) instead of jumping over it. Forward
    hooks: the network itself knows nothing of progress."""
    blocks = getattr(getattr(model, "aggregator", None), "global_blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0:
        yield
        return
    total = len(blocks)

    def hook_for(index: int):
        def after_block(module, inputs, output) -> None:
            report(start + (end - start) * (index + 1) / total, f"running the model: block {index + 1} of {total}")
        return after_block

    handles = [block.register_forward_hook(hook_for(index)) for index, block in enumerate(blocks)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def reconstruct(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    query_points: Any = None,
    frames_chunk_size: int = DEFAULT_FRAMES_CHUNK_SIZE,
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
    report = progress if progress is not None else ignore_progress
    batch = _validate_images(images)
    num_frames, _, height, width = batch.shape
    queries = _validate_query_points(query_points, height, width)
    if transforms is not None and len(transforms) != num_frames:
        raise InputError(f"{len(transforms)} frame transforms for {num_frames} frames")
    if frame_names is not None and len(frame_names) != num_frames:
        raise InputError(f"{len(frame_names)} frame names for {num_frames} frames")

    device = _model_device(model)
    report(0.0, "running the model")
    with _reporting_each_block(model, report, 0.0, 0.6):
        outputs = model(batch.to(device=device, dtype=torch.float32)[None],
                        query_points=None if queries is None else queries.to(device),
                        frames_chunk_size=frames_chunk_size)
    report(0.65, "the heads decoded depth, points and cameras")
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
    points_from_depth = unproject_depth_maps_in_frame_chunks(depth, extrinsics, intrinsics)

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
    report(1.0, "reconstruction collected")
    return reconstruction
