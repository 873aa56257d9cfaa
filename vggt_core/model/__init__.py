"""The VGGT network: pure PyTorch modules, no file or UI concerns."""

from .vggt import VGGT

__all__ = ["VGGT"]
