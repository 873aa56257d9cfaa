"""``python -m vggt_core reconstruct`` with tracks, bundle adjustment and the new formats (tiny checkpoint)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pycolmap
from PIL import Image

from test_cli import checkpoint, photos, run_cli  # noqa: F401 (fixtures shared with the plain CLI tests)
from vggt_core.reconstruction import Reconstruction


def test_help_documents_the_track_flags_and_formats():
    result = run_cli("reconstruct", "--help")
    assert result.returncode == 0
    for flag in ("--bundle-adjust", "--query-frames", "--max-query-points", "--shared-camera", "--tracks",
                 "--query-method", "nerfstudio", "splatting"):
        assert flag in result.stdout


def test_bundle_adjust_end_to_end_with_the_new_formats(tmp_path, checkpoint, photos):
    out = tmp_path / "out"
    result = run_cli("reconstruct", str(photos), "--out", str(out), "--checkpoint", str(checkpoint),
                     "--device", "cpu", "--bundle-adjust", "--shared-camera", "--query-frames", "2",
                     "--max-query-points", "64", "--export", "colmap,npz,nerfstudio,splatting")
    assert result.returncode == 0, result.stderr
    assert "Tracked 64 points from 2 query frames." in result.stdout
    # Random weights track badly: the adjustment either refines or says why it did not.
    assert "Bundle adjustment: Refined" in result.stdout or "bundle adjustment skipped: " in result.stdout

    recon = Reconstruction.load(out / "reconstruction.npz")
    assert recon.tracks.shape == (4, 64, 2) and set(recon.track_query_frames.tolist()) == {0, 2}
    np.testing.assert_allclose(recon.tracks[recon.track_query_frames, np.arange(64)], recon.query_points, atol=1e-3)
    if recon.info.get("cameras_refined"):
        assert recon.sparse_points is not None and recon.info["bundle_adjustment"]["refined"]

    model = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
    assert model.num_images() == 4 and model.num_points3D() > 0
    lengths = {len(point.track.elements) for point in model.points3D.values()}
    if recon.info.get("cameras_refined"):
        assert min(lengths) >= 2  # the refined multi-view tracks
    else:
        assert lengths == {1}  # a skipped or rejected refinement: the ordinary point export

    transforms = json.loads((out / "nerfstudio" / "transforms.json").read_text())
    assert [frame["w"] for frame in transforms["frames"]] == [168] * 4
    with zipfile.ZipFile(out / "splatting.zip") as archive:
        names = archive.namelist()
        images = sorted(name for name in names if name.startswith("images/"))
        assert len(images) == 4 and "sparse/0/cameras.bin" in names
        # The CLI has the photos: the bundle holds them at their own size.
        assert Image.open(archive.open(images[0])).size == (168, 126)


def test_tracks_without_bundle_adjustment_and_bad_values(tmp_path, checkpoint, photos):
    out = tmp_path / "out"
    result = run_cli("reconstruct", str(photos), "--out", str(out), "--checkpoint", str(checkpoint),
                     "--device", "cpu", "--tracks", "--query-frames", "1", "--max-query-points", "16",
                     "--export", "npz")
    assert result.returncode == 0, result.stderr
    recon = Reconstruction.load(out / "reconstruction.npz")
    assert recon.tracks.shape == (4, 16, 2) and not recon.info.get("cameras_refined")
    bad = run_cli("reconstruct", str(photos), "--out", str(out), "--max-query-points", "0")
    assert bad.returncode == 2 and "--max-query-points" in bad.stderr
