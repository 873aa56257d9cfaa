"""``vggt reconstruct --checkpoint random-tiny`` writes every registered export format."""

from __future__ import annotations

import zipfile
from pathlib import Path

import trimesh

from test_cli import run_cli
from vggt_core.export import EXPORTERS
from vggt_core.reconstruction import Reconstruction

TABLE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "table"


def test_random_tiny_writes_every_export_format(tmp_path):
    photos = sorted(TABLE.glob("*.jpg"))[:3]
    out = tmp_path / "out"
    result = run_cli("reconstruct", *map(str, photos), "--max-frames", "3", "--checkpoint", "random-tiny",
                     "--device", "cpu", "--export", ",".join(EXPORTERS), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "checkpoint random-tiny" in result.stdout
    for name, exporter in EXPORTERS.items():
        assert (out / exporter.file_name).is_file(), name
        if exporter.folder_name is not None:
            assert (out / exporter.folder_name).is_dir(), name
    recon = Reconstruction.load(out / "reconstruction.npz")
    assert recon.frame_names == [photo.name for photo in photos]
    assert trimesh.load(out / "scene.glb").metadata["num_points"] > 0
    with zipfile.ZipFile(out / "colmap.zip") as archive:
        assert {"sparse/0/cameras.bin", "units.txt"} <= set(archive.namelist())
