"""The app's mesh view, normal maps and masks (issue 21), through gradio_client.

The scenes are the synthetic room's exact reconstruction stored in the server's store (the tiny
untrained model's depth holds no surface to fuse), opened like any share link.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import trimesh
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import vggt_app.share_links
from app_fixtures import predict_with_updates, serve_for_module
from vggt_app.store.entries import DELTA_ENTRY_FORMAT, ReconstructionStore
from vggt_core.filtering import ViewSettings, select_points
from vggt_core.reconstruction import reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene

WIDTH, HEIGHT = 168, 126
# Every pixel of the exact reconstruction is equally sure: keep them all.
VIEW = [0, "depth", "All", True, False, False, vggt_app.share_links.DEFAULT_MAX_POINTS, False]
SCENE_NAMES = ["glb", "summary", "gallery", "frames", "id", "share"]


def points_shown(summary: str) -> int:
    return int(re.search(r"\*\*([\d,]+) points shown\*\*", summary).group(1).replace(",", ""))


def store_of(server) -> ReconstructionStore:
    """The server's store as a restarted server reads it."""
    return ReconstructionStore(server.settings.storage_dir, ttl_seconds=3600, max_bytes=10**12)


def store_room(server, num_views: int) -> str:
    scene = render_scene("room", num_views=num_views, width=WIDTH, height=HEIGHT, seed=2)
    return store_of(server).save(reconstruction_from_synthetic_scene(scene), {"inputs": "synthetic room"})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve_for_module(tmp_path_factory, "surfaces-storage")


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def room_id(server) -> str:
    return store_room(server, num_views=4)


def open_scene(client, link_or_id: str, view=VIEW) -> dict:
    outputs = client.predict(link_or_id, *view, api_name="/open_shared")
    return dict(zip(SCENE_NAMES, outputs))


def frame_points(client, recon_id: str, index: int) -> int:
    """Points shown of frame ``index`` alone (``room_00<index>``)."""
    view = [VIEW[0], VIEW[1], f"{index}: room_{index:03d}", *VIEW[3:]]
    return points_shown(client.predict(recon_id, *view, api_name="/update_view")[1])


# ---- the mesh view


def test_the_viewer_shows_the_fused_mesh_with_its_cameras(client, room_id):
    points_glb, _, _ = client.predict(room_id, *VIEW, api_name="/update_view")
    points_scene = trimesh.load(points_glb, file_type="glb", force="scene")
    assert "mesh" not in points_scene.geometry and "points" in points_scene.geometry

    glb, summary, _ = client.predict(room_id, *VIEW, "mesh", "draft", api_name="/update_view")
    assert Path(glb).name.startswith("mesh-") and glb != points_glb
    scene = trimesh.load(glb, file_type="glb", force="scene")
    mesh = scene.geometry["mesh"]
    assert isinstance(mesh, trimesh.Trimesh) and len(mesh.faces) > 1000
    assert len([name for name in scene.geometry if name.startswith("camera_")]) == 4
    faces = int(re.search(r"\*\*Mesh shown\*\*: ([\d,]+) faces", summary).group(1).replace(",", ""))
    assert faces == len(mesh.faces)
    assert "draft quality" in summary

    # Without the cameras: the same mesh, no frustums; a finer quality has more faces.
    no_cameras = [*VIEW[:3], False, *VIEW[4:]]
    glb_alone, _, _ = client.predict(room_id, *no_cameras, "mesh", "draft", api_name="/update_view")
    alone = trimesh.load(glb_alone, file_type="glb", force="scene")
    assert list(alone.geometry) == ["mesh"] and len(alone.geometry["mesh"].faces) == len(mesh.faces)
    fine_glb, _, _ = client.predict(room_id, *no_cameras, "mesh", "standard", api_name="/update_view")
    assert len(trimesh.load(fine_glb, file_type="glb", force="scene").geometry["mesh"].faces) > len(mesh.faces)


