"""The app through its HTTP API (gradio_client), plus unit tests of its settings and storage.

The server runs the untrained ``random-tiny`` model: the numbers it shows are meaningless, but
every code path of a real run (inputs, model, storage, views, exports, share links, errors) is
exercised.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
import trimesh
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app
import gradio
import torch
import vggt_app.errors
import vggt_app.renderer
import vggt_app.runtime.models
import vggt_app.share_links
import vggt_app.store.derived_cache
import vggt_app.store.entries
import vggt_app.view_controls
import vggt_core
import vggt_core.filtering
from app_fixtures import TEST_MAX_FRAMES, running_app, synthetic_photos  # noqa: F401 (fixtures)
from vggt_core.reconstruction import Reconstruction
from vggt_app.store.entries import is_valid_reconstruction_id
from vggt_core.synthetic import render_scene

REPO_ROOT = Path(__file__).resolve().parent.parent

# Default view controls, in the order of the endpoints' inputs after the files/id:
# confidence percentile, branch, frame, show cameras, hide black, hide white, max points.
DEFAULT_VIEW = [50, "depth", "All", True, False, False, vggt_app.share_links.DEFAULT_MAX_POINTS]


def points_shown(summary: str) -> int:
    match = re.search(r"\*\*([\d,]+) points shown\*\*", summary)
    assert match, f"no point count in summary {summary!r}"
    return int(match.group(1).replace(",", ""))


def view_with(confidence: float) -> list:
    return [confidence, *DEFAULT_VIEW[1:]]


@pytest.fixture(scope="module")
def client(running_app):  # noqa: F811
    return Client(running_app.url, verbose=False)


@pytest.fixture(scope="module")
def reconstructed(client, synthetic_photos):  # noqa: F811
    """One reconstruction of three synthetic photos, shared by the tests below."""
    files = [handle_file(str(path)) for path in synthetic_photos]
    outputs = client.predict(files, 1.0, *DEFAULT_VIEW, api_name="/reconstruct")
    return dict(zip(["glb", "summary", "depth_gallery", "frames", "id", "share", "downloads"], outputs))


# ---------------------------------------------------------------------------------------------
# Reconstructing and viewing
# ---------------------------------------------------------------------------------------------


def test_preview_lists_the_frames_before_running(client, synthetic_photos):  # noqa: F811
    gallery, status = client.predict([handle_file(str(p)) for p in synthetic_photos], 1.0, api_name="/preview")
    assert [item["caption"] for item in gallery] == [p.name for p in synthetic_photos]
    assert all(Path(item["image"]).is_file() for item in gallery)
    assert status.startswith("3 frames ready")


def test_phone_photos_in_heic_are_accepted(client, synthetic_photos, tmp_path):  # noqa: F811
    from PIL import Image

    heic = tmp_path / "IMG_0042.heic"
    Image.open(synthetic_photos[0]).save(heic, quality=90)
    gallery, status = client.predict([handle_file(str(heic)), handle_file(str(synthetic_photos[1]))], 1.0,
                                     api_name="/preview")
    assert [item["caption"] for item in gallery] == ["IMG_0042.heic", synthetic_photos[1].name]
    assert status.startswith("2 frames ready")


def write_test_video(path: Path, seconds: int, fps: int = 4) -> Path:
    """A small MPEG-4 video of the synthetic table, one rendered view per video frame."""
    scene = render_scene("table", num_views=seconds * fps, width=112, height=84, seed=2)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 112, 84, "yuv420p"
        for pixels in scene.images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.asarray(pixels), format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_video_frames_are_sampled_at_the_chosen_rate_and_capped(client, tmp_path):
    video = handle_file(str(write_test_video(tmp_path / "walk.mp4", seconds=4)))
    gallery, status = client.predict([video], 1.0, api_name="/preview")
    assert len(gallery) == 4 and "video sampled at 1 frames/s" in status
    assert [item["caption"] for item in gallery] == [f"walk_{i:04d}" for i in range(4)]

    gallery, _ = client.predict([video], 4.0, api_name="/preview")
    assert len(gallery) == TEST_MAX_FRAMES  # 16 frames at 4 fps, thinned to the server's limit

    outputs = client.predict([video], 1.0, *DEFAULT_VIEW, api_name="/reconstruct")
    assert "**4 frames**" in outputs[1]


def test_reconstruct_returns_scene_depth_maps_and_share_link(reconstructed, running_app):  # noqa: F811
    summary = reconstructed["summary"]
    assert "**3 frames** at 518×" in summary
    assert "untrained" in summary  # random-tiny results are labelled as meaningless

    scene = trimesh.load(reconstructed["glb"], file_type="glb", force="scene")
    clouds = [g for g in scene.geometry.values() if isinstance(g, trimesh.PointCloud)]
    frustums = [name for name in scene.geometry if name.startswith("camera_")]
    assert len(clouds) == 1 and len(clouds[0].vertices) == points_shown(summary) > 0
    assert len(frustums) == 3

    # Input, depth, confidence and normal image per view, in view order.
    captions = [item["caption"] for item in reconstructed["depth_gallery"]]
    assert captions[:4] == ["0: view_0.png · input", "0: view_0.png · depth", "0: view_0.png · confidence",
                            "0: view_0.png · normal"]
    assert len(captions) == 12

    assert reconstructed["frames"]["choices"][0][0] == "All"
    assert [choice[0] for choice in reconstructed["frames"]["choices"][1:]] == [
        "0: view_0.png", "1: view_1.png", "2: view_2.png"]

    recon_id = reconstructed["id"]
    assert is_valid_reconstruction_id(recon_id)
    assert reconstructed["share"]["value"] == f"{running_app.url.rstrip('/')}/?r={recon_id}"
    # Durable before the page got its link: the files, manifest last, are already complete.
    stored = Path(running_app.settings.storage_dir) / recon_id
    assert (stored / "reconstruction.npz").is_file() and (stored / "metadata.json").is_file()


def test_raising_the_confidence_threshold_shows_fewer_points(client, reconstructed):
    glb_path, summary, link = client.predict(reconstructed["id"], *view_with(90), api_name="/update_view")
    assert points_shown(summary) < points_shown(reconstructed["summary"])
    scene = trimesh.load(glb_path, file_type="glb", force="scene")
    assert len(scene.geometry["points"].vertices) == points_shown(summary)
    assert link == reconstructed["share"]["value"] + "&conf=90"  # the link follows the view


def test_view_options_change_the_scene_without_rerunning(client, reconstructed):
    one_frame = [50, "depth", "1: view_1.png", False, False, False, vggt_app.share_links.DEFAULT_MAX_POINTS]
    glb_path, summary, _ = client.predict(reconstructed["id"], *one_frame, api_name="/update_view")
    scene = trimesh.load(glb_path, file_type="glb", force="scene")
    assert not [name for name in scene.geometry if name.startswith("camera_")]  # cameras hidden
    assert 0 < points_shown(summary) < points_shown(reconstructed["summary"])

    capped = [0, "point", "All", True, False, False, 20_000]
    _, summary, _ = client.predict(reconstructed["id"], *capped, api_name="/update_view")
    assert points_shown(summary) == 20_000
    assert "point map branch" in summary


def test_downloads_load_back(client, reconstructed, tmp_path):
    files = client.predict(reconstructed["id"], *DEFAULT_VIEW, api_name="/export")
    by_name = {Path(f).name: Path(f) for f in files}
    assert set(by_name) == {"scene.glb", "points.ply", "colmap.zip", "reconstruction.npz", "depth_maps.zip"}
    expected_points = points_shown(reconstructed["summary"])

    glb = trimesh.load(by_name["scene.glb"], file_type="glb", force="scene")
    assert len(glb.geometry["points"].vertices) == expected_points
    ply = trimesh.load(by_name["points.ply"])
    assert isinstance(ply, trimesh.PointCloud) and len(ply.vertices) == expected_points

    with zipfile.ZipFile(by_name["colmap.zip"]) as archive:
        archive.extractall(tmp_path / "colmap")
    model_dir = next(p.parent for p in (tmp_path / "colmap").rglob("cameras.bin"))
    import pycolmap

    model = pycolmap.Reconstruction(str(model_dir))
    assert model.num_images() == 3 and model.num_cameras() == 3 and model.num_points3D() > 0

    recon = Reconstruction.load(by_name["reconstruction.npz"])
    assert recon.num_frames == 3
    assert recon.frame_names == ["view_0.png", "view_1.png", "view_2.png"]


# ---------------------------------------------------------------------------------------------
# Share links
# ---------------------------------------------------------------------------------------------


def test_share_link_reopens_the_same_scene_in_a_new_session(running_app, reconstructed):  # noqa: F811
    fresh_client = Client(running_app.url, verbose=False)  # another browser, another session
    for link_or_id in (reconstructed["id"], reconstructed["share"]["value"]):
        outputs = fresh_client.predict(link_or_id, *DEFAULT_VIEW, api_name="/open_shared")
        glb_path, summary, gallery, frames, recon_id = outputs[:5]
        assert recon_id == reconstructed["id"]
        assert summary == reconstructed["summary"]
        assert len(gallery) == 12 and frames == reconstructed["frames"]
        scene = trimesh.load(glb_path, file_type="glb", force="scene")
        assert len(scene.geometry["points"].vertices) == points_shown(summary)


def test_a_share_link_carries_the_view_it_was_copied_from(client, running_app, reconstructed):  # noqa: F811
    view = [0, "point", "1: view_1.png", False, False, False, 20_000]
    _, summary, link = client.predict(reconstructed["id"], *view, api_name="/update_view")
    assert link == reconstructed["share"]["value"] + "&conf=0&branch=point&frame=1&cameras=0&points=20000"

    # Someone else opens it with the page's defaults in their controls: the link's view wins.
    outputs = Client(running_app.url, verbose=False).predict(link, *DEFAULT_VIEW, api_name="/open_shared")
    glb_path, opened_summary, _, frames, recon_id, share = outputs[:6]
    assert recon_id == reconstructed["id"] and share["value"] == link
    assert opened_summary == summary and frames["value"] == "1: view_1.png"
    assert outputs[7:14] == (0, "point", False, False, False, 20_000, False)  # the other controls (last: hide sky)
    # The upload box gets the scene's frames, named as they were, so it can be run again.
    assert [Path(item).name for item in outputs[14]] == ["view_0.jpg", "view_1.jpg", "view_2.jpg"]
    from PIL import Image

    assert Image.open(outputs[14][1]).size[0] == 518  # the model-input frame
    scene = trimesh.load(glb_path, file_type="glb", force="scene")
    assert not [name for name in scene.geometry if name.startswith("camera_")]


def test_invalid_view_settings_in_a_link_fall_back_to_defaults(client, reconstructed):
    link = reconstructed["share"]["value"] + "&conf=250&branch=magic&frame=7&cameras=yes&points=12345"
    outputs = client.predict(link, *DEFAULT_VIEW, api_name="/open_shared")
    # The scene opens with the defaults in place of the invalid settings; the valid one applies.
    assert points_shown(outputs[1]) == 12_345 and "depth branch" in outputs[1]
    assert outputs[3]["value"] == "All" and outputs[7:14] == (50, "depth", True, False, False, 12_345, False)
    assert outputs[5]["value"] == reconstructed["share"]["value"] + "&points=12345"


@pytest.mark.parametrize("bad_id", ["../etc", "../../etc/passwd", "abc", "x" * 200,
                                    "A1b2C3d4E5f6G7h8I9j0K1l2", "", "%2e%2e%2fetc"])
def test_unknown_or_malformed_ids_get_a_friendly_message(client, bad_id):
    with pytest.raises(AppError, match="invalid or has expired"):
        client.predict(bad_id, *DEFAULT_VIEW, api_name="/open_shared")


# ---------------------------------------------------------------------------------------------
# Errors are messages
# ---------------------------------------------------------------------------------------------


def reconstruct_error(client, paths: list[Path]) -> str:
    with pytest.raises(AppError) as raised:
        client.predict([handle_file(str(p)) for p in paths], 1.0, *DEFAULT_VIEW, api_name="/reconstruct")
    message = str(raised.value)
    assert "Traceback" not in message
    return message


def preview_of(client, paths: list[Path]) -> tuple[list, str]:
    return client.predict([handle_file(str(p)) for p in paths], 1.0, api_name="/preview")


def test_a_text_file_named_png_is_left_out_by_name_and_the_good_photos_reconstruct(client, synthetic_photos,  # noqa: F811
                                                                                    tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_text("this is not an image")
    gallery, status = preview_of(client, [synthetic_photos[0], fake, synthetic_photos[1]])
    assert len(gallery) == 2 and "2 frames ready" in status  # the good frames only
    assert "Left out 1 file: holiday.png (not a readable image file" in status
    assert str(tmp_path) not in status and "Errno" not in status  # the file's own name, a sentence
    outputs = client.predict([handle_file(str(p)) for p in (synthetic_photos[0], fake, synthetic_photos[1])], 1.0,
                             *DEFAULT_VIEW, api_name="/reconstruct")
    assert "**2 frames**" in outputs[1]
    message = reconstruct_error(client, [fake])  # nothing usable: the reason, by name
    assert "holiday.png" in message and "not a readable image" in message and "Nothing left" in message


def test_a_corrupt_jpeg_is_left_out_by_name(client, synthetic_photos, tmp_path):  # noqa: F811
    good = tmp_path / "good.jpg"
    from PIL import Image

    Image.fromarray(np.asarray(render_scene("table", 1, 112, 84).images[0])).save(good, quality=90)
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 3])  # cut off mid-scan
    gallery, status = preview_of(client, [synthetic_photos[0], corrupt])
    assert len(gallery) == 1 and "broken.jpg (not a readable image" in status
    message = reconstruct_error(client, [corrupt])
    assert "broken.jpg" in message and "not a readable image" in message


def test_an_image_smaller_than_a_patch_is_left_out_by_name(client, synthetic_photos, tmp_path):  # noqa: F811
    from PIL import Image

    tiny = tmp_path / "icon.png"
    Image.new("RGB", (20, 10), "red").save(tiny)
    gallery, status = preview_of(client, [synthetic_photos[0], tiny])
    assert len(gallery) == 1 and "icon.png" in status and "20x10" in status and "at least 14 pixels" in status
    message = reconstruct_error(client, [tiny])
    assert "icon.png" in message and "20x10" in message and "at least 14 pixels" in message


def test_a_video_without_frames_is_refused(client, tmp_path):
    video = tmp_path / "empty.avi"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    message = reconstruct_error(client, [video])
    assert "empty.avi" in message and "no decodable frames" in message

    # The preview shows the same message instead of frames, and the page stays usable.
    gallery, status = client.predict([handle_file(str(video))], 1.0, api_name="/preview")
    assert gallery == [] and "no decodable frames" in status


def test_too_many_photos_are_refused_with_the_limit(client, synthetic_photos, tmp_path):  # noqa: F811
    photos = [synthetic_photos[i % 3] for i in range(TEST_MAX_FRAMES + 1)]
    copies = []
    for index, source in enumerate(photos):
        copy = tmp_path / f"photo_{index}.png"
        copy.write_bytes(source.read_bytes())
        copies.append(copy)
    message = reconstruct_error(client, copies)
    assert f"{TEST_MAX_FRAMES + 1} photos were given" in message and f"at most {TEST_MAX_FRAMES}" in message


def test_frames_that_do_not_fit_in_memory_say_how_many_would(client, synthetic_photos, monkeypatch):  # noqa: F811
    import vggt_core.pipeline

    # The server runs in this process: pretend the device has almost no memory left.
    monkeypatch.setattr(vggt_core.pipeline, "available_memory_bytes", lambda device: 60 * 2 ** 20)
    message = reconstruct_error(client, synthetic_photos)
    assert re.search(r"3 frames at \d+x\d+ do not fit in the memory .*About \d+ frames would fit", message), message
    assert "fewer photos" in message


def test_reconstruct_without_files_asks_for_some(client):
    with pytest.raises(AppError, match="Add some photos or a video"):
        client.predict([], 1.0, *DEFAULT_VIEW, api_name="/reconstruct")


def test_missing_weights_message_says_how_to_pass_a_checkpoint(tmp_path):
    models = vggt_app.runtime.models.ModelProvider(str(tmp_path / "no-such-model.pt"))
    handler = vggt_app.errors.show_user_errors(lambda: models.get())
    with pytest.raises(gradio.Error) as raised:
        handler()
    assert "--checkpoint /path/to/model.pt" in raised.value.message
    assert not models.is_loaded


@pytest.mark.parametrize("on_a_space", [False, True])
def test_on_a_space_weights_are_read_on_the_cpu_and_the_model_run_gets_a_gpu(monkeypatch, on_a_space):
    import types

    granted = []

    def fake_gpu(duration):
        def decorate(function):
            granted.append(duration)
            return function
        return decorate

    # Off Spaces the import fails; on a Space it finds the ``spaces`` package.
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=fake_gpu) if on_a_space else None)
    asked_devices = []

    def fake_load_model(source, device=None):
        asked_devices.append(device)
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(vggt_app.runtime.models, "load_model", fake_load_model)
    vggt_app.runtime.models.ModelProvider("facebook/VGGT-1B", device=None).get()
    # ZeroGPU forbids touching CUDA outside the GPU call: on a Space the weights are read onto
    # the CPU; elsewhere the loader picks the best device itself.
    assert asked_devices == (["cpu"] if on_a_space else [None])
    vggt_app.runtime.models.on_zero_gpu(lambda: None)
    assert granted == ([vggt_app.runtime.models.ZERO_GPU_DURATION_SECONDS] if on_a_space else [])


def test_unexpected_errors_become_a_generic_message(caplog):
    def broken():
        raise ZeroDivisionError("internal detail")

    with pytest.raises(gradio.Error) as raised:
        vggt_app.errors.show_user_errors(broken)()
    assert raised.value.message == vggt_app.errors.GENERIC_ERROR_MESSAGE
    assert "internal detail" not in raised.value.message
    assert "ZeroDivisionError" in caplog.text  # logged for the operator


def test_user_file_names_in_messages_are_not_html():
    def refuse_file():
        raise vggt_core.InputError("<img src=x onerror=alert(1)>.png: not a readable image file")

    with pytest.raises(gradio.Error) as raised:
        vggt_app.errors.show_user_errors(refuse_file)()
    assert "<img" not in raised.value.message and "&lt;img" in raised.value.message


# ---------------------------------------------------------------------------------------------
# Rendering views and pruning at start-up
# ---------------------------------------------------------------------------------------------


def test_renderer_reuses_views_and_keeps_derived_files_under_the_cap(tmp_path, small_reconstruction):
    stored = vggt_app.store.entries.StoredReconstruction("A" * 24, small_reconstruction, {"created_at": 0.0})
    settings = [vggt_app.view_controls.view_settings_from_values({"confidence": conf, "branch": "depth", "frame": "All", "show_cameras": True, "max_points": 1000}, num_frames=2)
                for conf in (10, 50, 90, 95)]
    probe = vggt_app.renderer.ViewRenderer(tmp_path / "probe").view(stored, settings[0])
    view_bytes = probe.glb_path.stat().st_size
    # Room for two views; files handed out are protected for serve_grace_s (0 here).
    renderer = vggt_app.renderer.ViewRenderer(tmp_path / "cache", max_bytes=int(2.5 * view_bytes), serve_grace_s=0)
    first = renderer.view(stored, settings[0])
    assert renderer.view(stored, settings[0]) == first  # cached, not re-rendered
    mtime = first.glb_path.stat().st_mtime_ns
    for setting in settings[1:]:
        renderer.view(stored, setting)
        assert renderer.cache.total_bytes <= renderer.cache.max_bytes
    assert not first.glb_path.exists()  # least recently used out
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert on_disk == renderer.cache.total_bytes <= int(2.5 * view_bytes)
    again = renderer.view(stored, settings[0])  # re-rendered on demand
    assert again.glb_path.is_file() and again.glb_path.stat().st_mtime_ns >= mtime


def test_a_view_being_served_is_not_evicted(tmp_path, small_reconstruction):
    stored = vggt_app.store.entries.StoredReconstruction("A" * 24, small_reconstruction, {"created_at": 0.0})
    settings = [vggt_app.view_controls.view_settings_from_values({"confidence": conf, "branch": "depth", "frame": "All", "show_cameras": True, "max_points": 1000}, num_frames=2)
                for conf in (10, 50, 90)]
    sizes = [vggt_app.renderer.ViewRenderer(tmp_path / "probe", max_bytes=10**9).view(stored, setting)
             .glb_path.stat().st_size for setting in settings]
    # Over the cap, but within twice the cap (the most the grace may take the folder to).
    renderer = vggt_app.renderer.ViewRenderer(tmp_path / "cache", max_bytes=sum(sizes) // 2 + 1, serve_grace_s=30)
    served = [renderer.view(stored, setting) for setting in settings]
    # Each was just handed to the web server, which fetches it moments later: all kept for now.
    assert renderer.cache.total_bytes > renderer.cache.max_bytes
    assert all(view.glb_path.is_file() for view in served)
    later = time.monotonic() + 31
    renderer.cache.clock = lambda: later  # the web server has fetched them by now
    renderer.cache.evict()
    assert renderer.cache.total_bytes <= renderer.cache.max_bytes and not served[0].glb_path.is_file()


def test_download_bundles_are_refused_rather_than_overfill_the_cap(tmp_path, small_reconstruction):
    store = vggt_app.store.entries.ReconstructionStore(tmp_path / "store", ttl_seconds=3600, max_bytes=10**9)
    recon_id = store.save(small_reconstruction)
    stored = store.load(recon_id)
    renderer = vggt_app.renderer.ViewRenderer(tmp_path / "cache", max_bytes=1)
    settings = [vggt_app.view_controls.view_settings_from_values({"confidence": conf, "branch": "depth", "frame": "All", "show_cameras": True, "max_points": 1000}, num_frames=2)
                for conf in (10, 50)]
    copy_npz = functools.partial(store.copy_npz, recon_id)
    renderer.downloads(stored, copy_npz, settings[0])  # one bundle may go over a full cap ...
    with pytest.raises(vggt_app.store.derived_cache.CacheFullError, match="try again in a minute"):
        renderer.downloads(stored, copy_npz, settings[1])  # ... a second one waits for room
    assert renderer.downloads(stored, copy_npz, settings[0])  # the ready one is still served
    later = time.monotonic() + renderer.DOWNLOAD_GRACE_S + 1
    renderer.cache.clock = lambda: later
    assert renderer.downloads(stored, copy_npz, settings[1])


def test_parallel_identical_downloads_build_each_file_once(tmp_path, small_reconstruction):
    import threading

    store = vggt_app.store.entries.ReconstructionStore(tmp_path / "store", ttl_seconds=3600, max_bytes=10**9)
    recon_id = store.save(small_reconstruction)
    stored = store.load(recon_id)
    renderer = vggt_app.renderer.ViewRenderer(tmp_path / "cache")
    settings = vggt_app.view_controls.view_settings_from_values({"confidence": 50, "branch": "depth", "frame": "All", "show_cameras": True, "max_points": 1000}, num_frames=2)
    results, errors = [], []

    def download():
        try:
            results.append(renderer.downloads(stored, lambda path: store.copy_npz(recon_id, path), settings))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=download) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and len(results) == 6 and all(files == results[0] for files in results)
    assert [Path(f).name for f in results[0]] == ["scene.glb", "points.ply", "colmap.zip", "reconstruction.npz",
                                               "depth_maps.zip"]
    assert Reconstruction.load(results[0][3]).num_frames == 2
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith(".partial-")]
    assert leftovers == []


def test_pruning_runs_when_the_app_starts(tmp_path, small_reconstruction):
    old_id = vggt_app.store.entries.ReconstructionStore(tmp_path, ttl_seconds=1, max_bytes=10**9, clock=lambda: 0.0).save(
        small_reconstruction)
    app.build_app(app.AppSettings(checkpoint=vggt_core.RANDOM_TINY_CHECKPOINT, storage_dir=tmp_path,
                                  storage_ttl_hours=1.0))
    assert not (tmp_path / old_id).exists()  # created at t=0, long expired now


# ---------------------------------------------------------------------------------------------
# Settings and command line
# ---------------------------------------------------------------------------------------------

ALL_FLAGS_AND_VARIABLES = {
    "--checkpoint": "VGGT_CHECKPOINT", "--device": "VGGT_DEVICE", "--devices": "VGGT_DEVICES",
    "--host": "GRADIO_SERVER_NAME",
    "--port": "GRADIO_SERVER_PORT", "--share": "VGGT_SHARE", "--max-frames": "VGGT_MAX_FRAMES",
    "--video-fps": "VGGT_VIDEO_FPS", "--storage-dir": "VGGT_STORAGE_DIR",
    "--storage-ttl-hours": "VGGT_STORAGE_TTL_HOURS", "--storage-max-mb": "VGGT_STORAGE_MAX_MB",
    "--public-url": "VGGT_PUBLIC_URL", "--cache-max-mb": "VGGT_CACHE_MAX_MB",
    "--max-upload-mb": "VGGT_MAX_UPLOAD_MB", "--max-total-upload-mb": "VGGT_MAX_TOTAL_UPLOAD_MB",
}


def test_help_lists_every_flag_and_variable():
    result = subprocess.run([sys.executable, "app.py", "--help"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())  # undo argparse's line wrapping
    for flag, variable in ALL_FLAGS_AND_VARIABLES.items():
        assert flag in help_text and variable in help_text, flag


def test_importing_the_app_starts_nothing():
    code = "import app, threading; assert threading.active_count() == 1, threading.enumerate(); print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_settings_come_from_environment_and_flags_override_them(tmp_path):
    environ = {"VGGT_CHECKPOINT": "/models/vggt.pt", "VGGT_DEVICE": "cpu", "GRADIO_SERVER_NAME": "0.0.0.0",
               "GRADIO_SERVER_PORT": "9000", "VGGT_SHARE": "1", "VGGT_MAX_FRAMES": "12",
               "VGGT_VIDEO_FPS": "2.5", "VGGT_STORAGE_DIR": str(tmp_path), "VGGT_STORAGE_TTL_HOURS": "6",
               "VGGT_STORAGE_MAX_MB": "100", "VGGT_PUBLIC_URL": "https://example.org/vggt/"}
    settings = app.parse_settings([], environ)
    assert settings == app.AppSettings(checkpoint="/models/vggt.pt", device="cpu", host="0.0.0.0", port=9000,
                                       share=True, max_frames=12, video_fps=2.5, storage_dir=tmp_path,
                                       storage_ttl_hours=6.0, storage_max_mb=100.0,
                                       public_url="https://example.org/vggt/")
    overridden = app.parse_settings(["--max-frames", "3", "--no-share", "--checkpoint", "random-tiny"], environ)
    assert (overridden.max_frames, overridden.share, overridden.is_untrained) == (3, False, True)

    defaults = app.parse_settings([], {})
    assert defaults.checkpoint == "facebook/VGGT-1B" and defaults.device is None and not defaults.share


@pytest.mark.parametrize("environ, flag", [({"VGGT_MAX_FRAMES": "lots"}, "--max-frames"),
                                           ({"VGGT_MAX_FRAMES": "0"}, "--max-frames"),
                                           ({"GRADIO_SERVER_PORT": "70000"}, "--port"),
                                           ({"VGGT_STORAGE_TTL_HOURS": "-1"}, "--storage-ttl-hours"),
                                           ({"VGGT_DEVICE": "gpu0"}, "--device")])
def test_bad_settings_are_refused_with_a_message(environ, flag, capsys):
    with pytest.raises(SystemExit):
        app.parse_settings([], environ)
    assert f"error: argument {flag}:" in capsys.readouterr().err


@pytest.mark.parametrize("settings", [
    vggt_app.share_links.DEFAULT_VIEW_SETTINGS,
    vggt_core.filtering.ViewSettings(confidence_threshold=12.5, branch="point", frame_index=0, show_cameras=False,
                     filter_black_background=True, filter_white_background=True, max_points=30_000),
])
def test_view_settings_survive_a_share_link(settings):
    from urllib.parse import parse_qsl, urlsplit

    link = vggt_app.share_links.share_link("https://example.org/vggt/?old=1#top", "A" * 24, settings)
    query = dict(parse_qsl(urlsplit(link).query))
    assert link.startswith("https://example.org/vggt/?r=" + "A" * 24)
    restored, ignored = vggt_app.share_links.view_settings_from_query(query, vggt_app.share_links.DEFAULT_VIEW_SETTINGS, num_frames=2)
    assert restored == settings and ignored == []


def test_share_link_helpers():
    assert vggt_app.share_links.share_link("https://host/app/?r=old#x", "ID") == "https://host/app/?r=ID"
    assert vggt_app.share_links.reconstruction_id_from_text("https://host/app/?r=abc&x=1") == "abc"
    assert vggt_app.share_links.reconstruction_id_from_text("  abc  ") == "abc"
    assert vggt_app.share_links.reconstruction_id_from_text("https://host/app/") == ""
