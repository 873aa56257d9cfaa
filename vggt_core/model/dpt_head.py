"""DPT head: four aggregator layers fused into a dense map (docs/architecture.md, *Dense (DPT) heads*).

Used three times: depth (exp activation), point map (inverse-log activation) and, as a
feature extractor at half resolution, by the track head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DPT_HEAD_HIDDEN, DPT_POS_EMBED_RATIO
from .fast_paths import fast_paths_enabled

UV_EMBED_OMEGA_0 = 100.0
# Beyond this many output elements one interpolate call is split into batch chunks (it
# overflows 32-bit indexing in some kernels); numerically a no-op.
MAX_INTERPOLATE_ELEMENTS = 1_610_612_736
# The fast path decodes the full-resolution tail a few frames at a time, keeping its largest map
# (output_conv2's hidden layer) under this size: the allocator then reuses freed memory instead of
# mapping (and page-faulting) fresh pages for every chunk, and the map stays closer to the caches.
TAIL_GROUP_BYTES = 32 * 2 ** 20


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


class HiddenReLU(nn.ReLU):
    """The ReLU between ``output_conv2``'s convolutions: in place on the fast path (its input is
    the first convolution's fresh output, whose backward does not read it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.relu_() if fast_paths_enabled() else torch.relu(x)


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
        if fast_paths_enabled():
            # The same sums with two fresh maps fewer (the convolutions' outputs are ours to
            # overwrite, and their backward does not read them).
            return self.conv2(self.conv1(rectified).relu_()).add_(rectified)
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
            x = self.resConfUnit1(skip).add_(x) if fast_paths_enabled() else x + self.resConfUnit1(skip)
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
                conv3x3(features // 2, DPT_HEAD_HIDDEN), HiddenReLU(), nn.Conv2d(DPT_HEAD_HIDDEN, output_dim, 1))


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
        if fast_paths_enabled():
            return self._forward_fast(tokens_list, image_size_hw, patch_start_idx, frames_chunk_size)
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

    def _level_tokens(self, tokens_list, level: int, patch_start_idx: int, start: int, end: int,
                      rows: int, cols: int) -> torch.Tensor:
        """Normalised patch tokens of frames ``start:end`` of one level as ``[B*n, 2C, rows, cols]``
        (a channels-last view of the normalised tokens: no copy)."""
        tokens = tokens_list[self.intermediate_layer_idx[level]][:, start:end]
        batch, frames = tokens.shape[:2]
        x = self.norm(tokens.reshape(batch * frames, *tokens.shape[2:])[:, patch_start_idx:])
        return x.permute(0, 2, 1).reshape(batch * frames, -1, rows, cols)

    def _forward_frames(self, tokens_list, image_size_hw, patch_start_idx, start, end):
        height, width = image_size_hw
        rows, cols = height // self.patch_size, width // self.patch_size
        batch, frames = tokens_list[self.intermediate_layer_idx[0]][:, start:end].shape[:2]
        level_maps = []
        for level in range(len(self.intermediate_layer_idx)):
            x = self.projects[level](self._level_tokens(tokens_list, level, patch_start_idx, start, end, rows, cols))
            if self.use_pos_embed:
                x = self._add_pos_embed(x, image_size_hw)
            x = self.resize_layers[level](x)
            level_maps.append(getattr(self.scratch, f"layer{level + 1}_rn")(x))

        fused = self._fuse(level_maps)
        output_size = (int(rows * self.patch_size / self.down_ratio), int(cols * self.patch_size / self.down_ratio))
        fused = interpolate_bilinear(fused, output_size)
        if self.use_pos_embed:
            fused = self._add_pos_embed(fused, image_size_hw)

        if not hasattr(self.scratch, "output_conv2"):
            return fused.reshape(batch, frames, *fused.shape[1:])
        raw = self.scratch.output_conv2(fused).permute(0, 2, 3, 1)
        prediction = activate_dense_prediction(raw[..., :-1], self.activation)
        confidence = 1 + raw[..., -1].exp()
        return (prediction.reshape(batch, frames, *prediction.shape[1:]),
                confidence.reshape(batch, frames, *confidence.shape[1:]))

    def _fuse(self, level_maps: list[torch.Tensor]) -> torch.Tensor:
        """Coarse-to-fine fusion of the four level maps and ``output_conv1``: ``[N, F', 8h, 8w]``."""
        scratch = self.scratch
        fused = scratch.refinenet4(level_maps[3], None, level_maps[2].shape[-2:])
        fused = scratch.refinenet3(fused, level_maps[2], level_maps[1].shape[-2:])
        fused = scratch.refinenet2(fused, level_maps[1], level_maps[0].shape[-2:])
        fused = scratch.refinenet1(fused, level_maps[0], (2 * level_maps[0].shape[-2], 2 * level_maps[0].shape[-1]))
        return scratch.output_conv1(fused)

    # ------------------------------------------------------------------------- fast path
    # The same operations as above, kept in channels-last memory throughout (oneDNN's fastest CPU
    # layout for few channels); the full-resolution tail decoded a few frames at a time (see
    # TAIL_GROUP_BYTES); ReLUs and the position-embedding adds in place; the position tables made
    # once per forward; outputs written into their final tensors instead of concatenated.
    def _forward_fast(self, tokens_list, image_size_hw, patch_start_idx, frames_chunk_size):
        height, width = image_size_hw
        rows, cols = height // self.patch_size, width // self.patch_size
        reference = tokens_list[self.intermediate_layer_idx[0]]
        batch, frames = reference.shape[:2]
        chunk = frames if not frames_chunk_size or frames_chunk_size >= frames else frames_chunk_size
        output_size = (int(rows * self.patch_size / self.down_ratio), int(cols * self.patch_size / self.down_ratio))
        tables: dict[tuple, torch.Tensor] = {}
        outputs = None
        for start in range(0, frames, chunk):
            end = min(start + chunk, frames)
            level_maps = []
            for level in range(len(self.intermediate_layer_idx)):
                x = self._level_tokens(tokens_list, level, patch_start_idx, start, end, rows, cols)
                x = self.projects[level](x.contiguous(memory_format=torch.channels_last))
                if self.use_pos_embed:
                    x = x.add_(self._scaled_pos_embed(tables, x, image_size_hw))
                x = self.resize_layers[level](x)
                level_maps.append(getattr(self.scratch, f"layer{level + 1}_rn")(x))
            fused = self._fuse(level_maps)
            del level_maps
            if outputs is None:
                outputs = self._allocate_outputs(batch, frames, fused, output_size)
            group = self._tail_group_frames(fused, output_size)
            for scene in range(batch):
                for first in range(start, end, group):
                    last = min(first + group, end)
                    offset = scene * (end - start) - start  # row of frame `start` of this scene in `fused`
                    self._decode_frames(fused[offset + first:offset + last], output_size, image_size_hw, tables,
                                        [out[scene, first:last] for out in outputs])
        return outputs if len(outputs) > 1 else outputs[0]

    def _allocate_outputs(self, batch: int, frames: int, fused: torch.Tensor, output_size: tuple[int, int]):
        """The forward's result tensors: ``(prediction [B,S,H,W,D-1], confidence [B,S,H,W])`` or
        the feature maps ``[B,S,F',H/r,W/r]`` (channels innermost in memory, as the tracker reads them)."""
        options = dict(dtype=fused.dtype, device=fused.device)
        if not hasattr(self.scratch, "output_conv2"):
            channels = fused.shape[1]
            maps = torch.empty(batch, frames, *output_size, channels, **options)
            return (maps.permute(0, 1, 4, 2, 3),)
        output_dim = self.scratch.output_conv2[-1].out_channels
        return (torch.empty(batch, frames, *output_size, output_dim - 1, **options),
                torch.empty(batch, frames, *output_size, **options))

    def _tail_group_frames(self, fused: torch.Tensor, output_size: tuple[int, int]) -> int:
        """Frames whose full-resolution tail is decoded together: as many as keep its largest map
        under ``TAIL_GROUP_BYTES``, at least one."""
        channels = DPT_HEAD_HIDDEN if hasattr(self.scratch, "output_conv2") else fused.shape[1]
        frame_bytes = channels * output_size[0] * output_size[1] * fused.element_size()
        return max(1, TAIL_GROUP_BYTES // frame_bytes)

    def _decode_frames(self, fused: torch.Tensor, output_size: tuple[int, int], image_size_hw: tuple[int, int],
                       tables: dict, outputs: list[torch.Tensor]) -> None:
        """Upsample a few frames' fused maps ``[n, F', h, w]`` to the output size and decode them
        into ``outputs`` (views of those frames of the result tensors, ``[n, ...]``)."""
        fused = interpolate_bilinear(fused, output_size)
        if self.use_pos_embed:
            fused = fused.add_(self._scaled_pos_embed(tables, fused, image_size_hw))
        if not hasattr(self.scratch, "output_conv2"):
            outputs[0].copy_(fused)
            return
        raw = self.scratch.output_conv2(fused).permute(0, 2, 3, 1)  # contiguous: the convolution wrote channels-last
        if torch.is_grad_enabled():  # out= arguments have no autograd
            outputs[0].copy_(activate_dense_prediction(raw[..., :-1], self.activation))
            outputs[1].copy_(1 + raw[..., -1].exp())
            return
        activate_dense_prediction(raw[..., :-1], self.activation, out=outputs[0])
        torch.exp(raw[..., -1], out=outputs[1]).add_(1)

    def _scaled_pos_embed(self, tables: dict, x: torch.Tensor, image_size_hw: tuple[int, int]) -> torch.Tensor:
        """``DPT_POS_EMBED_RATIO * uv_position_embedding`` for maps shaped like ``x [N, C, h, w]``,
        as ``[1, C, h, w]`` channels-last, made once per forward and size."""
        key = tuple(x.shape[1:])
        if key not in tables:
            height, width = image_size_hw
            embedding = uv_position_embedding(x.shape[-2], x.shape[-1], x.shape[1], width / height, x.dtype,
                                              x.device)
            tables[key] = (DPT_POS_EMBED_RATIO * embedding[None]).contiguous(memory_format=torch.channels_last)
        return tables[key]


def activate_dense_prediction(values: torch.Tensor, activation: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """``exp`` for depth; ``inv_log`` = ``sign(y)·expm1(|y|)`` for point maps.

    With ``out`` (a tensor shaped like ``values``) the result is written there, and ``inv_log``
    takes two passes instead of four: ``copysign(expm1(|y|), y)`` equals ``sign(y)·expm1(|y|)``
    for every float (both are ±0 at ±0).
    """
    if activation == "exp":
        return values.exp() if out is None else torch.exp(values, out=out)
    if activation == "inv_log":
        if out is None:
            return torch.sign(values) * torch.expm1(values.abs())
        torch.abs(values, out=out)
        return out.expm1_().copysign_(values)
    raise ValueError(f"unknown dense-head activation {activation!r}")
