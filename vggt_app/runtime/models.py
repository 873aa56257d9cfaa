"""The model of a server process: loaded on first use, run one forward at a time; with
``--devices``, also the device group that runs the forward over several devices
(vggt_app.runtime.device_group).

On a Hugging Face ZeroGPU Space a GPU is attached only inside functions decorated with
``spaces.GPU``: :func:`run_model`, :func:`run_refine_tracking` and :func:`run_tracking` are those
functions, and nothing else here touches the GPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vggt_core import load_model, resolve_device
from vggt_core.chunks import reconstruct_decoded_in_chunks
from vggt_core.pipeline import DecodedFrames, reconstruct_decoded
from vggt_core.reconstruction import Reconstruction
from vggt_core.tracks import DEFAULT_MAX_QUERY_POINTS, track_reconstruction

from .device_group import ServerDeviceGroup
from .model_worker import ModelWorker

logger = logging.getLogger("vggt_app")

# The seconds ZeroGPU reserves a GPU for one reconstruction (VGGT-1B takes a few seconds for
# tens of frames; the margin covers the first call, which moves the weights to the GPU).
ZERO_GPU_DURATION_SECONDS = 120


class ModelProvider:
    """Loads the model the first time it is needed, so the page comes up at once.

    A lock makes concurrent first requests wait for one load instead of each loading 5 GB.
    A failed load is not remembered: the next request tries again (the network may be back).

    With two or more ``devices`` the forward runs on :attr:`device_group` while it works; the
    in-process model (on ``device``) is then loaded only when needed: tracking (not sharded), or
    once the group stopped.
    """

    def __init__(self, checkpoint: str, device: str | None = None, devices: Sequence[str] = ()):
        self.checkpoint = checkpoint
        self.device = device
        self._model: torch.nn.Module | None = None
        self._lock = threading.Lock()
        self.device_group = ServerDeviceGroup(devices, checkpoint) if len(devices) > 1 else None

    def close(self) -> None:
        """Stop the device group's workers, if any (the server is exiting)."""
        if self.device_group is not None:
            self.device_group.close()

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def get(self) -> torch.nn.Module:
        with self._lock:
            if self._model is None:
                started = time.perf_counter()
                self._model = self._load()
                logger.info("loaded %s in %.1f s", self.checkpoint, time.perf_counter() - started)
            return self._model

    def _load(self) -> torch.nn.Module:
        if spaces_package() is not None:
            # ZeroGPU forbids initialising CUDA outside a spaces.GPU call: read the weights on
            # the CPU, then .to(device), which ZeroGPU defers until a GPU is attached.
            return load_model(self.checkpoint, device="cpu").to(resolve_device(self.device))
        return load_model(self.checkpoint, device=self.device)


def spaces_package():
    """Hugging Face's ``spaces`` package (present on Spaces), or None."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return None
    return spaces


def on_zero_gpu(function: Callable) -> Callable:
    """``spaces.GPU`` on a Hugging Face Space (a GPU is attached for the call on ZeroGPU, a no-op
    on other hardware); the function unchanged everywhere else."""
    spaces = spaces_package()
    if spaces is None:
        return function
    return spaces.GPU(duration=ZERO_GPU_DURATION_SECONDS)(function)


@dataclass(frozen=True)
class ChunkLayout:
    """Run the model on overlapping chunks of ``size`` frames sharing ``overlap`` (vggt_core.chunks)."""

    size: int
    overlap: int


@on_zero_gpu
def run_model(model: torch.nn.Module, decoded: DecodedFrames, progress: Callable[[float, str], None],
              track_progress: Callable[[float, str], None] | None = None,
              max_tracks: int = DEFAULT_MAX_QUERY_POINTS, *, chunks: ChunkLayout | None = None,
              check_memory: bool = True) -> Reconstruction:
    """The only GPU work: on ZeroGPU a GPU is attached for exactly this call. The frames are
    decoded before, and the scene is built after, outside it. With ``chunks`` the model runs on
    overlapping chunks, aligned into one scene (one progress stage per chunk). With
    ``track_progress`` the track head also follows up to ``max_tracks`` points across the frames
    (for bundle adjustment, which runs after, on the CPU). ``check_memory=False`` for a device
    group's model (see ``reconstruct_decoded``)."""
    if chunks is None:
        recon = reconstruct_decoded(model, decoded, progress=progress, check_memory=check_memory)
    else:
        recon = reconstruct_decoded_in_chunks(model, decoded, chunks.size, chunks.overlap, progress=progress,
                                              check_memory=check_memory)
    if track_progress is None:
        return recon
    return _track_for_refining(model, recon, max_tracks, track_progress)  # in the same GPU call


@on_zero_gpu
def run_refine_tracking(model: torch.nn.Module, recon: Reconstruction, max_tracks: int,
                        progress: Callable[[float, str], None]) -> Reconstruction:
    """Up to ``max_tracks`` automatic tracks for bundle adjustment (after a device group's forward,
    which does not track, on the in-process model)."""
    return _track_for_refining(model, recon, max_tracks, progress)


def _track_for_refining(model: torch.nn.Module, recon: Reconstruction, max_tracks: int,
                        progress: Callable[[float, str], None]) -> Reconstruction:
    return track_reconstruction(model, recon, max_query_points=max_tracks, progress=progress)


@on_zero_gpu
def run_tracking(model: torch.nn.Module, recon: Reconstruction, queries: Any,
                 progress: Callable[[float, str], None]) -> Reconstruction:
    """The Tracks view's GPU work: the model re-run on a stored scene's frames to track ``queries``."""
    return track_reconstruction(model, recon, queries, progress=progress)


def refine_cameras(recon: Reconstruction) -> tuple[Reconstruction, dict[str, Any]]:
    """Bundle adjustment of a tracked scene (CPU, outside the GPU slot): the refined scene and the
    report, or the scene unrefined and a report saying why: a failure never loses the scene."""
    from vggt_core.bundle_adjustment import bundle_adjust  # imports pycolmap: only when asked for

    try:
        result = bundle_adjust(recon)
        return result.reconstruction, result.report.as_dict()
    except Exception:
        logger.exception("bundle adjustment failed")
        return recon, {"refined": False, "message": "bundle adjustment failed on the server (logged)"}


# One model forward at a time in this process (one GPU, one copy of the weights), on one thread
# at a lower CPU priority than the requests of people looking at scenes (see model_worker).
# Requests decode their inputs and build their scenes in parallel; only the forward waits here.
GPU_SLOT = ModelWorker()


__all__ = ["GPU_SLOT", "ChunkLayout", "ModelProvider", "ZERO_GPU_DURATION_SECONDS", "on_zero_gpu", "refine_cameras",
           "run_model", "run_refine_tracking", "run_tracking", "spaces_package"]
