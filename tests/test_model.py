"""The VGGT network: official layout, golden equivalence with the reference, and properties."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FIXTURES
from vggt_core.config import VGGTConfig
from vggt_core.model import VGGT

DENSE_TOLERANCE = 1e-5
TRACK_TOLERANCE = 2e-3
TRACK_KEYS = {"track", "vis", "conf", "track_list", "track_head.tracker.corr_features", "track_head.tracker.delta"}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours.double() - reference.double()).abs().max() / max(1.0, float(reference.abs().max())))


# ------------------------------------------------------------------------------------ layout
def test_state_dict_has_exactly_the_official_vggt_1b_keys_and_shapes():
    manifest = json.loads((FIXTURES / "vggt-1b-state-dict.json").read_text())
    with torch.device("meta"):
        model = VGGT(VGGTConfig())
    ours = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    official = {name: entry["shape"] for name, entry in manifest["state_dict"].items()}
    assert sorted(ours) == sorted(official)
    mismatched = [name for name in ours if ours[name] != list(official[name])]
    assert mismatched == []
    assert len(ours) == manifest["num_keys"] == 1797
    assert sum(p.numel() for p in model.parameters()) == manifest["total_parameters"] == 1_256_537_516
    for buffer in manifest["non_persistent_buffers"]:
        assert buffer not in ours


def test_default_config_is_vggt_1b_manifest_config():
    manifest = json.loads((FIXTURES / "vggt-1b-state-dict.json").read_text())
    assert VGGTConfig.from_dict(manifest["config"]) == VGGTConfig()


def test_full_size_architecture_shapes_on_meta_device():
    """VGGT-1B at 294x518 (spec Appendix B), run on the meta device: shapes only, no memory."""
    captured = {}
    with torch.device("meta"):
        model = VGGT(VGGTConfig()).eval()
        images = torch.rand(1, 2, 3, 294, 518)
        queries = torch.rand(1, 3, 2)
    head = model.depth_head
    for level in range(4):
        getattr(head.scratch, f"layer{level + 1}_rn").register_forward_pre_hook(
            lambda module, args, level=level: captured.__setitem__(f"level{level}", tuple(args[0].shape[-2:])))
    model.track_head.feature_extractor.register_forward_hook(
        lambda module, args, output: captured.__setitem__("track_features", tuple(output.shape)))
    out = model(images, queries)
    assert out["depth"].shape == (1, 2, 294, 518, 1)
    assert out["world_points"].shape == (1, 2, 294, 518, 3)
    assert out["pose_enc"].shape == (1, 2, 9) and len(out["pose_enc_list"]) == 4
    assert out["track"].shape == (1, 2, 3, 2)
    assert [captured[f"level{i}"] for i in range(4)] == [(84, 148), (42, 74), (21, 37), (11, 19)]
    assert captured["track_features"] == (1, 2, 128, 147, 259)


# ------------------------------------------------------------------------------------ golden
def run_with_intermediates(model: VGGT, images, query_points) -> dict[str, torch.Tensor]:
    """Forward with hooks capturing every intermediate that the reference fixture records."""
    captured: dict[str, list] = {}

    def keep(name, from_input=False):
        def hook(module, args, output=None):
            captured.setdefault(name, []).append(args[0] if from_input else output)
        return hook

    hooks = [model.camera_head.trunk.register_forward_hook(keep("camera_head.trunk_out")),
             model.aggregator.patch_embed.register_forward_hook(keep("patch_embed.x_norm_patchtokens"))]
    dpt_heads = {"depth_head": model.depth_head, "point_head": model.point_head,
                 "track_head.feature_extractor": model.track_head.feature_extractor}
    for prefix, head in dpt_heads.items():
        for level in range(1, 5):
            hooks.append(getattr(head.scratch, f"layer{level}_rn").register_forward_pre_hook(
                keep(f"{prefix}.layer{level}", from_input=True)))
        for level in (2, 3, 4):
            hooks.append(getattr(head.scratch, f"refinenet{level}").register_forward_hook(
                keep(f"{prefix}.refinenet{level}")))
        hooks.append(head.scratch.output_conv1.register_forward_hook(keep(f"{prefix}.fused")))
        if hasattr(head.scratch, "output_conv2"):
            hooks.append(head.scratch.output_conv2.register_forward_hook(keep(f"{prefix}.raw")))
    tracker = model.track_head.tracker
    hooks += [model.track_head.feature_extractor.register_forward_hook(keep("track_head.feature_maps")),
              tracker.corr_mlp.register_forward_pre_hook(keep("track_head.tracker.corr_features", from_input=True)),
              tracker.updateformer.register_forward_hook(keep("track_head.tracker.delta")),
              tracker.register_forward_hook(keep("track_list"))]
    try:
        outputs = model(images, query_points)
    finally:
        for hook in hooks:
            hook.remove()

    results = {key: value for key, value in outputs.items() if key not in ("images", "pose_enc_list")}
    results["pose_enc_list"] = torch.stack(outputs["pose_enc_list"])
    for name, values in captured.items():
        if name == "track_list":
            results[name] = torch.stack(values[0][0])
        else:
            results[name] = torch.stack(values) if len(values) > 1 else values[0]
    with torch.no_grad():
        tokens, _ = model.aggregator(images)
        results["aggregated_tokens"] = torch.stack(tokens)
        height, width = images.shape[-2:]
        results["patch_embed.pos_embed_interp"] = model.aggregator.patch_embed.interpolate_pos_encoding(
            height, width, torch.float32)
    return results


def test_every_output_and_intermediate_matches_the_reference(tiny_model, tiny_inputs, tiny_reference_outputs):
    ours = run_with_intermediates(tiny_model, tiny_inputs["images"], tiny_inputs["query_points"])
    assert set(tiny_reference_outputs) <= set(ours)
    failures = {}
    for key, reference in tiny_reference_outputs.items():
        assert ours[key].shape == reference.shape, key
        tolerance = TRACK_TOLERANCE if key in TRACK_KEYS else DENSE_TOLERANCE
        error = relative_error(ours[key], reference)
        if not error <= tolerance:
            failures[key] = error
    assert failures == {}
    assert len(tiny_reference_outputs) >= 30  # the whole fixture was compared, not a sample


def test_first_frame_track_equals_queries(tiny_model, tiny_inputs):
    out = tiny_model(tiny_inputs["images"], tiny_inputs["query_points"])
    torch.testing.assert_close(out["track"][:, 0], tiny_inputs["query_points"], rtol=0, atol=1e-5)


def test_unbatched_input_gets_a_batch_dimension(tiny_model, tiny_inputs, tiny_reference_outputs):
    out = tiny_model(tiny_inputs["images"][0], tiny_inputs["query_points"][0])
    assert out["depth"].shape == tiny_reference_outputs["depth"].shape
    assert relative_error(out["depth"], tiny_reference_outputs["depth"]) <= DENSE_TOLERANCE


# ------------------------------------------------------------------------------------ properties
def test_batch_of_two_scenes_equals_each_scene_alone(tiny_model, tiny_inputs):
    first = tiny_inputs["images"]
    second = torch.flip(first, dims=[-1]).roll(1, dims=1)
    queries = tiny_inputs["query_points"]
    together = tiny_model(torch.cat([first, second]), torch.cat([queries, queries]))
    for index, images in enumerate((first, second)):
        alone = tiny_model(images, queries)
        for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
            assert relative_error(together[key][index:index + 1], alone[key]) <= DENSE_TOLERANCE, key
        for key in ("track", "vis", "conf"):
            assert relative_error(together[key][index:index + 1], alone[key]) <= TRACK_TOLERANCE, key


def test_single_frame(tiny_model, tiny_inputs):
    out = tiny_model(tiny_inputs["images"][:, :1], tiny_inputs["query_points"])
    assert out["depth"].shape == (1, 1, 56, 84, 1)
    assert out["pose_enc"].shape == (1, 1, 9)
    assert out["track"].shape == (1, 1, 5, 2)
    assert torch.isfinite(out["world_points"]).all()


def test_frames_after_the_first_are_permutation_equivariant(tiny_model, tiny_inputs):
    images = torch.cat([tiny_inputs["images"], tiny_inputs["images"][:, 1:].flip(-2)], dim=1)  # 5 frames
    queries = tiny_inputs["query_points"]
    order = torch.tensor([0, 3, 1, 4, 2])
    base = tiny_model(images, queries)
    permuted = tiny_model(images[:, order], queries)
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert relative_error(permuted[key], base[key][:, order]) <= 1e-5, key
    for key in ("track", "vis", "conf"):
        assert relative_error(permuted[key], base[key][:, order]) <= TRACK_TOLERANCE, key
    # Permuting frame 0 changes the world frame, so it must change the predictions.
    moved_first = tiny_model(images[:, torch.tensor([1, 0, 2, 3, 4])], queries)
    assert relative_error(moved_first["pose_enc"][:, 1], base["pose_enc"][:, 0]) > 1e-3


def test_frame_chunking_does_not_change_dense_outputs(tiny_model, tiny_inputs):
    images = tiny_inputs["images"]
    whole = tiny_model(images, tiny_inputs["query_points"], frames_chunk_size=None)
    chunked = tiny_model(images, tiny_inputs["query_points"], frames_chunk_size=1)
    # Chunking only changes which frames share a convolution call; the float32 sums stay the same
    # up to the kernel's blocking, which depends on the CPU's vector width (CI's machine differed
    # from ours in the 6th digit of the tracks). The tracker's iterative refinement amplifies that
    # rounding, hence its looser bound; a chunking bug would be off by far more.
    for key in ("depth", "depth_conf", "world_points", "world_points_conf"):
        assert relative_error(chunked[key], whole[key]) < 1e-5, key
    assert relative_error(chunked["track"], whole["track"]) < 1e-4


def test_forward_keeps_only_the_layers_the_heads_use(tiny_state_dict):
    config = VGGTConfig.from_dict({**json.loads((FIXTURES / "vggt-tiny" / "config.json").read_text()),
                                   "depth": 4, "enable_track": False})
    config.dense_head.intermediate_layer_idx = [0, 1, 1, 2]
    model = VGGT(config).eval()
    kept = []
    model.aggregator.register_forward_hook(
        lambda module, args, output: kept.append([i for i, t in enumerate(output[0]) if t is not None]))
    model(torch.rand(2, 3, 28, 42))
    assert kept == [[0, 1, 2, 3]]  # dense layers 0,1,2 and the camera head's last layer
    config.enable_camera = False
    model = VGGT(config).eval()
    model.aggregator.register_forward_hook(
        lambda module, args, output: kept.append([i for i, t in enumerate(output[0]) if t is not None]))
    model(torch.rand(2, 3, 28, 42))
    assert kept[-1] == [0, 1, 2]


def test_forward_runs_in_inference_mode(tiny_model, tiny_inputs):
    out = tiny_model(tiny_inputs["images"])
    assert out["depth"].is_inference() and not out["depth"].requires_grad


def test_disabled_heads_have_no_keys_and_no_outputs(tiny_config, tiny_inputs):
    config = VGGTConfig.from_dict({**tiny_config.to_dict(), "enable_point": False, "enable_track": False})
    model = VGGT(config).eval()
    keys = model.state_dict().keys()
    assert not any(k.startswith(("point_head.", "track_head.")) for k in keys)
    out = model(tiny_inputs["images"], tiny_inputs["query_points"])
    assert "world_points" not in out and "track" not in out
    assert out["depth"].shape == (1, 3, 56, 84, 1)


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("shape, message", [
    ((3, 56, 84), "[S, 3, H, W]"),
    ((1, 1, 1, 3, 56, 84), "[S, 3, H, W]"),
    ((2, 4, 56, 84), "3 (RGB) channels"),
    ((2, 3, 50, 84), "multiples of 14"),
    ((2, 3, 56, 85), "multiples of 14"),
])
def test_bad_image_shapes_give_clear_errors(tiny_model, shape, message):
    with pytest.raises(ValueError) as error:
        tiny_model(torch.rand(shape))
    assert message in str(error.value)


def test_integer_images_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="floating point"):
        tiny_model(torch.zeros(2, 3, 56, 84, dtype=torch.uint8))


def test_bad_query_points_give_clear_errors(tiny_model, tiny_inputs):
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        tiny_model(tiny_inputs["images"], torch.rand(5, 3))
    with pytest.raises(ValueError, match=r"B=1"):
        tiny_model(tiny_inputs["images"], torch.rand(2, 5, 2))


def test_tracking_on_images_too_small_for_the_pyramid_is_a_clear_error():
    with torch.device("meta"):
        model = VGGT(VGGTConfig()).eval()  # 7 correlation levels need >= 140 px
        images = torch.rand(1, 2, 3, 126, 518)
    with pytest.raises(ValueError, match="at least 140x140"):
        model(images, torch.zeros(1, 2, 2, device="meta"))
