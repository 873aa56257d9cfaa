"""Normalisation, every loss term and the objective's gradients equal the reference's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vggt_core.training import LossConfig, compute_losses, ground_truth_pose_encoding, normalize_ground_truth
from vggt_core.training.dense_losses import filter_by_quantile, gradient_loss, normal_loss
from vggt_core.training.normalization import SCALE_MIN

GOLDEN = Path(__file__).parent / "fixtures" / "training-golden"
VARIANTS = ("main", "seq1_frame0_empty", "all_empty")
BATCH_KEYS = ("images", "depths", "extrinsics", "intrinsics", "cam_points", "world_points", "point_masks")
NORMALISED_KEYS = ("extrinsics", "cam_points", "world_points", "depths")
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are too small to gain from threads (see test_training_learning.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def golden():
    from safetensors.torch import load_file

    return (load_file(str(GOLDEN / "inputs.safetensors")), load_file(str(GOLDEN / "expected.safetensors")),
            json.loads((GOLDEN / "expected.json").read_text())["losses"])


def _batch(inputs, variant):
    return {key: inputs[f"{variant}/{key}"].clone() for key in BATCH_KEYS}


def _translation_in(extrinsics, unit):
    """extrinsics ``[B,S,3,4]`` with the translation column multiplied by ``unit``."""
    scaled = extrinsics.clone()
    scaled[..., 3] *= unit
    return scaled


def _predictions(inputs, variant):
    preds = {key: inputs[f"{variant}/pred.{key}"].clone().requires_grad_(True)
             for key in ("depth", "depth_conf", "world_points", "world_points_conf")}
    preds["pose_enc_list"] = [inputs[f"{variant}/pred.pose_enc_list.{k}"].clone().requires_grad_(True)
                              for k in range(4)]
    return preds


@pytest.mark.parametrize("variant", VARIANTS)
def test_normalisation_matches_reference(golden, variant):
    inputs, expected, _ = golden
    batch = _batch(inputs, variant)
    before = {key: value.clone() for key, value in batch.items()}
    normalised = normalize_ground_truth(batch)
    # A sequence without a valid point gets the scale floor 1e-6, so its translations are the
    # float32 rounding of E_i·E_0⁻¹ (~1e-8, CPU-dependent) times 1e6: compare them in the input's
    # units, where the reference's tolerance applies.
    translation_unit = SCALE_MIN if variant == "all_empty" else 1.0
    for key in NORMALISED_KEYS:
        ours, reference = normalised[key], expected[f"{variant}/default/{key}"]
        if key == "extrinsics":
            ours, reference = _translation_in(ours, translation_unit), _translation_in(reference, translation_unit)
        torch.testing.assert_close(ours, reference, rtol=RTOL, atol=ATOL)
    encoding = ground_truth_pose_encoding(normalised)
    reference_encoding = expected[f"{variant}/default/gt_pose_encoding"].clone()
    encoding[..., :3] *= translation_unit
    reference_encoding[..., :3] *= translation_unit
    torch.testing.assert_close(encoding, reference_encoding, rtol=RTOL, atol=ATOL)
    for key, value in before.items():  # the input is never modified
        assert torch.equal(batch[key], value)
    assert normalised["intrinsics"] is batch["intrinsics"] and normalised["point_masks"] is batch["point_masks"]


def test_normalisation_numbers_of_the_main_batch(golden):
    inputs, _, _ = golden
    batch = _batch(inputs, "main")
    normalised = normalize_ground_truth(batch)
    masks = batch["point_masks"]
    assert masks.flatten(1).sum(1).tolist() == [2677, 2666]
    assert masks[:, 0].flatten(1).sum(1).tolist() == [889, 905]
    eye = torch.eye(4)[:3]
    torch.testing.assert_close(normalised["extrinsics"][:, 0], eye.expand(2, 3, 4), rtol=0, atol=1e-6)
    for b in range(2):
        distances = normalised["world_points"][b][masks[b]].norm(dim=-1)
        assert abs(distances.mean().item() - 1.0) < 1e-4  # the +1e-3 in the denominator biases s low
    assert normalised["depths"].sum().item() == pytest.approx(4659.1978, rel=1e-5)
    assert normalised["world_points"].sum().item() == pytest.approx(-799.11243, rel=1e-5)
    assert normalised["extrinsics"].abs().sum().item() == pytest.approx(27.878433, rel=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("setting", ("default", "with_point"))
def test_losses_and_gradients_match_reference(golden, variant, setting):
    inputs, expected, expected_losses = golden
    batch = normalize_ground_truth(_batch(inputs, variant))
    preds = _predictions(inputs, variant)
    with_point = setting == "with_point"
    if not with_point:
        preds_used = {k: v for k, v in preds.items() if not k.startswith("world_points")}
    else:
        preds_used = preds
    losses = compute_losses(preds_used, batch, point=with_point)
    reference = expected_losses[f"{variant}/{setting}"]
    assert set(losses) == set(reference)
    for name, value in reference.items():
        assert losses[name].item() == pytest.approx(value, rel=RTOL, abs=ATOL), name
    losses["objective"].backward()
    grads = {"depth": preds["depth"], "depth_conf": preds["depth_conf"]}
    if with_point:
        grads.update(world_points=preds["world_points"], world_points_conf=preds["world_points_conf"])
    for k in range(4):
        grads[f"pose_enc_list.{k}"] = preds["pose_enc_list"][k]
    for name, tensor in grads.items():
        got = tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
        want = expected[f"{variant}/{setting}/grad.{name}"]
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=f"grad.{name}")
        # Elementwise closeness can hide a consistently small bias; the L1 sum is 1e-5 close too.
        assert got.abs().sum().item() == pytest.approx(want.abs().sum().item(), rel=RTOL, abs=ATOL)


def test_gradient_l1_sums_of_the_main_batch(golden):
    inputs, _, _ = golden
    preds = _predictions(inputs, "main")
    losses = compute_losses(preds, normalize_ground_truth(_batch(inputs, "main")), point=True)
    losses["objective"].backward()
    assert preds["depth"].grad.abs().sum().item() == pytest.approx(4.94424582, rel=RTOL)
    assert preds["depth_conf"].grad.abs().sum().item() == pytest.approx(0.427622259, rel=RTOL)
    assert preds["world_points"].grad.abs().sum().item() == pytest.approx(5.42186069, rel=RTOL)
    assert preds["world_points_conf"].grad.abs().sum().item() == pytest.approx(1.77044809, rel=RTOL)
    for k in range(4):  # 5.0 · (1/4)·0.6^(3-k) · (3·1/(2·3·3) + 4·1/(2·3·4) + 0.5·2/(2·3·2))·(2·3) per L1
        assert preds["pose_enc_list"][k].grad.abs().sum().item() == pytest.approx(3.125 * 0.6 ** (3 - k), rel=1e-5)


def test_gradient_loss_unit_example():
    pred = torch.tensor([[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]]).reshape(1, 2, 3, 1)
    gt = torch.zeros_like(pred)
    mask = torch.ones(1, 2, 3, dtype=torch.bool)
    assert gradient_loss(pred, gt, mask).item() == pytest.approx(7 / 6, rel=1e-6)
    from vggt_core.training.dense_losses import multi_scale_structure_loss

    value = multi_scale_structure_loss("grad", pred[None], gt[None], mask[None], torch.ones(1, 1, 2, 3),
                                       gradient_scales=4, normal_scales=3, gamma=1.0, alpha=0.2,
                                       normal_min_valid=10, hard_max=100.0)
    assert value.item() == pytest.approx((7 / 6 + 1.5) / 4, rel=1e-6)


@pytest.mark.parametrize("count, kept", [(1000, 1000), (1001, 1001), (1021, 1021), (1050, 1028), (2000, 1959)])
def test_quantile_filter_counts(count, kept):
    assert filter_by_quantile(0.01 * torch.arange(count, dtype=torch.float32), 0.98).numel() == kept


def test_quantile_filter_ties_and_half_to_even():
    values = torch.cat([torch.zeros(1500), torch.ones(500)])
    assert filter_by_quantile(values, 0.98).numel() == 1500  # τ = 1 and ties with τ are dropped
    assert round(1004.5) == 1004


def test_normal_loss_ignores_scale_and_sign():
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(2, 9, 11, 3, generator=generator)
    mask = torch.ones(2, 9, 11, dtype=torch.bool)
    for transformed in (points, -points, 2 * points):
        assert abs(normal_loss(transformed, points, mask).item()) <= 1e-6


def test_paper_config_differs_where_documented():
    paper = LossConfig.paper()
    assert (paper.camera_loss_type, paper.depth_gradient_loss, paper.include_regression_term) == \
        ("huber", "grad_conf", False)
    reference = LossConfig()
    assert (reference.camera_loss_type, reference.depth_gradient_loss, reference.include_regression_term) == \
        ("l1", "grad", True)
    with pytest.raises(ValueError):
        LossConfig(camera_loss_type="l3")


def test_paper_form_on_the_golden_batch(golden):
    inputs, _, reference = golden
    batch = normalize_ground_truth(_batch(inputs, "main"))
    preds = {k: v for k, v in _predictions(inputs, "main").items() if not k.startswith("world_points")}
    paper = compute_losses(preds, batch, config=LossConfig.paper())
    # No unweighted regression term in the objective.
    expected = 5.0 * paper["loss_camera"] + paper["loss_conf_depth"] + paper["loss_grad_depth"]
    assert paper["objective"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert paper["loss_conf_depth"].item() == pytest.approx(reference["main/default"]["loss_conf_depth"], rel=1e-5)
    # Huber (delta 1) equals 0.5·e² below 1 and |e| − 0.5 above: never more than L1.
    gt = ground_truth_pose_encoding(batch)
    valid = batch["point_masks"][:, 0].flatten(1).sum(1) > 100
    error = (preds["pose_enc_list"][3][valid] - gt[valid])[..., 0:3].abs()
    huber = torch.where(error < 1, 0.5 * error ** 2, error - 0.5).mean()
    stage_3_weight = 1.0 / 4
    assert paper["loss_T"].item() < reference["main/default"]["loss_T"]
    assert paper["loss_T"].item() > stage_3_weight * huber.item()
    # The confidence-weighted gradient term differs from the reference's plain one.
    assert paper["loss_grad_depth"].item() != pytest.approx(reference["main/default"]["loss_grad_depth"], rel=1e-3)
