"""VGGT: aggregator plus camera, depth, point and track heads (docs/architecture.md, *The network*)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..config import DEFAULT_FRAMES_CHUNK_SIZE, VGGTConfig
from .aggregator import Aggregator
from .camera_head import CameraHead
from .dpt_head import DPTHead
from .track_head import TrackHead


class VGGT(nn.Module):
    """Visual Geometry Grounded Transformer.

    Submodule names equal the official state-dict prefixes, so the released checkpoint loads
    with ``strict=True``. A disabled head is ``None`` (no keys, no outputs).
    """

    def __init__(self, config: VGGTConfig | None = None):
        super().__init__()
        self.config = config if config is not None else VGGTConfig()
        cfg = self.config
        dim_in = 2 * cfg.embed_dim
        dense = cfg.dense_head
        self.aggregator = Aggregator(cfg)
        self.camera_head = CameraHead(cfg) if cfg.enable_camera else None
        self.point_head = DPTHead(dim_in, cfg.patch_size, dense.features, dense.out_channels,
                                  dense.intermediate_layer_idx, output_dim=4,
                                  activation="inv_log") if cfg.enable_point else None
        self.depth_head = DPTHead(dim_in, cfg.patch_size, dense.features, dense.out_channels,
                                  dense.intermediate_layer_idx, output_dim=2,
                                  activation="exp") if cfg.enable_depth else None
        self.track_head = TrackHead(cfg) if cfg.enable_track else None

    # ----------------------------------------------------------------------------- checks
    def _validate_inputs(self, images, query_points):
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() == 4:
            images = images.unsqueeze(0)
        if images.dim() != 5:
            raise ValueError(f"images must be [S, 3, H, W] or [B, S, 3, H, W], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
        batch, frames, channels, height, width = images.shape
        if channels != 3:
            raise ValueError(f"images must have 3 (RGB) channels, got {channels} (shape {tuple(images.shape)})")
        if frames < 1 or batch < 1:
            raise ValueError(f"images must hold at least one frame, got shape {tuple(images.shape)}")
        patch = self.config.patch_size
        if height % patch or width % patch or height == 0 or width == 0:
            raise ValueError(f"image height and width must be positive multiples of {patch}, got {height}x{width} "
                             "(use vggt_core.load_images to resize)")
        if query_points is None:
            return images, None
        if not isinstance(query_points, torch.Tensor):
            raise ValueError(f"query_points must be a torch.Tensor, got {type(query_points).__name__}")
        if query_points.dim() == 2:
            query_points = query_points.unsqueeze(0)
        if query_points.dim() != 3 or query_points.shape[-1] != 2 or query_points.shape[0] != batch:
            raise ValueError(f"query_points must be [N, 2] or [B={batch}, N, 2] pixel (x, y), "
                             f"got shape {tuple(query_points.shape)}")
        if query_points.shape[1] == 0:
            raise ValueError("query_points must hold at least one point")
        if self.track_head is not None:
            minimum = self.config.track_head.min_image_side
            if height < minimum or width < minimum:
                raise ValueError(f"tracking needs images of at least {minimum}x{minimum} pixels for "
                                 f"{self.config.track_head.corr_levels} correlation levels, got {height}x{width}")
        return images, query_points.to(images.dtype)

    def _aggregator_autocast(self, device: torch.device):
        """bf16 (or fp16 on GPUs without bf16) for the backbone on CUDA; a no-op elsewhere."""
        if device.type != "cuda" or next(self.parameters()).dtype != torch.float32:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    # ----------------------------------------------------------------------------- forward
    def forward(self, images: torch.Tensor, query_points: torch.Tensor | None = None,
                frames_chunk_size: int | None = DEFAULT_FRAMES_CHUNK_SIZE) -> dict:
        """Predict cameras, depth, point maps and (with queries) tracks.

        Args:
            images: ``[S, 3, H, W]`` or ``[B, S, 3, H, W]``, RGB in [0, 1], H and W multiples of 14.
            query_points: ``[N, 2]`` or ``[B, N, 2]`` pixel (x, y) positions in frame 0, optional.
            frames_chunk_size: frames the dense heads decode at once (memory bound; no effect on values).

        Returns a dict (B always present): ``pose_enc [B,S,9]``, ``pose_enc_list`` (iters x ``[B,S,9]``),
        ``depth [B,S,H,W,1]``, ``depth_conf [B,S,H,W]``, ``world_points [B,S,H,W,3]``,
        ``world_points_conf [B,S,H,W]``, and with queries ``track [B,S,N,2]``, ``vis [B,S,N]``,
        ``conf [B,S,N]`` (in training mode also ``track_list``, iters x ``[B,S,N,2]``); ``images``
        in eval mode.
        """
        images, query_points = self._validate_inputs(images, query_points)
        with torch.inference_mode(not self.training):
            return self._predict(images, query_points, frames_chunk_size)

    def _predict(self, images, query_points, frames_chunk_size) -> dict:
        keep_layers = self.config.used_layer_indices
        if self.track_head is None or query_points is None:
            keep_layers = [i for i in keep_layers if self._dense_or_camera_uses(i)]
        with self._aggregator_autocast(images.device):
            tokens_list, patch_start_idx = self.aggregator(images, keep_layers=keep_layers)

        image_size_hw = tuple(images.shape[-2:])
        predictions: dict = {}
        # The heads run in float32 even when the backbone ran in half precision, as trained.
        with _autocast_disabled(images.device):
            heads_tokens = [t.float() if t is not None else None for t in tokens_list]
            if self.camera_head is not None:
                pose_enc_list = self.camera_head(heads_tokens)
                predictions["pose_enc"] = pose_enc_list[-1]
                predictions["pose_enc_list"] = pose_enc_list
            if self.depth_head is not None:
                predictions["depth"], predictions["depth_conf"] = self.depth_head(
                    heads_tokens, image_size_hw, patch_start_idx, frames_chunk_size)
            if self.point_head is not None:
                predictions["world_points"], predictions["world_points_conf"] = self.point_head(
                    heads_tokens, image_size_hw, patch_start_idx, frames_chunk_size)
        del heads_tokens

        if self.track_head is not None and query_points is not None:
            track_list, visibility, confidence = self.track_head(
                tokens_list, image_size_hw, patch_start_idx, query_points, frames_chunk_size=frames_chunk_size)
            predictions["track"] = track_list[-1]
            if self.training:  # every refinement iteration is supervised by the track loss
                predictions["track_list"] = track_list
            predictions["vis"] = visibility
            predictions["conf"] = confidence
        if not self.training:
            predictions["images"] = images
        return predictions

    # ----------------------------------------------------------------------------- tracks from any frame
    def track_feature_maps(self, images: torch.Tensor,
                           frames_chunk_size: int | None = DEFAULT_FRAMES_CHUNK_SIZE) -> torch.Tensor:
        """Run the aggregator (keeping only the track head's layers) and the track feature head once.

        Args:
            images: ``[S, 3, H, W]`` or ``[B, S, 3, H, W]`` in [0, 1], H and W multiples of 14 and at
                least ``config.track_head.min_image_side``.
        Returns: ``[B, S, L, H/2, W/2]`` feature maps for :meth:`track_with_feature_maps`; they may
            be reordered along S so that another frame leads (see docs/architecture.md, *Track head*).
        """
        if self.track_head is None:
            raise ValueError("this model has no track head")
        images, _ = self._validate_inputs(images, None)
        minimum = self.config.track_head.min_image_side
        if min(images.shape[-2:]) < minimum:
            raise ValueError(f"tracking needs images of at least {minimum}x{minimum} pixels, "
                             f"got {images.shape[-2]}x{images.shape[-1]}")
        with torch.inference_mode(not self.training):
            with self._aggregator_autocast(images.device):
                tokens_list, patch_start_idx = self.aggregator(
                    images, keep_layers=list(self.config.track_head.intermediate_layer_idx))
            return self.track_head.feature_maps(tokens_list, tuple(images.shape[-2:]), patch_start_idx,
                                                frames_chunk_size)

    def track_with_feature_maps(self, query_points: torch.Tensor, feature_maps: torch.Tensor,
                                points_chunk_size: int | None = None):
        """The tracker alone: query points ``[B, N, 2]`` in pixels of frame 0 *of* ``feature_maps``
        ``[B, S, L, Hf, Wf]`` (frame 0 gets the query token).

        Returns: ``(track [B, S, N, 2], vis [B, S, N], conf [B, S, N])`` as in :meth:`forward`.
        """
        if self.track_head is None:
            raise ValueError("this model has no track head")
        with torch.inference_mode(not self.training):
            track_list, visibility, confidence = self.track_head.tracker(
                query_points.to(feature_maps.dtype), feature_maps, points_chunk_size=points_chunk_size)
        return track_list[-1], visibility, confidence

    def _dense_or_camera_uses(self, layer_index: int) -> bool:
        cfg = self.config
        if cfg.enable_camera and layer_index == cfg.depth - 1:
            return True
        return (cfg.enable_depth or cfg.enable_point) and layer_index in cfg.dense_head.intermediate_layer_idx


def _autocast_disabled(device: torch.device):
    """Shield a region from any autocast the caller enabled (meta tensors have no autocast)."""
    if device.type in ("cuda", "cpu", "mps"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
