"""Four browsers opening share links (``?r=<id>``) at once are served side by side, not one
after another: the page-load event has room for several at a time."""

from __future__ import annotations

import time

import pytest

import app
import vggt_app.service
from app_fixtures import launch_test_app
from test_browser import CHROMIUM, CHROMIUM_ARGS
from vggt_app.store.entries import ReconstructionStore

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")

EXTRA_SECONDS = 8.0  # added to each page load, so queueing would show; long enough for four tabs to boot on a loaded machine


def test_four_page_loads_at_once_run_side_by_side(tmp_path, small_reconstruction, monkeypatch):
    from playwright.sync_api import sync_playwright

    spans: list[tuple[float, float]] = []
    original = vggt_app.service.ReconstructionService.scene_view

    def slow_scene_view(self, *args, **kwargs):
        started = time.monotonic()
        time.sleep(EXTRA_SECONDS)
        try:
            return original(self, *args, **kwargs)
        finally:
            spans.append((started, time.monotonic()))

    monkeypatch.setattr(vggt_app.service.ReconstructionService, "scene_view", slow_scene_view)
    server = launch_test_app(tmp_path / "storage")
    try:
        recon_id = ReconstructionStore(server.settings.storage_dir, ttl_seconds=3600,
                                       max_bytes=10**9).save(small_reconstruction)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            pages = [browser.new_context().new_page() for _ in range(4)]
            for page in pages:
                page.goto(f"{server.url}?r={recon_id}", wait_until="commit")
            for page in pages:
                page.wait_for_function("document.querySelector('#summary')?.innerText.includes('points shown')",
                                       timeout=120_000)
            browser.close()
    finally:
        server.demo.close()
    assert len(spans) == 4
    # Each load had started before any had finished: none waited for another.
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans
