"""The exporter registry: the CLI, ``export_all`` and ``write_download`` all follow it, and one
export run selects the points once."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from vggt_core.cli import build_parser, main, parse_formats
from vggt_core.errors import InputError
from vggt_core.export import (EXPORTERS, Exporter, export_all, export_formats, export_glb, export_ply,
                              register_exporter, unregister_exporter, write_download)
from vggt_core.export import registry
from vggt_core.filtering import ViewSettings, select_points
from vggt_core.synthetic import reconstruction_from_synthetic_scene, render_scene

SETTINGS = ViewSettings(confidence_threshold=0, max_points=5_000)


@pytest.fixture(scope="module")
def recon():
    return reconstruction_from_synthetic_scene(render_scene("table", num_views=3, width=84, height=63, seed=4))


def _write_point_count(request, path):
    path.write_text(f"{request.recon.num_frames} frames, {request.selection.num_points} points")
    return path


def test_a_registered_exporter_is_offered_by_the_cli_and_written_by_export_all(tmp_path, recon, capsys):
    register_exporter(Exporter("dummy", "dummy.txt", "a format only this test knows", _write_point_count))
    try:
        assert export_formats()[-1] == "dummy"
        with pytest.raises(SystemExit):
            main(["reconstruct", "--help"])
        help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert "dummy: a format only this test knows" in help_text and ",dummy " in help_text
        args = build_parser().parse_args(["reconstruct", "photos", "--out", "out", "--export", "ply,Dummy"])
        assert parse_formats(args.export) == ["ply", "dummy"]

        written = export_all(recon, tmp_path, formats=["dummy"], settings=SETTINGS)
        assert written == {"dummy": tmp_path / "dummy.txt"}
        expected = select_points(recon, SETTINGS).num_points
        assert (tmp_path / "dummy.txt").read_text() == f"3 frames, {expected} points"
        assert write_download("dummy", recon, tmp_path / "download.txt", SETTINGS).read_text() == \
            f"3 frames, {expected} points"
    finally:
        unregister_exporter("dummy")
    assert "dummy" not in export_formats()
    with pytest.raises(InputError):
        parse_formats("dummy")


def test_a_format_cannot_be_registered_twice_or_with_an_unusable_name():
    with pytest.raises(ValueError):
        register_exporter(Exporter("glb", "other.glb", "a second glb", _write_point_count))
    with pytest.raises(ValueError):
        Exporter("glb,ply", "x", "a name with a comma", _write_point_count)
    with pytest.raises(ValueError):
        Exporter("half", "half.zip", "a folder format without a folder writer", _write_point_count,
                 folder_name="half")


def test_one_export_run_selects_the_points_once(tmp_path, recon, monkeypatch):
    calls = []

    def counting_select_points(*args, **kwargs):
        calls.append(args)
        return select_points(*args, **kwargs)

    monkeypatch.setattr(registry, "select_points", counting_select_points)
    for module in ("glb", "ply", "colmap", "nerfstudio"):
        # A writer that selected again would call its own module's select_points.
        monkeypatch.setattr(f"vggt_core.export.{module}.select_points", _must_not_select)
    written = export_all(recon, tmp_path, formats=export_formats(), settings=SETTINGS)
    assert len(calls) == 1
    assert set(written) >= set(export_formats())


def _must_not_select(*args, **kwargs):
    raise AssertionError("an exporter selected the points again")


def test_export_all_keeps_the_folders_and_their_zips(tmp_path, recon):
    written = export_all(recon, tmp_path, formats=("colmap", "depth", "nerfstudio"), settings=SETTINGS)
    assert written["colmap"] == tmp_path / "colmap" / "sparse" / "0"
    assert written["depth"] == tmp_path / "depth_maps"
    assert written["nerfstudio"] == tmp_path / "nerfstudio" / "transforms.json"
    for name in ("colmap", "depth", "nerfstudio"):
        folder = tmp_path / EXPORTERS[name].folder_name
        with zipfile.ZipFile(written[f"{name}_zip"]) as archive:
            assert sorted(archive.namelist()) == sorted(
                path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def test_write_download_writes_one_file_per_format(tmp_path, recon):
    for name, exporter in EXPORTERS.items():
        path = write_download(name, recon, tmp_path / exporter.file_name, SETTINGS)
        assert path == tmp_path / exporter.file_name and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(e.file_name for e in EXPORTERS.values())

    with zipfile.ZipFile(tmp_path / "colmap.zip") as archive:
        names = set(archive.namelist())
        assert {"sparse/0/cameras.bin", "sparse/0/images.bin", "sparse/0/points3D.bin", "units.txt"} <= names
        assert archive.read("units.txt").decode().startswith("units: arbitrary")
    with zipfile.ZipFile(tmp_path / "depth_maps.zip") as archive:
        assert "depth_scale.json" in archive.namelist()

    # The single-file formats are exactly what their own writers produce.
    assert (tmp_path / "points.ply").read_bytes() == export_ply(recon, tmp_path / "own.ply", SETTINGS).read_bytes()
    assert (tmp_path / "scene.glb").read_bytes() == export_glb(recon, tmp_path / "own.glb", SETTINGS).path.read_bytes()


def test_a_given_selection_is_what_the_point_formats_write(tmp_path, recon):
    selection = select_points(recon, SETTINGS)
    few = selection.thinned(7)
    assert few.num_points == 7
    np.testing.assert_array_equal(few.points, selection.points[(np.arange(7) * selection.num_points) // 7])
    glb = export_glb(recon, tmp_path / "few.glb", SETTINGS, selection=few)
    assert glb.num_points == 7 and glb.min_confidence == glb.confidence_threshold == selection.min_confidence
    header = write_download("ply", recon, tmp_path / "few.ply", SETTINGS, selection=few).read_bytes()[:300]
    assert b"element vertex 7\n" in header