def test_mesh_downloads_at_the_chosen_quality(client, room_id):
    files = client.predict(room_id, *VIEW, ["glb", "mesh", "mesh-ply"], "draft", api_name="/export")
    by_name = {Path(path).name: path for path in files}
    assert len(files) == 3 and {"mesh.glb", "mesh.ply"} <= set(by_name)
    ply = trimesh.load(by_name["mesh.ply"], file_type="ply")
    glb = trimesh.load(by_name["mesh.glb"], file_type="glb", force="scene")
    assert len(ply.faces) > 1000 and len(glb.geometry["mesh"].faces) == len(ply.faces)


def test_a_one_frame_scene_says_why_it_has_no_mesh(client, server):
    one_frame = store_room(server, num_views=1)
    with pytest.raises(AppError, match="frame"):
        client.predict(one_frame, *VIEW, "mesh", "draft", api_name="/update_view")
    with pytest.raises(AppError, match="ultra"):  # not among the choices
        client.predict(one_frame, *VIEW, "mesh", "ultra", api_name="/update_view")
    # Downloads with a mesh format among others: the others come, the mesh is left out with a note.
    run = predict_with_updates(client, one_frame, *VIEW, ["ply", "mesh"], "draft", api_name="/export")
    assert [Path(path).name for path in run.outputs] == ["points.ply"]
    assert any("No mesh in the downloads" in message and "frame" in message for message in run.messages), run.messages
    with pytest.raises(AppError, match="frame"):  # only mesh formats: nothing to give, the reason
        client.predict(one_frame, *VIEW, ["mesh", "mesh-ply"], "draft", api_name="/export")


# ---- normal maps


def test_the_gallery_shows_each_views_normal_map(client, room_id):
    scene = open_scene(client, room_id)
    captions = [item["caption"] for item in scene["gallery"]]
    assert len(captions) == 4 * 4
    assert captions[:4] == [f"0: room_000 · {kind}" for kind in ("input", "depth", "confidence", "normal")]
    normal = np.asarray(Image.open(scene["gallery"][3]["image"]).convert("RGB")).astype(int)
    depth = np.asarray(Image.open(scene["gallery"][1]["image"]).convert("RGB")).astype(int)
    assert normal.shape == depth.shape == (HEIGHT, WIDTH, 3)
    # The room's walls, floor and ceiling face the camera: blue dominates (z towards the viewer).
    assert np.median(normal[..., 2]) > 160 and np.abs(normal - depth).mean() > 20


# ---- masks


