"""The forward's exact speed-ups (vggt_core/model/fast_paths.py) give the plain path's numbers."""

from __future__ import annotations

import threading

import torch

from vggt_core.model import dpt_head
from vggt_core.model.fast_paths import fast_paths, fast_paths_enabled

DENSE_KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference.double()).abs().max() / max(1.0, float(reference.abs().max())))


def two_scenes(tiny_inputs) -> torch.Tensor:
    """``[2, 5, 3, 56, 84]``: two different scenes, so that frame/scene indexing mistakes show."""
    images = tiny_inputs["images"]
    five = torch.cat([images, images[:, 1:].flip(-1)], dim=1)
    return torch.cat([five, five.flip(-2).roll(2, dims=1)])


def test_fast_and_plain_paths_agree_across_scenes_chunks_and_tail_groups(tiny_model, tiny_inputs, monkeypatch):
    # One frame per tail group and chunks of 2 frames: every indexing branch of the fast path runs.
    monkeypatch.setattr(dpt_head, "TAIL_GROUP_BYTES", 1)
    images = two_scenes(tiny_inputs)
    queries = tiny_inputs["query_points"].expand(2, -1, -1)
    with fast_paths(False):
        plain = tiny_model(images, queries, frames_chunk_size=2)
    with fast_paths(True):
        fast = tiny_model(images, queries, frames_chunk_size=2)
    for key in DENSE_KEYS:
        assert fast[key].shape == plain[key].shape, key
        assert relative_error(fast[key], plain[key]) <= 1e-6, key
    for key in ("track", "vis", "conf"):
        assert relative_error(fast[key], plain[key]) <= 1e-4, key


def test_track_feature_maps_agree(tiny_model, tiny_inputs, monkeypatch):
    monkeypatch.setattr(dpt_head, "TAIL_GROUP_BYTES", 1)
    images = two_scenes(tiny_inputs)
    with fast_paths(False):
        plain = tiny_model.track_feature_maps(images, frames_chunk_size=3)
    with fast_paths(True):
        fast = tiny_model.track_feature_maps(images, frames_chunk_size=3)
    assert fast.shape == plain.shape == (2, 5, 16, 28, 42)
    assert relative_error(fast, plain) <= 1e-6


def test_training_gradients_agree(tiny_model, tiny_inputs):
    """The in-place steps are safe under autograd: the same gradients reach the dense heads."""
    images = tiny_inputs["images"]
    gradients = {}
    tiny_model.train()
    try:
        for fast in (False, True):
            tiny_model.zero_grad()
            with fast_paths(fast):
                out = tiny_model(images)
            (out["depth"].mean() + out["world_points"].square().mean() + out["depth_conf"].mean()).backward()
            gradients[fast] = {name: p.grad.clone() for name, p in tiny_model.named_parameters()
                               if p.grad is not None and name.startswith(("depth_head.", "point_head."))}
    finally:
        tiny_model.zero_grad()
        tiny_model.eval()
    assert gradients[True].keys() == gradients[False].keys() and len(gradients[True]) > 50
    for name, gradient in gradients[False].items():
        assert relative_error(gradients[True][name], gradient) <= 1e-5, name


def test_inv_log_in_two_passes_equals_the_definition():
    values = torch.tensor([-3.0, -1e-8, -0.0, 0.0, 1e-8, 0.5, 7.0, float("inf"), -float("inf")])
    expected = torch.sign(values) * torch.expm1(values.abs())
    out = torch.empty_like(values)
    dpt_head.activate_dense_prediction(values, "inv_log", out=out)
    assert torch.equal(out, expected)


def test_switch_is_per_thread_and_restored():
    seen = []
    with fast_paths(False):
        worker = threading.Thread(target=lambda: seen.append(fast_paths_enabled()))
        worker.start()
        worker.join()
        assert not fast_paths_enabled()
    assert fast_paths_enabled() and seen == [True]
