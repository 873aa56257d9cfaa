"""Checkpoints in the official key layout, written as one unit, and the state to resume from.

A checkpoint is three files in the output folder (the weights, their config, the optimiser and
sampler state), each replaced atomically and durably (:mod:`vggt_core.atomic_files`), then a
manifest, ``checkpoint.json``, written last: the step and every file's size. A crash between the
files leaves a manifest that disagrees with them (its step is not the one stored in the weights'
metadata or in the training state, or a size differs), and ``--resume`` refuses such a folder with
a message instead of continuing from weights of one step and an optimiser of another.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from ..atomic_files import atomic_path, atomic_write_bytes
from ..config import VGGTConfig
from ..model import VGGT
from ..weights import RANDOM_TINY_CHECKPOINT

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"
MANIFEST_FILE = "checkpoint.json"
MANIFEST_FORMAT_VERSION = 1
RANDOM_TINY = RANDOM_TINY_CHECKPOINT  # the old name
# The key of the step in the weights' safetensors metadata.
STEP_METADATA_KEY = "step"


class BrokenCheckpointError(RuntimeError):
    """The weights hold NaN or Inf; nothing was written."""


class IncompleteCheckpointError(ValueError):
    """The folder's checkpoint files were not written as one unit (a crash between them)."""


def _write(path: Path, write) -> None:
    """``write(temporary path)``; the file then replaces ``path`` atomically and durably."""
    with atomic_path(path) as temporary:
        write(str(temporary))


def save_checkpoint(model: VGGT, directory: str | os.PathLike, *, step: int,
                    training_state: dict | None = None) -> Path:
    """Write ``model.safetensors`` (the state dict, loadable by ``vggt_core.load_model(directory)``
    with ``strict=True``, with ``step`` in its metadata), ``config.json``, if given
    ``training_state.pt``, and last the manifest ``checkpoint.json`` that makes them one unit.

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
    if training_state is not None and int(training_state["step"]) != int(step):
        raise ValueError(f"the training state is of step {training_state['step']}, the checkpoint of step {step}")
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / MODEL_FILE,
           lambda temp: save_file(state_dict, temp, metadata={STEP_METADATA_KEY: str(step)}))
    _write(directory / CONFIG_FILE, lambda temp: model.config.to_json(temp))
    names = [MODEL_FILE, CONFIG_FILE]
    if training_state is not None:
        _write(directory / STATE_FILE, lambda temp: torch.save(training_state, temp))
        names.append(STATE_FILE)
    manifest = {"version": MANIFEST_FORMAT_VERSION, "step": int(step),
                "files": {name: {"bytes": (directory / name).stat().st_size} for name in names}}
    atomic_write_bytes(directory / MANIFEST_FILE, json.dumps(manifest, indent=1).encode("utf-8"))
    return directory / MODEL_FILE


def _weights_step(path: Path) -> int | None:
    """The step stored in a safetensors file's metadata, or None when it holds none."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        value = (handle.metadata() or {}).get(STEP_METADATA_KEY)
    return int(value) if value is not None else None


def checkpoint_step(directory: str | os.PathLike) -> int:
    """The step of the complete checkpoint in ``directory``, after checking that its files are one
    unit: the manifest's files exist with their sizes, and the weights' metadata and the training
    state hold the manifest's step. A folder written before manifests existed is accepted when
    its weights and training state agree on the step.

    Raises:
        IncompleteCheckpointError: they disagree or a file is missing, with what to do.
    """
    return _verified(Path(directory))[0]


def _verified(directory: Path) -> tuple[int, dict | None]:
    """``(step, training state or None)`` of the checkpoint in ``directory`` (see :func:`checkpoint_step`)."""

    def incomplete(problem: str) -> IncompleteCheckpointError:
        return IncompleteCheckpointError(
            f"{directory} does not hold one complete checkpoint: {problem} (a crash while a checkpoint was being "
            "written?). Start again without --resume, or resume from a copy of a complete checkpoint.")

    manifest_path, state_path = directory / MANIFEST_FILE, directory / STATE_FILE
    if not (directory / MODEL_FILE).is_file():
        raise incomplete(f"{MODEL_FILE} is missing")
    weights_step = _weights_step(directory / MODEL_FILE)
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            step, files = int(manifest["step"]), dict(manifest["files"])
            sizes = {name: int(entry["bytes"]) for name, entry in files.items()}
        except (ValueError, KeyError, TypeError) as error:
            raise incomplete(f"{MANIFEST_FILE} is unreadable ({error})") from error
        for name, size in sizes.items():
            path = directory / name
            if not path.is_file():
                raise incomplete(f"{name} is missing")
            if path.stat().st_size != size:
                raise incomplete(f"{name} has {path.stat().st_size} bytes, the manifest of step {step} says {size}")
        if weights_step != step:
            raise incomplete(f"the weights are of step {weights_step}, the manifest of step {step}")
        has_state = STATE_FILE in sizes
    elif state_path.is_file():  # written before manifests: the weights and the state must agree
        step, has_state = weights_step, True
    else:
        raise incomplete(f"{MANIFEST_FILE} and {STATE_FILE} are missing")
    state = _load_state(state_path) if has_state else None
    if state is not None and int(state["step"]) != step:
        raise incomplete(f"the training state is of step {int(state['step'])}, the weights of step {weights_step}")
    return step, state


def _load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_training_state(directory: str | os.PathLike) -> dict | None:
    """The state to resume from, or None when ``directory`` holds no checkpoint to resume.

    Raises:
        IncompleteCheckpointError: the checkpoint's files are not one unit (:func:`checkpoint_step`),
            or it holds weights without a training state.
    """
    directory = Path(directory)
    if not ((directory / STATE_FILE).is_file() or (directory / MANIFEST_FILE).is_file()):
        return None
    _, state = _verified(directory)
    if state is None:
        raise IncompleteCheckpointError(f"{directory} holds weights but no {STATE_FILE} to resume from; start "
                                        "again without --resume (or fine-tune from them with --checkpoint).")
    return state


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
