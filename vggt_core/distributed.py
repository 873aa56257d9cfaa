"""Exact sharded inference over ``torch.distributed`` ranks (docs/chunks.md, *Sharded inference*).

The frames are split into contiguous shards, one per rank; rank 0 holds frame 0, the reference
frame. Everything per frame stays local: DINOv2, the frame-attention blocks, the dense heads.
The only layer that mixes frames inside the aggregator is global attention; each rank computes
the queries, keys and values of its own tokens, all-gathers the keys and values, and attends its
queries to all of them. Softmax attention of one query depends only on the set of keys and values,
so this is the same computation as one process (up to float rounding of the kernel). The camera
head, whose trunk attends across frames, runs on rank 0 on the gathered camera tokens.

Nothing in :mod:`vggt_core.model` changes: the sharded forward drives the aggregator's own blocks
and heads from here.
"""

from __future__ import annotations

import datetime
import os
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import DEFAULT_FRAMES_CHUNK_SIZE
from .model.layers import TokenPositions, TransformerBlock

__all__ = ["shard_bounds", "sharded_forward", "ShardedVGGT", "init_from_environment",
           "reconstruct_decoded_distributed"]

# The output keys gathered to rank 0, each [B, S, ...] with frames on dim 1.
_DENSE_KEYS = ("depth", "depth_conf", "world_points", "world_points_conf")


def shard_bounds(num_frames: int, world_size: int, rank: int) -> tuple[int, int]:
    """Frames ``[start, end)`` of ``rank``: contiguous, sizes differ by at most one, larger
    shards first (so rank 0 always holds frame 0). A rank may get none when ``S < world_size``."""
    base, extra = divmod(num_frames, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _gather_along(tensor: torch.Tensor, dim: int, counts: list[int], group, unit: int = 1) -> torch.Tensor:
    """All-gather ``tensor`` whose size along ``dim`` is ``counts[rank] * unit`` on each rank,
    concatenated in rank order. Shards are padded to the largest, since collectives need equal
    shapes, and the padding is cut off again."""
    largest = max(counts) * unit
    padding = largest - tensor.shape[dim]
    if padding:
        pad_shape = list(tensor.shape)
        pad_shape[dim] = padding
        tensor = torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=dim)
    parts = [torch.empty_like(tensor) for _ in counts]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat([part.narrow(dim, 0, count * unit) for part, count in zip(parts, counts)], dim=dim)


def _gather_to_rank0(tensor: torch.Tensor, counts: list[int], group) -> torch.Tensor | None:
    """``tensor [B, s_rank, ...]`` from every rank → ``[B, S, ...]`` on rank 0, None elsewhere."""
    largest = max(counts)
    padding = largest - tensor.shape[1]
    if padding:
        tensor = torch.cat([tensor, tensor.new_zeros((tensor.shape[0], padding, *tensor.shape[2:]))], dim=1)
    rank = dist.get_rank(group)
    parts = [torch.empty_like(tensor) for _ in counts] if rank == 0 else None
    dist.gather(tensor.contiguous(), parts, dst=dist.get_global_rank(group, 0) if group is not None else 0,
                group=group)
    if rank != 0:
        return None
    return torch.cat([part[:, :count] for part, count in zip(parts, counts)], dim=1)


