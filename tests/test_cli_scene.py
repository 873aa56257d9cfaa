"""The CLI's scene options: --focal, --known-distance/--units, --hide-sky/--sky-model and the depth format."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from test_cli import checkpoint, run_cli  # noqa: F401 (fixture)
from vggt_core.reconstruction import Reconstruction
from vggt_core.scale import distance_between_photo_pixels
from vggt_core.synthetic import render_scene, save_scene_images


class BlueMinusRed(torch.nn.Module):
    def forward(self, image):
        return image[:, 2:3] - image[:, 0:1]


def test_focal_scale_sky_and_depth_maps(tmp_path, checkpoint):  # noqa: F811
    save_scene_images(render_scene("table", num_views=2, width=112, height=84), tmp_path / "photos")
    sky = tmp_path / "skyseg.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(BlueMinusRed(), torch.zeros(1, 3, 320, 320), str(sky), dynamo=False)
    out = tmp_path / "out"
    result = run_cli("reconstruct", str(tmp_path / "photos"), "--out", str(out), "--checkpoint", str(checkpoint),
                     "--device", "cpu", "--export", "npz,depth,ply", "--focal", "30mm",
                     "--known-distance", "0,30,40", "1,80,50", "2.5", "--units", "m",
                     "--hide-sky", "--sky-model", str(sky))
    assert result.returncode == 0, result.stderr
    recon = Reconstruction.load(out / "reconstruction.npz")
    assert recon.units == "m" and recon.info["intrinsics_source"] == "manual"
    np.testing.assert_allclose(recon.intrinsics_at_original_resolution()[:, 0, 0], 30 * 140 / 43.267, rtol=1e-4)
    assert distance_between_photo_pixels(recon, (0, 30, 40), (1, 80, 50)) == pytest.approx(2.5, rel=1e-4)
    assert recon.sky_mask is not None and recon.sky_mask.shape == recon.depth.shape
    assert np.load(out / "depth_maps" / "000_000_depth.npy").shape == (84, 112)
    assert json.loads((out / "depth_maps" / "depth_scale.json").read_text())["units"] == "m"
    assert b"comment units m" in (out / "points.ply").read_bytes()[:300]
    # The summary says what was applied: the scale factor and the focal length.
    assert f"multiplied by {recon.scale_factor:.6g}; units: m." in result.stdout
    typed = f"{30 * 140 / 43.267:.0f} px"
    assert "Focal length:" in result.stdout and "re-projected with the typed" in result.stdout and typed in result.stdout


def test_units_without_a_scale_is_a_clear_error(tmp_path, checkpoint):  # noqa: F811
    save_scene_images(render_scene("table", num_views=2, width=56, height=42), tmp_path / "photos")
    result = run_cli("reconstruct", str(tmp_path / "photos"), "--out", str(tmp_path / "o"), "--checkpoint",
                     str(checkpoint), "--device", "cpu", "--export", "npz", "--units", "m")
    assert result.returncode == 2 and "--units names the unit" in result.stderr
