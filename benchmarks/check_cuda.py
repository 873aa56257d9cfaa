"""What only a GPU shows: run on a CUDA machine (``python benchmarks/check_cuda.py``).

1. The golden tiny model on CUDA in float32 without autocast matches the reference fixture.
2. With the product's autocast (bf16, or fp16 without bf16 support) the backbone runs in half
   precision while the camera/depth/point heads get float32 tokens and return float32, and the
   outputs stay close to float32.
3. Peak memory of the lean forward versus keeping every aggregator layer, for VGGT-1B at 518x518.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from vggt_core.config import VGGTConfig  # noqa: E402
from vggt_core.model import VGGT  # noqa: E402

TINY = REPO_ROOT / "tests" / "fixtures" / "vggt-tiny"


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    ours, reference = ours.detach().double().cpu(), reference.double().cpu()
    return float((ours - reference).abs().max() / max(1.0, float(reference.abs().max())))


def check_golden_and_autocast() -> None:
    config = VGGTConfig.from_json(TINY / "config.json")
    model = VGGT(config).eval().cuda()
    model.load_state_dict(load_file(str(TINY / "model.safetensors")))
    inputs = {k: v.cuda() for k, v in load_file(str(TINY / "inputs.safetensors")).items()}
    reference = load_file(str(TINY / "outputs.safetensors"))
    keys = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf", "track", "vis", "conf")

    # The model enables autocast itself on CUDA; patch it off to compare float32 on the GPU.
    original = model._aggregator_autocast
    model._aggregator_autocast = lambda device: torch.autocast("cuda", enabled=False)
    out = model(inputs["images"], inputs["query_points"])
    print("CUDA float32 vs reference:", {k: f"{relative_error(out[k], reference[k]):.1e}" for k in keys})
    model._aggregator_autocast = original

    head_dtypes = []
    model.depth_head.register_forward_pre_hook(lambda m, args: head_dtypes.append(args[0][-1].dtype))
    block_dtypes = []
    model.aggregator.frame_blocks[0].attn.qkv.register_forward_hook(lambda m, a, o: block_dtypes.append(o.dtype))
    out = model(inputs["images"], inputs["query_points"])
    print("autocast: backbone matmul dtype", block_dtypes[0], "| depth-head input dtype", head_dtypes[0],
          "| depth dtype", out["depth"].dtype)
    print("CUDA autocast vs reference:", {k: f"{relative_error(out[k], reference[k]):.1e}" for k in keys})


def check_lean_memory(frames: int = 32, size: int = 518) -> None:
    with torch.device("cuda"):
        model = VGGT(VGGTConfig()).eval()
    images = torch.rand(frames, 3, size, size, device="cuda")
    for label, keep in (("lean (used layers only)", None), ("all 24 layers kept", list(range(24)))):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        if keep is not None:
            forward = model.aggregator.forward
            model.aggregator.forward = lambda images, keep_layers=None: forward(images, keep_layers=keep)
        model(images)
        torch.cuda.synchronize()
        print(f"VGGT-1B, {frames} frames {size}x{size}, {label}: "
              f"peak {torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB")


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    print(torch.cuda.get_device_name(), "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    check_golden_and_autocast()
    check_lean_memory()
