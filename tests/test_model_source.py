"""One model resolver: ``random-tiny``, local checkpoints and Hub ids, their configs without
weights, and the memory estimate of a checkpoint's own architecture."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import TINY
from test_weights import make_hub_cache, run_offline
from vggt_core import RANDOM_TINY_CHECKPOINT, load_model, resolve_model_config
from vggt_core.config import VGGTConfig, tiny_config
from vggt_core.errors import WeightsUnavailableError
from vggt_core.memory import estimate_peak_memory_bytes, parameter_count
from vggt_core.model import VGGT
from vggt_core.pipeline import InputFrame, estimate_memory_for_checkpoint, estimate_memory_of_frames
from vggt_core.training.checkpoints import build_model


def test_random_tiny_is_the_seed_0_tiny_model_and_leaves_the_global_random_state_alone():
    torch.manual_seed(1234)
    expected_next_draw = torch.rand(3)
    torch.manual_seed(1234)
    model = load_model(RANDOM_TINY_CHECKPOINT, device="cpu")
    assert torch.equal(torch.rand(3), expected_next_draw)  # building it drew nothing from the global state

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = VGGT(tiny_config())
    assert not model.training and model.config.to_dict() == tiny_config().to_dict()
    reference_state = reference.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reference_state[name]), name


def test_fine_tuning_random_tiny_starts_from_the_same_weights_as_the_app():
    app_model = load_model(RANDOM_TINY_CHECKPOINT, device="cpu")
    trained = build_model(RANDOM_TINY_CHECKPOINT, seed=42, device="cpu")
    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, app_model.state_dict()[name]), name


def test_config_of_a_local_checkpoint_is_the_one_beside_it(tmp_path):
    beside = VGGTConfig.from_dict(json.loads((TINY / "config.json").read_text()))
    assert resolve_model_config(TINY).to_dict() == beside.to_dict()
    assert resolve_model_config(TINY / "model.safetensors").to_dict() == beside.to_dict()
    assert resolve_model_config(TINY).to_dict() != VGGTConfig().to_dict()

    # Another architecture beside another file: read from that file, not a built-in config.
    other = json.loads((TINY / "config.json").read_text())
    other["camera_head"]["iters"] = 2
    shutil.copy(TINY / "model.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(other))
    assert resolve_model_config(tmp_path / "model.safetensors").camera_head.iters == 2

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(TINY / "model.safetensors", lone / "weights.safetensors")
    assert resolve_model_config(lone / "weights.safetensors").to_dict() == VGGTConfig().to_dict()
    assert resolve_model_config(lone, config=tiny_config()).to_dict() == tiny_config().to_dict()


def test_config_of_random_tiny_and_unknown_sources():
    assert resolve_model_config(RANDOM_TINY_CHECKPOINT).to_dict() == tiny_config().to_dict()
    with pytest.raises(WeightsUnavailableError):
        resolve_model_config("not/a/repo/nor/a/file")


def test_config_of_a_hub_id_comes_from_the_cache_only(tmp_path):
    make_hub_cache(tmp_path / "hf", "someone/vggt-tiny", {"config.json": TINY / "config.json"})
    code = ("from vggt_core import resolve_model_config\n"
            "print('CACHED', resolve_model_config('someone/vggt-tiny').embed_dim)\n"
            "print('UNCACHED', resolve_model_config('facebook/VGGT-1B').embed_dim)")
    result = run_offline(tmp_path / "hf", code)
    assert result.returncode == 0, result.stderr
    assert "CACHED 32" in result.stdout and "UNCACHED 1024" in result.stdout


def test_memory_estimate_of_a_checkpoint_uses_its_own_architecture():
    tiny = resolve_model_config(TINY)
    one_b = VGGTConfig()
    tiny_bytes = estimate_peak_memory_bytes(tiny, 4, 392, 518)
    one_b_bytes = estimate_peak_memory_bytes(one_b, 4, 392, 518)
    # Every term of the estimate is larger for VGGT-1B; its float32 weights alone add 4 bytes per
    # parameter it has beyond the tiny model's.
    assert one_b_bytes - tiny_bytes >= 4 * (parameter_count(one_b) - parameter_count(tiny))

    frames = [InputFrame(f"frame_{index}", image) for index, image in enumerate(_photos(3))]
    device = torch.device("cpu")
    estimate = estimate_memory_for_checkpoint(TINY, frames, device)
    assert estimate.needed_bytes == estimate_memory_of_frames(tiny, frames, device).needed_bytes
    assert estimate.needed_bytes < estimate_memory_of_frames(one_b, frames, device).needed_bytes
    assert estimate_memory_for_checkpoint(RANDOM_TINY_CHECKPOINT, frames, device).needed_bytes == \
        estimate.needed_bytes  # the fixture is the random-tiny architecture


def _photos(count: int):
    from PIL import Image

    return [Image.new("RGB", (640, 480), (40 * index, 80, 120)) for index in range(count)]
