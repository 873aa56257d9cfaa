"""The Tracks view in a real browser: click two points on a frame (the clicks land on the right
model-input pixels), track them, and see one drawn picture per frame in the gallery. (That the new
entry's link opens with its tracks drawn is tested through gradio_client, in test_app_tracks.py.)"""

from __future__ import annotations

import re

import pytest

from app_fixtures import running_app, synthetic_photos  # noqa: F401 (fixtures)
from test_browser import (CHROMIUM, RECONSTRUCT_TIMEOUT_MS, SCREENSHOTS, UPDATE_TIMEOUT_MS, browser,  # noqa: F401
                          wait_for_points_shown)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium (tests/run.sh installs it)")

MODEL_INPUT_WIDTH, MODEL_INPUT_HEIGHT = 518, 406  # the synthetic photos' model-input size


def test_click_points_track_them_and_see_every_frame(browser, running_app, synthetic_photos):  # noqa: F811
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = context.new_page()
    page.goto(running_app.url)
    page.locator("#input-files input[type=file]").set_input_files([str(p) for p in synthetic_photos])
    page.locator("#input-status").get_by_text("3 frames ready").wait_for(timeout=UPDATE_TIMEOUT_MS)
    # The option sits by the Reconstruct button (this test runs without it).
    assert "Refine cameras with bundle adjustment" in page.locator("#refine-checkbox").inner_text()
    page.locator("#reconstruct-button").click()
    wait_for_points_shown(page)
    share_box = page.locator("#share-link textarea, #share-link input").first
    first_link = share_box.input_value()

    page.get_by_text("Tracks: follow points across the frames").click()
    image = page.locator("#tracks-image img").first
    image.wait_for(state="visible", timeout=UPDATE_TIMEOUT_MS)
    note = page.locator("#tracks-note")
    note.get_by_text("then press Track").wait_for(timeout=UPDATE_TIMEOUT_MS)
    box = image.bounding_box()
    # The frame is shown smaller than its model-input size; clicks still map to its pixels.
    assert box["width"] < MODEL_INPUT_WIDTH
    image.click(position={"x": box["width"] * 0.25, "y": box["height"] * 0.5})
    note.get_by_text("1 point picked").wait_for(timeout=UPDATE_TIMEOUT_MS)
    image.click(position={"x": box["width"] * 0.75, "y": box["height"] * 0.3})
    note.get_by_text("2 points picked").wait_for(timeout=UPDATE_TIMEOUT_MS)
    x, y = map(int, re.search(r"frame 0 at \((\d+), (\d+)\) px", note.inner_text()).groups())
    assert abs(x - 0.75 * MODEL_INPUT_WIDTH) <= 4 and abs(y - 0.3 * MODEL_INPUT_HEIGHT) <= 4, (x, y)

    page.locator("#tracks-run").click()
    note.get_by_text("Tracked 2 points").wait_for(timeout=RECONSTRUCT_TIMEOUT_MS)
    thumbnails = page.locator("#tracks-gallery img")
    page.wait_for_function("() => document.querySelectorAll('#tracks-gallery img').length >= 3",
                           timeout=UPDATE_TIMEOUT_MS)
    assert thumbnails.count() == 3
    captions = page.locator("#tracks-gallery").inner_text()
    assert all(f"{index}: view_{index}.png" in captions for index in range(3))
    # The tracks were stored as a new entry: the page shows its share link.
    page.wait_for_function("([box, old]) => box.value && box.value !== old",
                           arg=[share_box.element_handle(), first_link], timeout=UPDATE_TIMEOUT_MS)
    page.screenshot(path=SCREENSHOTS / "tracks-2-drawn.png", full_page=True)

    context.close()
