"""Time and peak memory of one VGGT forward for several frame counts.

    python benchmarks/bench_model.py --config tiny --frames 1,8,32 --size 518x392
    python benchmarks/bench_model.py --config 1b --device cuda --frames 1,8,32,100 --size 518x518

Random weights (speed and memory do not depend on the values). Each frame count runs in a fresh
subprocess so that the peak is its own: on CPU the peak resident set size (RSS) of the process,
on CUDA ``torch.cuda.max_memory_allocated``. On CUDA the model runs as in the product (bf16
autocast for the backbone, float32 heads, SDPA attention).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def make_config(name: str):
    from vggt_core.config import VGGTConfig, tiny_config

    if name == "tiny":
        return tiny_config()
    if name == "1b":
        return VGGTConfig()
    return VGGTConfig.from_json(name)


def measure_one(config_name: str, device: str, frames: int, height: int, width: int, repeats: int,
                chunk: int, plain: bool = False) -> dict:
    import torch

    from vggt_core.model import VGGT
    from vggt_core.model.fast_paths import fast_paths

    with fast_paths(not plain):
        return _measure(VGGT, config_name, device, frames, height, width, repeats, chunk)


def _measure(VGGT, config_name: str, device: str, frames: int, height: int, width: int, repeats: int,
             chunk: int) -> dict:
    import torch

    torch.manual_seed(0)
    model = VGGT(make_config(config_name)).eval().to(device)
    images = torch.rand(frames, 3, height, width, device=device)
    model(images, frames_chunk_size=chunk)  # warm-up: kernels, allocator, caches
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = model(images, frames_chunk_size=chunk)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        del out
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
        memory_kind = "cuda max allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        memory_kind = "peak RSS"
    return {"frames": frames, "seconds": min(times), "peak_bytes": peak, "memory_kind": memory_kind,
            "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="tiny, 1b, or a config JSON path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", default="1,8,32", help="comma-separated frame counts")
    parser.add_argument("--size", default="518x392", help="WIDTHxHEIGHT, multiples of 14")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=8, help="frames_chunk_size of the dense heads")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--plain", action="store_true",
                        help="the plain forward (vggt_core.model.fast_paths off), as before the CPU speed-ups")
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    if args.single is not None:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(measure_one(args.config, args.device, args.single, height, width, args.repeats,
                                     args.chunk, plain=args.plain)))
        return

    print(f"config={args.config} device={args.device} size={width}x{height} chunk={args.chunk} "
          f"repeats={args.repeats} (best time){' plain forward' if args.plain else ''}")
    print(f"| frames | time (s) | s/frame | peak memory (GiB) |")
    print(f"|---:|---:|---:|---:|")
    for frames in (int(v) for v in args.frames.split(",")):
        command = [sys.executable, __file__, "--single", str(frames)] + [
            a for a in sys.argv[1:] if not a.startswith("--single")]
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["?"])[-1]
            print(f"| {frames} | failed: {tail} | | |")
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"| {frames} | {row['seconds']:.3f} | {row['seconds'] / frames:.4f} | "
              f"{row['peak_bytes'] / 2 ** 30:.2f} ({row['memory_kind']}, {row['device_name']}) |")


if __name__ == "__main__":
    main()
