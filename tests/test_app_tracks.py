"""The app's "Refine cameras with bundle adjustment" option and its Tracks view, through gradio_client."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
import vggt_app.renderer
import vggt_app.runtime.models
import vggt_app.service
import vggt_app.share_links
import vggt_core
from app_fixtures import free_port, serve_for_module, synthetic_photos  # noqa: F401 (fixtures)
from vggt_app.panels.tracks import MAX_TRACK_POINTS
from vggt_core.reconstruction import Reconstruction, reconstruction_from_synthetic_scene
from vggt_app.store.entries import ReconstructionStore
from vggt_core.synthetic import render_scene
from vggt_core.track_drawing import marker_radius, track_colors

VIEW = [50, "depth", "All", True, False, False, vggt_app.share_links.DEFAULT_MAX_POINTS, False]
SCENE_OUTPUTS = 14  # see scene_outputs in app.build_app
FRAMES = ["0: view_0.png", "1: view_1.png", "2: view_2.png"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Few refine tracks: the tiny model tracks 4,096 points on a CPU in ~50 s.
    yield from serve_for_module(tmp_path_factory, "tracks-storage", refine_tracks=128)


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def reconstructed(client, synthetic_photos):  # noqa: F811
    # Without the new last input: calls made before the option existed keep working.
    outputs = client.predict([handle_file(str(p)) for p in synthetic_photos], 1.0, *VIEW, api_name="/reconstruct")
    return dict(zip(["glb", "summary", "gallery", "frames", "id", "share"], outputs))


def stored(server, recon_id: str) -> tuple[Reconstruction, dict]:
    """What a restarted server reads for ``recon_id`` (a derived entry rebuilt from its parent)."""
    from vggt_app.store.entries import ReconstructionStore

    folder = server.settings.storage_dir / recon_id
    reloaded = ReconstructionStore(server.settings.storage_dir, ttl_seconds=3600, max_bytes=10**12).load(recon_id)
    return reloaded.reconstruction, json.loads((folder / "metadata.json").read_text())


def frame_pictures(gallery) -> list[np.ndarray]:
    return [np.asarray(Image.open(item["image"]["path"] if isinstance(item["image"], dict) else item["image"])
                       .convert("RGB")) for item in gallery]


# ------------------------------------------------------------------------------- Refine option


def test_refine_option_shows_the_report_and_the_link_says_refined(client, server, synthetic_photos):  # noqa: F811
    outputs = client.predict([handle_file(str(p)) for p in synthetic_photos], 1.0, *VIEW, True,
                             api_name="/reconstruct")
    summary, recon_id, share = outputs[1], outputs[4], outputs[5]["value"]
    recon, metadata = stored(server, recon_id)
    report = metadata["bundle_adjustment"]
    assert recon.tracks is not None and recon.tracks.shape[:2] == (3, 128)  # tracked (--refine-tracks 128)
    # The Tracks view of the scene draws 64 of its tracks on every frame.
    view = client.predict(recon_id, "0: view_0.png", "", api_name="/tracks_view")
    assert len(view[4]) == 3 and "128 tracks, 64 of them drawn" in view[3]
    if report["refined"]:
        # The summary gives the report's own numbers, and the link says the cameras were refined.
        assert recon.info["cameras_refined"] is True and recon.info["bundle_adjustment"] == report
        assert f"{report['tracks_used']:,} tracks used" in summary
        assert f"{report['tracks_rejected']:,} rejected" in summary
        assert (f"{report['mean_error_before_px']:.2f} px → {report['mean_error_after_px']:.2f} px" in summary)
        assert "refined=1" in share
        opened = Client(server.url, verbose=False).predict(share, *VIEW, api_name="/open_shared")
        assert "Cameras refined by bundle adjustment" in opened[1] and opened[4] == recon_id
    else:
        # An untrained model's tracks may be unusable: the scene is kept, unrefined, and says why.
        assert report["message"] and f"not applied: {report['message']}" in summary
        assert "refined=1" not in share and not recon.info.get("cameras_refined")


def test_a_refined_scene_opened_from_its_link_says_so(client, server):
    from vggt_core.bundle_adjustment import bundle_adjust

    scene = render_scene("room", num_views=3, width=120, height=90, seed=2)
    truth = reconstruction_from_synthetic_scene(scene)
    height, width = truth.image_size_hw
    ys, xs = np.mgrid[8:height - 8:6, 8:width - 8:6]
    world = truth.points_from_depth[0][ys.ravel(), xs.ravel()].astype(np.float64)
    tracks = []
    for frame in range(truth.num_frames):
        camera = world @ truth.extrinsics[frame, :, :3].T + truth.extrinsics[frame, :, 3]
        pixels = camera @ truth.intrinsics[frame].T
        tracks.append(pixels[:, :2] / pixels[:, 2:3])
    truth.tracks = np.stack(tracks).astype(np.float32)
    truth.track_visibility = np.ones(truth.tracks.shape[:2], dtype=np.float32)
    truth.track_confidence = np.ones(truth.tracks.shape[:2], dtype=np.float32)
    truth.query_points = truth.tracks[0].copy()
    truth.track_query_frames = np.zeros(truth.tracks.shape[1], dtype=np.int64)
    result = bundle_adjust(truth)
    assert result.report.refined, result.report.message
    store = ReconstructionStore(server.settings.storage_dir, ttl_seconds=3600, max_bytes=10**9)
    recon_id = store.save(result.reconstruction, {})
    store.close()
    opened = client.predict(recon_id, *VIEW, api_name="/open_shared")
    assert "Cameras refined by bundle adjustment" in opened[1]
    assert f"{result.report.tracks_used:,} tracks used" in opened[1]
    assert opened[5]["value"].endswith("refined=1")
    # Old links (without the marker) and hand-made ones keep opening the same scene.
    assert client.predict(f"http://x/?r={recon_id}", *VIEW, api_name="/open_shared")[4] == recon_id


def test_refining_has_its_own_progress_stages_in_order(tmp_path, synthetic_photos):  # noqa: F811
    settings = app.AppSettings(checkpoint=vggt_core.RANDOM_TINY_CHECKPOINT, storage_dir=tmp_path, refine_tracks=16)
    store = app.open_store(settings)
    service = vggt_app.service.ReconstructionService(settings, store, vggt_app.renderer.ViewRenderer(tmp_path / "derived"),
                                        vggt_app.runtime.models.ModelProvider(settings.checkpoint))
    stages = []
    recon_id = service.start_reconstruction([str(p) for p in synthetic_photos[:2]], 1.0,
                                            lambda fraction, desc: stages.append((fraction, desc)), refine=True).wait()
    store.close()
    fractions = [fraction for fraction, _ in stages]
    assert fractions == sorted(fractions)  # the bar never goes back
    text = [desc.lower() for _, desc in stages]
    first = {word: next(i for i, desc in enumerate(text) if word in desc) for word in ("track", "bundle adjustment")}
    assert first["track"] < first["bundle adjustment"]
    assert "bundle_adjustment" in json.loads((tmp_path / recon_id / "metadata.json").read_text())


# --------------------------------------------------------------------------------- Tracks view


def test_clicked_points_are_tracked_and_drawn_on_every_frame(client, server, reconstructed):
    recon_id = reconstructed["id"]
    frames = FRAMES
    _, points, note = client.predict(recon_id, frames[0], 100, 150, "[]", api_name="/tracks_point")
    assert "1 point picked" in note
    image, points, note = client.predict(recon_id, frames[1], 300.7, 80.2, points, api_name="/tracks_point")
    assert json.loads(points) == [[0, 100.0, 150.0], [1, 300.0, 80.0]] and "2 points picked" in note
    # The picked point is marked in its track's colour, at the clicked model-input pixel.
    marked = np.asarray(Image.open(image).convert("RGB")).astype(int)
    assert np.abs(marked[80, 300] - track_colors(2)[1]).max() < 40  # lossy image format

    outputs = client.predict(recon_id, points, *VIEW, api_name="/track_points")
    assert len(outputs) == SCENE_OUTPUTS + 4
    new_id, share = outputs[4], outputs[5]["value"]
    gallery, note, points_after = outputs[SCENE_OUTPUTS:SCENE_OUTPUTS + 3]
    assert new_id != recon_id and new_id in share and points_after == "[]"
    assert "Tracked 2 points" in note and "hollow" in note
    tracked, metadata = stored(server, new_id)
    assert tracked.tracks.shape == (3, 2, 2) and tracked.track_query_frames.tolist() == [0, 1]
    # A query point lands on itself in its own frame.
    np.testing.assert_allclose(tracked.tracks[0, 0], [100, 150], atol=1.0)
    np.testing.assert_allclose(tracked.tracks[1, 1], [300, 80], atol=1.0)
    assert metadata["derived_from"] == recon_id and "tracked 2 points" in metadata["changes"][-1]
    pictures = frame_pictures(gallery)
    assert len(pictures) == 3 and all(p.shape == tracked.images[0].shape for p in pictures)
    # Each picture is its frame with the tracks drawn: changed near the markers only.
    for frame, picture in enumerate(pictures):
        changed = np.abs(picture.astype(int) - tracked.images[frame].astype(int)).max(axis=-1) > 60
        assert 0 < changed.mean() < 0.2
    # The query frame's marker (filled or hollow: an untrained model's visibility is arbitrary)
    # has the track's colour at the picked pixel (the gallery is JPEG: a tolerance).
    radius = marker_radius(*tracked.image_size_hw)
    around = pictures[0][150 - radius:150 + radius + 1, 100 - radius:100 + radius + 1].reshape(-1, 3).astype(int)
    assert (np.abs(around - track_colors(2)[0]).max(axis=1) < 40).sum() >= radius

    # Opening the new entry (its share link, another session) shows the same tracks.
    view = Client(server.url, verbose=False).predict(new_id, frames[0], "", api_name="/tracks_view")
    assert len(view[4]) == 3 and "holds 2 tracks" in view[3]


def test_automatic_points_are_tracked_from_the_chosen_frame(client, server, reconstructed):
    outputs = client.predict(reconstructed["id"], FRAMES[2], 5, *VIEW, api_name="/track_automatic")
    gallery, note = outputs[SCENE_OUTPUTS:SCENE_OUTPUTS + 2]
    tracked, _ = stored(server, outputs[4])
    assert tracked.tracks.shape == (3, 5, 2) and set(tracked.track_query_frames.tolist()) == {2}
    np.testing.assert_allclose(tracked.tracks[2], tracked.query_points, atol=1.0)
    assert "Tracked 5 points" in note and len(frame_pictures(gallery)) == 3


def test_tracks_view_errors_are_messages(client, reconstructed):
    recon_id = reconstructed["id"]
    frame = "0: view_0.png"
    with pytest.raises(AppError, match="Reconstruct something first"):
        client.predict("", "[[0, 1, 1]]", *VIEW, api_name="/track_points")
    with pytest.raises(AppError, match="Reconstruct something first"):
        client.predict("", frame, 4, *VIEW, api_name="/track_automatic")
    with pytest.raises(AppError, match="Click points on a frame first"):
        client.predict(recon_id, "[]", *VIEW, api_name="/track_points")
    with pytest.raises(AppError, match=f"between 1 and {MAX_TRACK_POINTS} automatic points"):
        client.predict(recon_id, frame, MAX_TRACK_POINTS + 1, *VIEW, api_name="/track_automatic")
    with pytest.raises(AppError, match="outside the 518×406 frame"):
        client.predict(recon_id, frame, 600, 10, "[]", api_name="/tracks_point")
    full = json.dumps([[0, float(i), 5.0] for i in range(MAX_TRACK_POINTS)])
    with pytest.raises(AppError, match=f"At most {MAX_TRACK_POINTS} points"):
        client.predict(recon_id, frame, 10, 10, full, api_name="/tracks_point")
    with pytest.raises(AppError, match="invalid or has expired"):
        client.predict("not-a-real-id", "[[0, 1, 1]]", *VIEW, api_name="/track_points")


def test_without_the_model_tracking_says_how_to_get_it(tmp_path):
    storage = tmp_path / "storage"
    store = ReconstructionStore(storage, ttl_seconds=3600, max_bytes=10**9)
    recon_id = store.save(reconstruction_from_synthetic_scene(render_scene("table", num_views=2, width=56, height=42)))
    store.close()
    settings = app.AppSettings(checkpoint=str(tmp_path / "no-such-model.pt"), port=free_port(), storage_dir=storage)
    demo = app.build_app(settings)
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=settings.port, prevent_thread_lock=True, quiet=True)
    try:
        with pytest.raises(AppError, match=re.escape("--checkpoint /path/to/model.pt")):
            Client(url, verbose=False).predict(recon_id, "0: table_000", 3, *VIEW, api_name="/track_automatic")
    finally:
        demo.close()
    assert Path(storage / recon_id / "metadata.json").exists()  # nothing lost
