"""From the user's files to a Reconstruction: the one path the CLI and the app both take.

``gather_input_frames`` turns photos, folders and videos into named RGB frames, enforcing the
frame limit; ``reconstruct_frames`` preprocesses them, checks that they fit in the device's
memory, runs the model and returns a :class:`~vggt_core.reconstruction.Reconstruction`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .config import DEFAULT_FRAMES_CHUNK_SIZE, VGGTConfig
from .errors import FrameLimitError, InputError
from .exif import exif_focal_length_px, shown_size
from .images import IMAGE_EXTENSIONS, list_image_files, load_images, model_input_size
from .memory import estimate_peak_memory_bytes, max_frames_for_memory, parameter_count
from .inference import reconstruct
from .progress import ProgressCallback, ProgressRange, ignore_progress
from .reconstruction import Reconstruction
from .video import VIDEO_EXTENSIONS, extract_frames
GIB = 2 ** 30


@dataclass
class InputFrame:
    """One frame to reconstruct and the name it is reported under. Photos stay paths until
    preprocessing decodes them one at a time (a folder of large photos would not fit in
    memory decoded); video frames are decoded images."""

    name: str
    source: Path | Image.Image


def is_video_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def gather_input_frames(inputs: Sequence[str | os.PathLike], *, fps: float = 1.0,
                        max_frames: int | None = None) -> list[InputFrame]:
    """Read image files, folders of images and videos into frames, in the given order.

    Videos are sampled at ``fps`` and thinned evenly to the frames left under ``max_frames``;
    photos are never dropped silently: more than ``max_frames`` raises ``FrameLimitError``.
    """
    if not inputs:
        raise InputError("No input was given: pass photos, a folder of photos, or a video.")
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_image_files(path)
            if not found:
                raise InputError(f"The folder {path.name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path.name or path}: no such file or folder.")

    videos = [f for f in files if is_video_file(f)]
    photos = [f for f in files if not is_video_file(f)]
    if max_frames is not None and len(photos) > max_frames:
        raise FrameLimitError(f"{len(photos)} photos were given, but at most {max_frames} frames can be "
                              "reconstructed at once here. Choose fewer photos.")
    frames_left = None if max_frames is None else max_frames - len(photos)
    if videos and frames_left is not None and frames_left < len(videos):
        raise FrameLimitError(f"The frame limit ({max_frames}) leaves no room for the video(s) after "
                              f"{len(photos)} photos.")

    frames: list[InputFrame] = []
    for path in files:
        if is_video_file(path):
            budget = None if frames_left is None else frames_left // len(videos)
            for number, image in enumerate(extract_frames(path, fps=fps, max_frames=budget)):
                frames.append(InputFrame(f"{path.stem}_{number:04d}", image))
        else:
            frames.append(InputFrame(path.name, path))
    return frames


def available_memory_bytes(device: torch.device) -> int | None:
    """Bytes a forward on ``device`` may still allocate: free GPU memory on CUDA, available RAM
    (Linux ``MemAvailable``) on the CPU; None where there is no reliable figure (MPS, other OSes)."""
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return int(free_bytes)
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def _model_device_and_weight_bytes(model: torch.nn.Module) -> tuple[torch.device, int, int]:
    """The model's device, its resident weight bytes, and bytes per weight."""
    first = next(model.parameters())
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return first.device, total, first.element_size()


