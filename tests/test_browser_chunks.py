""""Process in chunks" in a real browser (headless Chromium): with memory for two frames, four
uploaded frames get the memory line's "Will not fit" and a button; clicking it reconstructs all
four frames in chunks, with its progress on the viewer only, and the page shows one scene with
one share link.

The server runs in this process, so the device's memory is shrunk as in tests/test_app_chunks.py.
Screenshots go to test-output/browser/ (not committed).
"""

from __future__ import annotations

import torch

import vggt_core.pipeline as pipeline
from vggt_app.share_links import SHARE_QUERY_PARAMETER, share_link_query
from app_fixtures import running_app  # noqa: F401 (fixture)
from test_app_chunks import MODEL_INPUT_HW, four_photos  # noqa: F401 (fixture)
from test_browser import (SCREENSHOTS, UPDATE_TIMEOUT_MS, browser,  # noqa: F401
                          pytestmark, summary_text, wait_for_points_shown, wait_for_rendered_scene)
from test_browser_errors import COUNT_PROGRESS
from vggt_core.config import tiny_config
from vggt_core.memory import parameter_count
from vggt_core.pipeline import estimate_memory


def test_frames_that_do_not_fit_are_processed_in_chunks_from_the_button(browser, running_app, four_photos,  # noqa: F811
                                                                       monkeypatch):
    config = tiny_config()
    two = estimate_memory(config, 2, *MODEL_INPUT_HW, torch.device("cpu"), num_parameters=parameter_count(config))
    monkeypatch.setattr(pipeline, "available_memory_bytes", lambda device: two.needed_bytes + 1)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    page.goto(running_app.url)
    page.get_by_text("Untrained model.").wait_for()
    page.locator("#input-files input[type=file]").set_input_files([str(path) for path in four_photos])

    page.locator("#memory-status").get_by_text("Will not fit").wait_for(timeout=UPDATE_TIMEOUT_MS)
    button = page.locator("#chunks-button")
    button.wait_for(state="visible", timeout=UPDATE_TIMEOUT_MS)
    assert "Process in chunks of 2 frames" in button.inner_text()
    page.screenshot(path=SCREENSHOTS / "chunks-1-offer.png", full_page=True)

    button.click()
    seen = set()
    for _ in range(600):
        seen.update(page.evaluate(COUNT_PROGRESS))
        if "points shown" in summary_text(page):
            break
        page.wait_for_timeout(100)
    assert seen <= {"scene-viewer"}, seen
    wait_for_points_shown(page)
    assert wait_for_rendered_scene(page) > 0.02
    summary = summary_text(page)
    assert "4 frames" in summary and "in chunks of 2 frames" in summary, summary
    link = page.locator("#share-link textarea, #share-link input").first.input_value()
    recon_id = share_link_query(link).get(SHARE_QUERY_PARAMETER, "")
    assert running_app.service.store.load(recon_id).reconstruction.num_frames == 4
    assert page.locator(".toast-body").filter(has_text="Error").count() == 0
    page.screenshot(path=SCREENSHOTS / "chunks-2-result.png", full_page=True)
