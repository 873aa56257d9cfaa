"""Checkpoints in the official key layout, written atomically, and the state to resume from."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from ..config import VGGTConfig
from ..model import VGGT
from ..weights import RANDOM_TINY_CHECKPOINT

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"
RANDOM_TINY = RANDOM_TINY_CHECKPOINT  # the old name


class BrokenCheckpointError(RuntimeError):
    """The weights hold NaN or Inf; nothing was written."""


def _atomic_write(path: Path, write) -> None:
    """``write(temp_path)`` then rename over ``path``: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temp_name)
        os.chmod(temp_name, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(model: VGGT, directory: str | os.PathLike, *, step: int,
                    training_state: dict | None = None) -> Path:
    """Write ``model.safetensors`` (the state dict, loadable by ``vggt_core.load_model(directory)``
    with ``strict=True``), ``config.json`` and, if given, ``training_state.pt``.

    Raises:
        BrokenCheckpointError: a weight is not finite (the previous checkpoint is left as it was).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    state_dict = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    broken = [name for name, tensor in state_dict.items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise BrokenCheckpointError(f"not writing a checkpoint at step {step}: {len(broken)} tensor(s) hold NaN/Inf, "
                                    f"e.g. {broken[0]}")
    _atomic_write(directory / MODEL_FILE, lambda temp: save_file(state_dict, temp, metadata={"step": str(step)}))
    _atomic_write(directory / CONFIG_FILE, lambda temp: model.config.to_json(temp))
    if training_state is not None:
        _atomic_write(directory / STATE_FILE, lambda temp: torch.save(training_state, temp))
    return directory / MODEL_FILE


def load_training_state(directory: str | os.PathLike) -> dict | None:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def build_model(source: str, config_path: str | os.PathLike | None = None, seed: int = 0,
                device: torch.device | str = "cpu") -> VGGT:
    """The model to fine-tune: anything :func:`vggt_core.load_model` resolves (a Hub id, a local
    file or folder, or ``random-tiny``, whose weights are always those of seed 0, as in the app).

    ``seed`` then seeds the global torch random state for the training run.
    """
    from ..weights import load_model

    config = VGGTConfig.from_json(config_path) if config_path else None
    model = load_model(source, config=config, device=device)
    torch.manual_seed(seed)
    return model