def _activation_bytes(device: torch.device) -> int:
    # The backbone runs under bf16/fp16 autocast on CUDA only; elsewhere it computes in float32.
    return 2 if device.type == "cuda" else 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Whether ``num_frames`` frames of ``width × height`` model-input pixels fit on ``device``.

    ``available_bytes`` counts the free memory plus the weights already resident (the estimate
    counts them too); None where the device gives no figure (MPS), and then ``fits`` and
    ``max_frames`` are None as well.
    """

    num_frames: int
    height: int
    width: int
    device: str
    needed_bytes: int
    available_bytes: int | None
    fits: bool | None
    max_frames: int | None


def estimate_memory(config: VGGTConfig, num_frames: int, height: int, width: int, device: torch.device, *,
                    frames_chunk_size: int = DEFAULT_FRAMES_CHUNK_SIZE, weight_bytes: int = 4,
                    resident_weight_bytes: int = 0, num_parameters: int | None = None) -> MemoryEstimate:
    """The one estimate behind both the out-of-memory guard and the app's preview (before any
    weights are loaded, ``resident_weight_bytes`` is 0)."""
    kwargs = dict(frames_chunk_size=frames_chunk_size, activation_bytes=_activation_bytes(device),
                  weight_bytes=weight_bytes, num_parameters=num_parameters)
    needed = estimate_peak_memory_bytes(config, num_frames, height, width, **kwargs)
    free_bytes = available_memory_bytes(device)
    if free_bytes is None:
        return MemoryEstimate(num_frames, height, width, str(device), needed, None, None, None)
    available = free_bytes + resident_weight_bytes
    fits = needed <= available
    max_frames = num_frames if fits else max_frames_for_memory(config, height, width, available, **kwargs)
    return MemoryEstimate(num_frames, height, width, str(device), needed, available, fits, max_frames)


def estimate_memory_of_frames(config: VGGTConfig, frames: Sequence[InputFrame], device: torch.device, *,
                              mode: str = "crop", frames_chunk_size: int = DEFAULT_FRAMES_CHUNK_SIZE,
                              num_parameters: int | None = None) -> MemoryEstimate:
    """:func:`estimate_memory` for input frames, reading only the photos' headers."""
    sizes = []
    for frame in frames:
        size = frame.source.size if isinstance(frame.source, Image.Image) else shown_size(frame.source)
        if size is not None:
            sizes.append(size)
    height, width = model_input_size(sizes, mode)
    return estimate_memory(config, len(frames), height, width, device, frames_chunk_size=frames_chunk_size,
                           num_parameters=num_parameters)


def estimate_memory_for_checkpoint(checkpoint: str | os.PathLike, frames: Sequence[InputFrame],
                                   device: torch.device, *, config: VGGTConfig | None = None, mode: str = "crop",
                                   frames_chunk_size: int = DEFAULT_FRAMES_CHUNK_SIZE) -> MemoryEstimate:
    """:func:`estimate_memory_of_frames` for the architecture of ``checkpoint`` (a Hub id, a local
    file or folder, or ``random-tiny``; ``config`` overrides it as in ``load_model``), before its
    weights are loaded: see :func:`vggt_core.weights.resolve_model_config`."""
    from .weights import resolve_model_config

    model_config = resolve_model_config(checkpoint, config)
    return estimate_memory_of_frames(model_config, frames, device, mode=mode, frames_chunk_size=frames_chunk_size,
                                     num_parameters=parameter_count(model_config))


def check_frames_fit_in_memory(model: torch.nn.Module, num_frames: int, height: int, width: int,
                               frames_chunk_size: int = DEFAULT_FRAMES_CHUNK_SIZE) -> None:
    """Refuse a forward whose estimated peak exceeds the device's available memory plus the
    weights (already resident, but counted by the estimate). Silent where the device reports no
    free-memory figure."""
    device, resident_weight_bytes, bytes_per_weight = _model_device_and_weight_bytes(model)
    estimate = estimate_memory(model.config, num_frames, height, width, device,
                               frames_chunk_size=frames_chunk_size, weight_bytes=bytes_per_weight,
                               resident_weight_bytes=resident_weight_bytes)
    if estimate.fits is False:
        raise FrameLimitError(_too_many_frames_message(model, num_frames, height, width, estimate.available_bytes))


def _too_many_frames_message(model, num_frames: int, height: int, width: int,
                             available_bytes: int | None) -> str:
    """``available_bytes`` None: the device gives no free-memory figure (MPS), so no count."""
    device, _, bytes_per_weight = _model_device_and_weight_bytes(model)
    where = "GPU memory" if device.type in ("cuda", "mps") else "memory"
    if available_bytes is None:
        return (f"{num_frames} frames at {width}x{height} do not fit in the {where}: use fewer photos, "
                "a lower video frame rate, or a smaller frame limit.")
    fitting = max_frames_for_memory(model.config, height, width, available_bytes,
                                    activation_bytes=_activation_bytes(device), weight_bytes=bytes_per_weight)
    return (f"{num_frames} frames at {width}x{height} do not fit in the {where} "
            f"({available_bytes / GIB:.1f} GiB available). About {fitting} frames would fit: "
            "use fewer photos, a lower video frame rate, or a smaller frame limit.")


