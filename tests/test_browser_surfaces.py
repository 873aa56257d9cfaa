"""The mesh view and a painted mask in a real browser (headless Chromium): switch the viewer to
Mesh and see the mesh GLB loaded and drawn; paint over half a frame in the image editor, apply
it, and see the point count drop.

The scene is the synthetic room's exact reconstruction (the untrained model's depth has no
surface), stored in the server's store and opened through its share link.
Screenshots go to test-output/browser/ (not committed).
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image

from app_fixtures import running_app  # noqa: F401 (fixture)
from test_browser import (SCREENSHOTS, UPDATE_TIMEOUT_MS, browser, drawn_fraction,  # noqa: F401
                          pytestmark, summary_text, wait_for_points_shown, wait_for_rendered_scene)
from vggt_app.store.entries import ReconstructionStore
from vggt_core.reconstruction import reconstruction_from_synthetic_scene
from vggt_core.synthetic import render_scene

WIDTH, HEIGHT = 168, 126


def store_room(storage_dir) -> str:
    scene = render_scene("room", num_views=4, width=WIDTH, height=HEIGHT, seed=2)
    store = ReconstructionStore(storage_dir, ttl_seconds=3600, max_bytes=10**12)
    return store.save(reconstruction_from_synthetic_scene(scene), {"inputs": "synthetic room"})


def picture_difference(first: bytes, second: bytes) -> float:
    """Mean absolute difference of two PNG screenshots' pixels (0–255)."""
    a, b = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16) for png in (first, second))
    return float(np.abs(a - b).mean()) if a.shape == b.shape else 255.0


def frame_bounds(canvas) -> tuple[float, float, float, float]:
    """Page coordinates ``(left, top, right, bottom)`` of the frame drawn in the editor's canvas:
    along the canvas's middle row and column (the label and the tool bars lie over its top and
    sides), the pixels that differ from its empty background (the bottom row's usual colour)."""
    canvas.scroll_into_view_if_needed()
    png = canvas.screenshot()  # may scroll the page: the box is read after it
    box = canvas.bounding_box()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    drawn = np.abs(pixels - np.median(pixels[-1], axis=0)).sum(axis=-1) > 30
    height, width = drawn.shape
    columns = np.nonzero(drawn[height // 2, width // 8: width - width // 8])[0] + width // 8
    rows = np.nonzero(drawn[:, width // 2])[0]
    scale = box["width"] / width  # screenshot pixels per CSS pixel
    return (box["x"] + columns.min() * scale, box["y"] + rows.min() * scale,
            box["x"] + columns.max() * scale, box["y"] + rows.max() * scale)


def painted_fraction(png: bytes) -> float:
    """Share of the canvas screenshot's pixels in the brush's colour (magenta)."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    return float((np.abs(pixels - np.array([255, 0, 255])).sum(axis=-1) < 40).mean())


def paint_left_half(page, canvas) -> None:
    """Horizontal strokes over the left half of the frame in the editor, top to bottom; each
    starts inside the frame (the editor ignores strokes that start beside it)."""
    left, top, right, bottom = frame_bounds(canvas)
    for step in range(12):
        y = top + (bottom - top) * (0.03 + 0.94 * step / 11)
        page.mouse.move(left + 3, y)
        page.mouse.down()
        page.mouse.move(left + (right - left) * 0.5, y, steps=12)
        page.mouse.up()


def test_mesh_view_and_a_painted_mask(browser, running_app):  # noqa: F811
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    recon_id = store_room(running_app.settings.storage_dir)
    context = browser.new_context(viewport={"width": 1400, "height": 1300})
    page = context.new_page()
    fetched: list[str] = []
    page.on("response", lambda response: fetched.append(response.url) if ".glb" in response.url else None)
    page.goto(f"{running_app.url.rstrip('/')}/?r={recon_id}&conf=0")
    points_before = wait_for_points_shown(page)
    assert points_before == 4 * WIDTH * HEIGHT
    assert wait_for_rendered_scene(page) > 0.02
    points_picture = page.locator("#scene-viewer canvas").first.screenshot()

    # Show: Mesh. The viewer fetches the mesh GLB and draws it; the summary says so.
    page.locator("#show-radio").get_by_text("Mesh", exact=True).click()
    page.locator("#summary").get_by_text("Mesh shown").wait_for(timeout=UPDATE_TIMEOUT_MS)
    deadline_ms = UPDATE_TIMEOUT_MS
    while not any(re.search(r"/mesh-[0-9a-f]+\.glb", url) for url in fetched) and deadline_ms > 0:
        page.wait_for_timeout(250)
        deadline_ms -= 250
    assert any(re.search(r"/mesh-[0-9a-f]+\.glb", url) for url in fetched), fetched
    page.wait_for_timeout(1500)  # the GLB is parsed and drawn after it arrives
    mesh_picture = page.locator("#scene-viewer canvas").first.screenshot()
    assert drawn_fraction(mesh_picture) > 0.02
    assert picture_difference(mesh_picture, points_picture) > 1.0  # a surface, not the dots
    page.screenshot(path=SCREENSHOTS / "surfaces-1-mesh.png", full_page=True)

    # Masks: paint over the left half of the first frame, apply, and fewer points are shown.
    page.locator("#masks-panel").get_by_text("Masks: leave things out").click()
    canvas = page.locator("#mask-editor canvas").first
    canvas.wait_for(state="visible", timeout=UPDATE_TIMEOUT_MS)
    canvas.scroll_into_view_if_needed()  # the mouse paints only where the page shows the canvas
    page.wait_for_timeout(1000)  # the frame is drawn into the editor
    # The editor takes strokes once it has set itself up: paint until the paint shows.
    for _ in range(10):
        paint_left_half(page, canvas)
        if painted_fraction(canvas.screenshot()) > 0.05:
            break
        page.wait_for_timeout(1000)
    assert painted_fraction(canvas.screenshot()) > 0.05
    page.screenshot(path=SCREENSHOTS / "surfaces-2-painted.png", full_page=True)
    page.locator("#masks-apply-painted").click()
    points_after = wait_for_points_shown(page, differing_from=points_before)
    page.screenshot(path=SCREENSHOTS / "surfaces-3-masked.png", full_page=True)
    assert points_after < points_before
    # At most frame 0's points go (a quarter of all), and at least a fair part of its left half.
    assert points_before - WIDTH * HEIGHT <= points_after < points_before - WIDTH * HEIGHT // 5
    share = page.locator("#share-link textarea, #share-link input").first.input_value()
    assert recon_id not in share and "points shown" in summary_text(page)
    context.close()
