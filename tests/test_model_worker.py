"""The model-forward worker: one job at a time, in order, with the caller's context, on a thread
at a lower CPU priority whose helper threads (torch's OpenMP workers) inherit it."""

from __future__ import annotations

import contextvars
import os
import sys
import threading
import time

import pytest
import torch

from vggt_app.runtime.model_worker import ModelWorker, thread_niceness

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def test_results_and_exceptions_come_back_to_the_caller():
    worker = ModelWorker()
    assert worker.run(lambda: 6 * 7) == 42
    with pytest.raises(ValueError, match="bad frames"):
        worker.run(lambda: (_ for _ in ()).throw(ValueError("bad frames")))
    assert worker.run(lambda: "still serving") == "still serving"
    worker.close()


def test_creating_a_worker_starts_no_thread():
    before = set(threading.enumerate())
    worker = ModelWorker()
    # Sets, not counts: idle threads left by other tests may end meanwhile.
    assert set(threading.enumerate()) - before == set() and worker.thread_native_id is None
    worker.run(lambda: None)
    assert worker.thread_native_id is not None
    worker.close()


def test_jobs_run_one_at_a_time_in_order_and_waiters_are_told():
    worker = ModelWorker()
    running, order, told = [], [], []
    gate = threading.Event()

    def job(name):
        running.append(name)
        assert len(running) == 1, "two jobs ran at once"
        if name == "first":
            gate.wait(10)
        order.append(name)
        running.remove(name)
        return name

    first = threading.Thread(target=worker.run, args=(lambda: job("first"),))
    first.start()
    deadline = time.monotonic() + 10
    while not worker.is_busy and time.monotonic() < deadline:
        time.sleep(0.01)
    second = threading.Thread(target=worker.run, args=(lambda: job("second"),),
                              kwargs={"on_wait": lambda: told.append("second")})
    second.start()
    time.sleep(0.2)
    assert order == [] and told == ["second"]
    gate.set()
    first.join(10)
    second.join(10)
    assert order == ["first", "second"]
    assert not worker.is_busy
    told_alone = []
    worker.run(lambda: None, on_wait=lambda: told_alone.append(1))
    assert told_alone == []  # nothing was ahead of it
    worker.close()


def test_the_callers_context_travels_with_the_job():
    request_user = contextvars.ContextVar("request_user", default=None)
    worker = ModelWorker()
    request_user.set("alice")
    assert worker.run(request_user.get) == "alice"
    request_user.set("bob")
    assert worker.run(request_user.get) == "bob"
    worker.close()


@linux_only
def test_forwards_run_at_lower_priority_and_their_openmp_threads_inherit_it():
    base = thread_niceness(threading.get_native_id())
    worker = ModelWorker(niceness=5)

    def forward():
        torch.set_num_threads(2)  # at least one OpenMP worker besides the calling thread
        x = torch.randn(1024, 1024)
        for _ in range(3):
            x = x @ x / 1024
        tasks = {int(tid) for tid in os.listdir("/proc/self/task")}
        return threading.get_native_id(), {tid: thread_niceness(tid) for tid in tasks}

    threads_before = {int(tid) for tid in os.listdir("/proc/self/task")}
    worker_id, niceness = worker.run(forward)
    if not worker.priority_lowered.is_set():
        pytest.skip("this system does not let a thread lower its priority")
    expected = min(base + 5, 19)
    assert niceness[worker_id] == expected
    new_threads = set(niceness) - threads_before - {worker_id}
    openmp_threads = [tid for tid in new_threads if niceness[tid] == expected]
    assert openmp_threads, f"no helper thread inherited the lower priority: {niceness}"
    # Everybody else (the caller, the interactive requests) keeps its priority.
    assert thread_niceness(threading.get_native_id()) == base
    worker.close()
