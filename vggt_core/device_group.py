"""One worker process per device, running the sharded forward of :mod:`vggt_core.distributed`
together, supervised by the caller (e.g. the app with ``--devices cuda:0,cuda:1``).

The workers form their own process group (NCCL on CUDA, gloo on CPU, so ``cpu,cpu`` runs the
same code path in tests). The caller's process only sends frames and receives rank 0's
outputs, then builds the :class:`Reconstruction` with :func:`vggt_core.reconstruct`, exactly as
for one device. A worker that dies leaves the others blocked in a collective, so the whole
group is stopped and :class:`DeviceGroupError` raised: the caller falls back to one device.
"""

from __future__ import annotations

import datetime
import functools
import os
import queue
import socket
import time
import traceback
from typing import Callable, Sequence

import torch
import torch.multiprocessing as mp
from torch import nn

from .config import DEFAULT_FRAMES_CHUNK_SIZE

__all__ = ["DeviceGroup", "DeviceGroupError", "checkpoint_loader", "parse_devices"]

ModelLoader = Callable[[torch.device], nn.Module]


class DeviceGroupError(RuntimeError):
    """A worker died or failed; the group is closed and cannot be used again."""


def _load_checkpoint(checkpoint: str, config_path: str | None, device: torch.device) -> nn.Module:
    from .config import VGGTConfig
    from .weights import load_model

    config = VGGTConfig.from_json(config_path) if config_path else None
    return load_model(checkpoint, config=config, device=device)


def checkpoint_loader(checkpoint: str, config_path: str | None = None) -> ModelLoader:
    """A picklable ``loader(device) -> model`` for :class:`DeviceGroup` that loads ``checkpoint``
    (a Hub id or a local file/folder, as :func:`vggt_core.load_model`) in each worker."""
    return functools.partial(_load_checkpoint, str(checkpoint), None if config_path is None else str(config_path))


def parse_devices(text: str | None) -> list[str]:
    """The devices of a ``--devices`` option: ``"cuda:0,cuda:1"`` or ``"cpu,cpu"`` as given; None
    or empty means every visible CUDA device when there are several. Fewer than two devices gives
    ``[]``: run on one device, without a group.

    Raises:
        ValueError: a name torch does not know, or a CUDA index that is not visible.
    """
    if not text:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{index}" for index in range(count)] if count > 1 else []
    devices = [item.strip() for item in text.split(",") if item.strip()]
    for name in devices:
        device = torch.device(name)  # raises ValueError/RuntimeError on an unknown name
        if device.type == "cuda" and (not torch.cuda.is_available()
                                      or (device.index or 0) >= torch.cuda.device_count()):
            raise ValueError(f"{name} is not a visible CUDA device")
        if device.type not in ("cuda", "cpu"):
            raise ValueError(f"a device group runs on CUDA or CPU devices, got {name}")
    return devices if len(devices) > 1 else []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# How often an idle worker checks that the process that started it is still there.
_PARENT_CHECK_S = 2.0


def _worker(rank: int, devices: list[str], init_method: str, loader: ModelLoader, jobs, results,
            timeout_s: float) -> None:
    """One rank: join the group, load the model, then run sharded forwards until told to stop."""
    import torch.distributed as dist

    from .distributed import sharded_forward

    try:
        device = torch.device(devices[rank])
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=init_method,
                                rank=rank, world_size=len(devices),
                                timeout=datetime.timedelta(seconds=timeout_s))
        model = loader(device)
        results.put((rank, "ready", None))
        parent = os.getppid()
        while True:
            try:
                job = jobs.get(timeout=_PARENT_CHECK_S)
            except queue.Empty:
                # A parent killed outright (SIGKILL) never sends the stop job: once this process
                # has been re-parented, nobody will, so exit instead of waiting forever.
                if os.getppid() != parent:
                    break
                continue
            if job is None:
                break
            images, frames_chunk_size = job
            outputs = sharded_forward(model, images.to(device), frames_chunk_size=frames_chunk_size)
            if rank == 0:
                outputs = {key: value.cpu() for key, value in outputs.items() if isinstance(value, torch.Tensor)}
                results.put((rank, "outputs", outputs))
        dist.destroy_process_group()
    except Exception:  # reported to the parent, which closes the group
        results.put((rank, "error", traceback.format_exc()))


class _GroupModel(nn.Module):
    """What :func:`vggt_core.reconstruct` runs: a forward that the workers compute. Its one
    buffer puts the module on the CPU, where the outputs arrive."""

    def __init__(self, group: DeviceGroup):
        super().__init__()
        self.group = group
        self.register_buffer("_where", torch.zeros(()), persistent=False)

    def forward(self, images: torch.Tensor, query_points=None, frames_chunk_size=DEFAULT_FRAMES_CHUNK_SIZE):
        if query_points is not None:
            raise ValueError("a device group does not track points")
        return self.group.forward(images, frames_chunk_size=frames_chunk_size)


