"""The fine-tuning loop: AdamW, warm-up + cosine, per-group clipping, accumulation, checkpoints.

See docs/training.md, "Training loop". The model package is untouched: activation checkpointing
wraps the aggregator's blocks from here, and the aggregator already runs in bf16 on CUDA. On a GPU
without bf16 the model falls back to fp16, whose small gradients underflow: the loop then scales
the loss with a gradient scaler (:func:`gradient_scaler`).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

from .checkpoints import BrokenCheckpointError, build_model, load_training_state, save_checkpoint
from .dataset import SceneDataset
from .loss_config import PAPER_TRACK_WEIGHT, LossConfig
from .losses import compute_losses
from .normalization import normalize_ground_truth
from .optimization import accumulation_chunks, clip_gradients, clip_groups, freeze_modules, slice_batch
from .schedule import FLOOR_LR, WARMUP_FRACTION, learning_rate_at

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
LOSS_COLUMNS = ("objective", "loss_camera", "loss_T", "loss_R", "loss_FL", "loss_conf_depth", "loss_reg_depth",
                "loss_grad_depth", "loss_conf_point", "loss_reg_point", "loss_grad_point", "loss_track", "loss_vis")
TENSOR_BATCH_KEYS = ("images", "depths", "extrinsics", "intrinsics", "cam_points", "world_points", "point_masks",
                     "depth_available", "tracks", "track_vis_mask", "track_positive_mask")


@dataclass
class TrainingSettings:
    """Every knob of a fine-tuning run; defaults follow the reference's released config."""

    data: Path
    out: Path
    checkpoint: str = "facebook/VGGT-1B"
    config: Path | None = None
    steps: int = 1000
    lr: float = 5e-5
    min_lr: float = FLOOR_LR
    warmup_fraction: float = WARMUP_FRACTION
    weight_decay: float = 0.05
    frames_per_scene: tuple[int, int] = (2, 24)
    image_width: int = 518
    batch_size: int | None = None          # None: ⌊max_images_per_batch / S⌋ as the reference
    max_images_per_batch: int = 48
    accum_steps: int = 2
    max_grad_norm: float = 1.0
    freeze: str = "aggregator"
    point_loss: bool = False
    track_loss: bool = False
    track_queries: int = 64
    augment: bool = True
    checkpoint_every: int = 500
    seed: int = 42
    device: str | None = None
    resume: bool = False
    progress: bool = True
    loss_config: LossConfig | None = None

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.freeze not in ("aggregator", "none"):
            raise ValueError(f"freeze must be 'aggregator' or 'none', got {self.freeze!r}")
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {self.accum_steps}")


@dataclass
class StepResult:
    step: int
    lr: float
    losses: dict
    skipped: bool
    seconds: float


