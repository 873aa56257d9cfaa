"""Estimate of the peak memory of one VGGT forward, to refuse (or explain) inputs that cannot fit.

The estimate counts what the lean forward keeps alive: the weights, the aggregator layers that
the heads read (float32), the largest transient working set (one attention/MLP step of the
backbone, or one chunk of full-resolution DPT maps) and the outputs. It is deliberately
pessimistic (``SAFETY_FACTOR``) because the caching allocator fragments memory.

Every function takes the model's :class:`~vggt_core.config.VGGTConfig`; before a model is loaded,
:func:`vggt_core.weights.resolve_model_config` gives the config of a checkpoint, and
:func:`vggt_core.pipeline.estimate_memory_for_checkpoint` combines the two for input frames.
"""

from __future__ import annotations

import functools
import json

from .config import DEFAULT_FRAMES_CHUNK_SIZE, VGGTConfig

SAFETY_FACTOR = 1.25
FLOAT32_BYTES = 4


def parameter_count(config: VGGTConfig) -> int:
    """Parameters of a VGGT of ``config``, counted on the meta device (no memory) and remembered
    per architecture: counting VGGT-1B takes about a second, and the estimate is asked often."""
    return _parameter_count_of_config_json(json.dumps(config.to_dict(), sort_keys=True))


@functools.lru_cache(maxsize=8)
def _parameter_count_of_config_json(config_json: str) -> int:
    import torch

    from .model import VGGT

    with torch.device("meta"):
        return sum(p.numel() for p in VGGT(VGGTConfig.from_dict(json.loads(config_json))).parameters())


def estimate_peak_memory_bytes(config: VGGTConfig, num_frames: int, height: int, width: int, *,
                               frames_chunk_size: int = DEFAULT_FRAMES_CHUNK_SIZE, activation_bytes: int = 2,
                               weight_bytes: int = FLOAT32_BYTES, num_parameters: int | None = None) -> int:
    """Bytes one forward of ``num_frames`` images ``height x width`` needs at most.

    ``activation_bytes`` is 2 under bf16/fp16 autocast (CUDA) and 4 in float32.
    """
    if num_parameters is None:
        num_parameters = parameter_count(config)
    dim = config.embed_dim
    tokens_per_frame = config.patch_start_idx + (height // config.patch_size) * (width // config.patch_size)
    all_tokens = num_frames * tokens_per_frame

    kept_layers = len(config.used_layer_indices) * all_tokens * 2 * dim * FLOAT32_BYTES
    # Residual stream (float32) + q, k, v, attention output + MLP hidden (4C) in the compute dtype.
    backbone_step = all_tokens * dim * (2 * FLOAT32_BYTES + (4 + int(4 * config.mlp_ratio)) * activation_bytes)
    chunk = min(num_frames, frames_chunk_size or num_frames)
    features = config.dense_head.features
    # Full-resolution decoder maps of one chunk (F channels at half resolution upsampled, F/2 at full).
    dpt_chunk = chunk * height * width * FLOAT32_BYTES * (features // 2 * 3 + features)
    outputs = num_frames * height * width * FLOAT32_BYTES * 6  # depth, conf, xyz, conf
    working = max(backbone_step, dpt_chunk)
    return int(SAFETY_FACTOR * (num_parameters * weight_bytes + kept_layers + working + outputs))


def max_frames_for_memory(config: VGGTConfig, height: int, width: int, available_bytes: int, **kwargs) -> int:
    """Largest frame count whose estimate fits in ``available_bytes`` (0 if not even one)."""
    kwargs.setdefault("num_parameters", parameter_count(config))
    if estimate_peak_memory_bytes(config, 1, height, width, **kwargs) > available_bytes:
        return 0
    low, high = 1, 2
    while estimate_peak_memory_bytes(config, high, height, width, **kwargs) <= available_bytes:
        low, high = high, high * 2
        if high > 1_000_000:
            return high
    while high - low > 1:
        middle = (low + high) // 2
        if estimate_peak_memory_bytes(config, middle, height, width, **kwargs) <= available_bytes:
            low = middle
        else:
            high = middle
    return low
