"""Time and peak memory of one fine-tuning step (forward, the reference's objective, backward,
clipping, AdamW), with the trainer's own settings.

    python benchmarks/bench_finetune.py --config tiny --frames 4 --size 56x42
    python benchmarks/bench_finetune.py --config 1b --device cuda --frames 8,24 --size 518x378 --freeze aggregator

Random weights and a random batch (speed and memory do not depend on the values). On CUDA the
backbone runs in bf16 and its trainable blocks use activation checkpointing, as in the trainer;
the peak is ``torch.cuda.max_memory_allocated``. On CPU only the time is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(config_name: str, device: str, frames: int, height: int, width: int, freeze: str, point: bool,
            repeats: int) -> dict:
    import torch

    from vggt_core.config import VGGTConfig, tiny_config
    from vggt_core.model import VGGT
    from vggt_core.training import compute_losses, normalize_ground_truth
    from vggt_core.training.optimization import clip_gradients, clip_groups, freeze_modules
    from vggt_core.training.trainer import _checkpoint_aggregator_blocks

    config = tiny_config() if config_name == "tiny" else VGGTConfig() if config_name == "1b" else \
        VGGTConfig.from_json(config_name)
    torch.manual_seed(0)
    model = VGGT(config).to(device).train()
    freeze_modules(model, freeze)
    if device.startswith("cuda"):
        _checkpoint_aggregator_blocks(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    groups = clip_groups(model)

    generator = torch.Generator().manual_seed(0)
    depth = 1 + torch.rand(1, frames, height, width, generator=generator)
    focal = float(width)
    intrinsics = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]]).expand(1, frames, 3, 3)
    extrinsics = torch.eye(4)[:3].expand(1, frames, 3, 4).clone()
    extrinsics[..., 0, 3] = torch.linspace(0, 1, frames)
    batch = normalize_ground_truth({
        "images": torch.rand(1, frames, 3, height, width, generator=generator), "depths": depth,
        "extrinsics": extrinsics, "intrinsics": intrinsics.clone(),
        "cam_points": torch.rand(1, frames, height, width, 3), "world_points": torch.rand(1, frames, height, width, 3),
        "point_masks": torch.ones(1, frames, height, width, dtype=torch.bool)})
    batch = {key: value.to(device) for key, value in batch.items()}

    def step():
        optimizer.zero_grad(set_to_none=True)
        losses = compute_losses(model(batch["images"]), batch, point=point)
        losses["objective"].backward()
        clip_gradients(groups, 1.0)
        optimizer.step()

    step()  # warm-up (allocations, kernels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    result = {"config": config_name, "device": device, "frames": frames, "size": f"{width}x{height}",
              "freeze": freeze, "point_loss": point, "seconds_per_step": (time.perf_counter() - started) / repeats}
    if device.startswith("cuda"):
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny", help="tiny, 1b, or a config JSON")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", default="4", help="comma-separated frame counts")
    parser.add_argument("--size", default="56x42", help="WIDTHxHEIGHT, multiples of 14")
    parser.add_argument("--freeze", choices=("aggregator", "none"), default="aggregator")
    parser.add_argument("--point-loss", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(part) for part in args.size.split("x"))
    for frames in (int(part) for part in args.frames.split(",")):
        print(json.dumps(measure(args.config, args.device, frames, height, width, args.freeze, args.point_loss,
                                 args.repeats)))


if __name__ == "__main__":
    main()