class Trainer:
    """Fine-tunes a VGGT on a :class:`SceneDataset`. ``run()`` trains and returns the step results."""

    def __init__(self, settings: TrainingSettings):
        settings.validate()
        self.settings = settings
        from ..weights import resolve_device

        self.device = resolve_device(settings.device)
        self.out = Path(settings.out)
        state = load_training_state(self.out) if settings.resume else None
        source = str(self.out) if state is not None else settings.checkpoint
        self.model = build_model(source, settings.config, seed=settings.seed, device=self.device)
        self.model.train()
        self.frozen = freeze_modules(self.model, settings.freeze)
        if self.device.type == "cuda":
            _checkpoint_aggregator_blocks(self.model)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            raise ValueError("nothing to train: every parameter is frozen")
        self.groups = clip_groups(self.model)
        self.optimizer = torch.optim.AdamW(self.trainable, lr=settings.lr, weight_decay=settings.weight_decay)
        self.scaler = gradient_scaler(self.device)
        self.loss_config = settings.loss_config or LossConfig()
        if settings.track_loss and self.loss_config.track_weight == 0:
            self.loss_config = self.loss_config.replace(track_weight=PAPER_TRACK_WEIGHT)
        if settings.point_loss and self.model.point_head is None:
            raise ValueError("--point-loss needs a model with the point head (enable_point)")
        if settings.track_loss and self.model.track_head is None:
            raise ValueError("--track-loss needs a model with the track head (enable_track)")
        self.dataset = SceneDataset(settings.data, frames_per_scene=settings.frames_per_scene,
                                    image_width=settings.image_width, augment=settings.augment,
                                    patch_size=self.model.config.patch_size, seed=settings.seed)
        self.start_step = 0
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------ state
    def _restore(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_step = int(state["step"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        self.dataset.rng.bit_generator.state = state["numpy_rng"]
        self.dataset.generator.set_state(state["torch_generator"])
        logger.info("resuming from step %d in %s", self.start_step, self.out)

    def _training_state(self, step: int) -> dict:
        state = {"step": step, "optimizer": self.optimizer.state_dict(),
                 "numpy_rng": self.dataset.rng.bit_generator.state,
                 "torch_generator": self.dataset.generator.get_state(),
                 "settings": {k: str(v) for k, v in dataclasses.asdict(self.settings).items()}}
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def save(self, step: int) -> Path | None:
        try:
            return save_checkpoint(self.model, self.out, step=step, training_state=self._training_state(step))
        except BrokenCheckpointError as error:
            logger.error("%s", error)
            return None

    # ------------------------------------------------------------------ one step
    def train_step(self, step: int) -> StepResult:
        started = time.perf_counter()
        settings = self.settings
        lr = learning_rate_at(step / settings.steps, settings.lr, settings.min_lr, settings.warmup_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.dataset.sample_batch(settings.batch_size, settings.max_images_per_batch)
        if settings.track_loss:
            from .track_loss import ground_truth_tracks

            batch.update(ground_truth_tracks(batch, settings.track_queries, generator=self.dataset.generator))
        batch = normalize_ground_truth(batch)  # on the CPU, before chunking, as the reference
        batch = {key: value.to(self.device) if key in TENSOR_BATCH_KEYS else value for key, value in batch.items()}
        chunks = accumulation_chunks(batch["images"].shape[0], settings.accum_steps)

        self.optimizer.zero_grad(set_to_none=True)
        totals: dict = {}
        skipped = False
        for chunk in chunks:
            part = slice_batch(batch, chunk)
            query_points = part["tracks"][:, 0] if settings.track_loss else None
            predictions = self.model(part["images"], query_points=query_points)
            losses = compute_losses(predictions, part, point=settings.point_loss, track=settings.track_loss,
                                    config=self.loss_config)
            objective = losses["objective"]
            if not torch.isfinite(objective):
                skipped = True
                totals = {key: float(value.detach()) for key, value in losses.items()}
                break
            loss = objective / len(chunks)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach()) / len(chunks)
        if skipped:
            # Unlike the reference, which still steps on the chunks done so far, skip the update.
            self.optimizer.zero_grad(set_to_none=True)
            message = f"step {step}: non-finite objective ({totals.get('objective')}); update skipped"
            logger.warning(message)
            print(f"warning: {message}", file=sys.stderr)
        elif self.scaler is None:
            clip_gradients(self.groups, settings.max_grad_norm)
            self.optimizer.step()
        else:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
            clip_gradients(self.groups, settings.max_grad_norm)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skipped when a gradient overflowed fp16
            self.scaler.update()
            if self.scaler.get_scale() < scale:
                skipped = True
                logger.info("step %d: fp16 gradients overflowed; update skipped, loss scale now %g",
                            step, self.scaler.get_scale())
        return StepResult(step=step, lr=lr, losses=totals, skipped=skipped, seconds=time.perf_counter() - started)

    # ------------------------------------------------------------------ loop
    def run(self) -> list[StepResult]:
        from tqdm import tqdm

        settings = self.settings
        self.out.mkdir(parents=True, exist_ok=True)
        metrics_path = self.out / METRICS_FILE
        new_file = not (settings.resume and metrics_path.is_file())
        results = []
        with open(metrics_path, "w" if new_file else "a", newline="") as handle, \
                tqdm(total=settings.steps, initial=self.start_step, disable=not settings.progress,
                     file=sys.stderr, desc="fine-tuning") as bar:
            writer = csv.DictWriter(handle, fieldnames=("step", "lr", "skipped", "seconds") + LOSS_COLUMNS)
            if new_file:
                writer.writeheader()
            for step in range(self.start_step, settings.steps):
                result = self.train_step(step)
                results.append(result)
                row = {"step": step, "lr": f"{result.lr:.6g}", "skipped": int(result.skipped),
                       "seconds": f"{result.seconds:.3f}"}
                row.update({key: f"{result.losses[key]:.6g}" for key in LOSS_COLUMNS if key in result.losses})
                writer.writerow(row)
                handle.flush()
                bar.set_postfix({_short(key): f"{result.losses[key]:.3g}" for key in
                                 ("objective", "loss_camera", "loss_conf_depth", "loss_reg_depth", "loss_grad_depth",
                                  "loss_conf_point", "loss_track") if key in result.losses}, refresh=False)
                bar.update(1)
                done = step + 1
                if done % settings.checkpoint_every == 0 and done < settings.steps:
                    self.save(done)
        self.save(settings.steps)
        return results


def gradient_scaler(device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler when the model's autocast will be fp16 (CUDA without bf16: see
    ``VGGT._aggregator_autocast``), else None (bf16 and float32 need none)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.amp.GradScaler("cuda")
    return None


def _short(key: str) -> str:
    return key.replace("loss_", "")


def _checkpoint_aggregator_blocks(model) -> None:
    """Recompute each aggregator block in the backward pass instead of storing its activations."""
    blocks = list(model.aggregator.frame_blocks) + list(model.aggregator.global_blocks)
    for block in blocks:
        if any(p.requires_grad for p in block.parameters()):
            original = block.forward
            block.forward = functools.partial(_checkpointed, original)


def _checkpointed(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
