"""Gradio's Model3D in a real browser draws quantized GLB point clouds like float32 ones.

The app streams its views with 16-bit positions (``export_glb(..., quantize=True)``); this
shows the same scene from both files side by side in headless Chromium and compares them.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from app_fixtures import free_port  # noqa: E402
from test_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS  # noqa: E402
from vggt_core.export import export_glb  # noqa: E402
from vggt_core.filtering import ViewSettings  # noqa: E402
from vggt_core.reconstruction import reconstruction_from_synthetic_scene  # noqa: E402
from vggt_core.synthetic import render_scene  # noqa: E402

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")


def drawn_fraction(png: bytes) -> float:
    """Share of the canvas (below the label) that differs clearly from its background colour,
    the colour of the bottom row."""
    import io

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)[40:]
    background = np.median(pixels[-1], axis=0)
    return float((np.abs(pixels - background).sum(axis=-1) > 40).mean())


def test_model3d_draws_a_quantized_point_cloud_like_the_float_one(tmp_path):
    from playwright.sync_api import sync_playwright

    recon = reconstruction_from_synthetic_scene(render_scene("room", num_views=3, width=160, height=120))
    settings = ViewSettings(confidence_threshold=0, show_cameras=False)
    plain = export_glb(recon, tmp_path / "plain.glb", settings).path
    small = export_glb(recon, tmp_path / "small.glb", settings, quantize=True).path
    with gr.Blocks() as demo:
        gr.Model3D(value=str(plain), height=360, elem_id="plain", clear_color=(1, 1, 1, 1))
        gr.Model3D(value=str(small), height=360, elem_id="small", clear_color=(1, 1, 1, 1))
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                            quiet=True, allowed_paths=[str(tmp_path)])
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 1000})
            page.goto(url)
            shots = {}
            for name in ("plain", "small"):
                canvas = page.locator(f"#{name} canvas").first
                canvas.wait_for(state="visible", timeout=120_000)
                for _ in range(240):
                    shots[name] = canvas.screenshot()
                    if drawn_fraction(shots[name]) > 0.02:
                        break
                    page.wait_for_timeout(500)
            browser.close()
    finally:
        demo.close()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, png in shots.items():
        (SCREENSHOTS / f"model3d-{name}.png").write_bytes(png)
    plain_drawn, small_drawn = drawn_fraction(shots["plain"]), drawn_fraction(shots["small"])
    assert plain_drawn > 0.02 and small_drawn > 0.02
    assert 0.85 < small_drawn / plain_drawn < 1.15
    import io

    a, b = (np.asarray(Image.open(io.BytesIO(shots[n])).convert("L"), dtype=np.int16) for n in ("plain", "small"))
    assert a.shape == b.shape and float((np.abs(a - b) > 40).mean()) < 0.02  # the same picture
