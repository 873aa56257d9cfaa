"""The app through its HTTP API (gradio_client), plus unit tests of its settings and storage.

The server runs the untrained ``random-tiny`` model: the numbers it shows are meaningless, but
every code path of a real run (inputs, model, storage, views, exports, share links, errors) is
exercised.
"""

from __future__ import annotations

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
from app_fixtures import TEST_MAX_FRAMES, running_app, synthetic_photos  # noqa: F401 (fixtures)
from vggt_core.reconstruction import Reconstruction, reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene

REPO_ROOT = Path(__file__).resolve().parent.parent

# Default view controls, in the order of the endpoints' inputs after the files/id:
# confidence percentile, branch, frame, show cameras, hide black, hide white, max points.
DEFAULT_VIEW = [50, "depth", "All", True, False, False, app.DEFAULT_MAX_POINTS]


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

    # Input, depth and confidence image per view, in view order.
    captions = [item["caption"] for item in reconstructed["depth_gallery"]]
    assert captions[:3] == ["0: view_0.png · input", "0: view_0.png · depth", "0: view_0.png · confidence"]
    assert len(captions) == 9

    assert reconstructed["frames"]["choices"][0][0] == "All"
    assert [choice[0] for choice in reconstructed["frames"]["choices"][1:]] == [
        "0: view_0.png", "1: view_1.png", "2: view_2.png"]

    recon_id = reconstructed["id"]
    assert app.is_valid_reconstruction_id(recon_id)
    assert reconstructed["share"]["value"] == f"{running_app.url.rstrip('/')}/?r={recon_id}"
    # The file is written in the background after the page got its answer.
    stored = Path(running_app.settings.storage_dir) / recon_id
    deadline = time.monotonic() + 60
    while not (stored / "metadata.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (stored / "reconstruction.npz").is_file() and (stored / "metadata.json").is_file()


def test_raising_the_confidence_threshold_shows_fewer_points(client, reconstructed):
    glb_path, summary = client.predict(reconstructed["id"], *view_with(90), api_name="/update_view")
    assert points_shown(summary) < points_shown(reconstructed["summary"])
    scene = trimesh.load(glb_path, file_type="glb", force="scene")
    assert len(scene.geometry["points"].vertices) == points_shown(summary)


def test_view_options_change_the_scene_without_rerunning(client, reconstructed):
    one_frame = [50, "depth", "1: view_1.png", False, False, False, app.DEFAULT_MAX_POINTS]
    glb_path, summary = client.predict(reconstructed["id"], *one_frame, api_name="/update_view")
    scene = trimesh.load(glb_path, file_type="glb", force="scene")
    assert not [name for name in scene.geometry if name.startswith("camera_")]  # cameras hidden
    assert 0 < points_shown(summary) < points_shown(reconstructed["summary"])

    capped = [0, "point", "All", True, False, False, 20_000]
    _, summary = client.predict(reconstructed["id"], *capped, api_name="/update_view")
    assert points_shown(summary) == 20_000
    assert "point map branch" in summary


def test_downloads_load_back(client, reconstructed, tmp_path):
    files = client.predict(reconstructed["id"], *DEFAULT_VIEW, api_name="/export")
    by_name = {Path(f).name: Path(f) for f in files}
    assert set(by_name) == {"scene.glb", "points.ply", "colmap.zip", "reconstruction.npz"}
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
        assert len(gallery) == 9 and frames == reconstructed["frames"]
        scene = trimesh.load(glb_path, file_type="glb", force="scene")
        assert len(scene.geometry["points"].vertices) == points_shown(summary)


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


def test_a_text_file_named_png_is_refused_by_name(client, synthetic_photos, tmp_path):  # noqa: F811
    fake = tmp_path / "holiday.png"
    fake.write_text("this is not an image")
    message = reconstruct_error(client, [synthetic_photos[0], fake])
    assert "holiday.png" in message and "not a readable image" in message


def test_a_corrupt_jpeg_is_refused_by_name(client, synthetic_photos, tmp_path):  # noqa: F811
    good = tmp_path / "good.jpg"
    from PIL import Image

    Image.fromarray(np.asarray(render_scene("table", 1, 112, 84).images[0])).save(good, quality=90)
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 3])  # cut off mid-scan
    message = reconstruct_error(client, [synthetic_photos[0], corrupt])
    assert "broken.jpg" in message and "not a readable image" in message


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


def test_reconstruct_without_files_asks_for_some(client):
    with pytest.raises(AppError, match="Add some photos or a video"):
        client.predict([], 1.0, *DEFAULT_VIEW, api_name="/reconstruct")


def test_missing_weights_message_says_how_to_pass_a_checkpoint(tmp_path):
    models = app.ModelProvider(str(tmp_path / "no-such-model.pt"))
    handler = app.show_user_errors(lambda: models.get())
    with pytest.raises(app.gr.Error) as raised:
        handler()
    assert "--checkpoint /path/to/model.pt" in raised.value.message
    assert not models.is_loaded


def test_unexpected_errors_become_a_generic_message(caplog):
    def broken():
        raise ZeroDivisionError("internal detail")

    with pytest.raises(app.gr.Error) as raised:
        app.show_user_errors(broken)()
    assert raised.value.message == app.GENERIC_ERROR_MESSAGE
    assert "internal detail" not in raised.value.message
    assert "ZeroDivisionError" in caplog.text  # logged for the operator


def test_user_file_names_in_messages_are_not_html():
    def refuse_file():
        raise app.InputError("<img src=x onerror=alert(1)>.png: not a readable image file")

    with pytest.raises(app.gr.Error) as raised:
        app.show_user_errors(refuse_file)()
    assert "<img" not in raised.value.message and "&lt;img" in raised.value.message


# ---------------------------------------------------------------------------------------------
# Storage: ids, expiry, size limit
# ---------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def small_reconstruction() -> Reconstruction:
    return reconstruction_from_synthetic_scene(render_scene("table", num_views=2, width=56, height=42))


def test_store_round_trip_and_unguessable_ids(tmp_path, small_reconstruction):
    store = app.ReconstructionStore(tmp_path, ttl_seconds=3600, max_bytes=10**9)
    ids = {store.save(small_reconstruction, {"seconds": 1.5}) for _ in range(3)}
    assert len(ids) == 3 and all(len(i) >= 22 and app.is_valid_reconstruction_id(i) for i in ids)
    recon_id = ids.pop()
    fresh_store = app.ReconstructionStore(tmp_path, ttl_seconds=3600, max_bytes=10**9)  # nothing cached
    stored = fresh_store.load(recon_id)
    np.testing.assert_array_equal(stored.reconstruction.depth, small_reconstruction.depth)
    assert stored.metadata["seconds"] == 1.5


def test_store_rejects_paths_before_touching_the_file_system(tmp_path, small_reconstruction):
    root = tmp_path / "store"
    store = app.ReconstructionStore(root, ttl_seconds=3600, max_bytes=10**9)
    # A valid reconstruction outside the store must stay unreachable.
    outside = tmp_path / "secret"
    outside.mkdir()
    small_reconstruction.save(outside / "reconstruction.npz")
    for bad in ("../secret", "..", "/etc", "secret/../secret", "a" * 21, "a" * 65, "ab cd" * 6, None, 42):
        with pytest.raises(app.ReconstructionNotFoundError, match="invalid or has expired"):
            store.load(bad)


def test_store_expires_entries_by_age(tmp_path, small_reconstruction):
    clock = FakeClock()
    store = app.ReconstructionStore(tmp_path, ttl_seconds=3600, max_bytes=10**9, clock=clock)
    old_id = store.save(small_reconstruction)
    clock.now += 1800
    young_id = store.save(small_reconstruction)
    clock.now += 1801  # the first is now 3601 s old, the second 1801 s

    with pytest.raises(app.ReconstructionNotFoundError):
        store.load(old_id)  # refused even though it is still in the memory cache
    assert not (tmp_path / old_id).exists()
    assert store.load(young_id).id == young_id

    clock.now += 3600
    assert store.prune() == [young_id]
    assert not (tmp_path / young_id).exists()


