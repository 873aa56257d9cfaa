"""Transformer building blocks shared by DINOv2, the aggregator and the camera trunk (docs/architecture.md, *Building blocks*)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .fast_paths import fast_paths_enabled


class Mlp(nn.Module):
    """``fc1 -> exact GELU -> fc2``. Keys ``fc1.*``, ``fc2.*``."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scale ``x * gamma``; key ``gamma`` of shape ``[dim]``."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


@dataclass(frozen=True)
class TokenPositions:
    """Integer ``(y, x)`` grid positions ``[B, N, 2]`` of the tokens, with their largest value
    known on the host (reading it from the tensor would force a device sync per block)."""

    yx: torch.Tensor
    max_position: int
    # Fast path: each rotary table gathered at these positions once, shared by every block.
    gathered: dict = field(default_factory=dict, compare=False, repr=False)


class RotaryPositionEmbedding2D(nn.Module):
    """2-D rotary embedding: the first half of each head's channels turns with the row (y)
    position, the second half with the column (x) position (docs/architecture.md, *Building blocks*). No parameters."""

    def __init__(self, base_frequency: float):
        super().__init__()
        self.base_frequency = base_frequency
        # The tables only depend on these keys; all blocks of a forward share one entry.
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _cos_sin_tables(self, half_dim: int, max_position: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (half_dim, max_position, str(device), dtype, torch.is_inference_mode_enabled())
        if key not in self._tables:
            self._tables = {key: self._compute_tables(half_dim, max_position, device, dtype)}
        return self._tables[key]

    def _compute_tables(self, half_dim: int, max_position: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        exponents = torch.arange(0, half_dim, 2, device=device).float() / half_dim
        inverse_frequencies = 1.0 / (self.base_frequency ** exponents)
        positions = torch.arange(max_position + 1, device=device, dtype=inverse_frequencies.dtype)
        angles = torch.einsum("i,j->ij", positions, inverse_frequencies).to(dtype)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, positions: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor):
        # x: [B, heads, N, d]; positions: [B, N] integer
        cos = F.embedding(positions, cos_table)[:, None]
        sin = F.embedding(positions, sin_table)[:, None]
        return RotaryPositionEmbedding2D._rotate_gathered(x, cos, sin)

    def _gathered_tables(self, positions: TokenPositions, half_dim: int, device, dtype):
        """``(row cos, row sin, column cos, column sin)``, each ``[B or 1, 1, N, half_dim]``, made once
        per positions object (a batch dimension expanded from one row is gathered once)."""
        key = (half_dim, str(device), dtype, torch.is_inference_mode_enabled())
        if key not in positions.gathered:
            cos_table, sin_table = self._cos_sin_tables(half_dim, positions.max_position, device, dtype)
            yx = positions.yx
            if yx.shape[0] > 1 and yx.stride(0) == 0:
                yx = yx[:1]
            positions.gathered[key] = tuple(F.embedding(yx[..., axis], table)[:, None]
                                            for axis in (0, 1) for table in (cos_table, sin_table))
        return positions.gathered[key]

    @staticmethod
    def _rotate_gathered(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-second, first], dim=-1) * sin

    def forward(self, x: torch.Tensor, positions: TokenPositions) -> torch.Tensor:
        """Rotate queries or keys ``x [B, heads, N, head_dim]`` by their token positions."""
        half_dim = x.shape[-1] // 2
        if fast_paths_enabled():
            row_cos, row_sin, col_cos, col_sin = self._gathered_tables(positions, half_dim, x.device, x.dtype)
            rows, cols = x.chunk(2, dim=-1)
            return torch.cat([self._rotate_gathered(rows, row_cos, row_sin),
                              self._rotate_gathered(cols, col_cos, col_sin)], dim=-1)
        cos_table, sin_table = self._cos_sin_tables(half_dim, positions.max_position, x.device, x.dtype)
        rows, cols = x.chunk(2, dim=-1)
        rows = self._rotate(rows, positions.yx[..., 0], cos_table, sin_table)
        cols = self._rotate(cols, positions.yx[..., 1], cos_table, sin_table)
        return torch.cat([rows, cols], dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with a packed ``qkv`` projection, optional per-head q/k
    LayerNorm and optional 2-D RoPE, computed with ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False,
                 rope: RotaryPositionEmbedding2D | None = None, norm_eps: float = 1e-5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, positions: TokenPositions | None = None) -> torch.Tensor:
        """Args: x ``[B, N, dim]``; positions of its tokens (used only with RoPE)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and positions is not None:
            q = self.rope(q, positions)
            k = self.rope(k, positions)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm block ``x + LS1(Attn(LN1 x))``, ``x + LS2(Mlp(LN2 x))``. A falsy
    ``init_values`` means no LayerScale (and no ``ls*.gamma`` keys)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, init_values: float | None,
                 norm_eps: float, qk_norm: bool = False, rope: RotaryPositionEmbedding2D | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, rope=rope, norm_eps=1e-5)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor, positions: TokenPositions | None = None) -> torch.Tensor:
        """Args: x ``[B, N, dim]``; positions of its tokens, or None."""
        x = x + self.ls1(self.attn(self.norm1(x), positions))
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x
