"""The CLI's --masks and --mesh options. The tiny test checkpoint predicts no consistent
geometry, so the mesh run swaps the model's reconstruction for the synthetic room's exact one
(in process); the rest of the command runs as usual."""

from __future__ import annotations

import numpy as np
import trimesh
from PIL import Image

from test_cli import checkpoint, run_cli  # noqa: F401 (fixture)
from vggt_core import cli, pipeline
from vggt_core.reconstruction import Reconstruction, reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene, save_scene_images


def test_masks_and_mesh(tmp_path, checkpoint, monkeypatch, capsys):  # noqa: F811
    scene = render_scene("room", num_views=3, width=112, height=84)
    save_scene_images(scene, tmp_path / "photos")
    exact = reconstruction_from_synthetic_scene(scene)
    exact.frame_names = ["000.png", "001.png", "002.png"]
    monkeypatch.setattr(pipeline, "reconstruct_frames", lambda *args, **kwargs: exact)
    masks = tmp_path / "masks"
    masks.mkdir()
    left_half = np.zeros((84, 112), np.uint8)
    left_half[:, :56] = 255
    Image.fromarray(left_half).save(masks / "001.png")
    Image.fromarray(np.full((42, 56), 255, np.uint8)).save(masks / "002.png")  # half the photo's size
    Image.fromarray(np.full((84, 112), 255, np.uint8)).save(masks / "passer-by.png")
    out = tmp_path / "out"
    code = cli.main(["reconstruct", str(tmp_path / "photos"), "--out", str(out), "--checkpoint", str(checkpoint),
                     "--device", "cpu", "--export", "npz,ply", "--conf", "0", "--masks", str(masks),
                     "--mesh", "--mesh-quality", "draft", "--mesh-max-faces", "2000"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "passer-by.png matches no photo" in captured.err and "002.png is 56×42" in captured.err
    recon = Reconstruction.load(out / "reconstruction.npz")
    assert not recon.exclusion_masks[0].any() and recon.exclusion_masks[2].all()
    assert recon.exclusion_masks[1][:, :56].all() and not recon.exclusion_masks[1][:, 56:].any()
    ply = trimesh.load(out / "points.ply", process=False)
    assert len(ply.vertices) == 84 * 112 + 84 * 56  # frame 0 whole, frame 1 half, frame 2 none
    mesh = trimesh.load(out / "mesh.ply", process=False)
    assert 100 < len(mesh.faces) <= 2000
    scene = trimesh.load(out / "mesh.glb", file_type="glb", process=False)
    assert "mesh" in scene.graph.nodes_geometry
    assert str(out / "mesh.glb") in captured.out and str(out / "mesh.ply") in captured.out


def test_mesh_of_too_few_frames_is_a_message(tmp_path, checkpoint):  # noqa: F811
    save_scene_images(render_scene("room", num_views=1, width=112, height=84), tmp_path / "photos")
    result = run_cli("reconstruct", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--checkpoint",
                     str(checkpoint), "--device", "cpu", "--export", "ply", "--mesh")
    assert result.returncode == 2
    assert "no mesh was written" in result.stderr and "two frames" in result.stderr
    assert "Traceback" not in result.stderr and (tmp_path / "out" / "points.ply").is_file()
