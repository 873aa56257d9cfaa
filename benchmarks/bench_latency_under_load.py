"""Latency of what visitors do (page loads of share links, opening a link, view changes) while
another user's reconstruction runs, against an app on 127.0.0.1.

    python benchmarks/bench_latency_under_load.py --viewers 2 --minutes 2 --repeat 3 --json out.json

It starts its own ``--checkpoint random-tiny`` server (see ``benchmarks/soak.py``), stores a few
scenes, then runs two phases of ``--minutes`` each:

* **quiet**: ``--viewers`` visitors loop over page load → view change → open link;
* **loaded**: the same, while one more user reconstructs back to back.

Each visitor talks to the server as the browser does, over plain HTTP (no gradio_client, whose
own threads would compete for this machine's cores): a page load is ``GET /?r=<id>`` followed
by the page's load event through the queue (``/gradio_api/queue/join`` with the page's query,
then its event stream); every result's 3-D scene is fetched like the viewer fetches it, and that
is counted in the call's time. In the loaded phase only calls that overlapped a reconstruction
are counted. The target is p95 <= 1 s for all three, with 4 page loads at once not queuing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import (UNLIMITED_CLIENT_ARGS, free_port, make_photo_sets, percentile, process_stats,  # noqa: E402
                  start_server)

VIEW_CONTROLS = ["confidence", "branch", "frame", "show_cameras", "filter_black", "filter_white", "max_points",
                 "hide_sky"]


class GradioEvents:
    """Calls the app's events over HTTP as its page does (queue join, then the event stream)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/") + "/"
        self.http = httpx.Client(timeout=300)
        config = self.http.get(self.url + "config").json()
        self.fn_index: dict[str, int] = {}
        for index, dependency in enumerate(config["dependencies"]):
            name = dependency.get("api_name")
            if name:
                self.fn_index.setdefault(name, index)
            if any(target[1] == "load" for target in dependency.get("targets", [])):
                self.fn_index.setdefault("page_load", index)

    def upload(self, paths: list[str]) -> list[dict]:
        files = [("files", (Path(path).name, open(path, "rb"))) for path in paths]
        try:
            response = self.http.post(self.url + "gradio_api/upload", files=files)
        finally:
            for _, (_, handle) in files:
                handle.close()
        response.raise_for_status()
        return [{"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": Path(name).name}
                for path, name in zip(response.json(), paths)]

    def call(self, endpoint: str, data: list, query: str = "") -> list:
        session = uuid.uuid4().hex[:12]
        join = self.http.post(self.url + "gradio_api/queue/join" + (f"?{query}" if query else ""),
                              json={"data": data, "fn_index": self.fn_index[endpoint], "session_hash": session,
                                    "event_data": None, "trigger_id": None})
        join.raise_for_status()
        with self.http.stream("GET", self.url + "gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    output = message.get("output", {})
                    if not message.get("success", False) or "error" in output and output["error"]:
                        raise RuntimeError(str(output.get("error"))[:200])
                    return output["data"]
        raise RuntimeError("the event stream ended without a result")

    def fetch_scene(self, value) -> int:
        """The GLB the 3-D viewer would fetch (``value``: the Model3D output)."""
        if isinstance(value, dict) and "value" in value and isinstance(value["value"], dict):
            value = value["value"]
        if not isinstance(value, dict) or not value.get("url"):
            raise RuntimeError(f"no 3-D scene in the result: {str(value)[:120]}")
        response = self.http.get(value["url"])
        response.raise_for_status()
        return len(response.content)

    def page_load(self, recon_id: str) -> None:
        self.http.get(self.url, params={"r": recon_id}).raise_for_status()
        outputs = self.call("page_load", [], query=f"r={recon_id}")
        self.fetch_scene(outputs[0])


def view_controls(rng: random.Random) -> list:
    """A new view each time (as a dragged slider gives), so the renderer's cache cannot answer it."""
    return [round(rng.uniform(0.0, 95.0), 2), rng.choice(["depth", "point"]), "All", True, False, False,
            rng.choice([20_000, 100_000, 1_000_000]), False]


DEFAULT_CONTROLS = [50, "depth", "All", True, False, False, 1_000_000, False]


class Samples:
    def __init__(self):
        self.calls: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.lock = threading.Lock()

    def timed(self, endpoint: str, function, *args):
        started = time.monotonic()
        try:
            result = function(*args)
        except Exception as error:  # noqa: BLE001 - a failure is a data point
            with self.lock:
                self.errors[endpoint].append(f"{type(error).__name__}: {str(error)[:160]}")
            return None
        with self.lock:
            self.calls[endpoint].append((started, time.monotonic()))
        return result


def visitor(index: int, url: str, links: list[str], samples: Samples, stop_at: float) -> None:
    rng = random.Random(index)
    events = GradioEvents(url)
    while time.monotonic() < stop_at:
        link = rng.choice(links)
        samples.timed("page_load", events.page_load, link)
        outputs = samples.timed("update_view", lambda: events.call("update_view", [link, *view_controls(rng)]))
        if outputs:
            samples.timed("fetch_after_view", events.fetch_scene, outputs[0])
        other = rng.choice(links)
        samples.timed("open_link", lambda: events.fetch_scene(
            events.call("open_shared", [other, *DEFAULT_CONTROLS])[0]))


def reconstructor(url: str, photo_sets, busy: list[tuple[float, float]], stop_at: float, errors: list[str]) -> None:
    events = GradioEvents(url)
    rng = random.Random(99)
    while time.monotonic() < stop_at:
        files = events.upload(photo_sets[rng.randrange(len(photo_sets))])
        started = time.monotonic()
        try:
            events.call("reconstruct", [files, 1.0, *DEFAULT_CONTROLS, False])
        except Exception as error:  # noqa: BLE001
            errors.append(str(error)[:200])
        busy.append((started, time.monotonic()))


def overlaps(span: tuple[float, float], busy: list[tuple[float, float]]) -> bool:
    return any(start < span[1] and span[0] < end for start, end in busy)


def phase(url: str, links: list[str], photo_sets, viewers: int, seconds: float, loaded: bool) -> dict:
    samples, busy, reconstruct_errors = Samples(), [], []
    stop_at = time.monotonic() + seconds
    threads = [threading.Thread(target=visitor, args=(index, url, links, samples, stop_at), daemon=True)
               for index in range(viewers)]
    if loaded:
        threads.append(threading.Thread(target=reconstructor, daemon=True,
                                        args=(url, photo_sets, busy, stop_at, reconstruct_errors)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The view change as the visitor sees it: the event, then fetching its scene.
    combined = []
    for (start, _), (_, end) in zip(samples.calls["update_view"], samples.calls["fetch_after_view"]):
        combined.append((start, end))
    samples.calls["view_change"] = combined
    result = {}
    for endpoint in ("page_load", "open_link", "view_change"):
        spans = samples.calls[endpoint]
        if loaded:
            spans = [span for span in spans if overlaps(span, busy)]
        durations = [end - start for start, end in spans]
        result[endpoint] = {"calls": len(durations), "errors": len(samples.errors[endpoint]),
                            "p50_s": round(percentile(durations, 0.5), 3) if durations else None,
                            "p95_s": round(percentile(durations, 0.95), 3) if durations else None,
                            "max_s": round(max(durations), 3) if durations else None}
    if loaded:
        seconds_each = [end - start for start, end in busy]
        result["reconstruct"] = {"calls": len(busy), "errors": len(reconstruct_errors),
                                 "p50_s": round(percentile(seconds_each, 0.5), 3) if busy else None}
    result["error_messages"] = sorted({message for values in samples.errors.values() for message in values})[:5]
    return result


def _seconds(value: float | None) -> str:
    return f"{value:7.2f}" if value is not None else f"{'-':>7s}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--viewers", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=2.0, help="length of each phase")
    parser.add_argument("--scenes", type=int, default=4, help="share links stored before the phases")
    parser.add_argument("--frames", type=int, default=8, help="photos per reconstruction of the loaded phase")
    parser.add_argument("--server-arg", action="append", default=[], help="extra app.py argument (repeatable)")
    parser.add_argument("--repeat", type=int, default=1, help="quiet + loaded phases, this many times")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="vggt-latency-"))
    port = free_port()
    log = open(work / "server.log", "wb")
    print(f"starting the server (log: {work / 'server.log'})", flush=True)
    # The stored scenes are the oldest entries: a storage bound would expire them mid-run.
    server = start_server(port, work / "storage", work / "gradio-cache", 1024.0, log,
                          extra_args=["--storage-max-mb", "1000000", *UNLIMITED_CLIENT_ARGS, *args.server_arg])
    url = f"http://127.0.0.1:{port}/"
    try:
        photo_sets = make_photo_sets(work, 4)
        events = GradioEvents(url)
        links = []
        for index in range(args.scenes):
            outputs = events.call("reconstruct", [events.upload(photo_sets[index % len(photo_sets)]), 1.0,
                                                  *DEFAULT_CONTROLS, False])
            links.append(outputs[4])
        for link in links:  # both phases start with every scene read once (no cold reads in one only)
            events.call("update_view", [link, *view_controls(random.Random(link))])
        print(f"stored {len(links)} scenes; cores: {os.cpu_count()}", flush=True)
        results = {"viewers": args.viewers, "frames_per_reconstruction": args.frames,
                   "minutes_per_phase": args.minutes, "cores": os.cpu_count(),
                   "server_args": args.server_arg}
        big_sets = make_photo_sets(work, 2, num_views=args.frames)
        results["runs"] = []
        for run in range(args.repeat):
            this_run = {}
            results["runs"].append(this_run)
            for name, loaded in (("quiet", False), ("loaded", True)):
                this_run[name] = phase(url, links, big_sets, args.viewers, args.minutes * 60, loaded)
                rss, threads = process_stats(server.pid)
                this_run[name]["server_rss_mb"], this_run[name]["server_threads"] = round(rss, 1), threads
                print(f"\nrun {run + 1}, {name}: {args.viewers} visitors"
                      + (" + 1 user reconstructing" if loaded else ""))
                print(f"{'':14s} {'calls':>6s} {'errors':>6s} {'p50 s':>7s} {'p95 s':>7s} {'max s':>7s}")
                for endpoint in ("page_load", "open_link", "view_change", "reconstruct"):
                    stats = this_run[name].get(endpoint)
                    if stats:
                        figures = " ".join(_seconds(stats.get(key)) for key in ("p50_s", "p95_s", "max_s"))
                        print(f"{endpoint:14s} {stats['calls']:6d} {stats['errors']:6d} {figures}", flush=True)
                for message in this_run[name]["error_messages"]:
                    print(f"  error: {message}")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
