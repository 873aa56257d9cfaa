"""The training objective: camera + depth (+ point map) (+ tracks), as the reference weighs them."""

from __future__ import annotations

import torch

from .camera_loss import camera_losses
from .dense_losses import clip_errors, dense_losses
from .loss_config import LossConfig


def compute_losses(predictions: dict, batch: dict, *, point: bool = False, track: bool = False,
                   config: LossConfig | None = None) -> dict:
    """Every loss term and their weighted sum ``objective``.

    Args:
        predictions: the model's outputs: ``pose_enc_list`` (list of ``[B,S,9]``), ``depth
            [B,S,H,W,1]``, ``depth_conf [B,S,H,W]``; with ``point`` also ``world_points
            [B,S,H,W,3]`` and ``world_points_conf [B,S,H,W]``; with ``track`` ``track_list``
            (list of ``[B,S,N,2]``) and ``vis [B,S,N]``.
        batch: the normalised batch (see ``normalize_ground_truth``); with ``track`` also
            ``tracks [B,S,N,2]`` and ``track_vis_mask [B,S,N]``.
        point: add the point-map loss. track: add the track loss (weight ``config.track_weight``).
        config: weights and constants; default: the reference's.

    Returns:
        Scalars ``loss_T``, ``loss_R``, ``loss_FL``, ``loss_camera``, ``loss_conf_depth``,
        ``loss_reg_depth``, ``loss_grad_depth``; with ``point`` ``loss_conf_point``,
        ``loss_reg_point``, ``loss_grad_point``; with ``track`` ``loss_track``, ``loss_vis``;
        and ``objective``. A term is present only if its prediction key is.
    """
    config = config if config is not None else LossConfig()
    losses: dict = {}
    objective = None

    def add(term: torch.Tensor) -> None:
        nonlocal objective
        objective = term if objective is None else objective + term

    if "pose_enc_list" in predictions:
        losses.update(camera_losses(predictions["pose_enc_list"], batch, config))
        add(config.camera_weight * losses["loss_camera"])

    heads = [("depth", "depth", "depths")]
    if point:
        heads.append(("point", "world_points", "world_points"))
    for name, pred_key, gt_key in heads:
        if pred_key not in predictions:
            continue
        pred = predictions[pred_key]
        gt = clip_errors(batch[gt_key].to(pred.device), config.hard_max)
        if gt.dim() == pred.dim() - 1:
            gt = gt[..., None]
        terms = dense_losses(pred, predictions[f"{pred_key}_conf"], gt, batch["point_masks"].to(pred.device),
                             gradient_kind=getattr(config, f"{name}_gradient_loss"),
                             gamma=getattr(config, f"{name}_gamma"), alpha=getattr(config, f"{name}_alpha"),
                             valid_range=getattr(config, f"{name}_valid_range"), config=config)
        for key, value in terms.items():
            losses[f"loss_{key}_{name}"] = value
        head_sum = terms["conf"] + terms["grad"]
        if config.include_regression_term:
            head_sum = head_sum + terms["reg"]
        add(getattr(config, f"{name}_weight") * head_sum)

    if track:
        from .track_loss import track_losses

        if "track_list" not in predictions or "tracks" not in batch:
            raise ValueError("track=True needs predictions['track_list'] (the model in training mode, run with "
                             "query_points) and batch['tracks'] (see training.track_loss.ground_truth_tracks)")
        losses.update(track_losses(predictions, batch, config))
        add(config.track_weight * (losses["loss_track"] + config.track_vis_weight * losses["loss_vis"]))

    if objective is None:
        raise ValueError("predictions hold none of pose_enc_list, depth, world_points: nothing to train")
    losses["objective"] = objective
    return losses
