"""Per-rank peak memory of the sharded forward (vggt_core.distributed) on the CPU with gloo.

    python benchmarks/bench_distributed.py        # 1, 2, 3 ranks -> results/distributed.json

Each rank count is one ``torchrun`` launch of this file (``--worker``). Every rank measures the
rise of its resident memory during one ``sharded_forward`` of the whole sequence (the kernel's
high-water mark is reset first; large allocations are mapped separately so freed memory leaves
the resident set: see rss_probe.py). The dense heads decode all of a rank's frames at once
(``frames_chunk_size=None``) so that the activations, not the fixed 8-frame decoding buffer,
dominate. ``outputs_bytes`` is what a rank holds as results: all frames' outputs on rank 0, its
own shard's on the others; ``peak_minus_outputs_bytes`` leaves them out. The bound the issue sets is
``single / N + gathered key/value buffers``; the buffers of one global layer (the padded parts
list and the concatenated keys and values, alive together) are computed from the shapes.
CPU figures only: no GPU was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
TINY = REPO_ROOT / "tests" / "fixtures" / "vggt-tiny"


def worker(out_dir: Path, frames: int, height: int, width: int) -> None:
    import torch
    import torch.distributed as dist

    from rss_probe import exact_large_allocations, peak_rss
    from vggt_core.distributed import init_from_environment, shard_bounds, sharded_forward
    from vggt_core.weights import load_model

    torch.set_num_threads(1)
    exact_large_allocations()
    init_from_environment("cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = load_model(TINY, device="cpu")
    images = torch.rand(1, frames, 3, height, width, generator=torch.Generator().manual_seed(0))
    sharded_forward(model, images[:, :max(world, 2)], frames_chunk_size=None)  # warm-up
    dist.barrier()
    with peak_rss() as probe:
        outputs = sharded_forward(model, images, frames_chunk_size=None)
    start, end = shard_bounds(frames, world, rank)
    # Rank 0 ends up holding all frames' outputs; every other rank holds (and sends) its shard's:
    # depth, its confidence, 3 point coordinates and their confidence, float32.
    local_outputs_bytes = (end - start) * height * width * (1 + 1 + 3 + 1) * 4
    outputs_bytes = local_outputs_bytes if outputs is None else sum(
        value.numel() * value.element_size() for value in outputs.values() if isinstance(value, torch.Tensor))
    row = {"rank": rank, "ranks": world, "frames_on_rank": end - start,
           "peak_increase_bytes": probe.increase_bytes, "outputs_bytes": outputs_bytes}
    (out_dir / f"rank{rank}-of-{world}.json").write_text(json.dumps(row))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gathered_kv_bytes(frames: int, height: int, width: int, ranks: int) -> int:
    """Keys and values of one global layer: the padded per-rank parts plus their concatenation."""
    from vggt_core.config import VGGTConfig

    config = VGGTConfig.from_json(TINY / "config.json")
    tokens_per_frame = 1 + config.num_register_tokens + (height // 14) * (width // 14)
    largest_shard = -(-frames // ranks)
    per_token = config.embed_dim * 4  # float32, all heads
    return 2 * per_token * tokens_per_frame * (ranks * largest_shard + frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="1,2,3")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="112x112", help="WxH (multiples of 14)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "distributed.json")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    width, height = (int(value) for value in args.size.lower().split("x"))
    if args.worker is not None:
        worker(args.worker, args.frames, height, width)
        return
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for ranks in (int(value) for value in args.ranks.split(",")):
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                       "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), __file__,
                       "--worker", scratch, "--frames", str(args.frames), "--size", args.size]
            subprocess.run(command, check=True, capture_output=True, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
            for rank in range(ranks):
                rows.append(json.loads((Path(scratch) / f"rank{rank}-of-{ranks}.json").read_text()))
    single = next(row for row in rows if row["ranks"] == 1)
    single_activation = single["peak_increase_bytes"] - single["outputs_bytes"]
    summary = []
    for ranks in sorted({row["ranks"] for row in rows}):
        for row in (r for r in rows if r["ranks"] == ranks):
            activation = row["peak_increase_bytes"] - row["outputs_bytes"]
            bound = single_activation / ranks + gathered_kv_bytes(args.frames, height, width, ranks)
            summary.append({"ranks": ranks, "rank": row["rank"], "frames_on_rank": row["frames_on_rank"],
                            "peak_minus_outputs_bytes": activation, "bound_bytes": int(bound),
                            "fraction_of_single": activation / single_activation,
                            "within_bound": activation <= bound})
            print(json.dumps(summary[-1]), flush=True)
    report = {
        "benchmark": "sharded forward, tiny model (tests/fixtures/vggt-tiny), gloo on CPU, 1 thread per rank",
        "device": "cpu", "machine": platform.processor() or platform.machine(),
        "frames": args.frames, "frame_size_wh": [width, height], "frames_chunk_size": None,
        "rows": rows, "per_rank": summary,
        "note": "CPU figures only; GPU memory and frames-per-GPU scaling are unmeasured (no GPU lent).",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
