"""A device group of two CPU workers (gloo) gives the single-process reconstruction, and a
killed worker gives a clear error instead of a hang."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from vggt_core import reconstruct
from vggt_core.device_group import DeviceGroup, DeviceGroupError, checkpoint_loader, parse_devices
from vggt_core.weights import load_model

TINY = Path(__file__).parent / "fixtures" / "vggt-tiny"


def test_cpu_device_group_equals_one_process_and_a_killed_worker_raises():
    images = torch.rand(5, 3, 56, 84, generator=torch.Generator().manual_seed(4))
    single = reconstruct(load_model(TINY, device="cpu"), images)
    group = DeviceGroup(["cpu", "cpu"], checkpoint_loader(str(TINY)), start_timeout_s=120, timeout_s=60)
    try:
        grouped = group.reconstruct(images)
        # Intrinsics are left out: random weights can predict a zero field of view (infinite focal).
        for name in ("extrinsics", "pose_encoding", "depth", "depth_conf", "world_points", "world_points_conf"):
            expected = getattr(single, name)
            error = np.abs(getattr(grouped, name) - expected).max() / max(1.0, np.abs(expected).max())
            assert error <= 1e-5, name
        os.kill(group.pids[1], signal.SIGKILL)
        with pytest.raises(DeviceGroupError, match=r"worker on cpu \(rank 1\) stopped.*one device"):
            group.reconstruct(images)
        with pytest.raises(DeviceGroupError, match="closed"):
            group.reconstruct(images)
    finally:
        group.close()
    assert not any(process.is_alive() for process in group._processes)


def test_parse_devices():
    assert parse_devices("cpu, cpu") == ["cpu", "cpu"]
    assert parse_devices("cpu") == []  # one device: no group
    if not torch.cuda.is_available():
        assert parse_devices(None) == []
        with pytest.raises(ValueError, match="not a visible CUDA device"):
            parse_devices("cuda:0,cuda:1")
    with pytest.raises(ValueError, match="CUDA or CPU"):
        parse_devices("cpu,meta")


ORPHANED_GROUP = r'''
import multiprocessing, sys, time
from vggt_core import RANDOM_TINY_CHECKPOINT
from vggt_core.device_group import DeviceGroup, checkpoint_loader
group = DeviceGroup(["cpu", "cpu"], checkpoint_loader(RANDOM_TINY_CHECKPOINT))
print("workers", *[child.pid for child in multiprocessing.active_children()], flush=True)
time.sleep(600)
'''


def test_workers_exit_when_the_process_that_started_them_is_killed_outright():
    """SIGKILL gives the parent no chance to stop its workers: they notice and exit by themselves."""
    import subprocess
    import sys
    import time

    parent = subprocess.Popen([sys.executable, "-c", ORPHANED_GROUP], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    line = ""
    while not line.startswith("workers"):
        line = parent.stdout.readline()
        assert line or parent.poll() is None, "the group did not start"
    workers = [int(pid) for pid in line.split()[1:]]
    assert len(workers) == 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 30
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    still = [pid for pid in workers if running(pid)]
    for pid in still:
        os.kill(pid, signal.SIGKILL)
    assert not still, f"workers {still} outlived their parent"
