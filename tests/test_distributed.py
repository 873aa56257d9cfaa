"""Sharded inference over torch.distributed ranks (gloo on CPU) equals one process: the golden
reference outputs for 3 frames, and our single-process forward for an odd 5-frame sequence."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vggt_core.weights import load_model

HERE = Path(__file__).parent
TINY = HERE / "fixtures" / "vggt-tiny"
GOLDEN_TOLERANCE = 1e-5  # relative, the golden tests' bound for the dense and camera outputs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(ranks: int, num_frames: int, out: Path) -> dict[str, torch.Tensor]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               str(HERE / "distributed_forward_script.py"), str(out), str(num_frames)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(str(out))


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / max(1.0, float(expected.abs().max())))


@pytest.mark.parametrize("ranks", [2, 3])
def test_sharded_ranks_give_the_golden_reference_outputs(tmp_path, ranks):
    """The fixture's 3 frames as shards of 2 + 1 or 1 + 1 + 1: the authors' reference outputs
    within 1e-5."""
    sharded = _torchrun(ranks, 3, tmp_path / "out.safetensors")
    expected = load_file(str(TINY / "outputs.safetensors"))
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert sharded[key].shape == expected[key].shape, key
        assert _relative_error(sharded[key], expected[key]) <= GOLDEN_TOLERANCE, key


def test_cli_distributed_over_two_ranks_equals_one_process(tmp_path):
    """``torchrun -m vggt_core reconstruct --distributed`` with an odd frame count (shards of 2
    and 1 frames) writes the reconstruction a single process computes."""
    from vggt_core import synthetic
    from vggt_core.pipeline import gather_input_frames, reconstruct_frames
    from vggt_core.reconstruction import Reconstruction

    scene = synthetic.render_scene("room", num_views=3, width=84, height=56, seed=1)
    photos = [str(path) for path in synthetic.save_scene_images(scene, tmp_path / "photos")]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "vggt_core", "reconstruct", *photos, "--out", str(tmp_path / "out"),
               "--checkpoint", str(TINY), "--device", "cpu", "--export", "npz", "--distributed"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = Reconstruction.load(next((tmp_path / "out").glob("*.npz")))
    assert sharded.info["distributed_ranks"] == 2
    single = reconstruct_frames(load_model(TINY, device="cpu"), gather_input_frames(photos))
    for name in ("extrinsics", "pose_encoding", "depth", "world_points"):
        expected = torch.from_numpy(getattr(single, name))
        assert _relative_error(torch.from_numpy(getattr(sharded, name)), expected) <= GOLDEN_TOLERANCE, name
    # Confidences are stored in float16 (docs/store.md): compare at that precision.
    np_single = torch.from_numpy(single.depth_conf.astype("float16").astype("float32"))
    assert _relative_error(torch.from_numpy(sharded.depth_conf), np_single) <= 1e-3