def test_store_prunes_the_oldest_entries_over_the_size_limit(tmp_path, small_reconstruction):
    clock = FakeClock()
    store = app.ReconstructionStore(tmp_path, ttl_seconds=10**6, max_bytes=10**12, clock=clock)
    ids = []
    for _ in range(4):
        ids.append(store.save(small_reconstruction))
        clock.now += 10
    entry_bytes = store.total_bytes() // 4

    store.max_bytes = int(2.5 * entry_bytes)  # room for two entries
    assert store.prune() == ids[:2]  # oldest first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ids[2:])

    store.max_bytes = 1  # even the newest does not fit, but the one being saved is kept
    newest = store.save(small_reconstruction)
    assert [p.name for p in tmp_path.iterdir()] == [newest]


def test_store_saving_in_the_background_is_usable_at_once(tmp_path, small_reconstruction):
    store = app.ReconstructionStore(tmp_path, ttl_seconds=3600, max_bytes=10**9, memory_cache_size=1)
    recon_id = store.save(small_reconstruction, background=True)
    store.save(small_reconstruction)  # pushes the first out of the one-entry memory cache
    assert store.load(recon_id).reconstruction is not None
    path = store.npz_path(recon_id)  # waits for the writer thread
    assert path == tmp_path / recon_id / "reconstruction.npz" and path.is_file()
    np.testing.assert_array_equal(Reconstruction.load(path).depth, small_reconstruction.depth)
    assert not list(tmp_path.glob(".incoming-*"))


def test_renderer_reuses_views_and_bounds_the_files_it_keeps(tmp_path, small_reconstruction):
    stored = app.StoredReconstruction("A" * 24, small_reconstruction, {"created_at": 0.0})
    renderer = app.ViewRenderer(tmp_path, max_views=2)
    settings = [app.view_settings_from_controls(conf, "depth", "All", True, False, False, 1000, num_frames=2)
                for conf in (10, 50, 90)]
    first = renderer.view(stored, settings[0])
    assert renderer.view(stored, settings[0]) is first  # cached, not re-rendered
    renderer.view(stored, settings[1])
    renderer.view(stored, settings[2])  # evicts the least recently used view
    assert not first.glb_path.exists()
    assert len(list((tmp_path / stored.id).glob("view-*.glb"))) == 2


def test_pruning_runs_when_the_app_starts(tmp_path, small_reconstruction):
    clock = FakeClock(now=0.0)
    old_id = app.ReconstructionStore(tmp_path, ttl_seconds=1, max_bytes=10**9, clock=clock).save(
        small_reconstruction)
    app.build_app(app.AppSettings(checkpoint=app.RANDOM_TINY_CHECKPOINT, storage_dir=tmp_path,
                                  storage_ttl_hours=1.0))
    assert not (tmp_path / old_id).exists()  # created at t=0, long expired now


# ---------------------------------------------------------------------------------------------
# Settings and command line
# ---------------------------------------------------------------------------------------------

ALL_FLAGS_AND_VARIABLES = {
    "--checkpoint": "VGGT_CHECKPOINT", "--device": "VGGT_DEVICE", "--host": "GRADIO_SERVER_NAME",
    "--port": "GRADIO_SERVER_PORT", "--share": "VGGT_SHARE", "--max-frames": "VGGT_MAX_FRAMES",
    "--video-fps": "VGGT_VIDEO_FPS", "--storage-dir": "VGGT_STORAGE_DIR",
    "--storage-ttl-hours": "VGGT_STORAGE_TTL_HOURS", "--storage-max-mb": "VGGT_STORAGE_MAX_MB",
    "--public-url": "VGGT_PUBLIC_URL",
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


def test_share_link_helpers():
    assert app.share_link("https://host/app/?r=old#x", "ID") == "https://host/app/?r=ID"
    assert app.reconstruction_id_from_text("https://host/app/?r=abc&x=1") == "abc"
    assert app.reconstruction_id_from_text("  abc  ") == "abc"
    assert app.reconstruction_id_from_text("https://host/app/") == ""