class DeviceGroup:
    """Worker processes, one per device, that run one VGGT forward together.

    Args:
        devices: e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu", "cpu"]`` (≥ 1).
        loader: ``loader(device) -> model`` run in each worker, picklable (see
            :func:`checkpoint_loader`).
        start_timeout_s: how long starting and loading the model may take.
        timeout_s: how long one forward may take (also the collectives' timeout).

    Raises:
        DeviceGroupError: a worker failed to start.
    """

    def __init__(self, devices: Sequence[str], loader: ModelLoader, *, start_timeout_s: float = 600.0,
                 timeout_s: float = 1800.0):
        if not devices:
            raise ValueError("a device group needs at least one device")
        self.devices = [str(device) for device in devices]
        self.timeout_s = timeout_s
        context = mp.get_context("spawn")
        self._results = context.Queue()
        self._jobs = [context.Queue() for _ in self.devices]
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        self._processes = [context.Process(target=_worker, daemon=True, name=f"vggt-worker-{rank}",
                                           args=(rank, self.devices, init_method, loader, self._jobs[rank],
                                                 self._results, timeout_s))
                           for rank in range(len(self.devices))]
        self._closed = False
        for process in self._processes:
            process.start()
        ready: set[int] = set()
        while len(ready) < len(self.devices):
            rank, kind, payload = self._next_result(start_timeout_s, "starting")
            if kind != "ready":
                self.close()
                raise DeviceGroupError(f"the worker on {self.devices[rank]} failed to start:\n{payload}")
            ready.add(rank)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers, in rank order."""
        return [process.pid for process in self._processes]

    def _dead_worker(self) -> str | None:
        """Which worker stopped, preferring one killed or crashed (a worker that reported an
        error exits with code 0 afterwards, and is not the cause)."""
        stopped = [rank for rank, process in enumerate(self._processes) if not process.is_alive()]
        if not stopped:
            return None
        rank = min(stopped, key=lambda r: self._processes[r].exitcode == 0)
        return (f"the worker on {self.devices[rank]} (rank {rank}) stopped with exit code "
                f"{self._processes[rank].exitcode}")

    def _next_result(self, timeout_s: float, doing: str):
        """The next worker message; polls the workers' liveness while waiting."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._results.get(timeout=0.1)
            except queue.Empty:
                pass
            dead = self._dead_worker()
            if dead is not None or time.monotonic() > deadline:
                self.close()
                raise DeviceGroupError(f"{dead or f'no answer within {timeout_s:.0f} s'} while {doing}; the "
                                       "device group is closed: run on one device instead")

    def forward(self, images: torch.Tensor, *, frames_chunk_size: int | None = DEFAULT_FRAMES_CHUNK_SIZE) -> dict:
        """Outputs of all frames, as ``model(images)`` without tracks (CPU tensors).

        Args: images ``[B, S, 3, H, W]`` or ``[S, 3, H, W]`` in [0, 1], ``S ≥`` the number of devices.

        Raises:
            DeviceGroupError: a worker died or failed; the group is then closed.
        """
        if self._closed:
            raise DeviceGroupError("the device group is closed")
        if images.dim() == 4:
            images = images[None]
        if images.shape[1] < len(self.devices):
            raise ValueError(f"{images.shape[1]} frames for {len(self.devices)} devices: each needs one frame")
        shared = images.detach().to("cpu", torch.float32).contiguous().share_memory_()
        for jobs in self._jobs:
            jobs.put((shared, frames_chunk_size))
        while True:
            rank, kind, payload = self._next_result(self.timeout_s, "reconstructing")
            if kind == "outputs":
                return payload
            if kind == "error":
                # A dead rank makes the others' collectives fail first: name the dead one if any.
                deadline = time.monotonic() + 2.0
                dead = self._dead_worker()
                while dead is None and time.monotonic() < deadline:
                    time.sleep(0.05)
                    dead = self._dead_worker()
                self.close()
                cause = dead or f"the worker on {self.devices[rank]} (rank {rank}) failed"
                raise DeviceGroupError(f"{cause} while reconstructing; the device group is closed: run on one "
                                       f"device instead.\n{payload}")

    @property
    def model(self) -> nn.Module:
        """A module whose forward the workers compute, for code that takes a model (e.g.
        :func:`vggt_core.pipeline.reconstruct_decoded` with ``check_memory=False``: it has no
        weights of its own to count). It does not track points."""
        return _GroupModel(self)

    def reconstruct(self, images: torch.Tensor, **kwargs):
        """:func:`vggt_core.reconstruct` with this group as the model (same keyword arguments,
        except ``query_points``). Returns the :class:`Reconstruction` of all frames."""
        from .inference import reconstruct

        return reconstruct(_GroupModel(self), images, **kwargs)

    def close(self) -> None:
        """Stop the workers (politely, then by force); idempotent."""
        if self._closed:
            return
        self._closed = True
        for jobs, process in zip(self._jobs, self._processes):
            if process.is_alive():
                try:
                    jobs.put(None)
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + 5.0
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(1.0)

    def __enter__(self) -> DeviceGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
