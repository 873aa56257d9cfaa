"""A page that never breaks, in a real browser (headless Chromium): a mixed good/bad upload shows
and reconstructs the good frames, the reconstruction has one progress bar (on the viewer), and a
user's mistake afterwards (EXIF focal lengths on photos without EXIF) is answered by a toast
while the viewer, the share link and the galleries keep the scene.

Screenshots go to test-output/browser/ (not committed).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from app_fixtures import running_app, synthetic_photos  # noqa: F401 (fixtures)
from test_browser import (RECONSTRUCT_TIMEOUT_MS, SCREENSHOTS, UPDATE_TIMEOUT_MS, browser,  # noqa: F401
                          pytestmark, summary_text, wait_for_points_shown, wait_for_rendered_scene)

# Visible progress indicators of Gradio's status trackers (one per output that shows progress).
COUNT_PROGRESS = """() => [...document.querySelectorAll('.progress-text, .eta-bar, .progress-level')]
    .filter(el => el.offsetParent !== null)
    .map(el => el.closest('[id]')?.id || '?')"""
# Outputs whose status tracker shows an error badge.
ERROR_BADGES = """() => [...document.querySelectorAll('.error')]
    .filter(el => el.offsetParent !== null && /error/i.test(el.innerText))
    .map(el => el.closest('[id]')?.id || '?')"""


def test_mixed_upload_one_progress_bar_and_a_mistake_keeps_the_scene(browser, running_app, synthetic_photos,  # noqa: F811
                                                                       tmp_path):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    broken = tmp_path / "holiday.png"
    broken.write_text("this is not an image")
    icon = tmp_path / "icon.png"
    Image.new("RGB", (20, 10), "red").save(icon)
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    page.goto(running_app.url)
    page.get_by_text("Untrained model.").wait_for()

    # 8. Checked on arrival: the bad files are named, the good frames shown and counted.
    files = [str(synthetic_photos[0]), str(broken), str(synthetic_photos[1]), str(icon)]
    page.locator("#input-files input[type=file]").set_input_files(files)
    status = page.locator("#input-status")
    status.get_by_text("2 frames ready").wait_for(timeout=UPDATE_TIMEOUT_MS)
    assert "Left out 2 files: holiday.png (not a readable image file" in status.inner_text()
    assert "icon.png (image is too small (20x10 pixels)" in status.inner_text()
    assert str(tmp_path) not in status.inner_text()
    page.locator(".toast-body").filter(has_text="holiday.png").first.wait_for(timeout=UPDATE_TIMEOUT_MS)
    page.wait_for_function("() => document.querySelectorAll('#input-gallery img').length === 2",
                           timeout=UPDATE_TIMEOUT_MS)
    page.locator("#memory-status").get_by_text("2 frames").wait_for(timeout=UPDATE_TIMEOUT_MS)
    page.screenshot(path=SCREENSHOTS / "errors-1-mixed-upload.png", full_page=True)

    # 7. One progress bar, on the viewer, while the model runs.
    page.locator("#reconstruct-button").click()
    seen = set()
    for _ in range(200):
        shown = page.evaluate(COUNT_PROGRESS)
        seen.update(shown)
        if "points shown" in summary_text(page):
            break
        assert len(set(shown)) <= 1, shown  # several parts (text, bar) of one tracker count once
        page.wait_for_timeout(100)
    assert seen <= {"scene-viewer"}, seen
    wait_for_points_shown(page)
    assert wait_for_rendered_scene(page) > 0.02
    assert "**2 frames**" in summary_text(page) or "2 frames" in summary_text(page)
    share_box = page.locator("#share-link textarea, #share-link input").first
    link, summary = share_box.input_value(), summary_text(page)
    gallery_images = page.locator("#depth-gallery img").count()
    assert link and gallery_images == 8  # input, depth, confidence and normals of both frames

    # 6. A mistake: EXIF focal lengths on PNGs (which have none). A toast says so ...
    page.locator("#camera-panel").get_by_text("Camera: known focal length").click()
    page.locator("#camera-choice").get_by_text("From the photos' EXIF").click()
    page.locator("#camera-apply").click()
    page.locator(".toast-body").filter(has_text="EXIF").first.wait_for(timeout=UPDATE_TIMEOUT_MS)
    page.wait_for_timeout(1000)
    page.screenshot(path=SCREENSHOTS / "errors-2-exif-mistake.png", full_page=True)
    # ... and everything else keeps its value: no error badge, the same scene, link and galleries.
    assert page.evaluate(ERROR_BADGES) == []
    assert share_box.input_value() == link and summary_text(page) == summary
    assert page.locator("#depth-gallery img").count() == gallery_images
    assert wait_for_rendered_scene(page, timeout_s=5) > 0.02

    # The page still works: a view change after the mistake renders.
    page.locator("#branch-radio").get_by_text("Point map head").click()
    page.wait_for_function("([box, link]) => box.value !== link", arg=[share_box.element_handle(), link],
                           timeout=UPDATE_TIMEOUT_MS)
    assert "point map branch" in summary_text(page)
    assert page.locator("#depth-gallery img").count() == gallery_images
    context.close()


def test_an_upload_over_the_total_cap_is_refused_with_a_message_and_leaves_nothing(browser, tmp_path):  # noqa: F811
    """The app launched as main launches it (upload caps at the route): three files of 0.5 MB,
    each under the 0.8 MB per-file cap but 1.5 MB together, over the 1 MB total. The page says
    so in a toast, the upload box stays empty, and Gradio's upload folder gains no file."""
    from gradio.utils import get_upload_folder

    from app_fixtures import launch_test_app

    def uploaded() -> set[Path]:
        folder = Path(get_upload_folder())
        return {path for path in folder.rglob("*") if path.is_file()} if folder.exists() else set()

    server = launch_test_app(tmp_path / "storage", upload_caps=True, max_upload_mb=0.8, max_total_upload_mb=1.0)
    try:
        blobs = []
        for index in range(3):
            blob = tmp_path / f"large_{index}.jpg"
            blob.write_bytes(bytes(range(256)) * 1954)  # 0.5 MB each
            blobs.append(blob)
        before = uploaded()
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.goto(server.url)
        page.get_by_text("Untrained model.").wait_for()
        page.locator("#input-files input[type=file]").set_input_files([str(blob) for blob in blobs])
        toast = page.locator(".toast-body").filter(has_text="maximum allowed size of 1 MB")
        toast.first.wait_for(timeout=UPDATE_TIMEOUT_MS)
        assert "please choose fewer or smaller files" in toast.first.inner_text()
        page.wait_for_timeout(500)
        assert page.locator("#input-gallery img").count() == 0
        assert not any("large_" in path.name for path in uploaded() - before)
        page.screenshot(path=SCREENSHOTS / "errors-3-upload-over-cap.png", full_page=True)
    finally:
        server.close()
