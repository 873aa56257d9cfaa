"""Properties of the objective and the normalisation that must hold for any data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vggt_core.config import tiny_config
from vggt_core.model import VGGT
from vggt_core.synthetic import render_scene
from vggt_core.training import compute_losses, ground_truth_pose_encoding, normalize_ground_truth
from vggt_core.training.frame_processing import unproject
from vggt_core.training.optimization import accumulation_chunks, freeze_modules
from vggt_core.training.schedule import learning_rate_at


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are too small to gain from threads (see test_training_learning.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch_from_scene(scene) -> dict:
    """Raw (un-normalised) batch of one sequence [1, S, ...] straight from a synthetic scene."""
    cam, world, masks = [], [], []
    for index in range(scene.num_views):
        c, w, m = unproject(scene.depth[index], scene.extrinsics[index].astype(np.float64),
                            scene.intrinsics[index].astype(np.float64))
        cam.append(c), world.append(w), masks.append(m)
    batch = {"images": torch.from_numpy(scene.images).permute(0, 3, 1, 2).float() / 255,
             "depths": torch.from_numpy(scene.depth), "extrinsics": torch.from_numpy(scene.extrinsics),
             "intrinsics": torch.from_numpy(scene.intrinsics), "cam_points": torch.from_numpy(np.stack(cam)),
             "world_points": torch.from_numpy(np.stack(world)), "point_masks": torch.from_numpy(np.stack(masks))}
    return {key: value[None] for key, value in batch.items()}


@pytest.fixture(scope="module")
def scene():
    return render_scene("table", num_views=3, width=56, height=42, seed=2)


def _perfect_predictions(batch, confidence: float, error: float = 0.0) -> dict:
    generator = torch.Generator().manual_seed(0)
    gt_pose = ground_truth_pose_encoding(batch)
    noise = lambda shape: error * torch.randn(shape, generator=generator)  # noqa: E731
    conf = torch.full(batch["depths"].shape, confidence)
    return {"pose_enc_list": [gt_pose + noise(gt_pose.shape) for _ in range(4)],
            "depth": (batch["depths"] + noise(batch["depths"].shape).abs())[..., None], "depth_conf": conf,
            "world_points": batch["world_points"] + noise(batch["world_points"].shape), "world_points_conf": conf}


def test_losses_are_smallest_at_ground_truth_and_grow_with_error(scene):
    batch = normalize_ground_truth(_batch_from_scene(scene))
    at_truth = compute_losses(_perfect_predictions(batch, confidence=50.0), batch, point=True)
    for name in ("loss_T", "loss_R", "loss_FL", "loss_reg_depth", "loss_grad_depth", "loss_reg_point"):
        assert at_truth[name].item() == pytest.approx(0.0, abs=1e-6), name
    assert at_truth["loss_conf_depth"].item() == pytest.approx(-0.2 * math.log(50.0), rel=1e-5)
    # At zero error a higher confidence is better; with error the confidence is penalised.
    low_conf = compute_losses(_perfect_predictions(batch, confidence=2.0), batch, point=True)
    assert at_truth["objective"] < low_conf["objective"]
    previous = at_truth
    for error in (0.01, 0.05, 0.2):
        current = compute_losses(_perfect_predictions(batch, confidence=50.0, error=error), batch, point=True)
        for name in ("objective", "loss_camera", "loss_reg_depth", "loss_conf_depth", "loss_reg_point",
                     "loss_grad_depth"):
            assert current[name] > previous[name], (name, error)
        previous = current


def _similarity(batch, scale, rotation, shift):
    """The same scene in another world frame: X' = k·Q·X + τ (so camera-frame lengths scale by k)."""
    moved = dict(batch)
    rotation_t = torch.as_tensor(rotation, dtype=torch.float32)
    shift_t = torch.as_tensor(shift, dtype=torch.float32)
    r, t = batch["extrinsics"][..., :3], batch["extrinsics"][..., 3]
    new_r = r @ rotation_t.T
    new_t = scale * t - (new_r @ shift_t[:, None])[..., 0]
    moved["extrinsics"] = torch.cat([new_r, new_t[..., None]], dim=-1)
    moved["world_points"] = scale * batch["world_points"] @ rotation_t.T + shift_t
    moved["depths"] = scale * batch["depths"]
    moved["cam_points"] = scale * batch["cam_points"]
    return moved


def test_normalisation_is_invariant_to_a_global_similarity(scene):
    batch = _batch_from_scene(scene)
    angle = 0.7
    rotation = np.array([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    rotation = rotation @ np.array([[1, 0, 0], [0, math.cos(0.3), -math.sin(0.3)], [0, math.sin(0.3), math.cos(0.3)]])
    reference = normalize_ground_truth(batch)
    for scale, shift in ((3.5, (1.0, -2.0, 0.5)), (0.02, (10.0, 3.0, -7.0))):
        moved = normalize_ground_truth(_similarity(batch, scale, rotation, shift))
        for key in ("extrinsics", "world_points", "depths", "cam_points"):
            torch.testing.assert_close(moved[key], reference[key], rtol=1e-4, atol=1e-4, msg=key)


def test_gradients_reach_the_trainable_heads_and_not_the_frozen_aggregator(scene):
    torch.manual_seed(0)
    model = VGGT(tiny_config()).train()
    freeze_modules(model, "aggregator")
    assert not model.aggregator.training
    model.train()
    assert not model.aggregator.training  # frozen modules stay in eval mode
    batch = normalize_ground_truth(_batch_from_scene(scene))
    predictions = model(batch["images"])
    compute_losses(predictions, batch, point=True)["objective"].backward()
    for name, parameter in model.named_parameters():
        if name.startswith("aggregator."):
            assert not parameter.requires_grad and parameter.grad is None, name
        elif name.startswith(("camera_head.", "depth_head.", "point_head.")):
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, name
        else:  # the track head gets no gradient without the track loss
            assert parameter.grad is None, name


def test_without_the_point_loss_the_point_head_gets_nothing(scene):
    torch.manual_seed(0)
    model = VGGT(tiny_config()).train()
    freeze_modules(model, "none")
    batch = normalize_ground_truth(_batch_from_scene(scene))
    compute_losses(model(batch["images"]), batch)["objective"].backward()
    assert all(p.grad is None for p in model.point_head.parameters())
    # DINOv2's mask token only replaces masked patches in its own pre-training; VGGT never masks.
    missing = [name for name, p in model.aggregator.named_parameters() if p.grad is None]
    assert missing == ["patch_embed.mask_token"]


def test_learning_rate_schedule():
    for where, expected in ((0.0, 1e-8), (0.025, 2.5005e-5), (0.05, 5e-5), (0.525, 2.5005e-5), (1.0, 1e-8)):
        assert learning_rate_at(where) == pytest.approx(expected, rel=1e-9)
    assert learning_rate_at(0.999) < learning_rate_at(0.9) < learning_rate_at(0.1)


def test_accumulation_chunks_drop_the_remainder():
    assert accumulation_chunks(9, 2) == [slice(0, 4), slice(4, 8)]
    assert accumulation_chunks(1, 2) == [slice(0, 1)]
    assert accumulation_chunks(5, 1) == [slice(0, 5)]


def test_activation_checkpointing_gives_the_same_gradients(scene):
    from vggt_core.training.trainer import _checkpoint_aggregator_blocks

    batch = normalize_ground_truth(_batch_from_scene(scene))
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = VGGT(tiny_config()).train()
        if checkpointed:  # the trainer does this on CUDA only; the arithmetic is the same on the CPU
            _checkpoint_aggregator_blocks(model)
        compute_losses(model(batch["images"]), batch)["objective"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)
