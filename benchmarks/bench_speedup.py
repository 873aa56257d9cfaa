"""Our forward's time against the plain (pre-optimisation) forward, both in one process.

    python benchmarks/bench_speedup.py --config tiny --frames 32 --size 518x392 --rounds 5

The authors' implementation cannot be installed here (it is not on PyPI), so the baseline is our
own forward with ``vggt_core.model.fast_paths`` switched off: the code path that was measured at
0.98-1.05x the authors' time on this kind of 2-core CPU (docs/performance.md). Both run on the
same model, weights and images, alternately (the order flips every round so that neither always
runs first), after one warm-up each; the report gives each side's best and median time, their
ratio, the ratio of every round, and the largest relative difference between the two outputs.
Random weights: the speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from bench_model import make_config  # noqa: E402
from vggt_core.model import VGGT  # noqa: E402
from vggt_core.model.fast_paths import fast_paths  # noqa: E402

OUTPUT_KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")


def timed_forward(model: VGGT, images: torch.Tensor, fast: bool, chunk: int) -> tuple[float, dict]:
    with fast_paths(fast):
        start = time.perf_counter()
        outputs = model(images, frames_chunk_size=chunk)
        return time.perf_counter() - start, outputs


def largest_relative_difference(fast: dict, plain: dict) -> float:
    return max(float((fast[k].double() - plain[k].double()).abs().max() / max(1.0, float(plain[k].abs().max())))
               for k in OUTPUT_KEYS if k in plain)


def compare(config_name: str, frames: int, height: int, width: int, rounds: int, chunk: int) -> dict:
    torch.manual_seed(0)
    model = VGGT(make_config(config_name)).eval()
    images = torch.rand(frames, 3, height, width)
    _, plain_outputs = timed_forward(model, images, fast=False, chunk=chunk)  # warm-up
    _, fast_outputs = timed_forward(model, images, fast=True, chunk=chunk)
    difference = largest_relative_difference(fast_outputs, plain_outputs)
    del plain_outputs, fast_outputs
    times = {"fast": [], "plain": []}
    for index in range(rounds):
        order = (False, True) if index % 2 == 0 else (True, False)
        for fast in order:
            seconds, outputs = timed_forward(model, images, fast=fast, chunk=chunk)
            del outputs
            times["fast" if fast else "plain"].append(seconds)
    best_fast, best_plain = min(times["fast"]), min(times["plain"])
    return {
        "config": config_name, "frames": frames, "size": f"{width}x{height}", "threads": torch.get_num_threads(),
        "rounds": rounds, "fast_seconds": times["fast"], "plain_seconds": times["plain"],
        "best_fast_s": best_fast, "best_plain_s": best_plain, "ratio_of_best": best_fast / best_plain,
        "ratio_of_medians": statistics.median(times["fast"]) / statistics.median(times["plain"]),
        "ratio_per_round": [f / p for f, p in zip(times["fast"], times["plain"])],
        "largest_relative_difference": difference, "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="tiny, 1b, or a config JSON path")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--size", default="518x392", help="WIDTHxHEIGHT, multiples of 14")
    parser.add_argument("--rounds", type=int, default=5, help="timed forwards of each kind")
    parser.add_argument("--chunk", type=int, default=8, help="frames_chunk_size of the dense heads")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    result = compare(args.config, args.frames, height, width, args.rounds, args.chunk)
    print(f"config={result['config']} frames={args.frames} size={result['size']} threads={result['threads']}")
    print(f"plain: best {result['best_plain_s']:.3f} s, median {statistics.median(result['plain_seconds']):.3f} s")
    print(f"fast:  best {result['best_fast_s']:.3f} s, median {statistics.median(result['fast_seconds']):.3f} s")
    print(f"ratio fast/plain: {result['ratio_of_best']:.3f} (best), {result['ratio_of_medians']:.3f} (medians), "
          f"per round {', '.join(f'{r:.2f}' for r in result['ratio_per_round'])}")
    print(f"largest relative difference of the outputs: {result['largest_relative_difference']:.1e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
