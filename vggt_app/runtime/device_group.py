"""The server's device group (``--devices cuda:0,cuda:1``): one worker process per device running
VGGT's forward together, sharded exactly (vggt_core.device_group), so the result is the
single-device one while each device holds only its share of the frames.

The group is started by the first reconstruction (the page comes up at once), on the model's
forward thread (vggt_app.runtime.model_worker): forwards still run one at a time, and the workers
inherit that thread's lower CPU priority. It is stopped when the server exits (``close``, from
the server's shutdown path, and at interpreter exit as a safety net). A worker that dies or fails stops the
whole group for good (the others would wait forever in a collective): the server goes on with
its in-process model on one device, and the user is told why. It is not restarted: a device
that failed once (a crashed GPU, out of memory) would likely fail again, mid-request.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from vggt_core.device_group import DeviceGroup, DeviceGroupError, checkpoint_loader

logger = logging.getLogger("vggt_app")

T = TypeVar("T")

# Starting the workers includes loading the weights in each (from the local cache by then).
GROUP_START_TIMEOUT_S = 600.0
# One forward of the whole group, and the workers' collectives.
GROUP_FORWARD_TIMEOUT_S = 1800.0


class DeviceGroupStopped(RuntimeError):
    """The device group stopped (a worker died or failed); ``str()`` is the sentence for the user."""


class ServerDeviceGroup:
    """A :class:`vggt_core.device_group.DeviceGroup` started on first use and stopped for good
    on its first failure.

    Args:
        devices: two or more, e.g. ``["cuda:0", "cuda:1"]`` (``["cpu", "cpu"]`` in tests).
        checkpoint: what each worker loads (as ``--checkpoint``).
    """

    def __init__(self, devices: Sequence[str], checkpoint: str, *, start_timeout_s: float = GROUP_START_TIMEOUT_S,
                 timeout_s: float = GROUP_FORWARD_TIMEOUT_S):
        self.devices = [str(device) for device in devices]
        self._loader = checkpoint_loader(checkpoint)
        self._start_timeout_s = start_timeout_s
        self._timeout_s = timeout_s
        self._group: DeviceGroup | None = None
        self._lock = threading.Lock()
        self.stopped_because: str | None = None  # set once the group failed or was closed
        atexit.register(self.close)

    @property
    def is_usable(self) -> bool:
        """Whether reconstructions should still try the group (it has not failed or been closed)."""
        return self.stopped_because is None

    @property
    def is_started(self) -> bool:
        return self._group is not None

    @property
    def pids(self) -> list[int]:
        """The workers' process ids, in rank order ([] before the first reconstruction)."""
        group = self._group
        return group.pids if group is not None else []

    def run(self, work: Callable[[DeviceGroup], T]) -> T:
        """``work(group)``, starting the group first if needed.

        Raises:
            DeviceGroupStopped: the group could not start, or a worker died or failed during
                ``work``; the group is then closed and :attr:`is_usable` stays False.
        """
        if not self.is_usable:
            raise DeviceGroupStopped(self.user_sentence())
        try:
            return work(self._started())
        except DeviceGroupError as error:
            self._stop(error)
            raise DeviceGroupStopped(self.user_sentence()) from error

    def user_sentence(self) -> str:
        return (f"The device group ({', '.join(self.devices)}) stopped: {self.stopped_because}. "
                "This reconstruction runs on one device, and so will the next ones until the server restarts.")

    def close(self) -> None:
        """Stop the workers (at the server's exit); idempotent."""
        with self._lock:
            group, self._group = self._group, None
            if self.stopped_because is None:
                self.stopped_because = "the server is stopping"
        if group is not None:
            group.close()
            logger.info("stopped the device group's workers on %s", ", ".join(self.devices))

    def _started(self) -> DeviceGroup:
        with self._lock:
            if self._group is None:
                logger.info("starting the device group on %s", ", ".join(self.devices))
                self._group = DeviceGroup(self.devices, self._loader, start_timeout_s=self._start_timeout_s,
                                          timeout_s=self._timeout_s)
            return self._group

    def _stop(self, error: DeviceGroupError) -> None:
        # The library's message may end with a worker's traceback: the log keeps it, the user
        # gets the first line's cause ("the worker on cuda:1 (rank 1) stopped with exit code -9
        # while reconstructing").
        logger.error("device group stopped; running on one device from now on: %s", error)
        cause = str(error).splitlines()[0].split("; the device group is closed")[0].strip().rstrip(":")
        with self._lock:
            group, self._group = self._group, None
            self.stopped_because = cause or "a worker failed"
        if group is not None:
            group.close()


__all__ = ["DeviceGroupStopped", "ServerDeviceGroup"]
