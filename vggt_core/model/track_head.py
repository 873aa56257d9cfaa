"""Track head: DPT features at half resolution and an iterative correlation tracker (docs/architecture.md, *Track head*)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VGGTConfig
from .dpt_head import DPTHead
from .layers import Mlp

FLOW_EMBEDDING_FREQUENCY = 1000.0
TRACKER_POS_EMBED_BASE = 10000.0


def sample_bilinear(maps: torch.Tensor, points: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """Bilinear samples where pixel index 0 is the centre of the first pixel (``align_corners``).

    Args:
        maps: ``[M, C, H, W]``.
        points: ``[M, h, w, 2]`` (x, y) in pixels of ``maps``.
    Returns: ``[M, C, h, w]``.
    """
    height, width = maps.shape[-2:]
    scale = torch.tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1)], dtype=points.dtype, device=points.device)
    return F.grid_sample(maps, points * scale - 1, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def sample_at_points(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Features at points, border padding: maps ``[B, C, H, W]``, points ``[B, N, 2]`` -> ``[B, N, C]``."""
    samples = sample_bilinear(maps, points[:, None].to(maps.dtype), padding_mode="border")  # [B, C, 1, N]
    return samples[:, :, 0].permute(0, 2, 1)


def tracker_position_table(channels: int, rows: int, cols: int, device) -> torch.Tensor:
    """``[1, channels, rows, cols]`` sin-cos table: the first half encodes the column (x),
    the second half the row (y); each half is all sines then all cosines."""
    half = channels // 2
    omega = torch.arange(half // 2, dtype=torch.float64, device=device) / (half / 2.0)
    omega = 1.0 / TRACKER_POS_EMBED_BASE ** omega

    def embed(coordinate: torch.Tensor) -> torch.Tensor:
        angles = coordinate.double().reshape(-1)[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    grid_y, grid_x = torch.meshgrid(torch.arange(rows, dtype=torch.float32, device=device),
                                    torch.arange(cols, dtype=torch.float32, device=device), indexing="ij")
    table = torch.cat([embed(grid_x), embed(grid_y)], dim=1).float()  # [rows*cols, channels]
    return table.reshape(rows, cols, channels).permute(2, 0, 1)[None]


def flow_embedding(flow: torch.Tensor, channels_per_axis: int, max_scale: float) -> torch.Tensor:
    """Embed displacements ``[M, S, 2]`` -> ``[M, S, 2*channels_per_axis + 4]``.

    Interleaved sin/cos per axis at frequencies ``2j * 1000/channels`` (high on purpose: the
    trained weights expect them), then the raw flow over ``max_scale``, appended twice.
    """
    frequencies = torch.arange(0, channels_per_axis, 2, dtype=torch.float32, device=flow.device)
    frequencies = frequencies * (FLOW_EMBEDDING_FREQUENCY / channels_per_axis)
    axes = []
    for axis in range(2):
        angles = flow[..., axis:axis + 1] * frequencies
        embedded = torch.zeros(*flow.shape[:-1], channels_per_axis, dtype=torch.float32, device=flow.device)
        embedded[..., 0::2] = torch.sin(angles)
        embedded[..., 1::2] = torch.cos(angles)
        axes.append(embedded)
    scaled = flow / max_scale
    return torch.cat([*axes, scaled, scaled], dim=-1)


class AttentionBlock(nn.Module):
    """Self-attention block whose residual stream starts from the *normalised* input (as trained)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[M, N, dim]``."""
        x = self.norm1(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """Cross-attention from ``x`` to a normalised ``context``; residual from normalised ``x``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: ``[M, N, dim]``; context: ``[M, K, dim]``."""
        x = self.norm1(x)
        context = self.norm_context(context)
        x = x + self.cross_attn(x, context, context, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class EfficientUpdateFormer(nn.Module):
    """Alternating attention over time (per track) and space (tracks <-> learned virtual tracks)."""

    def __init__(self, input_dim: int, hidden_size: int, output_dim: int, depth: int, num_heads: int,
                 num_virtual_tracks: int):
        super().__init__()
        self.num_virtual_tracks = num_virtual_tracks
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size)
        self.flow_head = nn.Linear(hidden_size, output_dim)
        # The checkpoint's (misspelled) key name.
        self.virual_tracks = nn.Parameter(torch.zeros(1, num_virtual_tracks, 1, hidden_size))
        self.time_blocks = nn.ModuleList(AttentionBlock(hidden_size, num_heads) for _ in range(depth))
        self.space_virtual_blocks = nn.ModuleList(AttentionBlock(hidden_size, num_heads) for _ in range(depth))
        self.space_point2virtual_blocks = nn.ModuleList(
            CrossAttentionBlock(hidden_size, num_heads) for _ in range(depth))
        self.space_virtual2point_blocks = nn.ModuleList(
            CrossAttentionBlock(hidden_size, num_heads) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, N, S, input_dim]`` -> ``[B, N, S, output_dim]``."""
        initial = self.input_transform(self.input_norm(x))
        batch, points, frames, hidden = initial.shape
        tokens = torch.cat([initial, self.virual_tracks.repeat(batch, 1, frames, 1)], dim=1)
        total = tokens.shape[1]
        for time_block, virtual_block, point_to_virtual, virtual_to_point in zip(
                self.time_blocks, self.space_virtual_blocks, self.space_point2virtual_blocks,
                self.space_virtual2point_blocks):
            tokens = time_block(tokens.reshape(batch * total, frames, hidden)).reshape(batch, total, frames, hidden)
            space = tokens.permute(0, 2, 1, 3).reshape(batch * frames, total, hidden)
            point_tokens, virtual_tokens = space[:, :points], space[:, points:]
            virtual_tokens = virtual_to_point(virtual_tokens, point_tokens)
            virtual_tokens = virtual_block(virtual_tokens)
            point_tokens = point_to_virtual(point_tokens, virtual_tokens)
            space = torch.cat([point_tokens, virtual_tokens], dim=1)
            tokens = space.reshape(batch, frames, total, hidden).permute(0, 2, 1, 3)
        tokens = tokens[:, :points] + initial
        return self.flow_head(self.output_norm(tokens))


class CorrelationPyramid:
    """Average-pooled feature pyramid and windowed correlation lookup around track positions."""

    def __init__(self, feature_maps: torch.Tensor, levels: int, radius: int):
        """feature_maps: ``[B, S, C, H, W]``."""
        batch, frames, channels, height, width = feature_maps.shape
        self.radius = radius
        self.pyramid = [feature_maps]
        maps = feature_maps.reshape(batch * frames, channels, height, width)
        for _ in range(levels - 1):
            maps = F.avg_pool2d(maps, 2, stride=2)
            self.pyramid.append(maps.reshape(batch, frames, channels, *maps.shape[-2:]))

    def sample(self, track_features: torch.Tensor, coordinates: torch.Tensor,
               points_chunk_size: int | None = None) -> torch.Tensor:
        """Correlation windows: features ``[B, S, N, C]``, coords ``[B, S, N, 2]`` -> ``[B, S, N, levels*(2r+1)^2]``.

        Every point's correlation map is independent of the others, so ``points_chunk_size``
        points at a time give the same values while bounding the ``[B, S, n, H·W]`` maps.
        """
        points = track_features.shape[2]
        if points_chunk_size is None or points <= points_chunk_size:
            return self._sample_chunk(track_features, coordinates)
        return torch.cat([self._sample_chunk(track_features[:, :, start:start + points_chunk_size],
                                             coordinates[:, :, start:start + points_chunk_size])
                          for start in range(0, points, points_chunk_size)], dim=2)

    def _sample_chunk(self, track_features: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
        batch, frames, points, channels = track_features.shape
        window = 2 * self.radius + 1
        offsets = torch.linspace(-self.radius, self.radius, window, dtype=coordinates.dtype,
                                 device=coordinates.device)
        # Window cell (i, j) samples (x + offset_i, y + offset_j): the outer index moves x.
        grid_i, grid_j = torch.meshgrid(offsets, offsets, indexing="ij")
        window_offsets = torch.stack([grid_i, grid_j], dim=-1)  # [window, window, 2] as (dx, dy)
        samples = []
        for level, maps in enumerate(self.pyramid):
            height, width = maps.shape[-2:]
            correlation = torch.matmul(track_features, maps.reshape(batch, frames, channels, height * width))
            # In place: the same values without a second [B, S, n, H·W] tensor.
            correlation.div_(torch.sqrt(torch.tensor(channels, dtype=torch.float32)))
            correlation = correlation.reshape(batch * frames * points, 1, height, width)
            centres = coordinates.reshape(batch * frames * points, 1, 1, 2) / 2 ** level
            windows = sample_bilinear(correlation, (centres + window_offsets).to(correlation.dtype), "zeros")
            samples.append(windows.reshape(batch, frames, points, -1))
        return torch.cat(samples, dim=-1)


class Tracker(nn.Module):
    """Iterative point tracker over precomputed feature maps (keys ``track_head.tracker.*``)."""

    def __init__(self, config: VGGTConfig):
        super().__init__()
        settings = config.track_head
        latent = settings.features
        self.latent_dim = latent
        self.stride = settings.stride
        self.corr_levels = settings.corr_levels
        self.corr_radius = settings.corr_radius
        self.max_scale = settings.max_scale
        self.iterations = settings.iters
        transformer_dim = 3 * latent + 4  # flow embedding (latent + 4) + correlation + features
        self.corr_mlp = Mlp(settings.corr_levels * (2 * settings.corr_radius + 1) ** 2, settings.hidden_size, latent)
        self.query_ref_token = nn.Parameter(torch.zeros(1, 2, transformer_dim))
        self.updateformer = EfficientUpdateFormer(transformer_dim, settings.hidden_size, latent + 2,
                                                  settings.updateformer_depth, settings.updateformer_heads,
                                                  settings.num_virtual_tracks)
        self.fmap_norm = nn.LayerNorm(latent)
        self.ffeat_norm = nn.GroupNorm(1, latent)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent, latent), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent, 1))
        self.conf_predictor = nn.Sequential(nn.Linear(latent, 1))

    def forward(self, query_points: torch.Tensor, feature_maps: torch.Tensor, iterations: int | None = None,
                points_chunk_size: int | None = None):
        """Args:
            query_points: ``[B, N, 2]`` pixels (x, y) in frame 0.
            feature_maps: ``[B, S, L, Hf, Wf]`` at ``1/stride`` resolution.
            points_chunk_size: points whose correlation maps are computed at once (memory only).
        Returns: (list of ``[B, S, N, 2]`` pixel tracks per iteration, vis ``[B, S, N]``, conf ``[B, S, N]``).
        """
        batch, points, _ = query_points.shape
        _, frames, latent, height, width = feature_maps.shape
        feature_maps = self.fmap_norm(feature_maps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
        queries = query_points / float(self.stride)
        coordinates = queries[:, None].repeat(1, frames, 1, 1)
        query_features = sample_at_points(feature_maps[:, 0], queries)
        track_features = query_features[:, None].repeat(1, frames, 1, 1)  # [B, S, N, L]
        pyramid = CorrelationPyramid(feature_maps, self.corr_levels, self.corr_radius)

        position_table = tracker_position_table(3 * latent + 4, height, width, feature_maps.device)
        query_positions = sample_at_points(position_table.expand(batch, -1, -1, -1), queries)
        query_positions = query_positions.reshape(batch * points, 1, -1)
        frame_tokens = torch.cat([self.query_ref_token[:, :1], self.query_ref_token[:, 1:2].expand(-1, frames - 1, -1)],
                                 dim=1)

        predictions = []
        for _ in range(iterations or self.iterations):
            coordinates = coordinates.detach()
            correlation = pyramid.sample(track_features, coordinates, points_chunk_size)
            correlation = correlation.permute(0, 2, 1, 3).reshape(batch * points, frames, -1)
            correlation = self.corr_mlp(correlation)
            flow = (coordinates - coordinates[:, :1]).permute(0, 2, 1, 3).reshape(batch * points, frames, 2)
            features = track_features.permute(0, 2, 1, 3).reshape(batch * points, frames, latent)
            tokens = torch.cat([flow_embedding(flow, latent // 2, self.max_scale), correlation, features], dim=2)
            tokens = tokens + query_positions + frame_tokens
            delta = self.updateformer(tokens.reshape(batch, points, frames, -1))  # [B, N, S, L+2]

            feature_update = self.ffeat_norm(delta[..., 2:].reshape(-1, latent))
            features = self.ffeat_updater(feature_update) + features.reshape(-1, latent)
            track_features = features.reshape(batch, points, frames, latent).permute(0, 2, 1, 3)
            coordinates = coordinates + delta[..., :2].permute(0, 2, 1, 3)
            coordinates[:, 0] = queries  # frame 0 is pinned to the query
            predictions.append(coordinates * self.stride)

        flat_features = track_features.reshape(batch * frames * points, latent)
        visibility = torch.sigmoid(self.vis_predictor(flat_features)).reshape(batch, frames, points)
        confidence = torch.sigmoid(self.conf_predictor(flat_features)).reshape(batch, frames, points)
        return predictions, visibility, confidence


class TrackHead(nn.Module):
    def __init__(self, config: VGGTConfig):
        super().__init__()
        settings = config.track_head
        self.feature_extractor = DPTHead(2 * config.embed_dim, config.patch_size, settings.features,
                                         settings.out_channels, settings.intermediate_layer_idx, output_dim=None,
                                         pos_embed=False, down_ratio=settings.stride)
        self.tracker = Tracker(config)

    def forward(self, tokens_list: list[torch.Tensor | None], image_size_hw: tuple[int, int], patch_start_idx: int,
                query_points: torch.Tensor, iters: int | None = None, frames_chunk_size: int | None = 8):
        """Args: tokens_list of ``[B, S, P, 2C]``; query_points ``[B, N, 2]`` pixels in frame 0.

        Returns: (list of ``[B, S, N, 2]`` per iteration, vis ``[B, S, N]``, conf ``[B, S, N]``).
        """
        feature_maps = self.feature_maps(tokens_list, image_size_hw, patch_start_idx, frames_chunk_size)
        return self.tracker(query_points, feature_maps, iters)

    def feature_maps(self, tokens_list: list[torch.Tensor | None], image_size_hw: tuple[int, int],
                     patch_start_idx: int, frames_chunk_size: int | None = 8) -> torch.Tensor:
        """The tracker's per-frame features ``[B, S, L, H/2, W/2]`` (decoded ``frames_chunk_size`` at a time)."""
        return self.feature_extractor(tokens_list, image_size_hw, patch_start_idx, frames_chunk_size)
