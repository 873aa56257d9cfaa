"""Take the README screenshot of the app: assets/screenshots/app.jpg.

    python assets/make_screenshots.py

A development tool, not part of the app. Running VGGT-1B needs its 5 GB of weights, so instead
the script stores the *ground-truth* reconstruction of a synthetic scene (exact cameras and
depth from vggt_core.synthetic) in a temporary storage folder, and opens it through the app's
ordinary share link in headless Chromium. Everything on the page is the real app; only the
reconstruction it shows was not predicted by the model.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# Run as a script from anywhere: app.py and vggt_core live one level up.
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import app  # noqa: E402
from vggt_core.reconstruction import reconstruction_from_synthetic_scene  # noqa: E402
from vggt_app.store.entries import ReconstructionStore  # noqa: E402
from vggt_core.synthetic import render_scene  # noqa: E402

SCREENSHOT_DIR = Path(__file__).resolve().parent / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1250}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def store_ground_truth(storage_dir: Path, scene_name: str, num_views: int) -> str:
    """Save the exact reconstruction of a synthetic scene in the app's store; return its id."""
    scene = render_scene(scene_name, num_views=num_views, width=518, height=392, seed=0)
    store = ReconstructionStore(storage_dir, ttl_seconds=3600, max_bytes=10**10)
    # No "seconds": the summary then shows no reconstruction time, as none was measured.
    return store.save(reconstruction_from_synthetic_scene(scene), {"inputs": f"synthetic {scene_name}"})


def take_screenshot(url: str, target: Path, zoom_steps: int, drag_px: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url)
        page.locator("#summary").get_by_text("points shown").wait_for(timeout=120_000)
        canvas = page.locator("#scene-viewer canvas").first
        canvas.wait_for(state="visible")
        page.wait_for_timeout(3000)  # the GLB loads after the canvas appears
        box = canvas.bounding_box()
        centre_x, centre_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        # The synthetic scenes sit inside a closed room: move the orbit camera in through the wall
        # (and optionally turn it with --drag) so the objects and camera frustums are in view.
        page.mouse.move(centre_x, centre_y)
        for _ in range(zoom_steps):
            page.mouse.wheel(0, -120)
            page.wait_for_timeout(60)
        page.mouse.down()
        page.mouse.move(centre_x + drag_px, centre_y + drag_px // 4, steps=10)
        page.mouse.up()
        page.wait_for_timeout(1500)
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target), type="jpeg", quality=82, full_page=True)
        browser.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", choices=("room", "table"), default="room")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--zoom-steps", type=int, default=10, help="mouse-wheel steps towards the scene")
    parser.add_argument("--drag", type=int, default=0, help="pixels to turn the camera by")
    parser.add_argument("--out", type=Path, default=SCREENSHOT_DIR / "app.jpg")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vggt-screenshot-") as storage:
        recon_id = store_ground_truth(Path(storage), args.scene, args.views)
        # The default checkpoint is never loaded here: opening a stored scene needs no model.
        settings = app.AppSettings(host="127.0.0.1", port=free_port(), storage_dir=Path(storage))
        demo = app.build_app(settings)
        demo.queue()
        _, url, _ = demo.launch(server_name=settings.host, server_port=settings.port, prevent_thread_lock=True,
                                quiet=True, **app.launch_options(settings))
        try:
            take_screenshot(app.share_link(url, recon_id), args.out, args.zoom_steps, args.drag)
        finally:
            demo.close()
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
