"""One thread that runs every model forward of a server process, at a lower CPU priority.

A server holds one copy of the weights and one GPU, so forwards run one at a time; requests
queue for :class:`ModelWorker` instead of a lock. Running them on one long-lived thread lets the
operating system tell them apart from interactive work (opening a share link, a view change):
the thread lowers its own scheduling priority once (``nice``), and the threads it starts later
inherit that, which on Linux includes the OpenMP workers a CPU forward runs on. The cores then go
to the interactive requests first and to the forward in between, instead of being shared evenly,
which on a small CPU host made a view wait seconds behind someone else's reconstruction
(docs/store.md, "No stalls"). On a GPU host the priority only affects the launching thread.

The caller's ``contextvars`` travel with each job, so code that reads per-request context (a
progress bar, or ZeroGPU's ``spaces.GPU``, which finds the request's user there) sees it.
"""

from __future__ import annotations

import contextvars
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How much less CPU the forward gets than interactive requests when both want a core: nice 10
# weighs 110 against nice 0's 1024 in Linux's scheduler, about 1 : 9.
DEFAULT_NICENESS = 10


class ModelWorker:
    """Runs jobs one at a time, in submission order, on a single daemon thread (started by the
    first job, so creating a worker starts nothing)."""

    def __init__(self, niceness: int = DEFAULT_NICENESS, name: str = "model-forward"):
        self.niceness = niceness
        # (contextvars' Context.run, the job, its future), or None to stop.
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], Callable[[], Any], Future] | None] = \
            queue.SimpleQueue()
        self._pending = 0  # jobs submitted and not finished
        self._count_lock = threading.Lock()
        self.priority_lowered = threading.Event()
        self._name = name
        self._thread: threading.Thread | None = None

    @property
    def is_busy(self) -> bool:
        """Whether a job is running or waiting (a new one would wait)."""
        with self._count_lock:
            return self._pending > 0

    def run(self, job: Callable[[], T], on_wait: Callable[[], None] | None = None) -> T:
        """``job()`` on the worker thread with the caller's context; blocks until it is done and
        returns its result or raises its exception. ``on_wait`` is called first when other jobs
        are ahead of this one (to tell the user why nothing moves)."""
        with self._count_lock:
            ahead = self._pending
            self._pending += 1
        try:
            if ahead and on_wait is not None:
                on_wait()
            self._start_once()
            future: Future = Future()
            self._jobs.put((contextvars.copy_context().run, job, future))
            return future.result()
        finally:
            with self._count_lock:
                self._pending -= 1

    @property
    def thread_native_id(self) -> int | None:
        """The worker thread's operating-system id, once it has started."""
        return self._thread.native_id if self._thread is not None else None

    def close(self) -> None:
        """Let the thread end once the jobs already submitted are done."""
        if self._thread is not None:
            self._jobs.put(None)

    def _start_once(self) -> None:
        with self._count_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        self._lower_priority()
        while True:
            item = self._jobs.get()
            if item is None:
                return
            run_in_context, job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(run_in_context(job))
            except BaseException as error:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(error)

    def _lower_priority(self) -> None:
        if self.niceness <= 0:
            return
        try:
            # On Linux a thread is a task with its own nice value; this changes only this one.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.niceness)
            self.priority_lowered.set()
        except (AttributeError, OSError) as error:  # not Linux, or not permitted
            logger.info("model forwards run at normal priority (%s)", error)


def thread_niceness(native_id: int) -> int | None:
    """The nice value of one thread of this process (Linux), or None where it cannot be read."""
    try:
        return os.getpriority(os.PRIO_PROCESS, native_id)
    except (AttributeError, OSError):
        return None
