"""vggt_core: our PyTorch implementation of VGGT and everything around it.

Layers, from the bottom: ``config`` and ``model`` (pure PyTorch network), ``geometry``
(cameras and points), ``weights`` (checkpoint loading), ``images``/``video`` (input),
``reconstruction`` (model run -> Reconstruction), ``filtering``, ``export``, ``depth_maps``.
"""

from . import geometry
from .config import VGGTConfig
from .errors import FrameLimitError, InputError, WeightsUnavailableError
from .model import VGGT
from .weights import DEFAULT_CHECKPOINT, load_model, resolve_device

__all__ = [
    "DEFAULT_CHECKPOINT", "FrameLimitError", "InputError", "VGGT", "VGGTConfig", "WeightsUnavailableError",
    "geometry", "load_model", "resolve_device",
]
