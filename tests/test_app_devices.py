"""``--devices``: the app's forward sharded over a device group (two CPU workers over gloo here),
with the single-device result; a worker that dies leaves the server running on one device and
tells the user why. Through gradio_client, on a ``random-tiny`` server in this process."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from gradio_client import Client, handle_file

import app
import vggt_app.share_links
from app_fixtures import launch_test_app, predict_with_updates, synthetic_photos  # noqa: F401 (fixtures)
from vggt_app.store.entries import ReconstructionStore
from vggt_core import RANDOM_TINY_CHECKPOINT
from vggt_core.pipeline import decode_frames, gather_input_frames, reconstruct_decoded
from vggt_core.weights import load_model

VIEW = [50, "depth", "All", True, False, False, vggt_app.share_links.DEFAULT_MAX_POINTS]
# Intrinsics are left out: random weights can predict a zero field of view (infinite focal).
COMPARED = ("extrinsics", "pose_encoding", "depth", "world_points")


@pytest.fixture(scope="module")
def group_app(tmp_path_factory):
    devices = app.parse_settings(["--devices", "cpu,cpu"]).devices
    assert devices == ("cpu", "cpu")
    server = launch_test_app(tmp_path_factory.mktemp("group-storage"), devices=devices)
    try:
        yield server
    finally:
        server.close()
        group = server.service.models.device_group
        assert not group.is_usable and group.pids == []  # closed with the server


def stored_reconstruction(server, recon_id: str):
    return ReconstructionStore(server.settings.storage_dir, ttl_seconds=3600, max_bytes=10**9).load(
        recon_id).reconstruction


def worker_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_device_group_gives_the_single_device_reconstruction(group_app, synthetic_photos):  # noqa: F811
    client = Client(group_app.url, verbose=False)
    run = predict_with_updates(client, [handle_file(str(p)) for p in synthetic_photos], 1.0, *VIEW,
                               api_name="/reconstruct")
    assert "**3 frames**" in run.outputs[1] and not run.messages
    assert any(message.startswith("Starting the workers on cpu, cpu") for message in run.progress), run.progress
    models = group_app.service.models
    assert len(models.device_group.pids) == 2 and all(map(worker_is_alive, models.device_group.pids))
    assert not models.is_loaded  # the forward ran on the workers; no in-process copy of the weights

    grouped = stored_reconstruction(group_app, run.outputs[4])
    decoded = decode_frames(gather_input_frames(synthetic_photos))
    single = reconstruct_decoded(load_model(RANDOM_TINY_CHECKPOINT, device="cpu"), decoded)
    for name in COMPARED:
        expected = getattr(single, name)
        error = np.abs(getattr(grouped, name) - expected).max() / max(1.0, np.abs(expected).max())
        assert error <= 1e-5, (name, error)
    assert list(grouped.frame_names) == list(single.frame_names)


def test_fewer_frames_than_devices_run_on_one_device(group_app, synthetic_photos):  # noqa: F811
    run = predict_with_updates(Client(group_app.url, verbose=False), [handle_file(str(synthetic_photos[0]))], 1.0,
                               *VIEW, api_name="/reconstruct")
    assert "**1 frames**" in run.outputs[1] or "**1 frame**" in run.outputs[1]
    assert not run.messages and group_app.service.models.device_group.is_usable


def test_a_killed_worker_leaves_the_server_on_one_device_and_says_so(group_app, synthetic_photos):  # noqa: F811
    client = Client(group_app.url, verbose=False)
    files = [handle_file(str(p)) for p in synthetic_photos]
    group = group_app.service.models.device_group
    if not group.is_started:  # run alone: start the group first
        client.predict(files, 1.0, *VIEW, api_name="/reconstruct")
    pids = group.pids
    os.kill(pids[1], signal.SIGKILL)

    run = predict_with_updates(client, files, 1.0, *VIEW, api_name="/reconstruct")
    assert "**3 frames**" in run.outputs[1]
    assert len(run.messages) == 1, run.messages
    message = run.messages[0]
    assert "The device group (cpu, cpu) stopped" in message and "worker on cpu (rank 1)" in message, message
    assert "runs on one device" in message
    assert not group.is_usable and group_app.service.models.is_loaded  # the in-process model took over
    deadline = time.monotonic() + 10
    while any(map(worker_is_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(worker_is_alive, pids))  # the surviving worker was stopped too

    # The one-device result is the same scene, and later runs go straight to one device, quietly.
    later = predict_with_updates(client, files, 1.0, *VIEW, api_name="/reconstruct")
    assert "**3 frames**" in later.outputs[1] and not later.messages
    first, second = (stored_reconstruction(group_app, r.outputs[4]) for r in (run, later))
    assert np.allclose(first.depth, second.depth, rtol=1e-5, atol=1e-6)