def test_uploaded_masks_make_a_masked_scene_with_its_own_link(client, server, room_id, tmp_path):
    before = open_scene(client, room_id)
    frame_0_before = frame_points(client, room_id, 0)

    # The left half of frame 0 is left out; the mask is half the photo's size (resized with a note).
    mask = np.zeros((HEIGHT // 2, WIDTH // 2), dtype=np.uint8)
    mask[:, : WIDTH // 4] = 255
    mask_file = tmp_path / "room_000.png"
    Image.fromarray(mask).save(mask_file)
    stray = tmp_path / "holiday.png"
    Image.fromarray(mask).save(stray)
    masked = dict(zip(SCENE_NAMES, client.predict(room_id, [handle_file(str(mask_file)), handle_file(str(stray))],
                                                  *VIEW, api_name="/apply_masks")))
    assert masked["id"] != room_id
    assert points_shown(masked["summary"]) < points_shown(before["summary"])

    # Its share link opens masked in another session; the original link is unchanged.
    fresh = Client(server.url, verbose=False)
    reopened = open_scene(fresh, masked["share"]["value"])
    assert reopened["id"] == masked["id"] and points_shown(reopened["summary"]) == points_shown(masked["summary"])
    assert points_shown(open_scene(fresh, room_id)["summary"]) == points_shown(before["summary"])
    assert frame_0_before == WIDTH * HEIGHT
    assert frame_points(fresh, masked["id"], 0) == WIDTH * HEIGHT // 2  # the other half
    assert frame_points(fresh, masked["id"], 1) == WIDTH * HEIGHT

    # Stored: the masks only, beside the parent's id, and no point of frame 0 in the masked half.
    store = store_of(server)
    stored = store.load(masked["id"])
    assert stored.metadata["parent"] == room_id and stored.metadata["entry_format"] == DELTA_ENTRY_FORMAT
    masks = stored.reconstruction.exclusion_masks
    assert masks is not None and masks[0, :, : WIDTH // 2].all() and not masks[0, :, WIDTH // 2:].any()
    assert not masks[1:].any()
    selection = select_points(stored.reconstruction, ViewSettings(confidence_threshold=0, max_points=None))
    frame_0_columns = selection.pixel_indices[selection.frame_indices == 0] % WIDTH
    assert frame_0_columns.size and frame_0_columns.min() >= WIDTH // 2
    storage = Path(server.settings.storage_dir)
    delta_bytes = (storage / masked["id"] / "derived.npz").stat().st_size
    full_bytes = (storage / room_id / "reconstruction.npz").stat().st_size
    assert delta_bytes < 10_000 and delta_bytes < full_bytes / 50, (delta_bytes, full_bytes)


def test_masks_matching_no_photo_are_named(client, room_id, tmp_path):
    stray = tmp_path / "holiday.png"
    Image.new("L", (WIDTH, HEIGHT), 255).save(stray)
    with pytest.raises(AppError, match="holiday.png matches no photo"):
        client.predict(room_id, [handle_file(str(stray))], *VIEW, api_name="/apply_masks")


def test_a_painted_layer_masks_its_frame(client, server, room_id, tmp_path):
    background = tmp_path / "background.png"
    Image.new("RGB", (WIDTH, HEIGHT), "grey").save(background)
    layer = np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)
    layer[: HEIGHT // 2, :, :] = (255, 0, 255, 255)  # the top half of frame 1 painted over
    layer_file = tmp_path / "layer.png"
    Image.fromarray(layer).save(layer_file)
    editor = {"background": handle_file(str(background)), "layers": [handle_file(str(layer_file))],
              "composite": None}
    masked = dict(zip(SCENE_NAMES, client.predict(room_id, "1: room_001", editor, *VIEW,
                                                  api_name="/apply_painted_mask")))
    masks = store_of(server).load(masked["id"]).reconstruction.exclusion_masks
    assert masks[1, : HEIGHT // 2].all() and not masks[1, HEIGHT // 2:].any() and not masks[[0, 2, 3]].any()

    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((HEIGHT, WIDTH, 4), dtype=np.uint8)).save(empty)
    with pytest.raises(AppError, match="Paint over"):
        client.predict(room_id, "1: room_001", {**editor, "layers": [handle_file(str(empty))]}, *VIEW,
                       api_name="/apply_painted_mask")


def test_an_old_uncompressed_derived_entry_still_loads(tmp_path):
    """Entry format 2 (derived.npz written by np.savez) is read by the format-3 code."""
    from vggt_app.store import entries

    store = ReconstructionStore(tmp_path, ttl_seconds=3600, max_bytes=10**12)
    recon = reconstruction_from_synthetic_scene(render_scene("room", num_views=2, width=56, height=42, seed=1))
    parent_id = store.save(recon)
    parent = store.load(parent_id)
    child_id = store.save_derived(parent, recon.scaled(2.0), {"units": "m"})
    folder = tmp_path / child_id
    delta = entries.delta_arrays(parent.reconstruction, store.load(child_id).reconstruction)
    with open(folder / "derived.npz", "wb") as handle:
        np.savez(handle, **delta)  # what a format-2 server wrote
    metadata_file = folder / "metadata.json"
    metadata_file.write_text(metadata_file.read_text().replace('"entry_format": 3', '"entry_format": 2'))
    reread = ReconstructionStore(tmp_path, ttl_seconds=3600, max_bytes=10**12).load(child_id)
    assert reread.metadata["entry_format"] == 2
    np.testing.assert_allclose(reread.reconstruction.depth, parent.reconstruction.depth * 2.0, rtol=1e-6)
