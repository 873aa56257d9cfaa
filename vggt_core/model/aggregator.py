"""Aggregator: DINOv2 patch tokens, per-frame special tokens and alternating frame/global
attention with 2-D RoPE (docs/architecture.md, *Aggregator*)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD, VGGTConfig
from .dinov2 import DinoV2PatchEmbedder
from .layers import RotaryPositionEmbedding2D, TokenPositions, TransformerBlock

AGGREGATOR_NORM_EPS = 1e-5


class Aggregator(nn.Module):
    def __init__(self, config: VGGTConfig):
        super().__init__()
        dim = config.embed_dim
        self.config = config
        self.patch_size = config.patch_size
        self.patch_start_idx = config.patch_start_idx
        self.patch_embed = DinoV2PatchEmbedder(config)
        self.rope = RotaryPositionEmbedding2D(config.rope_freq)
        self.frame_blocks = nn.ModuleList(self._make_block(config) for _ in range(config.depth))
        self.global_blocks = nn.ModuleList(self._make_block(config) for _ in range(config.depth))
        # Index 0 along dim 1 is the first frame's own token, index 1 is shared by all others.
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, config.num_register_tokens, dim))
        self.reset_normalization_buffers()

    def reset_normalization_buffers(self) -> None:
        """(Re)create the ImageNet mean/std buffers beside the weights. They are not in
        checkpoints, so a model built on the ``meta`` device needs them after loading."""
        device = self.camera_token.device
        self.register_buffer("_resnet_mean", torch.tensor(IMAGENET_MEAN, device=device).view(1, 1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("_resnet_std", torch.tensor(IMAGENET_STD, device=device).view(1, 1, 3, 1, 1),
                             persistent=False)

    def _make_block(self, config: VGGTConfig) -> TransformerBlock:
        return TransformerBlock(config.embed_dim, config.num_heads, config.mlp_ratio, config.init_values,
                                AGGREGATOR_NORM_EPS, qk_norm=config.qk_norm, rope=self.rope)

    def _special_tokens(self, batch: int, frames: int) -> torch.Tensor:
        """``[B*S, 1 + R, C]``: camera then register tokens, the first frame's set for frame 0."""
        tokens = torch.cat([self.camera_token, self.register_token], dim=2)  # [1, 2, 1+R, C]
        first = tokens[:, :1].expand(batch, 1, -1, -1)
        others = tokens[:, 1:2].expand(batch, frames - 1, -1, -1)
        return torch.cat([first, others], dim=1).reshape(batch * frames, *tokens.shape[2:])

    def _token_positions(self, rows: int, cols: int, device) -> torch.Tensor:
        """``[P, 2]`` integer (y, x): patches at (row+1, col+1), special tokens at (0, 0)."""
        grid_y, grid_x = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device),
                                        indexing="ij")
        patch_positions = torch.stack([grid_y, grid_x], dim=-1).reshape(rows * cols, 2) + 1
        special = torch.zeros(self.patch_start_idx, 2, dtype=patch_positions.dtype, device=device)
        return torch.cat([special, patch_positions], dim=0)

    def forward(self, images: torch.Tensor, keep_layers: Iterable[int] | None = None
                ) -> tuple[list[torch.Tensor | None], int]:
        """Run the backbone.

        Args:
            images: ``[B, S, 3, H, W]`` in [0, 1].
            keep_layers: indices of the layers to return; ``None`` keeps all. Layers not kept
                are ``None`` in the list, so that only what the heads read stays in memory.

        Returns:
            ``(tokens_list, patch_start_idx)``: ``depth`` entries, each ``[B, S, P, 2C]`` or None.
        """
        batch, frames, channels, height, width = images.shape
        if channels != 3:
            raise ValueError(f"images must have 3 channels, got {channels}")
        kept = set(range(self.config.depth)) if keep_layers is None else set(keep_layers)

        normalised = (images - self._resnet_mean) / self._resnet_std
        patch_tokens = self.patch_embed(normalised.reshape(batch * frames, 3, height, width))
        tokens = torch.cat([self._special_tokens(batch, frames).to(patch_tokens.dtype), patch_tokens], dim=1)
        tokens_per_frame, dim = tokens.shape[1], tokens.shape[2]

        rows, cols = height // self.patch_size, width // self.patch_size
        positions = self._token_positions(rows, cols, images.device)
        max_position = max(rows, cols)
        frame_positions = TokenPositions(positions.expand(batch * frames, -1, -1), max_position)
        global_positions = TokenPositions(positions.repeat(frames, 1).expand(batch, -1, -1), max_position)

        outputs: list[torch.Tensor | None] = []
        for index, (frame_block, global_block) in enumerate(zip(self.frame_blocks, self.global_blocks)):
            tokens = frame_block(tokens.reshape(batch * frames, tokens_per_frame, dim), frame_positions)
            frame_out = tokens.reshape(batch, frames, tokens_per_frame, dim)
            tokens = global_block(tokens.reshape(batch, frames * tokens_per_frame, dim), global_positions)
            global_out = tokens.reshape(batch, frames, tokens_per_frame, dim)
            outputs.append(torch.cat([frame_out, global_out], dim=-1) if index in kept else None)
        return outputs, self.patch_start_idx
