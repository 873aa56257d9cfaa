"""Camera loss over the camera head's refinement stages. See docs/training.md, "Losses"."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..geometry import extrinsics_intrinsics_to_pose_encoding
from .dense_losses import clip_errors
from .loss_config import LossConfig


def ground_truth_pose_encoding(batch: dict) -> torch.Tensor:
    """``[B,S,9]`` float32 ``(t, q_xyzw, fov_h, fov_w)`` of the normalised cameras.

    Args:
        batch: normalised, with ``extrinsics [B,S,3,4]``, ``intrinsics [B,S,3,3]``,
            ``images [B,S,3,H,W]`` (only H, W are read).
    """
    height, width = batch["images"].shape[-2:]
    return extrinsics_intrinsics_to_pose_encoding(batch["extrinsics"], batch["intrinsics"], (height, width))


def _stage_errors(pred: torch.Tensor, gt: torch.Tensor, config: LossConfig) -> tuple[torch.Tensor, ...]:
    """``(L_T, L_R, L_FL)`` of one stage. pred, gt: ``[B',S,9]``."""
    parts = [(slice(0, 3)), (slice(3, 7)), (slice(7, 9))]
    errors = []
    for part in parts:
        difference = pred[..., part] - gt[..., part]
        if config.camera_loss_type == "l1":
            error = difference.abs()
        elif config.camera_loss_type == "l2":
            error = torch.linalg.vector_norm(difference, dim=-1, keepdim=part == parts[0])
        else:  # "huber", the paper's form
            error = F.huber_loss(pred[..., part], gt[..., part], reduction="none", delta=config.huber_delta)
        errors.append(clip_errors(error, config.hard_max).mean())
    return tuple(errors)


def camera_losses(pose_enc_list: list[torch.Tensor], batch: dict, config: LossConfig) -> dict:
    """``loss_T``, ``loss_R``, ``loss_FL`` and ``loss_camera`` (before the camera weight).

    Args:
        pose_enc_list: K tensors ``[B,S,9]``, one per refinement stage (first to last).
        batch: normalised batch; ``point_masks [B,S,H,W]`` decides which sequences count: those
            whose frame 0 has more than ``camera_min_frame0_pixels`` valid pixels, and camera-only
            sequences (``depth_available`` False, when the key is present).
    """
    gt = ground_truth_pose_encoding(batch).to(pose_enc_list[0].device)
    frame0_valid = batch["point_masks"][:, 0].flatten(1).sum(dim=1) > config.camera_min_frame0_pixels
    if "depth_available" in batch:
        frame0_valid = frame0_valid | ~batch["depth_available"].bool().to(frame0_valid.device)
    frame0_valid = frame0_valid.to(pose_enc_list[0].device)
    stages = len(pose_enc_list)
    totals = [0.0, 0.0, 0.0]
    for stage, pred in enumerate(pose_enc_list):
        if frame0_valid.any():
            stage_errors = _stage_errors(pred[frame0_valid], gt[frame0_valid], config)
        else:
            zero = (pred * 0).mean()
            stage_errors = (zero, zero, zero)
        weight = config.camera_gamma ** (stages - 1 - stage)
        totals = [total + weight * error for total, error in zip(totals, stage_errors)]
    # Divided by the number of stages, not by the sum of the weights, as the reference does.
    loss_t, loss_r, loss_fl = (total / stages for total in totals)
    loss_camera = config.weight_trans * loss_t + config.weight_rot * loss_r + config.weight_focal * loss_fl
    return {"loss_T": loss_t, "loss_R": loss_r, "loss_FL": loss_fl, "loss_camera": loss_camera}
