"""Launching the app in-process for the app and browser tests.

The server runs the untrained ``random-tiny`` model (no download, a few seconds per run on a
CPU), stores reconstructions in a temporary folder and is closed when the tests are done.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before gradio is imported: no usage statistics from test runs.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import app  # noqa: E402
import vggt_app.main  # noqa: E402
import vggt_app.page  # noqa: E402
from vggt_app.upload_route import upload_cap_app_kwargs  # noqa: E402
import vggt_core  # noqa: E402
from vggt_core.synthetic import render_scene  # noqa: E402

# Small enough to run fast on a CPU, large enough for a meaningful frame limit test.
TEST_MAX_FRAMES = 6
TEST_IMAGE_WIDTH, TEST_IMAGE_HEIGHT = 252, 196


@dataclass
class RunningApp:
    url: str
    settings: app.AppSettings
    demo: gr.Blocks
    service: Any = None  # the ReconstructionService behind the page

    def close(self) -> None:
        self.demo.close()
        if self.service is not None:
            self.service.models.close()  # a device group's workers, as vggt_app.main does


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_test_app(storage_dir: Path, *, upload_caps: bool = False, **overrides) -> RunningApp:
    """Build and start the app on a free local port; the caller must ``close()`` it.
    ``upload_caps``: with the upload route's caps, as ``main`` launches it."""
    settings = app.AppSettings(checkpoint=vggt_core.RANDOM_TINY_CHECKPOINT, host="127.0.0.1", port=free_port(),
                               max_frames=TEST_MAX_FRAMES, storage_dir=storage_dir, **overrides)
    service = vggt_app.page.build_service(settings, app.open_store(settings), vggt_app.main.derived_files_folder())
    demo = vggt_app.page.build_page(service)
    demo.queue()
    _, local_url, _ = demo.launch(server_name=settings.host, server_port=settings.port,
                                  prevent_thread_lock=True, quiet=True, **vggt_app.page.launch_options(settings),
                                  **({"app_kwargs": upload_cap_app_kwargs(settings.upload_limits,
                                                                          settings.max_upload_files)}
                                     if upload_caps else {}))
    return RunningApp(url=local_url, settings=settings, demo=demo, service=service)


@dataclass
class Run:
    """An API call's outputs and what the server said on the way (gradio_client status updates)."""

    outputs: tuple
    progress: list[str]  # progress messages, in order, each once
    messages: list[str]  # gr.Info / gr.Warning messages (toasts on the page)


def predict_with_updates(client, *args, api_name: str, **kwargs) -> Run:
    """``client.predict`` that also keeps the progress and toast messages of the call."""
    job = client.submit(*args, api_name=api_name, **kwargs)
    outputs = job.result(timeout=600)
    progress, messages = [], []
    while not job.communicator.updates.empty():
        update = job.communicator.updates.get_nowait()
        for unit in getattr(update, "progress_data", None) or []:
            if unit.desc and (not progress or progress[-1] != unit.desc):
                progress.append(unit.desc)
        if getattr(update, "log", None):
            messages.append(update.log[0])
    return Run(outputs, progress, messages)


def serve_for_module(tmp_path_factory, storage_name: str, **overrides):
    """The body of a module-scoped server fixture (``yield from``): a test app on a fresh storage
    folder, closed (workers included) after the module."""
    server = launch_test_app(tmp_path_factory.mktemp(storage_name), **overrides)
    try:
        yield server
    finally:
        server.close()


def write_room_photos(folder: Path, num_views: int, width: int, height: int, seed: int,
                      prefix: str = "view") -> list[Path]:
    """``num_views`` views of the synthetic room as ``<prefix>_<i>.png`` files in ``folder``."""
    scene = render_scene("room", num_views=num_views, width=width, height=height, seed=seed)
    paths = []
    for index, pixels in enumerate(scene.images):
        paths.append(folder / f"{prefix}_{index}.png")
        Image.fromarray(np.asarray(pixels)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def running_app(tmp_path_factory):
    """One server per test module, closed afterwards."""
    yield from serve_for_module(tmp_path_factory, "app-storage")


@pytest.fixture(scope="module")
def synthetic_photos(tmp_path_factory) -> list[Path]:
    """Three views of the synthetic room as PNG files."""
    return write_room_photos(tmp_path_factory.mktemp("photos"), 3, TEST_IMAGE_WIDTH, TEST_IMAGE_HEIGHT, seed=1)
