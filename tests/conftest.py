"""Shared test fixtures: the tiny golden model and its reference data, and a small
ground-truth reconstruction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "vggt-tiny"


@pytest.fixture(scope="session")
def tiny_config():
    from vggt_core.config import VGGTConfig

    return VGGTConfig.from_json(TINY / "config.json")


@pytest.fixture(scope="session")
def tiny_state_dict():
    from safetensors.torch import load_file

    return load_file(str(TINY / "model.safetensors"))


@pytest.fixture(scope="session")
def tiny_inputs():
    from safetensors.torch import load_file

    return load_file(str(TINY / "inputs.safetensors"))


@pytest.fixture(scope="session")
def tiny_reference_outputs():
    from safetensors.torch import load_file

    return load_file(str(TINY / "outputs.safetensors"))


@pytest.fixture()
def tiny_model(tiny_config, tiny_state_dict):
    from vggt_core.model import VGGT

    torch.manual_seed(0)
    model = VGGT(tiny_config)
    model.load_state_dict(tiny_state_dict, strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def small_reconstruction():
    """The exact reconstruction of two 56x42 views of the synthetic table (no model involved)."""
    from vggt_core.reconstruction import reconstruction_from_synthetic_scene
    from vggt_core.synthetic import render_scene

    return reconstruction_from_synthetic_scene(render_scene("table", num_views=2, width=56, height=42))
