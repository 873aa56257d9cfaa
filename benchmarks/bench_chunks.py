"""Memory and time of chunked reconstruction (vggt_core.reconstruct_in_chunks) against the
sequence length, with the tiny model on the CPU.

    python benchmarks/bench_chunks.py                       # 64,128,256,512 frames -> results/chunks.json
    python benchmarks/bench_chunks.py --frames 64,512 --size 56x56

Each frame count runs in a fresh subprocess. Measured there, all on the CPU (these are not GPU
figures):
- ``chunk_run_peak_increase_bytes``: the largest, over the chunks, rise of resident memory during
  one chunk's model run and its conversion to a Reconstruction (the kernel's high-water mark is
  reset before each chunk; large allocations are mapped separately so that freed memory leaves the
  resident set, see rss_probe.py). This is the memory the issue asks to be flat in the
  sequence length: a GPU would hold exactly this part.
- ``whole_run_peak_increase_bytes``: the rise of the whole call including the per-chunk results
  and the merged result, which are O(frames) by nature (``result_bytes``).
- ``single_run_peak_increase_bytes``: the same frames in one model run, for contrast.
- seconds in total and per frame (time should be linear in frames).
Random frames and the tiny model's random-weight fixture: memory and time do not depend on the
values. Small frames (56×56 by default) keep 512 frames quick on 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
TINY = REPO_ROOT / "tests" / "fixtures" / "vggt-tiny"


def _result_bytes(recon) -> int:
    import numpy as np

    return sum(value.nbytes for value in vars(recon).values() if isinstance(value, np.ndarray))


def measure_one(frames: int, height: int, width: int, chunk_size: int, overlap: int, single_run: bool) -> dict:
    import torch

    from rss_probe import exact_large_allocations, peak_rss
    from vggt_core import reconstruct
    from vggt_core.chunks import reconstruct_in_chunks
    from vggt_core.weights import load_model

    torch.set_num_threads(1)
    exact_large_allocations()
    model = load_model(TINY, device="cpu")
    images = torch.rand(frames, 3, height, width, generator=torch.Generator().manual_seed(0))
    reconstruct(model, images[:chunk_size])  # warm-up: first-call allocations are not per-chunk costs
    chunk_peaks, model_cpu_seconds = [], []

    def measured_run(*args, **kwargs):
        cpu_started = time.process_time()
        with peak_rss() as probe:
            recon = reconstruct(*args, **kwargs)
        model_cpu_seconds.append(time.process_time() - cpu_started)
        chunk_peaks.append(probe.increase_bytes)
        return recon

    started, cpu_started = time.perf_counter(), time.process_time()
    with peak_rss() as whole:
        recon = reconstruct_in_chunks(model, images, chunk_size, overlap, run_chunk=measured_run)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    result = {
        "frames": frames, "chunks": len(chunk_peaks), "seconds": seconds, "seconds_per_frame": seconds / frames,
        # CPU time of this single-threaded process: what the work costs, unlike wall time on
        # cores shared with other jobs.
        "cpu_seconds": cpu_seconds, "cpu_seconds_per_frame": cpu_seconds / frames,
        "model_runs_cpu_seconds": sum(model_cpu_seconds), "merge_cpu_seconds": cpu_seconds - sum(model_cpu_seconds),
        "chunk_run_peak_increase_bytes": max(chunk_peaks),
        "whole_run_peak_increase_bytes": whole.increase_bytes,
        "result_bytes": _result_bytes(recon),
    }
    del recon
    if single_run:
        with peak_rss() as single:
            reconstruct(model, images)
        result["single_run_peak_increase_bytes"] = single.increase_bytes
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", default="64,128,256,512")
    parser.add_argument("--size", default="56x56", help="WxH of the frames (multiples of 14)")
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--overlap", type=int, default=4)
    parser.add_argument("--no-single-run", action="store_true", help="skip the unchunked contrast")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "chunks.json")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = (int(value) for value in args.size.lower().split("x"))
    if args.one is not None:
        print(json.dumps(measure_one(args.one, height, width, args.chunk_size, args.overlap,
                                     not args.no_single_run)))
        return
    rows = []
    for frames in (int(value) for value in args.frames.split(",")):
        command = [sys.executable, __file__, "--one", str(frames), "--size", args.size,
                   "--chunk-size", str(args.chunk_size), "--overlap", str(args.overlap)]
        if args.no_single_run:
            command.append("--no-single-run")
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    smallest, largest = rows[0], rows[-1]
    summary = {
        "chunk_peak_ratio_largest_vs_smallest": largest["chunk_run_peak_increase_bytes"]
        / smallest["chunk_run_peak_increase_bytes"],
        "seconds_per_frame_ratio_largest_vs_smallest": largest["seconds_per_frame"] / smallest["seconds_per_frame"],
        "cpu_seconds_per_frame_ratio_largest_vs_smallest": largest["cpu_seconds_per_frame"]
        / smallest["cpu_seconds_per_frame"],
    }
    report = {
        "benchmark": "chunked reconstruction, tiny model (tests/fixtures/vggt-tiny), CPU, 1 thread",
        "device": "cpu", "machine": platform.processor() or platform.machine(),
        "frame_size_wh": [width, height], "chunk_size": args.chunk_size, "overlap": args.overlap,
        "rows": rows, "summary": summary,
        "note": "CPU figures only; no GPU was measured. Resident-memory rises in bytes, see the module docstring.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
