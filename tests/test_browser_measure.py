"""The Measure panel in a real browser: click two points on a frame, type the true length, and the
scene, its summary and its share link switch to metres."""

from __future__ import annotations

import re

import pytest

from app_fixtures import running_app, synthetic_photos  # noqa: F401 (fixtures)
from test_browser import (CHROMIUM, RECONSTRUCT_TIMEOUT_MS, SCREENSHOTS, UPDATE_TIMEOUT_MS, browser,  # noqa: F401
                          summary_text, wait_for_points_shown, wait_for_rendered_scene)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium (tests/run.sh installs it)")


def test_measure_two_points_and_rescale(browser, running_app, synthetic_photos):  # noqa: F811
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1400})
    page = context.new_page()
    page.goto(running_app.url)
    page.locator("#input-files input[type=file]").set_input_files([str(p) for p in synthetic_photos])
    page.locator("#input-status").get_by_text("3 frames ready").wait_for(timeout=UPDATE_TIMEOUT_MS)
    # The memory line appears with the preview, before anything runs.
    page.locator("#memory-status").get_by_text("estimated peak memory").wait_for(timeout=UPDATE_TIMEOUT_MS)
    page.locator("#reconstruct-button").click()
    points = wait_for_points_shown(page)
    share_box = page.locator("#share-link textarea, #share-link input").first
    first_link = share_box.input_value()
    assert "VGGT's own (arbitrary) scale" in summary_text(page)

    page.get_by_text("Measure: set a real-world scale").click()
    image = page.locator("#measure-image img").first
    image.wait_for(state="visible", timeout=UPDATE_TIMEOUT_MS)
    box = image.bounding_box()
    result = page.locator("#measure-result")
    image.click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.6})
    result.get_by_text("now click a second point").wait_for(timeout=UPDATE_TIMEOUT_MS)
    image.click(position={"x": box["width"] * 0.7, "y": box["height"] * 0.4})
    result.get_by_text("scene units").wait_for(timeout=UPDATE_TIMEOUT_MS)
    assert re.search(r"A: frame 0 at .* B: frame 0 at .* distance [\d.e+-]+ scene units", result.inner_text())
    page.screenshot(path=SCREENSHOTS / "measure-1-two-points.png", full_page=True)

    page.locator("#measure-length input").fill("1.5")
    page.locator("#measure-apply").click()
    page.locator("#summary").get_by_text("Units: m").wait_for(timeout=RECONSTRUCT_TIMEOUT_MS)
    assert wait_for_points_shown(page) == points  # the same points, in metres
    page.wait_for_function("([box, old]) => box.value && box.value !== old",
                           arg=[share_box.element_handle(), first_link], timeout=UPDATE_TIMEOUT_MS)
    link = share_box.input_value()
    page.screenshot(path=SCREENSHOTS / "measure-2-rescaled.png", full_page=True)

    # The panel keeps A and B and now reads their distance in the new unit ...
    result.get_by_text("distance 1.5 m").wait_for(timeout=UPDATE_TIMEOUT_MS)
    page.wait_for_timeout(1500)  # and keeps it once every event of the new scene has run
    assert "distance 1.5 m" in result.inner_text() and "A: frame 0" in result.inner_text()
    # ... and a third click starts a new pair: the same two pixels again read 1.5 m.
    image.click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.6})
    result.get_by_text("now click a second point").wait_for(timeout=UPDATE_TIMEOUT_MS)
    image.click(position={"x": box["width"] * 0.7, "y": box["height"] * 0.4})
    result.get_by_text("distance 1.5 m").wait_for(timeout=UPDATE_TIMEOUT_MS)

    # This server has no sky model at hand: the checkbox says how to get it, and ticking it
    # explains again instead of failing, with the sky left in.
    sky = page.locator("#hide-sky-checkbox")
    assert "--sky-model" in sky.inner_text()
    sky.locator("input[type=checkbox]").check()
    page.get_by_text("Sky removal needs the sky-segmentation model").first.wait_for(timeout=UPDATE_TIMEOUT_MS)
    assert wait_for_points_shown(page) == points
    page.screenshot(path=SCREENSHOTS / "measure-3-no-sky-model.png", full_page=True)

    # Whoever opens the new link gets the scene in metres.
    other = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    other.goto(link)
    assert wait_for_points_shown(other) == points
    assert "Units: m" in summary_text(other)
    assert wait_for_rendered_scene(other) > 0.02
    other.context.close()
    context.close()
