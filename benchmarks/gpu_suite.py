"""What only a GPU shows, one section at a time; each section writes one JSON file.

Run through ``benchmarks/gpu_suite.sh`` (all sections, each in a fresh process so that its
memory peak is its own). ``python benchmarks/gpu_suite.py --list`` prints the promised files.

Sections (full size; ``--tiny`` shrinks each to the tiny config and small images, to prove the
suite on a CPU in seconds):

- ``golden``: the tiny golden model on the device against the CPU reference outputs, in float32
  (autocast off; the golden tolerances) and under bf16 autocast (the product's CUDA path; its
  errors are recorded against a looser bound).
- ``stages``: per-stage seconds (aggregator, camera, depth, point heads) and the peak memory
  (``torch.cuda.max_memory_allocated``) of VGGT-1B forwards at 20/100/200 frames of 518x392, and
  the largest frame count that the memory estimate says fits, tried.
- ``attention``: achieved TFLOP/s of the global attention's ``scaled_dot_product_attention`` in
  bf16 at the 1B's shape, against the card's dense bf16 peak where the card is known.
- ``finetune``: one fine-tuning step of VGGT-1B (benchmarks/bench_finetune.py).
- ``distributed``: ``python -m vggt_core reconstruct --distributed`` on one GPU, when the CLI has
  that option (else recorded as skipped, with the reason).

Every file holds ``card`` (the GPU's name, or "cpu"), ``torch``, ``cuda`` (null without CUDA),
``device``, ``tiny`` and ``section``, then the section's own fields.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import torch  # noqa: E402

TINY_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "vggt-tiny"
SECTIONS = ("golden", "stages", "attention", "finetune", "distributed")
# Fields each section's file has besides the common ones (the CI test checks them).
SECTION_FIELDS = {
    "golden": ("float32", "bf16", "float32_tolerance", "bf16_tolerance", "passed"),
    "stages": ("config", "size", "runs", "largest_fitting"),
    "attention": ("shape", "dtype", "seconds", "tflops", "peak_tflops", "fraction_of_peak"),
    "finetune": ("config", "frames", "size", "seconds_per_step", "peak_gib"),
    "distributed": ("supported",),
}
COMMON_FIELDS = ("card", "torch", "cuda", "device", "tiny", "section")
DENSE_TOLERANCE, TRACK_TOLERANCE = 1e-5, 2e-3  # tests/test_model.py
BF16_TOLERANCE = 5e-2  # bf16 keeps 8 bits of mantissa: ~4e-3 per rounding, compounded over the blocks
TRACK_KEYS = ("track", "vis", "conf")
GOLDEN_KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf") + TRACK_KEYS
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
                    "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def card_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def card_slug(device: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", card_name(device).lower()).strip("-")


def result_path(out: Path, device: str, section: str) -> Path:
    return out / f"gpu-suite-{card_slug(device)}-{section}.json"


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if device.startswith("cuda") else None


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    ours, reference = ours.detach().double().cpu(), reference.double().cpu()
    return float((ours - reference).abs().max() / max(1.0, float(reference.abs().max())))


def random_model(config, device: str):
    """A model of ``config`` with small random weights, made straight on ``device`` (no CPU copy)."""
    from vggt_core.model import VGGT

    with torch.device("meta"):
        model = VGGT(config)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
    model.aggregator.reset_normalization_buffers()
    return model.eval()


# ------------------------------------------------------------------------------------- sections
def run_golden(device: str, tiny: bool, save) -> dict:
    from safetensors.torch import load_file

    from vggt_core.config import VGGTConfig
    from vggt_core.model import VGGT

    model = VGGT(VGGTConfig.from_json(TINY_FIXTURE / "config.json")).eval().to(device)
    model.load_state_dict(load_file(str(TINY_FIXTURE / "model.safetensors")))
    inputs = {k: v.to(device) for k, v in load_file(str(TINY_FIXTURE / "inputs.safetensors")).items()}
    reference = load_file(str(TINY_FIXTURE / "outputs.safetensors"))
    errors = {}
    device_type = torch.device(device).type
    for label, autocast in (("float32", torch.autocast(device_type, enabled=False)),
                            ("bf16", torch.autocast(device_type, dtype=torch.bfloat16))):
        # The model picks its own autocast for the backbone; replace it to choose the precision.
        model._aggregator_autocast = lambda _device, autocast=autocast: autocast
        out = model(inputs["images"], inputs["query_points"])
        errors[label] = {key: relative_error(out[key], reference[key]) for key in GOLDEN_KEYS}
    del model._aggregator_autocast
    float32_ok = all(error <= (TRACK_TOLERANCE if key in TRACK_KEYS else DENSE_TOLERANCE)
                     for key, error in errors["float32"].items())
    bf16_ok = all(error <= BF16_TOLERANCE for key, error in errors["bf16"].items() if key not in TRACK_KEYS)
    return {"float32": errors["float32"], "bf16": errors["bf16"],
            "float32_tolerance": {"dense": DENSE_TOLERANCE, "tracks": TRACK_TOLERANCE},
            "bf16_tolerance": {"dense": BF16_TOLERANCE, "tracks": None},
            "passed": {"float32": float32_ok, "bf16": bf16_ok}}


def timed_stages(model, images: torch.Tensor, device: str) -> dict:
    """One forward with the seconds each top-level stage took (device-synchronised hooks)."""
    stages = {"aggregator": model.aggregator, "camera_head": model.camera_head,
              "depth_head": model.depth_head, "point_head": model.point_head}
    seconds: dict[str, float] = {}
    handles = []
    for name, module in stages.items():
        def before(_module, _args, name=name):
            synchronize(device)
            seconds[name] = -time.perf_counter()

        def after(_module, _args, _output, name=name):
            synchronize(device)
            seconds[name] += time.perf_counter()

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        reset_peak(device)
        synchronize(device)
        started = time.perf_counter()
        model(images)
        synchronize(device)
        seconds["total"] = time.perf_counter() - started
    finally:
        for handle in handles:
            handle.remove()
    return seconds


def run_stages(device: str, tiny: bool, save) -> dict:
    """``save(fields)`` is called after each run, so a section stopped by its time limit keeps
    what it measured."""
    from vggt_core.config import VGGTConfig, tiny_config
    from vggt_core.memory import max_frames_for_memory

    config = tiny_config() if tiny else VGGTConfig()
    width, height = (84, 56) if tiny else (518, 392)
    counts = (2, 4, 8) if tiny else (20, 100, 200)
    model = random_model(config, device)
    model(torch.rand(2, 3, height, width, device=device))  # warm-up
    runs = []
    for frames in counts:
        images = torch.rand(frames, 3, height, width, device=device)
        try:
            runs.append({"frames": frames, "seconds": timed_stages(model, images, device), "peak_gib": peak_gib(device)})
        except torch.cuda.OutOfMemoryError as error:
            runs.append({"frames": frames, "out_of_memory": str(error).splitlines()[0]})
        del images
        save({"config": "tiny" if tiny else "1b", "size": f"{width}x{height}", "runs": runs,
              "largest_fitting": {"skipped": "not reached"}})
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info()
        budget = free + torch.cuda.memory_allocated()
        predicted = max_frames_for_memory(config, height, width, budget, activation_bytes=2)
        largest = {"predicted": predicted, "budget_gib": budget / 2 ** 30}
        try:
            images = torch.rand(predicted, 3, height, width, device=device)
            largest.update(frames=predicted, seconds=timed_stages(model, images, device), peak_gib=peak_gib(device),
                           fits=True)
        except torch.cuda.OutOfMemoryError as error:
            largest.update(frames=predicted, fits=False, out_of_memory=str(error).splitlines()[0])
    else:
        largest = {"skipped": "no device memory limit on a CPU"}
    return {"config": "tiny" if tiny else "1b", "size": f"{width}x{height}", "runs": runs, "largest_fitting": largest}


def run_attention(device: str, tiny: bool, save) -> dict:
    import torch.nn.functional as F

    heads, head_dim = (2, 16) if tiny else (16, 64)
    frames, tokens_per_frame = (4, 17) if tiny else (100, 5 + 28 * 37)  # 518x392: 28x37 patches + 5 special
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    tokens = frames * tokens_per_frame
    q, k, v = (torch.randn(1, heads, tokens, head_dim, device=device, dtype=dtype) for _ in range(3))
    F.scaled_dot_product_attention(q, k, v)  # warm-up
    repeats = 3 if tiny else 10
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        F.scaled_dot_product_attention(q, k, v)
    synchronize(device)
    seconds = (time.perf_counter() - started) / repeats
    tflops = 4 * tokens * tokens * head_dim * heads / seconds / 1e12  # QK^T and PV, 2 FLOP per multiply-add
    name = card_name(device)
    peak = next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)
    return {"shape": [1, heads, tokens, head_dim], "dtype": str(dtype).replace("torch.", ""), "seconds": seconds,
            "tflops": tflops, "peak_tflops": peak, "fraction_of_peak": tflops / peak if peak else None}


def run_finetune(device: str, tiny: bool, save) -> dict:
    from bench_finetune import measure

    if tiny:
        result = measure("tiny", device, 2, 42, 56, freeze="none", point=False, repeats=1)
    else:
        result = measure("1b", device, 8, 378, 518, freeze="aggregator", point=False, repeats=2)
    result.setdefault("peak_gib", peak_gib(device))
    return result


def run_distributed(device: str, tiny: bool, save) -> dict:
    command = [sys.executable, "-m", "vggt_core", "reconstruct"]
    help_text = subprocess.run(command + ["--help"], capture_output=True, text=True, cwd=REPO_ROOT).stdout
    if "--distributed" not in help_text:
        return {"supported": False, "skipped": "python -m vggt_core reconstruct has no --distributed option"}
    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        photos = []
        for index in range(4):
            path = Path(folder) / f"photo{index}.png"
            Image.fromarray((torch.rand(168, 224, 3) * 255).byte().numpy()).save(path)
            photos.append(str(path))
        started = time.perf_counter()
        run = subprocess.run(command + photos + ["--out", str(Path(folder) / "out"), "--checkpoint", str(TINY_FIXTURE),
                                                 "--device", device, "--distributed"],
                             capture_output=True, text=True, cwd=REPO_ROOT)
        seconds = time.perf_counter() - started
    return {"supported": True, "returncode": run.returncode, "seconds": seconds,
            "stderr_tail": run.stderr.strip().splitlines()[-5:]}


RUNNERS = {"golden": run_golden, "stages": run_stages, "attention": run_attention, "finetune": run_finetune,
           "distributed": run_distributed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny config and sizes (proves the suite on a CPU)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument("--section", choices=SECTIONS, help="run this section only")
    parser.add_argument("--list", action="store_true", help="print the files the suite promises, one a line")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --device cpu --tiny to check the suite itself")
    if args.list:
        print("\n".join(str(result_path(args.out, args.device, section)) for section in SECTIONS))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for section in [args.section] if args.section else SECTIONS:
        header = {"card": card_name(args.device), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "device": args.device, "tiny": args.tiny, "section": section}
        started = time.perf_counter()
        path = result_path(args.out, args.device, section)

        def save(fields: dict) -> None:
            record = {**header, **fields, "section_seconds": time.perf_counter() - started}
            path.write_text(json.dumps(record, indent=2) + "\n")

        try:
            save(RUNNERS[section](args.device, args.tiny, save))
        except Exception as error:  # one failing section must not hide the others' results
            save({"error": f"{type(error).__name__}: {error}"})
        print(f"{section}: {path}")


if __name__ == "__main__":
    main()