def _is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises its own type; the CPU and MPS allocators raise RuntimeErrors with these texts."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


@dataclass(frozen=True)
class DecodedFrames:
    """Frames read and preprocessed for the model (CPU work, done before the GPU is needed).

    Attributes:
        images: ``[S, 3, H, W]`` float32 in [0, 1].
        transforms: ``S`` photo → model-input mappings.
        names: ``S`` frame names.
        exif_focal_lengths_px: ``S`` focal lengths from the photos' EXIF (None for video frames
            and photos without the tags), read now because the files are gone once stored.
    """

    images: torch.Tensor
    transforms: list
    names: list[str]
    exif_focal_lengths_px: list[float | None]


def decode_frames(frames: Sequence[InputFrame], *, mode: str = "crop") -> DecodedFrames:
    """Read and preprocess ``frames`` (``mode`` "crop" or "pad"); no model involved.

    Raises ``InputError`` for unusable images.
    """
    if not frames:
        raise InputError("No frames to reconstruct.")
    images, transforms = load_images([frame.source for frame in frames], mode=mode, return_transforms=True)
    focal_lengths = []
    for frame in frames:
        focal = None if isinstance(frame.source, Image.Image) else exif_focal_length_px(frame.source)
        focal_lengths.append(None if focal is None else round(focal, 4))
    return DecodedFrames(images, list(transforms), [frame.name for frame in frames], focal_lengths)


def reconstruct_decoded(model: torch.nn.Module, decoded: DecodedFrames, *,
                        frames_chunk_size: int = DEFAULT_FRAMES_CHUNK_SIZE,
                        progress: ProgressCallback | None = None, check_memory: bool = True) -> Reconstruction:
    """Run the model on frames from :func:`decode_frames` and collect the result.

    Raises ``FrameLimitError`` when the frames do not fit in the device's memory (checked
    before running, and on an out-of-memory error while running); its message says how many
    frames would fit. ``check_memory=False`` skips both, for a model that is not one module on
    one device (``DeviceGroup.model``: its workers report their own failures).
    """
    images, num_frames = decoded.images, len(decoded.names)
    height, width = images.shape[-2:]
    if check_memory:
        check_frames_fit_in_memory(model, num_frames, height, width, frames_chunk_size)
    try:
        recon = reconstruct(model, images, frames_chunk_size=frames_chunk_size, progress=progress,
                            frame_names=decoded.names, transforms=decoded.transforms)
    except RuntimeError as error:  # torch.cuda.OutOfMemoryError is one too
        if not check_memory or not _is_out_of_memory(error):
            raise
        device, resident_weight_bytes, _ = _model_device_and_weight_bytes(model)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        free_bytes = available_memory_bytes(device)
        available = None if free_bytes is None else resident_weight_bytes + free_bytes
        raise FrameLimitError(_too_many_frames_message(model, num_frames, height, width, available)) from error
    # Recorded for the camera options (vggt_core.intrinsics) and the summary: the photos' files
    # are gone once the reconstruction is stored.
    recon.info["intrinsics_source"] = "predicted"
    recon.info["exif_focal_length_px"] = list(decoded.exif_focal_lengths_px)
    return recon


def reconstruct_frames(model: torch.nn.Module, frames: Sequence[InputFrame], *, mode: str = "crop",
                       frames_chunk_size: int = DEFAULT_FRAMES_CHUNK_SIZE,
                       progress: ProgressCallback | None = None) -> Reconstruction:
    """Preprocess ``frames`` (``mode`` "crop" or "pad"), run the model and collect the result:
    :func:`decode_frames` then :func:`reconstruct_decoded`.

    Raises ``InputError`` for unusable images and ``FrameLimitError`` when the frames do not fit
    in the device's memory; its message says how many frames would fit.
    """
    report = progress if progress is not None else ignore_progress
    if not frames:
        raise InputError("No frames to reconstruct.")
    report(0.0, f"Preprocessing {len(frames)} frames")
    decoded = decode_frames(frames, mode=mode)
    return reconstruct_decoded(model, decoded, frames_chunk_size=frames_chunk_size,
                               progress=ProgressRange(report, 0.1, 1.0))
