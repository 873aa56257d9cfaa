"""One name per frame across every export that writes files for it, and one frame-label rule."""

from __future__ import annotations

import dataclasses
import json
import zipfile

import pycolmap
import pytest

from vggt_core.errors import InputError
from vggt_core.export import export_all
from vggt_core.filtering import ViewSettings
from vggt_core.frame_names import export_frame_file_name, frame_label, parse_frame_label
from vggt_core.synthetic import reconstruction_from_synthetic_scene, render_scene

NAMES = ["IMG 0001.JPG", "IMG_0001.png", "..", "été photo.jpeg"]
# Written out by hand: index, then the stem with unsafe characters replaced.
EXPECTED_STEMS = ["000_IMG_0001", "001_IMG_0001", "002_frame", "003_t_photo"]


def test_the_rule():
    assert [export_frame_file_name(i, name, ".jpg") for i, name in enumerate(NAMES)] == \
        [stem + ".jpg" for stem in EXPECTED_STEMS]
    assert export_frame_file_name(12, "x" * 200) == "012_" + "x" * 80
    assert export_frame_file_name(1000, "a.b.c.png") == "1000_a.b.c"


def test_colmap_nerfstudio_splatting_and_depth_name_frame_i_the_same_way(tmp_path):
    recon = reconstruction_from_synthetic_scene(render_scene("table", num_views=4, width=56, height=42, seed=1))
    recon = dataclasses.replace(recon, frame_names=list(NAMES))
    written = export_all(recon, tmp_path, formats=("depth", "nerfstudio", "splatting"),
                         settings=ViewSettings(confidence_threshold=0, max_points=500))
    images = [stem + ".jpg" for stem in EXPECTED_STEMS]

    transforms = json.loads(written["nerfstudio"].read_text())
    assert [frame["file_path"] for frame in transforms["frames"]] == [f"images/{name}" for name in images]
    assert sorted(p.name for p in (tmp_path / "nerfstudio" / "images").iterdir()) == images

    with zipfile.ZipFile(written["splatting"]) as archive:
        assert sorted(n for n in archive.namelist() if n.startswith("images/")) == [f"images/{n}" for n in images]
        archive.extractall(tmp_path / "bundle")
    model = pycolmap.Reconstruction(str(tmp_path / "bundle" / "sparse" / "0"))
    assert [model.image(index + 1).name for index in range(4)] == images

    depth_files = sorted(p.name for p in written["depth"].glob("*_depth.npy"))
    assert depth_files == [f"{stem}_depth.npy" for stem in EXPECTED_STEMS]
    assert json.loads((written["depth"] / "depth_scale.json").read_text())["frames"] == dict(
        zip(NAMES, EXPECTED_STEMS))


def test_frame_labels_round_trip_and_refuse_other_text():
    labels = [frame_label(index, name) for index, name in enumerate(NAMES)]
    assert labels[3] == "3: été photo.jpeg"
    assert [parse_frame_label(label, len(NAMES)) for label in labels] == [0, 1, 2, 3]
    assert parse_frame_label(" 2 : renamed", 4) == 2
    for bad in ("All", "", None, "x: 1", "4: too far"):
        with pytest.raises(InputError):
            parse_frame_label(bad, 4)
