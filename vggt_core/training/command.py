"""``python -m vggt_core finetune``: flags and the run (the CLI module only wires it in)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoints import RANDOM_TINY


def _frames(text: str) -> tuple[int, int]:
    parts = text.split("-")
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LOW-HIGH, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not 2 <= values[0] <= values[1] <= 24:
        raise argparse.ArgumentTypeError(f"frames per scene must be N or LOW-HIGH within 2..24, got {text!r}")
    return values


def add_finetune_command(commands) -> None:
    """Add the ``finetune`` sub-parser to ``commands`` (an argparse sub-parsers object)."""
    run = commands.add_parser(
        "finetune", help="fine-tune VGGT on your own scenes",
        description="Fine-tune VGGT's camera and depth heads (and optionally the point and track heads) on scene "
                    "folders: ours (cameras.json), COLMAP models, or synthetic scenes. Writes model.safetensors + "
                    "config.json (loadable with --checkpoint OUT), training_state.pt and metrics.csv into --out.")
    run.add_argument("--data", required=True, type=Path, help="a scene folder or a folder of scene folders")
    run.add_argument("--checkpoint", required=True,
                     help=f"weights to start from: Hub repo id, local file or folder, or {RANDOM_TINY!r} "
                          "(an untrained tiny model, for trying it out on a laptop)")
    run.add_argument("--out", required=True, type=Path, help="output folder for checkpoints and metrics")
    run.add_argument("--config", type=Path, default=None, help="model config JSON (default: beside the checkpoint)")
    run.add_argument("--steps", type=int, default=1000, help="optimiser steps (default 1000)")
    run.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    run.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    run.add_argument("--frames-per-scene", type=_frames, default=(2, 24),
                     help="frames per sequence, N or LOW-HIGH drawn per batch (default 2-24)")
    run.add_argument("--image-width", type=int, default=518, help="training image width, a multiple of 14 "
                                                                  "(default 518)")
    run.add_argument("--batch-size", type=int, default=None,
                     help="sequences per batch (default: 48 images per batch, i.e. floor(48/S))")
    run.add_argument("--accum-steps", type=int, default=2, help="gradient accumulation chunks (default 2)")
    run.add_argument("--freeze", choices=("aggregator", "none"), default="aggregator",
                     help="freeze the aggregator (default, as the reference) or train everything")
    run.add_argument("--point-loss", action="store_true", help="also train the point-map head")
    run.add_argument("--track-loss", action="store_true",
                     help="also train the track head on tracks made from depth and cameras")
    run.add_argument("--no-augment", action="store_true", help="no colour, crop or resize augmentation")
    run.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    run.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    run.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    run.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")


def run_finetune(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from .trainer import Trainer, TrainingSettings

    settings = TrainingSettings(
        data=args.data, out=args.out, checkpoint=args.checkpoint, config=args.config, steps=args.steps, lr=args.lr,
        weight_decay=args.weight_decay, frames_per_scene=args.frames_per_scene, image_width=args.image_width,
        batch_size=args.batch_size, accum_steps=args.accum_steps, freeze=args.freeze, point_loss=args.point_loss,
        track_loss=args.track_loss, augment=not args.no_augment, checkpoint_every=args.checkpoint_every,
        resume=args.resume, seed=args.seed, device=args.device)
    try:
        trainer = Trainer(settings)
    except ValueError as error:
        raise InputError(str(error)) from error
    results = trainer.run()
    skipped = sum(result.skipped for result in results)
    if results:
        last = results[-1].losses.get("objective", float("nan"))
        print(f"Fine-tuned {len(results)} steps ({skipped} skipped for a non-finite loss); last objective {last:.4g}. "
              f"Checkpoint: {args.out}/model.safetensors (use --checkpoint {args.out}); metrics: "
              f"{args.out}/metrics.csv", file=sys.stdout)
    return 0
