"""DPT head: four aggregator layers fused into a dense map (docs/architecture.md, *Dense (DPT) heads*).

Used three times: depth (exp activation), point map (inverse-log activation) and, as a
feature extractor at half resolution, by the track head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DPT_HEAD_HIDDEN, DPT_POS_EMBED_RATIO

UV_EMBED_OMEGA_0 = 100.0
# Beyond this many output elements one interpolate call is split into batch chunks (it
# overflows 32-bit indexing in some kernels); numerically a no-op.
MAX_INTERPOLATE_ELEMENTS = 1_610_612_736


def uv_position_embedding(rows: int, cols: int, channels: int, aspect_ratio: float,
                          dtype: torch.dtype, device) -> torch.Tensor:
    """Sin-cos embedding of normalised image coordinates: ``[channels, rows, cols]``.

    Coordinates span ``±aspect/diag`` horizontally and ``±1/diag`` vertically (``diag`` the
    normalised image diagonal), so the embedding knows the aspect ratio. The first half of
    the channels encodes u (x), the second v (y); sin/cos are computed in float64.
    """
    diagonal = (aspect_ratio ** 2 + 1) ** 0.5
    span_x, span_y = aspect_ratio / diagonal, 1 / diagonal
    u = torch.linspace(-span_x * (cols - 1) / cols, span_x * (cols - 1) / cols, steps=cols, dtype=dtype,
                       device=device)
    v = torch.linspace(-span_y * (rows - 1) / rows, span_y * (rows - 1) / rows, steps=rows, dtype=dtype,
                       device=device)
    half = channels // 2
    u_embedding = _sincos_1d(u, half)  # [cols, half]
    v_embedding = _sincos_1d(v, half)  # [rows, half]
    grid = torch.cat([u_embedding[None, :, :].expand(rows, -1, -1),
                      v_embedding[:, None, :].expand(-1, cols, -1)], dim=-1)
    return grid.permute(2, 0, 1).to(dtype)


def _sincos_1d(coordinates: torch.Tensor, channels: int) -> torch.Tensor:
    """``[n] -> [n, channels]``: all sines then all cosines, float64 arithmetic, float32 out."""
    omega = torch.arange(channels // 2, dtype=torch.float64, device=coordinates.device) / (channels / 2.0)
    omega = 1.0 / UV_EMBED_OMEGA_0 ** omega
    angles = coordinates.reshape(-1).double()[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def interpolate_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` of ``[N, C, H, W]``, chunked over N when huge."""
    elements = x.shape[0] * x.shape[1] * size[0] * size[1]
    if elements <= MAX_INTERPOLATE_ELEMENTS:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    chunks = -(-elements // MAX_INTERPOLATE_ELEMENTS)
    return torch.cat([F.interpolate(part, size=size, mode="bilinear", align_corners=True)
                      for part in x.chunk(chunks, dim=0)], dim=0)


def conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """``ReLU(x) + conv2(ReLU(conv1(ReLU(x))))``.

    The skip adds the *rectified* input: the released weights were trained with an in-place
    ReLU that overwrote the unit's input before the skip connection.
    """

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = conv3x3(features, features)
        self.conv2 = conv3x3(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rectified = torch.relu(x)
        return rectified + self.conv2(torch.relu(self.conv1(rectified)))


class FeatureFusionBlock(nn.Module):
    """``RCU2(previous + RCU1(skip))``, resized, then a 1x1 ``out_conv``."""

    def __init__(self, features: int, has_skip_input: bool = True):
        super().__init__()
        if has_skip_input:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        """Args: x, skip ``[N, F, h, w]``; size the output ``(rows, cols)``."""
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        return self.out_conv(interpolate_bilinear(x, size))


class Scratch(nn.Module):
    """The DPT decoder: per-level 3x3 projections to ``features``, fusion and output convs."""

    def __init__(self, out_channels: list[int], features: int, output_dim: int | None):
        super().__init__()
        for level, channels in enumerate(out_channels, start=1):
            setattr(self, f"layer{level}_rn", conv3x3(channels, features, bias=False))
        self.refinenet1 = FeatureFusionBlock(features)
        self.refinenet2 = FeatureFusionBlock(features)
        self.refinenet3 = FeatureFusionBlock(features)
        self.refinenet4 = FeatureFusionBlock(features, has_skip_input=False)
        if output_dim is None:  # feature extractor
            self.output_conv1 = conv3x3(features, features)
        else:
            self.output_conv1 = conv3x3(features, features // 2)
            self.output_conv2 = nn.Sequential(
                conv3x3(features // 2, DPT_HEAD_HIDDEN), nn.ReLU(), nn.Conv2d(DPT_HEAD_HIDDEN, output_dim, 1))


def _resize_layer(level: int, channels: int) -> nn.Module:
    """Bring level maps to 4x, 2x, 1x and 1/2x the patch grid."""
    if level == 0:
        return nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=4)
    if level == 1:
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
    if level == 2:
        return nn.Identity()
    return nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)


class DPTHead(nn.Module):
    """Dense prediction from aggregator tokens.

    With ``output_dim`` set, returns ``(prediction [B,S,H,W,output_dim-1], confidence [B,S,H,W])``;
    with ``output_dim=None`` (feature extractor) returns features ``[B,S,F,H/r,W/r]``.
    """

    def __init__(self, dim_in: int, patch_size: int, features: int, out_channels: list[int],
                 intermediate_layer_idx: list[int], output_dim: int | None, activation: str | None = None,
                 pos_embed: bool = True, down_ratio: int = 1):
        super().__init__()
        self.patch_size = patch_size
        self.intermediate_layer_idx = list(intermediate_layer_idx)
        self.activation = activation
        self.use_pos_embed = pos_embed
        self.down_ratio = down_ratio
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, channels, kernel_size=1) for channels in out_channels)
        self.resize_layers = nn.ModuleList(_resize_layer(level, c) for level, c in enumerate(out_channels))
        self.scratch = Scratch(out_channels, features, output_dim)

    def forward(self, tokens_list: list[torch.Tensor | None], image_size_hw: tuple[int, int], patch_start_idx: int,
                frames_chunk_size: int | None = 8):
        """Args:
            tokens_list: aggregator layers, each ``[B, S, P, 2C]`` (None where unused).
            image_size_hw: input image ``(H, W)``.
            frames_chunk_size: frames decoded at once (bounds the memory of the full-resolution
                maps); None or <= 0 decodes all frames together.
        """
        frames = tokens_list[self.intermediate_layer_idx[0]].shape[1]
        if not frames_chunk_size or frames_chunk_size >= frames:
            return self._forward_frames(tokens_list, image_size_hw, patch_start_idx, 0, frames)
        chunks = [self._forward_frames(tokens_list, image_size_hw, patch_start_idx, start,
                                       min(start + frames_chunk_size, frames))
                  for start in range(0, frames, frames_chunk_size)]
        if isinstance(chunks[0], tuple):
            return tuple(torch.cat(parts, dim=1) for parts in zip(*chunks))
        return torch.cat(chunks, dim=1)

    def _add_pos_embed(self, x: torch.Tensor, image_size_hw: tuple[int, int]) -> torch.Tensor:
        height, width = image_size_hw
        embedding = uv_position_embedding(x.shape[-2], x.shape[-1], x.shape[1], width / height, x.dtype, x.device)
        return x + DPT_POS_EMBED_RATIO * embedding[None]

    def _forward_frames(self, tokens_list, image_size_hw, patch_start_idx, start, end):
        height, width = image_size_hw
        rows, cols = height // self.patch_size, width // self.patch_size
        level_maps = []
        for level, layer_index in enumerate(self.intermediate_layer_idx):
            tokens = tokens_list[layer_index][:, start:end]
            batch, frames = tokens.shape[:2]
            x = self.norm(tokens.reshape(batch * frames, *tokens.shape[2:])[:, patch_start_idx:])
            x = x.permute(0, 2, 1).reshape(batch * frames, -1, rows, cols)
            x = self.projects[level](x)
            if self.use_pos_embed:
                x = self._add_pos_embed(x, image_size_hw)
            x = self.resize_layers[level](x)
            level_maps.append(getattr(self.scratch, f"layer{level + 1}_rn")(x))

        scratch = self.scratch
        fused = scratch.refinenet4(level_maps[3], None, level_maps[2].shape[-2:])
        fused = scratch.refinenet3(fused, level_maps[2], level_maps[1].shape[-2:])
        fused = scratch.refinenet2(fused, level_maps[1], level_maps[0].shape[-2:])
        fused = scratch.refinenet1(fused, level_maps[0], (2 * level_maps[0].shape[-2], 2 * level_maps[0].shape[-1]))
        fused = scratch.output_conv1(fused)
        output_size = (int(rows * self.patch_size / self.down_ratio), int(cols * self.patch_size / self.down_ratio))
        fused = interpolate_bilinear(fused, output_size)
        if self.use_pos_embed:
            fused = self._add_pos_embed(fused, image_size_hw)

        if not hasattr(scratch, "output_conv2"):
            return fused.reshape(batch, frames, *fused.shape[1:])
        raw = scratch.output_conv2(fused).permute(0, 2, 3, 1)
        prediction = activate_dense_prediction(raw[..., :-1], self.activation)
        confidence = 1 + raw[..., -1].exp()
        return (prediction.reshape(batch, frames, *prediction.shape[1:]),
                confidence.reshape(batch, frames, *confidence.shape[1:]))


def activate_dense_prediction(values: torch.Tensor, activation: str) -> torch.Tensor:
    """``exp`` for depth; ``inv_log`` = ``sign(y)·expm1(|y|)`` for point maps."""
    if activation == "exp":
        return values.exp()
    if activation == "inv_log":
        return torch.sign(values) * torch.expm1(values.abs())
    raise ValueError(f"unknown dense-head activation {activation!r}")
