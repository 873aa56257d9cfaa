"""The app's Measure panel, Camera option, Hide sky control and memory line, through gradio_client."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import ExifTags, Image

import vggt_app.share_links
from app_fixtures import serve_for_module, synthetic_photos  # noqa: F401 (fixtures)
from vggt_core.config import tiny_config
from vggt_core.memory import parameter_count
from vggt_core.pipeline import estimate_memory
from vggt_core.reconstruction import Reconstruction
from vggt_core.scale import distance_between_photo_pixels
from vggt_core.sky import load_sky_segmenter

VIEW = [50, "depth", "All", True, False, False, vggt_app.share_links.DEFAULT_MAX_POINTS, False]


def with_sky(hide: bool) -> list:
    return [*VIEW[:-1], hide]


def points_shown(summary: str) -> int:
    return int(re.search(r"\*\*([\d,]+) points shown\*\*", summary).group(1).replace(",", ""))


class BlueAboveRed(torch.nn.Module):
    def forward(self, image):
        return image[:, 2:3] - image[:, 0:1]


@pytest.fixture(scope="module")
def sky_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sky") / "skyseg.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(BlueAboveRed(), torch.zeros(1, 3, 320, 320), str(path), dynamo=False)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, sky_model):
    yield from serve_for_module(tmp_path_factory, "scene-storage", sky_model=str(sky_model))


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def reconstructed(client, synthetic_photos):  # noqa: F811
    outputs = client.predict([handle_file(str(p)) for p in synthetic_photos], 1.0, *VIEW, api_name="/reconstruct")
    return dict(zip(["glb", "summary", "gallery", "frames", "id", "share"], outputs))


def stored_reconstruction(server, recon_id: str) -> Reconstruction:
    """What a restarted server reads for ``recon_id`` (a derived entry rebuilt from its parent)."""
    from vggt_app.store.entries import ReconstructionStore

    return ReconstructionStore(server.settings.storage_dir, ttl_seconds=3600, max_bytes=10**12).load(recon_id).reconstruction


def wait_stored(client, server, recon_id: str) -> Reconstruction:
    client.predict(recon_id, *VIEW, api_name="/export")  # waits until the entry is on disk
    return stored_reconstruction(server, recon_id)


# ------------------------------------------------------------------------------------- Measure


def test_measure_two_points_and_rescale_everything(client, server, reconstructed, tmp_path):
    recon_id = reconstructed["id"]
    _, points, text = client.predict(recon_id, "0: view_0.png", 100, 150, "[]", "depth", api_name="/measure_point")
    assert "now click a second point" in text and len(json.loads(points)) == 1
    image, points, text = client.predict(recon_id, "2: view_2.png", 400, 60, points, "depth",
                                         api_name="/measure_point")
    a, b = json.loads(points)
    recon = wait_stored(client, server, recon_id)
    measured = distance_between_photo_pixels(recon, a, b)
    assert a[0] == 0 and b[0] == 2
    assert f"distance {measured:.4g} scene units" in text
    assert Image.open(image).size == (recon.image_size_hw[1], recon.image_size_hw[0])

    outputs = client.predict(recon_id, points, 2.5, "m", *VIEW, api_name="/apply_scale")
    summary, new_id, share = outputs[1], outputs[4], outputs[5]["value"]
    assert new_id != recon_id and new_id in share
    assert "**distance 2.5 m**" in outputs[14]  # the panel now measures A–B in the new unit
    assert "Units: **m**" in summary and points_shown(summary) == points_shown(reconstructed["summary"])
    scaled = wait_stored(client, server, new_id)
    assert scaled.units == "m"
    assert distance_between_photo_pixels(scaled, a, b) == pytest.approx(2.5, rel=1e-4)
    np.testing.assert_allclose(scaled.depth, recon.depth * (2.5 / measured), rtol=1e-5)
    # The share link opens the rescaled scene; the original link still shows the original.
    opened = Client(server.url, verbose=False).predict(share, *VIEW, api_name="/open_shared")
    assert opened[4] == new_id and "Units: **m**" in opened[1]
    original = Client(server.url, verbose=False).predict(recon_id, *VIEW, api_name="/open_shared")
    assert "VGGT's own (arbitrary) scale" in original[1]
    # Downloads carry the unit.
    files = {Path(f).name: Path(f) for f in client.predict(new_id, *VIEW, api_name="/export")}
    assert b"comment units m" in files["points.ply"].read_bytes()[:400]
    assert Reconstruction.load(files["reconstruction.npz"]).units == "m"
    # Measuring on the rescaled scene reads metres.
    _, _, text = client.predict(new_id, "2: view_2.png", 400, 60, json.dumps([a]), "depth", api_name="/measure_point")
    assert "distance 2.5 m" in text


def test_measure_errors_are_messages(client, reconstructed):
    with pytest.raises(AppError, match="Click two points"):
        client.predict(reconstructed["id"], "[]", 1.0, "m", *VIEW, api_name="/apply_scale")
    with pytest.raises(AppError, match="outside"):
        client.predict(reconstructed["id"], "0: view_0.png", 5000, 1, "[]", "depth", api_name="/measure_point")


# -------------------------------------------------------------------------------------- Camera


def test_camera_option_typed_and_exif(client, server, reconstructed, tmp_path):
    outputs = client.predict(reconstructed["id"], "manual", 300, "px", *VIEW, api_name="/apply_camera")
    summary, new_id = outputs[1], outputs[4]
    assert "typed (300 px) focal length" in summary and "does not take intrinsics" in summary
    typed = wait_stored(client, server, new_id)
    assert typed.info["intrinsics_source"] == "manual" and typed.predicted_intrinsics is not None
    np.testing.assert_allclose(typed.intrinsics_at_original_resolution()[:, 0, 0], 300, rtol=1e-5)
    with pytest.raises(AppError, match="no focal length in their EXIF"):  # PNGs have none
        client.predict(reconstructed["id"], "exif", None, "px", *VIEW, api_name="/apply_camera")

    photos = []
    for index, source in enumerate(sorted(Path(reconstructed["gallery"][0]["image"]).parent.glob("input-*.jpg"))[:2]):
        exif = Image.Exif()
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.FocalLengthIn35mmFilm] = 30
        path = tmp_path / f"exif_{index}.jpg"
        Image.open(source).save(path, exif=exif)
        photos.append(path)
    outputs = client.predict([handle_file(str(p)) for p in photos], 1.0, *VIEW, api_name="/reconstruct")
    assert "EXIF" in outputs[1]
    outputs = client.predict(outputs[4], "exif", None, "px", *VIEW, api_name="/apply_camera")
    assert "re-projected with the EXIF focal length" in outputs[1]
    exif_recon = wait_stored(client, server, outputs[4])
    width, height = exif_recon.original_sizes[0]
    np.testing.assert_allclose(exif_recon.intrinsics_at_original_resolution()[:, 0, 0],
                               30 * np.hypot(width, height) / 43.267, rtol=1e-4)


# ------------------------------------------------------------------------------------- Hide sky


def test_hide_sky_hides_the_masked_points_and_stores_the_mask_once(client, server, reconstructed):
    recon_id = reconstructed["id"]
    recon = wait_stored(client, server, recon_id)
    mask = load_sky_segmenter(server.settings.sky_model).sky_masks(recon.images)
    threshold = np.percentile(recon.depth_conf, 50)
    expected = int(((recon.depth_conf >= threshold) & (recon.depth_conf > 1e-5) & ~mask).sum())
    assert 0 < expected < points_shown(reconstructed["summary"])

    _, summary, share = client.predict(recon_id, *with_sky(True), api_name="/update_view")
    assert points_shown(summary) == expected and share.endswith("&sky=1")
    attachment = server.settings.storage_dir / recon_id / "attachments" / "sky_mask.npz"
    written_at = attachment.stat().st_mtime_ns
    # Another session opens the link: the stored mask is used, nothing is computed again.
    opened = Client(server.url, verbose=False).predict(share, *VIEW, api_name="/open_shared")
    # The hide-sky checkbox is the last scene output; the upload box (the scene's frames) follows it.
    assert points_shown(opened[1]) == expected and opened[-2] is True
    assert len(opened[-1]) == len(recon.images)
    assert attachment.stat().st_mtime_ns == written_at


def test_without_the_model_the_checkbox_says_how_to_get_it(tmp_path):
    from vggt_app.sky_masks import SkyMasks
    from vggt_app.store.entries import ReconstructionStore

    masks = SkyMasks(ReconstructionStore(tmp_path, ttl_seconds=60, max_bytes=10**6), str(tmp_path / "none.onnx"))
    assert "--sky-model /path/to/skyseg.onnx" in masks.checkbox_info()


# -------------------------------------------------------------------------------------- Memory


def test_memory_line_and_one_click_thinning(client, synthetic_photos, monkeypatch):  # noqa: F811
    files = [handle_file(str(p)) for p in synthetic_photos]
    # (line, frames to thin to: 0 = nothing to thin; the button itself is no API value)
    line, target = client.predict(files, 1.0, api_name="/memory_preview")
    assert line.startswith("**3 frames** at 518×406 model input · estimated peak memory")
    assert "GiB free" in line and "fit" not in line and target == 0

    # A device with room for exactly two frames (the same estimate the guard applies).
    import vggt_core.pipeline as pipeline

    config = tiny_config()
    two = estimate_memory(config, 2, 406, 518, torch.device("cpu"), num_parameters=parameter_count(config))
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda device: two.needed_bytes + 1)
    line, target = client.predict(files, 1.0, api_name="/memory_preview")
    assert "**Will not fit**: about 2 frames would" in line and target == 2
    kept, fps = client.predict(files, 1.0, 2, api_name="/thin_inputs")
    assert [Path(k).name for k in kept] == [synthetic_photos[0].name, synthetic_photos[1].name] and fps == 1.0


def test_memory_line_offers_thinning_to_the_frame_limit():
    from vggt_app.panels.memory import memory_line, thinned_inputs
    from vggt_core.pipeline import MemoryEstimate

    fits = MemoryEstimate(8, 392, 518, "cpu", 10 * 2**30, 100 * 2**30, True, 8)
    line, target = memory_line(fits, frame_limit=6)
    assert target == 6 and "At most 6 frames per reconstruction here" in line and "100.0 GiB free" in line
    too_big = MemoryEstimate(8, 392, 518, "cuda:0", 30 * 2**30, 20 * 2**30, False, 5)
    line, target = memory_line(too_big, frame_limit=6)
    assert target == 5 and "the GPU has 20.0 GiB free" in line and "about 5 frames would" in line
    unknown = MemoryEstimate(3, 392, 518, "mps", 3 * 2**30, None, None, None)
    assert memory_line(unknown, frame_limit=6) == (
        "**3 frames** at 518×392 model input · estimated peak memory 3.0 GiB · the device reports no "
        "free-memory figure.", None)
    photos = [f"{index}.jpg" for index in range(8)]
    assert thinned_inputs(photos, 1.0, 6, 64) == (["0.jpg", "1.jpg", "2.jpg", "4.jpg", "5.jpg", "6.jpg"], 1.0)


def test_thinning_a_video_lowers_its_frame_rate(tmp_path):
    import av

    from vggt_app.panels.memory import thinned_inputs

    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(30):  # 3 s
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index * 8, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    kept, fps = thinned_inputs([str(video)], 4.0, 5, 64)
    assert kept == [str(video)] and fps < 4.0
    from vggt_core.pipeline import gather_input_frames

    assert len(gather_input_frames(kept, fps=fps)) <= 5 < len(gather_input_frames(kept, fps=fps + 0.25))


def test_measure_markers_are_visible_on_any_texture():
    """A and B are drawn as ringed discs with labels: they stand out on white, black and noise."""
    from vggt_app.panels.measure import marked_frame
    from vggt_core.synthetic import reconstruction_from_synthetic_scene, render_scene

    recon = reconstruction_from_synthetic_scene(render_scene("room", num_views=2, width=140, height=112))
    rng = np.random.default_rng(0)
    for background in (np.full_like(recon.images[0], 255), np.zeros_like(recon.images[0]),
                       rng.integers(0, 256, recon.images[0].shape, dtype=np.uint8)):
        recon.images[0] = background
        photo_x, photo_y = recon.frame_transform(0).processed_to_original([70.5, 56.5])
        marked = np.asarray(marked_frame(recon, 0, [[0, photo_x, photo_y]])).astype(int)
        changed = np.abs(marked - background.astype(int)).sum(axis=-1) > 150
        rows, cols = np.mgrid[:changed.shape[0], :changed.shape[1]]
        disc = (rows - 56) ** 2 + (cols - 70) ** 2 <= 6 ** 2
        assert changed[disc].mean() > 0.5  # the ringed disc, whatever lies under it
        assert changed[:, 77:].sum() > 20  # and its label box to the right
