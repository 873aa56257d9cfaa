"""Sky masks from a small ONNX model built here, the "hide sky" filter, and masks stored once."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from vggt_core import InputError, ViewSettings, select_points
from vggt_core.reconstruction import Reconstruction
from vggt_core.sky import (SKY_MODEL_FILE, SkyModelUnavailableError, load_sky_segmenter, sky_mask_from_bytes,
                           sky_mask_to_bytes, with_sky_mask)
from vggt_app.store.entries import ReconstructionStore

HEIGHT, WIDTH = 42, 56
SKY_ROWS = 18  # frame 0: blue above this row, red below; frame 1: all red, one blue block


class BlueMinusRed(torch.nn.Module):
    """Score = normalised blue − normalised red: high for blue (sky) pixels, low for red ones."""

    def forward(self, image):
        return image[:, 2:3] - image[:, 0:1]


@pytest.fixture(scope="module")
def sky_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("sky") / SKY_MODEL_FILE
    # The TorchScript exporter needs only the onnx package (the dynamo one also needs onnxscript).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(BlueMinusRed(), torch.zeros(1, 3, 320, 320), str(path), dynamo=False,
                          input_names=["input"], output_names=["output"])
    return path


def frames() -> np.ndarray:
    images = np.zeros((2, HEIGHT, WIDTH, 3), np.uint8)
    images[..., 0] = 255
    images[0, :SKY_ROWS] = (0, 0, 255)
    images[1, 10:30, 20:40] = (0, 0, 255)
    return images


def expected_masks() -> np.ndarray:
    mask = np.zeros((2, HEIGHT, WIDTH), bool)
    mask[0, :SKY_ROWS] = True
    mask[1, 10:30, 20:40] = True
    return mask


def reconstruction() -> Reconstruction:
    rng = np.random.default_rng(0)
    depth = rng.uniform(1, 2, (2, HEIGHT, WIDTH)).astype(np.float32)
    return Reconstruction(images=frames(), extrinsics=np.tile(np.eye(3, 4), (2, 1, 1)),
                          intrinsics=np.tile(np.diag([40.0, 40.0, 1.0]), (2, 1, 1)), depth=depth,
                          depth_conf=1 + depth, points_from_depth=rng.normal(size=(2, HEIGHT, WIDTH, 3)))


def test_masks_from_the_test_model(sky_model_path):
    segmenter = load_sky_segmenter(sky_model_path)
    masks = segmenter.sky_masks(frames())
    expected = expected_masks()
    # Resampling to 320 × 320 and back blurs each edge by at most one pixel.
    near_edge = np.zeros_like(expected)
    for index in range(2):
        edges = expected[index] ^ np.roll(expected[index], 1, 0) | expected[index] ^ np.roll(expected[index], 1, 1)
        near_edge[index] = edges | np.roll(edges, -1, 0) | np.roll(edges, -1, 1)
    np.testing.assert_array_equal(masks[~near_edge], expected[~near_edge])
    assert abs(int(masks.sum()) - int(expected.sum())) <= 2 * near_edge.sum()
    # A folder holding skyseg.onnx works as the source too.
    np.testing.assert_array_equal(load_sky_segmenter(sky_model_path.parent).sky_masks(frames()), masks)


def test_hide_sky_hides_exactly_the_masked_points(sky_model_path):
    recon = with_sky_mask(reconstruction(), load_sky_segmenter(sky_model_path))
    everything = select_points(recon, ViewSettings(confidence_threshold=0, max_points=None))
    without_sky = select_points(recon, ViewSettings(confidence_threshold=0, max_points=None, hide_sky=True))
    flat_mask = recon.sky_mask.reshape(2, -1)
    kept = set(zip(without_sky.frame_indices.tolist(), without_sky.pixel_indices.tolist()))
    expected = {(f, p) for f, p in zip(everything.frame_indices.tolist(), everything.pixel_indices.tolist())
                if not flat_mask[f, p]}
    assert kept == expected and everything.num_points - without_sky.num_points == int(recon.sky_mask.sum()) > 0
    one_frame = select_points(recon, ViewSettings(confidence_threshold=0, frame_index=1, hide_sky=True))
    assert one_frame.num_points == HEIGHT * WIDTH - int(recon.sky_mask[1].sum())
    with pytest.raises(InputError, match="sky masks"):
        select_points(reconstruction(), ViewSettings(hide_sky=True))


def test_masks_are_stored_with_the_reconstruction_and_reused(sky_model_path, tmp_path):
    from vggt_app.sky_masks import SKY_MASK_ATTACHMENT, SkyMasks

    recon = with_sky_mask(reconstruction(), load_sky_segmenter(sky_model_path))
    assert with_sky_mask(recon, None) is recon  # already computed: the model is not even needed
    reloaded = Reconstruction.load(recon.save(tmp_path / "r.npz"))
    np.testing.assert_array_equal(reloaded.sky_mask, recon.sky_mask)
    packed = sky_mask_to_bytes(recon.sky_mask)
    assert len(packed) < recon.sky_mask.size / 8 + 600
    np.testing.assert_array_equal(sky_mask_from_bytes(packed, recon.sky_mask.shape), recon.sky_mask)
    assert sky_mask_from_bytes(packed, (1, 2, 3)) is None and sky_mask_from_bytes(b"junk", (1, 2, 3)) is None

    store = ReconstructionStore(tmp_path / "store", ttl_seconds=3600, max_bytes=10**9)
    recon_id = store.save(reconstruction())
    masks = SkyMasks(store, str(sky_model_path))
    masks.ensure(store.load(recon_id))
    assert masks.computed == 1 and store.load_attachment(recon_id, SKY_MASK_ATTACHMENT) is not None
    masks.ensure(store.load(recon_id))  # kept in memory
    # Another process (a restart, a share link opened elsewhere) reads it back instead.
    fresh_store = ReconstructionStore(tmp_path / "store", ttl_seconds=3600, max_bytes=10**9)
    fresh = SkyMasks(fresh_store, "/nonexistent/skyseg.onnx")
    stored = fresh_store.load(recon_id)
    fresh.ensure(stored)
    assert fresh.computed == 0 and masks.computed == 1
    np.testing.assert_array_equal(stored.reconstruction.sky_mask, recon.sky_mask)


def test_a_missing_model_says_how_to_get_it(tmp_path):
    with pytest.raises(SkyModelUnavailableError, match="--sky-model /path/to/skyseg.onnx"):
        load_sky_segmenter(tmp_path / "nothing.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(SkyModelUnavailableError, match="could not read"):
        load_sky_segmenter(tmp_path / "broken.onnx")


def test_the_hub_copy_is_used_from_the_cache_offline(tmp_path, sky_model_path):
    import os
    import subprocess
    import sys

    from test_weights import REPO_ROOT, make_hub_cache

    make_hub_cache(tmp_path / "hf", "JianyuanWang/skyseg", {SKY_MODEL_FILE: sky_model_path})
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HF_HUB_CACHE", None)
    code = ("from vggt_core.sky import load_sky_segmenter\n"
            "print('PATH', load_sky_segmenter().model_path)\n"
            "try:\n    load_sky_segmenter('someone/else')\nexcept Exception as e:\n    print('ERR', e)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "models--JianyuanWang--skyseg" in result.stdout
    assert "HF_HUB_OFFLINE is set and it is not in the local cache" in result.stdout
