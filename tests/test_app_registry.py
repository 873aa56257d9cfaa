"""The app reads the library's one model resolver and one exporter registry: a local tiny
checkpoint's memory line uses that checkpoint's config, and a new export format appears in the
page's downloads with no change to the app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vggt_core.config import VGGTConfig
from vggt_core.export import Exporter, register_exporter, unregister_exporter
from vggt_core.memory import estimate_peak_memory_bytes
from vggt_core.pipeline import InputFrame
from vggt_core.synthetic import reconstruction_from_synthetic_scene, render_scene

import vggt_app.renderer
import vggt_app.store.entries
from vggt_app.panels.memory import estimate_for_frames

TINY_CHECKPOINT = Path(__file__).parent / "fixtures" / "vggt-tiny"


def test_the_memory_line_of_a_local_tiny_checkpoint_uses_its_config(tmp_path):
    photo = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (518, 392), (120, 30, 200)).save(photo)
    frames = [InputFrame("a.png", photo)] * 3
    estimate = estimate_for_frames(frames, checkpoint=str(TINY_CHECKPOINT), device="cpu")
    # The config as the checkpoint's own config.json says (read here with json, not the app's resolver).
    tiny = VGGTConfig.from_dict(json.loads((TINY_CHECKPOINT / "config.json").read_text()))
    with torch.device("meta"):
        from vggt_core.model import VGGT

        tiny_parameters = sum(p.numel() for p in VGGT(tiny).parameters())
    expected = estimate_peak_memory_bytes(tiny, 3, 392, 518, activation_bytes=4, num_parameters=tiny_parameters)
    assert estimate.needed_bytes == expected
    assert estimate.needed_bytes < estimate_peak_memory_bytes(VGGTConfig(), 3, 392, 518, activation_bytes=4) / 10


@pytest.fixture
def dummy_exporter():
    def write(request, path):
        path.write_text(f"{request.recon.num_frames} frames, {len(request.selection.points)} points\n")
        return path

    register_exporter(Exporter("dummy", "dummy.txt", "a test format", write))
    yield
    unregister_exporter("dummy")


def test_a_registered_exporter_appears_in_the_downloads(tmp_path, dummy_exporter):
    from vggt_app.share_links import DEFAULT_VIEW_SETTINGS
    from vggt_app.panels.viewer import ViewerPanel

    recon = reconstruction_from_synthetic_scene(render_scene("room", num_views=2, height=56, width=70))
    stored = vggt_app.store.entries.StoredReconstruction("B" * 24, recon, {"created_at": 0.0})
    renderer = vggt_app.renderer.ViewRenderer(tmp_path / "derived")
    files = renderer.downloads(stored, lambda path: recon.save(path), DEFAULT_VIEW_SETTINGS, ["glb", "dummy"])
    assert [Path(file).name for file in files] == ["scene.glb", "dummy.txt"]
    assert Path(files[1]).read_text().startswith("2 frames, ")

    # The page's format choices come from the registry too.
    import gradio as gr

    class FakeService:
        class sky:
            @staticmethod
            def checkbox_info():
                return ""

    with gr.Blocks():
        viewer = ViewerPanel(FakeService(), lambda request: "http://x/", lambda handler: handler)
        viewer.build()
    assert "dummy" in [value for _, value in viewer.download_formats.choices]
