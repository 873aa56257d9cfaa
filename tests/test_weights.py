"""load_model: local .pt/.safetensors files, the Hugging Face cache (real hf_hub_download, offline),
safe loading and clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY
from vggt_core.config import VGGTConfig
from vggt_core.errors import WeightsUnavailableError
from vggt_core.weights import load_model, resolve_device

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def reference_depth(model, tiny_inputs):
    return model(tiny_inputs["images"])["depth"]


def test_load_safetensors_file_matches_the_golden_outputs(tiny_config, tiny_inputs, tiny_reference_outputs):
    model = load_model(TINY / "model.safetensors", config=tiny_config, device="cpu")
    assert not model.training
    error = (reference_depth(model, tiny_inputs) - tiny_reference_outputs["depth"]).abs().max()
    assert error <= 1e-5 * max(1.0, float(tiny_reference_outputs["depth"].abs().max()))
    # Non-persistent normalisation buffers are real values after loading on the meta device.
    assert model.aggregator._resnet_mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_load_pt_file_and_config_json_beside_it(tmp_path, tiny_state_dict, tiny_inputs, tiny_reference_outputs):
    torch.save(tiny_state_dict, tmp_path / "model.pt")
    shutil.copy(TINY / "config.json", tmp_path / "config.json")
    model = load_model(tmp_path / "model.pt", device="cpu")  # config taken from config.json
    assert model.config.embed_dim == 32
    torch.testing.assert_close(reference_depth(model, tiny_inputs), tiny_reference_outputs["depth"],
                               rtol=1e-5, atol=1e-5)
    from_folder = load_model(tmp_path, device="cpu")
    assert from_folder.config == model.config


def test_dtype_and_device_arguments(tiny_config):
    model = load_model(TINY / "model.safetensors", config=tiny_config, device="cpu", dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).device.type == "cpu"
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cuda", "mps", "cpu")


def test_mismatched_checkpoint_lists_keys_and_a_fitting_config(tmp_path, tiny_state_dict):
    with pytest.raises(WeightsUnavailableError) as error:
        load_model(TINY / "model.safetensors", config=VGGTConfig(), device="cpu")
    message = str(error.value)
    assert "wrongly shaped" in message and "aggregator.camera_token" in message
    fitting = json.loads(message.split("fits the checkpoint's shapes: ")[1])
    assert fitting["embed_dim"] == 32 and fitting["depth"] == 4 and fitting["num_heads"] == 2
    broken = dict(tiny_state_dict)
    broken.pop("camera_head.empty_pose_tokens")
    broken["extra.weight"] = torch.zeros(1)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(WeightsUnavailableError) as error:
        load_model(tmp_path / "broken.safetensors", config=VGGTConfig.from_json(TINY / "config.json"))
    assert "camera_head.empty_pose_tokens" in str(error.value) and "extra.weight" in str(error.value)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_in_a_pt_file_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"aggregator.camera_token": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(WeightsUnavailableError, match="could not read"):
        load_model(tmp_path / "evil.pt", device="cpu")
    assert not marker.exists()


def test_corrupt_and_unknown_sources_are_clear_errors(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="could not read"):
        load_model(tmp_path / "junk.safetensors")
    (tmp_path / "weights.txt").write_text("hello")
    with pytest.raises(WeightsUnavailableError, match="unsupported checkpoint type"):
        load_model(tmp_path / "weights.txt")
    with pytest.raises(WeightsUnavailableError, match="neither an existing file"):
        load_model(tmp_path / "missing" / "model.pt")
    with pytest.raises(WeightsUnavailableError, match="no model.safetensors or model.pt"):
        load_model(tmp_path)


# ------------------------------------------------------------------------------- Hugging Face
def make_hub_cache(hf_home: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay out a Hugging Face hub cache the way huggingface_hub writes it (blobs + snapshot links)."""
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for name, source in files.items():
        blob = repo_dir / "blobs" / f"blob-{name}"
        shutil.copy(source, blob)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))


def run_offline(hf_home: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_load_from_hugging_face_cache_offline_prefers_safetensors(tmp_path, tiny_state_dict):
    # model.pt holds different weights, so the output tells which file was loaded.
    shifted = {k: (v + 1.0 if k == "camera_head.pose_branch.fc2.bias" else v) for k, v in tiny_state_dict.items()}
    torch.save(shifted, tmp_path / "model.pt")
    make_hub_cache(tmp_path / "hf", "someone/vggt-tiny", {"model.safetensors": TINY / "model.safetensors",
                                                         "model.pt": tmp_path / "model.pt",
                                                         "config.json": TINY / "config.json"})
    code = ("import torch; from safetensors.torch import load_file; from vggt_core import load_model\n"
            "m = load_model('someone/vggt-tiny', device='cpu')\n"
            f"x = load_file('{TINY / 'inputs.safetensors'}')['images']\n"
            f"ref = load_file('{TINY / 'outputs.safetensors'}')['pose_enc']\n"
            "print('ERR', float((m(x)['pose_enc'] - ref).abs().max()))")
    result = run_offline(tmp_path / "hf", code)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("ERR")[1]) < 1e-5


def test_load_from_hugging_face_cache_with_only_model_pt(tmp_path, tiny_state_dict):
    # Laid out like facebook/VGGT-1B-Commercial (a model.pt in the official layout).
    torch.save(tiny_state_dict, tmp_path / "model.pt")
    make_hub_cache(tmp_path / "hf", "facebook/VGGT-1B-Commercial", {"model.pt": tmp_path / "model.pt",
                                                                   "config.json": TINY / "config.json"})
    result = run_offline(tmp_path / "hf", "from vggt_core import load_model\n"
                                          "m = load_model('facebook/VGGT-1B-Commercial', device='cpu')\n"
                                          "print('DIM', m.config.embed_dim)")
    assert result.returncode == 0, result.stderr
    assert "DIM 32" in result.stdout


def test_offline_without_cache_says_how_to_pass_a_local_file(tmp_path):
    code = ("from vggt_core import load_model\n"
            "try:\n    load_model('facebook/VGGT-1B', device='cpu')\n"
            "except Exception as e:\n    print(type(e).__name__); print(e)")
    result = run_offline(tmp_path / "empty-hf", code)
    assert result.returncode == 0, result.stderr
    assert "WeightsUnavailableError" in result.stdout
    assert "HF_HUB_OFFLINE" in result.stdout and "local file" in result.stdout
