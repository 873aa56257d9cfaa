"""Fine-tuning checkpoints are one unit (a crash between their files is caught on --resume), and the
fp16 fallback scales its loss (vggt_core.training.checkpoints, vggt_core.training.trainer)."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from test_training_learning import data_dir, one_thread  # noqa: F401 (fixtures shared with the loop's tests)
from vggt_core.atomic_files import is_temporary_name
from vggt_core.cli import main
from vggt_core.training import checkpoints
from vggt_core.training import trainer as trainer_module
from vggt_core.training.checkpoints import (MANIFEST_FILE, MODEL_FILE, STATE_FILE, IncompleteCheckpointError,
                                            checkpoint_step, load_training_state, save_checkpoint)
from vggt_core.training.trainer import Trainer, TrainingSettings


def _settings(data_dir, out, **changes) -> TrainingSettings:
    values = dict(data=data_dir, out=out, checkpoint="random-tiny", steps=2, lr=1e-3, frames_per_scene=(2, 2),
                  image_width=42, batch_size=1, accum_steps=1, freeze="none", augment=False, progress=False,
                  checkpoint_every=1)
    values.update(changes)
    return TrainingSettings(**values)


@pytest.fixture
def trained(data_dir, tmp_path) -> Trainer:
    """A run of 2 steps: complete checkpoints at steps 1 and 2 in ``tmp_path / "run"``."""
    trainer = Trainer(_settings(data_dir, tmp_path / "run"))
    trainer.run()
    return trainer


def test_a_checkpoint_is_one_unit_with_a_manifest_written_last(trained):
    out = trained.out
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["step"] == 2 and set(manifest["files"]) == {MODEL_FILE, "config.json", STATE_FILE}
    assert all(manifest["files"][name]["bytes"] == (out / name).stat().st_size for name in manifest["files"])
    assert checkpoint_step(out) == 2 and load_training_state(out)["step"] == 2
    assert not [path for path in out.iterdir() if is_temporary_name(path.name)]


def _crash_on(monkeypatch, target, name: str):
    """Make ``target`` (a writer of the checkpoints module) raise when it writes ``name``."""
    original = getattr(checkpoints, target)

    def crashing(path, *args, **kwargs):
        if str(path).endswith(name):
            raise OSError(f"simulated crash while writing {name}")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(checkpoints, target, crashing)


@pytest.mark.parametrize("crash_before", [STATE_FILE, MANIFEST_FILE])
def test_a_crash_between_checkpoint_files_is_refused_on_resume(trained, monkeypatch, data_dir, crash_before, capsys):
    target = "atomic_write_bytes" if crash_before == MANIFEST_FILE else "_write"
    _crash_on(monkeypatch, target, crash_before)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(trained.model, trained.out, step=3, training_state=trained._training_state(3))
    monkeypatch.undo()
    # The weights are of step 3 now; the manifest (and, for the first crash, the state) of step 2.
    with pytest.raises(IncompleteCheckpointError, match="step 3.*step 2|step 2.*step 3"):
        load_training_state(trained.out)
    with pytest.raises(IncompleteCheckpointError, match="without --resume"):
        Trainer(_settings(data_dir, trained.out, steps=4, resume=True))
    # The command says so, in one message, and does not start.
    code = main(["finetune", "--data", str(data_dir), "--checkpoint", "random-tiny", "--out", str(trained.out),
                 "--frames-per-scene", "2", "--image-width", "42", "--steps", "4", "--resume"])
    assert code == 2 and "does not hold one complete checkpoint" in capsys.readouterr().err


def test_a_crash_inside_the_weights_file_leaves_the_previous_unit(trained, monkeypatch, data_dir):
    import safetensors.torch

    def half_written(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 100)
        raise OSError("simulated crash while writing the weights")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(trained.model, trained.out, step=3, training_state=trained._training_state(3))
    monkeypatch.undo()
    assert checkpoint_step(trained.out) == 2
    assert not [path for path in trained.out.iterdir() if is_temporary_name(path.name)]
    resumed = Trainer(_settings(data_dir, trained.out, steps=3, resume=True))
    assert resumed.start_step == 2


def test_a_folder_without_a_manifest_resumes_when_weights_and_state_agree(trained, data_dir):
    (trained.out / MANIFEST_FILE).unlink()  # as written before manifests existed
    assert checkpoint_step(trained.out) == 2
    state = trained._training_state(1)
    torch.save(state, trained.out / STATE_FILE)  # an older state beside newer weights
    with pytest.raises(IncompleteCheckpointError, match="step 1"):
        load_training_state(trained.out)


def test_fp16_needs_a_gradient_scaler_only_without_bf16(monkeypatch):
    assert trainer_module.gradient_scaler(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert trainer_module.gradient_scaler(torch.device("cuda")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    # Without CUDA, torch warns that the scaler is disabled; on a GPU it is enabled.
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        assert isinstance(trainer_module.gradient_scaler(torch.device("cuda")), torch.amp.GradScaler)


def _one_step(data_dir, out, monkeypatch, scaler: torch.amp.GradScaler | None) -> Trainer:
    monkeypatch.setattr(trainer_module, "gradient_scaler", lambda device: scaler)
    trainer = Trainer(_settings(data_dir, out, seed=3))
    trainer.result = trainer.train_step(0)
    return trainer


def test_a_scaled_step_makes_the_same_update_and_its_scaler_is_saved(data_dir, tmp_path, monkeypatch):
    plain = _one_step(data_dir, tmp_path / "plain", monkeypatch, None)
    scaled = _one_step(data_dir, tmp_path / "scaled", monkeypatch, torch.amp.GradScaler("cpu", init_scale=2.0 ** 12))
    assert not plain.result.skipped and not scaled.result.skipped
    # Scaling by a power of two and unscaling before clipping changes nothing but the rounding.
    for (name, a), b in zip(plain.model.named_parameters(), scaled.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    assert scaled._training_state(1)["grad_scaler"]["scale"] == 2.0 ** 12


def test_an_overflowing_fp16_step_is_skipped_and_the_scale_backs_off(data_dir, tmp_path, monkeypatch):
    trainer = _one_step(data_dir, tmp_path / "overflow", monkeypatch,
                        torch.amp.GradScaler("cpu", init_scale=3e38))  # the scaled loss overflows
    assert trainer.result.skipped
    assert trainer.scaler.get_scale() < 3e38
    fresh = _one_step(data_dir, tmp_path / "fresh", monkeypatch, None)
    untouched = Trainer(_settings(data_dir, tmp_path / "untouched", seed=3))
    for a, b, c in zip(trainer.model.parameters(), untouched.model.parameters(), fresh.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(b, c) for b, c in zip(untouched.model.parameters(), fresh.model.parameters()))
