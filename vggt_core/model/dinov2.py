"""DINOv2 ViT with registers, the per-image patch embedder of the aggregator (docs/architecture.md, *Aggregator*).

Attribute names are the state-dict names under ``aggregator.patch_embed.``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VGGTConfig
from .layers import TransformerBlock

DINOV2_NORM_EPS = 1e-6


class PatchProjection(nn.Module):
    """Non-overlapping ``patch_size`` convolution turning an image into a token grid."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> ``[N, h*w, C]`` in row-major patch order."""
        return self.proj(images).flatten(2).transpose(1, 2)


class DinoV2PatchEmbedder(nn.Module):
    def __init__(self, config: VGGTConfig):
        super().__init__()
        settings = config.patch_embed
        dim = config.embed_dim
        self.patch_size = config.patch_size
        self.num_register_tokens = config.num_register_tokens
        self.interpolate_antialias = settings.interpolate_antialias
        self.interpolate_offset = settings.interpolate_offset
        self.grid_size = config.img_size // config.patch_size

        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size ** 2, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
        # Only used in DINOv2 pre-training; kept so the official checkpoint loads strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchProjection(config.patch_size, dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, settings.num_heads, settings.mlp_ratio, settings.init_values, DINOV2_NORM_EPS)
            for _ in range(settings.depth))
        self.norm = nn.LayerNorm(dim, eps=DINOV2_NORM_EPS)

    def interpolate_pos_encoding(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """Learned position table resized to an ``height x width`` image: ``[1, 1 + h*w, C]``.

        The table is learned on a square ``img_size`` grid; other sizes resample it with
        antialiased bicubic interpolation in float32. The cls entry is never resampled.
        """
        rows, cols = height // self.patch_size, width // self.patch_size
        table = self.pos_embed.float()
        if rows * cols == self.grid_size ** 2 and height == width:
            return table.to(dtype)
        cls_position, patch_positions = table[:, :1], table[:, 1:]
        dim = table.shape[-1]
        grid = patch_positions.reshape(1, self.grid_size, self.grid_size, dim).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = ((rows + self.interpolate_offset) / self.grid_size,
                     (cols + self.interpolate_offset) / self.grid_size)
            resized = F.interpolate(grid, scale_factor=scale, mode="bicubic",
                                    antialias=self.interpolate_antialias, align_corners=False)
        else:
            resized = F.interpolate(grid, size=(rows, cols), mode="bicubic",
                                    antialias=self.interpolate_antialias, align_corners=False)
        if resized.shape[-2:] != (rows, cols):
            raise ValueError(f"patch_embed.interpolate_offset={self.interpolate_offset} resizes the position "
                             f"table to {tuple(resized.shape[-2:])}, not the patch grid {(rows, cols)}")
        patch_positions = resized.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
        return torch.cat([cls_position, patch_positions], dim=1).to(dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``[N, 3, H, W]`` -> final-norm patch tokens ``[N, h*w, C]``."""
        count, _, height, width = images.shape
        tokens = self.patch_embed(images)
        tokens = torch.cat([self.cls_token.expand(count, -1, -1).to(tokens.dtype), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(height, width, tokens.dtype)
        # Registers are inserted after the position embedding: they carry no position.
        registers = self.register_tokens.expand(count, -1, -1).to(tokens.dtype)
        tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 1 + self.num_register_tokens:]

