"""The memory estimate of the app's model on the app's device, before any weights are loaded.

One function for the page's memory line and for the chunk size of "Process in chunks", so the
chunk size a run takes is the one the page offered.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from vggt_core.config import VGGTConfig
from vggt_core.memory import parameter_count
from vggt_core.pipeline import InputFrame, MemoryEstimate, estimate_memory_of_frames
from vggt_core.weights import resolve_device, resolve_model_config


@functools.lru_cache(maxsize=4)
def config_of_checkpoint(checkpoint: str) -> VGGTConfig:
    # The config beside a local checkpoint (or random-tiny's, or VGGT-1B's for a Hub id not yet
    # downloaded): read once per process, without loading the weights.
    return resolve_model_config(checkpoint)


def estimate_for_frames(frames: Sequence[InputFrame], *, checkpoint: str, device: str | None,
                        on_zero_gpu: bool = False) -> MemoryEstimate:
    """The guard's estimate for ``frames`` on the app's device (no free-memory figure on ZeroGPU,
    where CUDA must not be touched outside a GPU call)."""
    config = config_of_checkpoint(checkpoint)
    target = resolve_device(device) if not on_zero_gpu else resolve_device("meta")
    return estimate_memory_of_frames(config, frames, target, num_parameters=parameter_count(config))


__all__ = ["config_of_checkpoint", "estimate_for_frames"]