def _global_block_sharded(block: TransformerBlock, x: torch.Tensor, positions: TokenPositions,
                          gather_tokens: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The global block's forward for the local tokens ``x [B, s·P, C]`` attending to the keys
    and values of all ranks' tokens. Mirrors :class:`vggt_core.model.layers.TransformerBlock` and
    its ``Attention`` step by step; ``tests/test_distributed.py`` checks the two agree."""
    attention = block.attn
    batch, tokens, dim = x.shape
    normed = block.norm1(x)
    qkv = attention.qkv(normed).reshape(batch, tokens, 3, attention.num_heads, attention.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, s·P, head_dim]
    q, k = attention.q_norm(q), attention.k_norm(k)
    if attention.rope is not None:
        # Global positions are the per-frame positions repeated, so rotating before gathering
        # equals rotating the gathered keys.
        q, k = attention.rope(q, positions), attention.rope(k, positions)
    out = F.scaled_dot_product_attention(q, gather_tokens(k), gather_tokens(v))
    x = x + block.ls1(attention.proj(out.transpose(1, 2).reshape(batch, tokens, dim)))
    return x + block.ls2(block.mlp(block.norm2(x)))


def sharded_forward(model: nn.Module, images: torch.Tensor, *, group=None,
                    frames_chunk_size: int | None = DEFAULT_FRAMES_CHUNK_SIZE) -> dict | None:
    """One VGGT forward with the frames sharded over the ranks of ``group``; every rank calls it.

    Args:
        model: a :class:`vggt_core.model.VGGT` (same weights on every rank), in eval mode.
        images: ``[B, S, 3, H, W]`` (or ``[S, 3, H, W]``) in [0, 1], the whole sequence; each rank
            only computes on its shard (:func:`shard_bounds`). Must be on the model's device.
        group: the process group (default: the world).

    Returns:
        On rank 0 the model's outputs for all frames, as ``model(images)`` without tracks:
        ``pose_enc [B, S, 9]``, ``pose_enc_list``, ``depth [B, S, H, W, 1]``, ``depth_conf``,
        ``world_points [B, S, H, W, 3]``, ``world_points_conf`` (heads the model lacks are
        absent). None on the other ranks.
    """
    images, _ = model._validate_inputs(images, None)
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    batch, num_frames, _, height, width = images.shape
    counts = [shard_bounds(num_frames, world_size, r)[1] - shard_bounds(num_frames, world_size, r)[0]
              for r in range(world_size)]
    if min(counts) == 0:
        raise ValueError(f"{num_frames} frames cannot be sharded over {world_size} ranks: each needs one frame")
    start, end = shard_bounds(num_frames, world_size, rank)
    local = images[:, start:end]
    frames = end - start
    aggregator, config = model.aggregator, model.config
    keep = [index for index in config.used_layer_indices if model._dense_or_camera_uses(index)]

    with torch.inference_mode(), model._aggregator_autocast(images.device):
        normalised = (local - aggregator._resnet_mean) / aggregator._resnet_std
        patch_tokens = aggregator.patch_embed(normalised.reshape(batch * frames, 3, height, width))
        special = torch.cat([aggregator.camera_token, aggregator.register_token], dim=2)  # [1, 2, 1+R, C]
        # Frame 0's own camera/register tokens only where this shard holds frame 0.
        which = torch.tensor([0 if start + index == 0 else 1 for index in range(frames)], device=images.device)
        special = special[0, which].unsqueeze(0).expand(batch, -1, -1, -1).reshape(batch * frames, *special.shape[2:])
        tokens = torch.cat([special.to(patch_tokens.dtype), patch_tokens], dim=1)
        tokens_per_frame, dim = tokens.shape[1], tokens.shape[2]
        rows, cols = height // aggregator.patch_size, width // aggregator.patch_size
        positions = aggregator._token_positions(rows, cols, images.device)
        frame_positions = TokenPositions(positions.expand(batch * frames, -1, -1), max(rows, cols))
        global_positions = TokenPositions(positions.repeat(frames, 1).expand(batch, -1, -1), max(rows, cols))

        def gather_tokens(tensor: torch.Tensor) -> torch.Tensor:  # [B, heads, s·P, d] → [B, heads, S·P, d]
            return _gather_along(tensor, 2, counts, group, unit=tokens_per_frame)

        tokens_list: list[torch.Tensor | None] = []
        for index, (frame_block, global_block) in enumerate(zip(aggregator.frame_blocks, aggregator.global_blocks)):
            tokens = frame_block(tokens.reshape(batch * frames, tokens_per_frame, dim), frame_positions)
            frame_out = tokens.reshape(batch, frames, tokens_per_frame, dim)
            tokens = _global_block_sharded(global_block, tokens.reshape(batch, frames * tokens_per_frame, dim),
                                           global_positions, gather_tokens)
            global_out = tokens.reshape(batch, frames, tokens_per_frame, dim)
            tokens_list.append(torch.cat([frame_out, global_out], dim=-1) if index in keep else None)

    predictions: dict = {}
    with torch.inference_mode(), torch.autocast(images.device.type, enabled=False):
        heads_tokens = [t.float() if t is not None else None for t in tokens_list]
        if model.camera_head is not None:
            camera_tokens = _gather_to_rank0(heads_tokens[-1][:, :, :1].contiguous(), counts, group)
            if rank == 0:
                pose_enc_list = model.camera_head([camera_tokens])  # reads [-1][:, :, 0]
                predictions["pose_enc"] = pose_enc_list[-1]
                predictions["pose_enc_list"] = pose_enc_list
        local_dense = {}
        if model.depth_head is not None:
            local_dense["depth"], local_dense["depth_conf"] = model.depth_head(
                heads_tokens, (height, width), aggregator.patch_start_idx, frames_chunk_size)
        if model.point_head is not None:
            local_dense["world_points"], local_dense["world_points_conf"] = model.point_head(
                heads_tokens, (height, width), aggregator.patch_start_idx, frames_chunk_size)
        del heads_tokens, tokens_list
        for key in _DENSE_KEYS:
            if key in local_dense:
                gathered = _gather_to_rank0(local_dense.pop(key), counts, group)
                if rank == 0:
                    predictions[key] = gathered
    return predictions if rank == 0 else None


class ShardedVGGT(nn.Module):
    """A VGGT whose forward is :func:`sharded_forward`, so :func:`vggt_core.reconstruct` can run
    it on rank 0 while the other ranks call it directly (their forward returns None)."""

    def __init__(self, model: nn.Module, group=None):
        super().__init__()
        self.model = model
        self.group = group
        self.config = model.config

    def forward(self, images: torch.Tensor, query_points: torch.Tensor | None = None,
                frames_chunk_size: int | None = DEFAULT_FRAMES_CHUNK_SIZE) -> dict | None:
        """Args: images ``[B, S, 3, H, W]`` in [0, 1]; query points are not supported (the
        tracker needs every frame's features: run :func:`vggt_core.track_reconstruction` after)."""
        if query_points is not None:
            raise ValueError("the sharded forward does not track points")
        return sharded_forward(self.model, images, group=self.group, frames_chunk_size=frames_chunk_size)


def init_from_environment(device: str | None = None, timeout_s: float = 600.0) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and return this rank's device:
    ``cuda:LOCAL_RANK`` with NCCL when CUDA is available and ``device`` is not ``cpu``, else the
    CPU with gloo."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        from .errors import InputError

        raise InputError("--distributed needs torchrun: python -m torch.distributed.run --nproc-per-node N "
                         "-m vggt_core reconstruct ... --distributed")
    use_cuda = torch.cuda.is_available() and (device is None or not str(device).startswith("cpu"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    if use_cuda:
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(local)
        return local
    return torch.device("cpu")


def reconstruct_decoded_distributed(model: nn.Module, decoded, *, frames_chunk_size: int = DEFAULT_FRAMES_CHUNK_SIZE,
                                    progress=None, group=None):
    """Every rank calls this with the same frames (:func:`vggt_core.pipeline.decode_frames`).
    Rank 0 returns the :class:`Reconstruction` of all frames; the other ranks return None."""
    from .inference import reconstruct

    sharded = ShardedVGGT(model, group)
    if dist.get_rank(group) != 0:
        device = next(model.parameters()).device
        sharded(decoded.images[None].to(device=device, dtype=torch.float32), frames_chunk_size=frames_chunk_size)
        return None
    recon = reconstruct(sharded, decoded.images, frames_chunk_size=frames_chunk_size, progress=progress,
                        frame_names=decoded.names, transforms=decoded.transforms)
    recon.info["intrinsics_source"] = "predicted"
    recon.info["exif_focal_length_px"] = list(decoded.exif_focal_lengths_px)
    recon.info["distributed_ranks"] = dist.get_world_size(group)
    return recon
