"""Finding, reading and loading VGGT checkpoints: Hugging Face Hub repos, local files and ``random-tiny``.

:func:`load_model` is the one resolver every entry point uses (the CLI's ``reconstruct`` and
``finetune``, the app): a Hub repo id, a local file or folder, or :data:`RANDOM_TINY_CHECKPOINT`.
:func:`resolve_model_config` answers which architecture a source has without loading weights
(for the memory estimate before a run).

Loading never executes code from a file: ``.pt`` files go through ``torch.load(weights_only=True)``
and ``.safetensors`` through safetensors. The model is built on the ``meta`` device and the
checkpoint tensors are assigned to it, so a 5 GB checkpoint is not allocated twice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from .config import VGGTConfig, tiny_config
from .errors import WeightsUnavailableError
from .model import VGGT

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "facebook/VGGT-1B"
# Preferred first: safetensors cannot carry code and loads without unpickling.
HUB_WEIGHT_FILES = ("model.safetensors", "model.pt")
LOCAL_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
CONFIG_FILE = "config.json"
# An untrained tiny model (``tiny_config()``) with random weights: for development, tests and
# demos without downloading 5 GB. Its results are meaningless.
RANDOM_TINY_CHECKPOINT = "random-tiny"
# Every process builds the same random-tiny weights from this seed.
RANDOM_TINY_SEED = 0


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` picks CUDA, then Apple MPS, then CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_model(source: str | os.PathLike = DEFAULT_CHECKPOINT, *, config: VGGTConfig | None = None,
               device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               revision: str | None = None) -> VGGT:
    """Build VGGT and load a checkpoint with ``strict=True``; returns the model in eval mode.

    The model carries its architecture as ``model.config``.

    Args:
        source: a Hugging Face repo id (``facebook/VGGT-1B``, ``facebook/VGGT-1B-Commercial``,
            downloaded and cached by ``huggingface_hub``: honours ``HF_HOME``/``HF_HUB_OFFLINE``),
            a local ``.safetensors``/``.pt``/``.pth`` file, a folder holding one, or
            ``"random-tiny"`` (:func:`build_random_tiny_model`).
        config: the architecture; by default a ``config.json`` beside the weights if it is in
            our schema, else VGGT-1B (``random-tiny``: ``tiny_config()``).
        device: where to put the model (default: CUDA, then MPS, then CPU).
        dtype: optional parameter dtype (e.g. ``torch.bfloat16``); default float32 as stored.
        revision: a Hub branch, tag or commit (Hub repo ids only).
    """
    if is_random_tiny(source):
        return build_random_tiny_model(config, device=device, dtype=dtype)
    weights_path, config_path = locate_checkpoint(source, revision=revision)
    if config is None:
        config = _config_beside_weights(config_path)
    state_dict = read_state_dict(weights_path)
    check_state_dict_matches(state_dict, config, source=str(source))

    with torch.device("meta"):
        model = VGGT(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.aggregator.reset_normalization_buffers()
    model = model.to(device=resolve_device(device), dtype=dtype)
    return model.eval()


def is_random_tiny(source: str | os.PathLike) -> bool:
    """Whether ``source`` names the untrained tiny model rather than a checkpoint (the exact
    string, as the app's settings compare it; a path object is always a checkpoint)."""
    return isinstance(source, str) and source == RANDOM_TINY_CHECKPOINT


def build_random_tiny_model(config: VGGTConfig | None = None, *, device: str | torch.device | None = None,
                            dtype: torch.dtype | None = None) -> VGGT:
    """An untrained VGGT (``tiny_config()`` unless ``config`` is given) in eval mode, initialised
    from :data:`RANDOM_TINY_SEED`: every process builds the same weights, and the caller's global
    random state is left as it was (``fork_rng``), so building it does not change what any
    later random draw gives."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_TINY_SEED)
        model = VGGT(config or tiny_config())
    return model.to(device=resolve_device(device), dtype=dtype).eval()


def resolve_model_config(source: str | os.PathLike = DEFAULT_CHECKPOINT, config: VGGTConfig | None = None, *,
                         revision: str | None = None) -> VGGTConfig:
    """The architecture :func:`load_model` would build for ``source``, without reading weights.

    ``config`` wins when given. ``random-tiny`` is ``tiny_config()``; a local file or folder uses
    the ``config.json`` beside the weights (else VGGT-1B), reading nothing over the network; a Hub
    repo id uses its ``config.json`` when it is already in the local Hub cache, else VGGT-1B
    (nothing is downloaded: this is asked before a run, e.g. for the memory estimate).

    Raises:
        WeightsUnavailableError: ``source`` is neither a file, a folder, ``random-tiny`` nor a
            repo id.
    """
    if config is not None:
        return config
    if is_random_tiny(source):
        return tiny_config()
    path = Path(source).expanduser()
    if path.is_file():
        return _config_beside_weights(_existing(path.parent / CONFIG_FILE))
    if path.is_dir():
        return _config_beside_weights(_existing(path / CONFIG_FILE))
    if _looks_like_repo_id(str(source)):
        from .hub import hub_download

        try:
            cached = hub_download(str(source), CONFIG_FILE, revision, cache_only=True)
        except Exception:  # not cached (or a cache that cannot be read): the released architecture
            cached = None
        return _config_beside_weights(cached)
    raise WeightsUnavailableError(
        f"checkpoint {str(source)!r} is neither an existing file or folder, {RANDOM_TINY_CHECKPOINT!r}, nor a "
        f"Hugging Face repo id like {DEFAULT_CHECKPOINT!r}")


def locate_checkpoint(source: str | os.PathLike, revision: str | None = None) -> tuple[Path, Path | None]:
    """Return ``(weights file, config.json or None)`` for a local path or a Hub repo id."""
    path = Path(source).expanduser()
    if path.is_file():
        return path, _existing(path.parent / CONFIG_FILE)
    if path.is_dir():
        for name in HUB_WEIGHT_FILES + ("model.pth",):
            if (path / name).is_file():
                return path / name, _existing(path / CONFIG_FILE)
        raise WeightsUnavailableError(f"no model.safetensors or model.pt in the folder {path}")
    if _looks_like_repo_id(str(source)):
        return _download_from_hub(str(source), revision)
    raise WeightsUnavailableError(
        f"checkpoint {str(source)!r} is neither an existing file or folder nor a Hugging Face repo id "
        f"like {DEFAULT_CHECKPOINT!r}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors only: safetensors, or ``torch.load(weights_only=True, mmap=True)``."""
    if path.suffix not in LOCAL_WEIGHT_SUFFIXES:
        raise WeightsUnavailableError(f"unsupported checkpoint type {path.name!r}; expected one of "
                                      f"{', '.join(LOCAL_WEIGHT_SUFFIXES)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state_dict = load_file(str(path))
        else:
            try:
                state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                # Legacy (non-zip) checkpoints cannot be memory-mapped.
                state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsUnavailableError:
        raise
    except Exception as error:  # corrupt file, pickled code refused by weights_only, ...
        raise WeightsUnavailableError(f"could not read the checkpoint {path}: {error}") from error
    for wrapper_key in ("state_dict", "model"):
        if isinstance(state_dict, dict) and set(state_dict) == {wrapper_key}:
            state_dict = state_dict[wrapper_key]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsUnavailableError(f"{path} does not hold a plain state dict of tensors")
    return state_dict


def check_state_dict_matches(state_dict: dict[str, torch.Tensor], config: VGGTConfig, source: str = "") -> None:
    """Raise a readable error when the checkpoint does not fit ``config`` key for key, shape for shape."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in VGGT(config).state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state_dict.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong_shape = [f"{k}: checkpoint {found[k]} vs model {expected[k]}"
                   for k in expected if k in found and found[k] != expected[k]]
    if not (missing or unexpected or wrong_shape):
        return
    lines = [f"checkpoint {source} does not match the model config "
             f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong_shape)} wrongly shaped keys)"]
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            lines.append(f"  first {title}: " + "; ".join(keys[:5]))
    lines.append("  a config that fits the checkpoint's shapes: " + json.dumps(infer_config_from_state_dict(state_dict)))
    raise WeightsUnavailableError("\n".join(lines))


def infer_config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> dict:
    """The config keys that can be read off tensor shapes (head counts cannot)."""
    def count(prefix: str) -> int:
        indices = {int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)}
        return max(indices) + 1 if indices else 0

    inferred: dict = {}
    camera_token = state_dict.get("aggregator.camera_token")
    if camera_token is not None:
        inferred["embed_dim"] = int(camera_token.shape[-1])
    register = state_dict.get("aggregator.register_token")
    if register is not None:
        inferred["num_register_tokens"] = int(register.shape[2])
    inferred["depth"] = count("aggregator.frame_blocks.")
    q_norm = state_dict.get("aggregator.frame_blocks.0.attn.q_norm.weight")
    if q_norm is not None and camera_token is not None:
        inferred["num_heads"] = int(camera_token.shape[-1]) // int(q_norm.shape[0])
    proj = state_dict.get("aggregator.patch_embed.patch_embed.proj.weight")
    pos_embed = state_dict.get("aggregator.patch_embed.pos_embed")
    if proj is not None:
        inferred["patch_size"] = int(proj.shape[-1])
        if pos_embed is not None:
            grid = int(round((pos_embed.shape[1] - 1) ** 0.5))
            inferred["img_size"] = grid * int(proj.shape[-1])
    inferred["patch_embed"] = {"depth": count("aggregator.patch_embed.blocks.")}
    for flag, prefix in (("enable_camera", "camera_head."), ("enable_depth", "depth_head."),
                         ("enable_point", "point_head."), ("enable_track", "track_head.")):
        inferred[flag] = any(k.startswith(prefix) for k in state_dict)
    if inferred["enable_camera"]:
        inferred["camera_head"] = {"trunk_depth": count("camera_head.trunk.")}
    for section, prefix in (("dense_head", "depth_head."), ("track_head", "track_head.feature_extractor.")):
        rn = state_dict.get(prefix + "scratch.layer1_rn.weight")
        if rn is not None:
            inferred[section] = {"features": int(rn.shape[0]),
                                 "out_channels": [int(state_dict[f"{prefix}projects.{i}.weight"].shape[0])
                                                  for i in range(4)]}
    return inferred


# ------------------------------------------------------------------------------------- helpers
def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def _config_beside_weights(config_path: Path | None) -> VGGTConfig:
    if config_path is None:
        return VGGTConfig()
    try:
        return VGGTConfig.from_json(config_path)
    except (ValueError, json.JSONDecodeError) as error:
        logger.warning("ignoring %s (not a VGGT config: %s); using the VGGT-1B config", config_path, error)
        return VGGTConfig()


def _download_from_hub(repo_id: str, revision: str | None) -> tuple[Path, Path | None]:
    from .hub import hub_download, offline_reason

    # Without a network only the cache is asked: it answers at once (see vggt_core/hub.py).
    offline = offline_reason()
    failures = []
    for filename in HUB_WEIGHT_FILES:
        try:
            weights = hub_download(repo_id, filename, revision, cache_only=offline is not None)
            break
        except Exception as error:  # not in the repo, not cached while offline, no network, ...
            failures.append(f"{filename}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    else:
        reason = f"{offline} and the weights are not in the local cache" if offline else \
            "the Hugging Face Hub could not be reached, or the repo has neither file"
        raise WeightsUnavailableError(
            f"could not get the weights of {repo_id!r}: {reason}.\n"
            f"Download model.pt or model.safetensors of {repo_id} on a machine with internet access and pass the "
            f"local file instead (e.g. --checkpoint /path/to/model.pt, or load_model('/path/to/model.pt')).\n"
            "Details: " + " | ".join(failures))
    try:
        config = hub_download(repo_id, CONFIG_FILE, revision, cache_only=offline is not None)
    except Exception:  # a repo without config.json uses the VGGT-1B architecture
        config = None
    return weights, config
