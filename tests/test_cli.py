"""``python -m vggt_core reconstruct`` end to end on a tiny checkpoint written by the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch
import trimesh

from conftest import TINY
from vggt_core.reconstruction import Reconstruction
from vggt_core.synthetic import render_scene, save_scene_images

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "vggt_core", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_state_dict):
    folder = tmp_path_factory.mktemp("ckpt")
    torch.save(tiny_state_dict, folder / "model.pt")
    shutil.copy(TINY / "config.json", folder / "config.json")
    return folder / "model.pt"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    save_scene_images(render_scene("room", num_views=4, width=168, height=126), folder)
    return folder


def test_help_documents_every_flag():
    result = run_cli("reconstruct", "--help")
    assert result.returncode == 0
    for flag in ("--out", "--checkpoint", "--mode", "--fps", "--max-frames", "--export", "--conf", "--config",
                 "--device", "--branch", "--frames-chunk-size", "--colmap-format"):
        assert flag in result.stdout


def test_reconstruct_a_folder_writes_every_export_that_loads_back(tmp_path, checkpoint, photos):
    out = tmp_path / "out"
    result = run_cli("reconstruct", str(photos), "--out", str(out), "--checkpoint", str(checkpoint),
                     "--export", "glb,ply,colmap,npz", "--conf", "0", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "Reconstructed 4 frames at 518x392" in result.stdout
    for name in ("scene.glb", "points.ply", "colmap.zip", "reconstruction.npz"):
        assert name in result.stdout and (out / name).is_file()

    recon = Reconstruction.load(out / "reconstruction.npz")
    assert recon.num_frames == 4 and recon.frame_names == ["000.png", "001.png", "002.png", "003.png"]
    assert recon.original_sizes.tolist() == [[168, 126]] * 4
    scene = trimesh.load(out / "scene.glb")
    assert isinstance(scene, trimesh.Scene) and len(scene.geometry) >= 1
    cloud = trimesh.load(out / "points.ply")
    assert len(cloud.vertices) > 0
    model = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
    assert model.num_images() == 4
    assert {camera.width for camera in model.cameras.values()} == {168}  # original photo size


def test_video_input_and_format_subset(tmp_path, checkpoint):
    import av

    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 112, 84, "yuv420p"
        for image in render_scene("table", num_views=20, width=112, height=84).images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "out"
    result = run_cli("reconstruct", str(video), "--fps", "5", "--max-frames", "3", "--export", "npz",
                     "--checkpoint", str(checkpoint), "--out", str(out), "--mode", "pad")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["reconstruction.npz"]
    recon = Reconstruction.load(out / "reconstruction.npz")
    assert recon.num_frames == 3 and recon.image_size_hw == (518, 518)


def test_colmap_text_format(tmp_path, checkpoint, photos):
    import pycolmap

    out = tmp_path / "out"
    result = run_cli("reconstruct", str(photos), "--out", str(out), "--checkpoint", str(checkpoint),
                     "--export", "colmap", "--colmap-format", "txt", "--conf", "0", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    model_dir = out / "colmap" / "sparse" / "0"
    assert {"cameras.txt", "images.txt", "points3D.txt"} <= {p.name for p in model_dir.iterdir()}
    assert not list(model_dir.glob("*.bin"))
    model = pycolmap.Reconstruction(str(model_dir))
    assert model.num_images() == 4 and model.num_points3D() > 0


def test_user_errors_are_one_line_messages_not_tracebacks(tmp_path, checkpoint, photos):
    result = run_cli("reconstruct", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                     "--checkpoint", str(checkpoint))
    assert result.returncode == 2 and "error: missing: no such file or folder" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("reconstruct", str(photos), "--out", str(tmp_path / "o"), "--export", "obj",
                     "--checkpoint", str(checkpoint))
    assert result.returncode == 2 and "unknown export format" in result.stderr
    result = run_cli("reconstruct", str(photos), "--out", str(tmp_path / "o"), "--checkpoint", "facebook/VGGT-1B")
    assert result.returncode == 2 and "local file" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("reconstruct", str(photos), "--out", str(tmp_path / "o"), "--max-frames", "2",
                     "--checkpoint", str(checkpoint))
    assert result.returncode == 2 and "at most 2 frames" in result.stderr
