"""Camera head: iterative refinement of a 9-D pose encoding from each frame's camera token (docs/architecture.md, *Camera head*)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import POSE_ENCODING_DIM, VGGTConfig
from .layers import Mlp, TransformerBlock


def activate_pose_encoding(pose: torch.Tensor) -> torch.Tensor:
    """Translation and quaternion stay linear; the two fields of view go through ReLU.

    Args: pose ``[..., 9]`` pre-activation. Returns ``[..., 9]``.
    """
    return torch.cat([pose[..., :7], torch.relu(pose[..., 7:])], dim=-1)


class CameraHead(nn.Module):
    def __init__(self, config: VGGTConfig):
        super().__init__()
        settings = config.camera_head
        dim = 2 * config.embed_dim
        self.iterations = settings.iters
        self.trunk = nn.Sequential(*(
            TransformerBlock(dim, settings.num_heads, settings.mlp_ratio, settings.init_values, norm_eps=1e-5)
            for _ in range(settings.trunk_depth)))
        self.token_norm = nn.LayerNorm(dim)
        self.trunk_norm = nn.LayerNorm(dim)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENCODING_DIM))
        self.embed_pose = nn.Linear(POSE_ENCODING_DIM, dim)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.adaln_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim, dim // 2, POSE_ENCODING_DIM)

    def forward(self, tokens_list: list[torch.Tensor | None], num_iterations: int | None = None
                ) -> list[torch.Tensor]:
        """Args: tokens_list whose last entry is ``[B, S, P, 2C]``.

        Returns: one activated pose encoding ``[B, S, 9]`` per iteration.
        """
        camera_tokens = self.token_norm(tokens_list[-1][:, :, 0])
        batch, frames, _ = camera_tokens.shape
        # The modulation input stays the fixed normalised camera token; the running
        # pre-activation estimate is what is fed back each iteration.
        normalised_tokens = self.adaln_norm(camera_tokens)
        pose = None
        encodings = []
        for _ in range(num_iterations or self.iterations):
            if pose is None:
                pose_input = self.empty_pose_tokens.expand(batch, frames, -1)
            else:
                pose_input = pose.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(pose_input)).chunk(3, dim=-1)
            modulated = gate * (normalised_tokens * (1 + scale) + shift) + camera_tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(modulated)))
            pose = delta if pose is None else pose + delta
            encodings.append(activate_pose_encoding(pose))
        return encodings
