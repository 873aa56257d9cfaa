"""The preview's memory estimate: the model-input size from headers only, and the same verdict as the guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vggt_core.pipeline as pipeline
from vggt_core import FrameLimitError
from vggt_core.config import tiny_config
from vggt_core.images import load_images, model_input_size
from vggt_core.model import VGGT
from vggt_core.pipeline import check_frames_fit_in_memory, estimate_memory, estimate_memory_of_frames, InputFrame


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_model_input_size_matches_the_loaded_batch(tmp_path, mode):
    sizes = [(300, 200), (200, 300), (640, 120)]
    paths = []
    for index, (width, height) in enumerate(sizes):
        paths.append(tmp_path / f"{index}.png")
        Image.new("RGB", (width, height), (9, 9, 9)).save(paths[-1])
    batch = load_images(paths, mode=mode, target_size=112)
    assert model_input_size(sizes, mode, 112) == tuple(batch.shape[-2:])


def test_preview_estimate_and_guard_agree(tmp_path, monkeypatch):
    with torch.random.fork_rng(devices=[]):
        model = VGGT(tiny_config()).eval()
    path = tmp_path / "p.png"
    Image.fromarray(np.zeros((392, 518, 3), np.uint8)).save(path)
    frames = [InputFrame(f"{i}", path) for i in range(4)]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    needed = estimate_memory(model.config, 4, 392, 518, torch.device("cpu")).needed_bytes
    for free, fits in ((needed - weights, True), (needed - weights - 1, False)):
        monkeypatch.setattr(pipeline, "available_memory_bytes", lambda device, free=free: free)
        guard = estimate_memory(model.config, 4, 392, 518, torch.device("cpu"), resident_weight_bytes=weights)
        assert guard.fits is fits and (guard.max_frames == 4 if fits else guard.max_frames < 4)
        if fits:
            check_frames_fit_in_memory(model, 4, 392, 518)
        else:
            with pytest.raises(FrameLimitError, match=f"About {guard.max_frames} frames would fit"):
                check_frames_fit_in_memory(model, 4, 392, 518)
    # Before the weights are loaded the preview counts them as needed, not as available.
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda device: needed)
    preview = estimate_memory_of_frames(model.config, frames, torch.device("cpu"))
    assert (preview.height, preview.width, preview.needed_bytes, preview.fits) == (392, 518, needed, True)
