"""Depth and point-map losses: confidence-weighted regression, quantile filter, gradient and
normal terms. See docs/training.md, "Losses"."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .normalization import replace_non_finite

MAX_QUANTILE_ELEMENTS = 100_000_000
QUANTILE_SUBSAMPLE = 1_000_000
NORMAL_EPS = 1e-8


def clip_errors(values: torch.Tensor, hard_max: float) -> torch.Tensor:
    """Non-finite values to 0, then clamp to ``[-hard_max, hard_max]`` (no gradient outside)."""
    return replace_non_finite(values).clamp(-hard_max, hard_max)


def filter_by_quantile(values: torch.Tensor, quantile: float, min_elements: int = 1000,
                       hard_max: float = 100.0) -> torch.Tensor:
    """Drop the largest ~(1 − quantile) of ``values [n]`` (strictly below the threshold kept).

    Nothing is dropped when ``n <= min_elements`` or when fewer than ``min_elements + 1`` values
    would survive. The threshold is detached; the k-th smallest uses Python's half-to-even round.
    """
    count = values.numel()
    if count <= min_elements:
        return values
    if count > MAX_QUANTILE_ELEMENTS:
        values = values[torch.randperm(count, device=values.device)[:QUANTILE_SUBSAMPLE]]
        count = values.numel()
    values = values.clamp(max=hard_max)
    k = round(quantile * (count - 1)) + 1
    threshold = torch.kthvalue(values.detach(), k).values.clamp(max=hard_max)
    keep = values < threshold
    if int(keep.sum()) > min_elements:
        return values[keep]
    return values


def regression_terms(pred: torch.Tensor, gt: torch.Tensor, conf: torch.Tensor, mask: torch.Tensor, *,
                     gamma: float, alpha: float, valid_range: float, min_elements: int,
                     hard_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss_conf, loss_reg)`` over valid pixels.

    Args:
        pred, gt: ``[B,S,H,W,C]``; conf: ``[B,S,H,W]`` (>= 1); mask: ``[B,S,H,W]`` bool.
    """
    error = clip_errors(torch.linalg.vector_norm(gt[mask] - pred[mask], dim=-1), hard_max)
    conf_term = clip_errors(gamma * error * conf[mask] - alpha * torch.log(conf[mask]), hard_max)
    if valid_range > 0:
        error = clip_errors(filter_by_quantile(error, valid_range, min_elements, hard_max), hard_max)
        conf_term = clip_errors(filter_by_quantile(conf_term, valid_range, min_elements, hard_max), hard_max)
    return conf_term.mean(), error.mean()


def gradient_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, conf: torch.Tensor | None = None,
                  *, gamma: float = 1.0, alpha: float = 0.2, hard_max: float = 100.0) -> torch.Tensor:
    """Mean absolute difference of neighbouring errors, at one scale.

    Args:
        pred, gt: ``[N,H,W,C]``; mask: ``[N,H,W]`` bool; conf: ``[N,H,W]`` or None.

    Returns:
        ``(Σ gx + Σ gy) / (C·Σ mask)``: the denominator counts valid pixels, not pairs; 0 if none.
    """
    channels = pred.shape[-1]
    valid = mask.to(pred.dtype)[..., None]
    valid_count = valid.sum()
    if valid_count == 0:
        return pred.new_zeros(())
    difference = (pred - gt) * valid
    grad_x = (difference[:, :, 1:] - difference[:, :, :-1]).abs() * valid[:, :, 1:] * valid[:, :, :-1]
    grad_y = (difference[:, 1:] - difference[:, :-1]).abs() * valid[:, 1:] * valid[:, :-1]
    grad_x = grad_x.clamp(max=hard_max)
    grad_y = grad_y.clamp(max=hard_max)
    if conf is not None:
        conf_x = conf[:, :, 1:, None]
        conf_y = conf[:, 1:, :, None]
        grad_x = gamma * grad_x * conf_x - alpha * torch.log(conf_x)
        grad_y = gamma * grad_y * conf_y - alpha * torch.log(conf_y)
    return (grad_x.sum() + grad_y.sum()) / (channels * valid_count)


def point_map_to_normals(points: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Four normals per pixel from cross products of the directions to its 4-neighbours.

    Args:
        points: ``[N,H,W,3]``; mask: ``[N,H,W]`` bool.

    Returns:
        ``(normals [4,N,H,W,3], valid [4,N,H,W])``; a normal is valid when the centre and both
        neighbours it uses are valid (outside the image counts as invalid).
    """
    # Cross products of nearly parallel vectors lose everything in half precision.
    no_autocast = (torch.autocast(points.device.type, enabled=False) if points.device.type in ("cpu", "cuda")
                   else contextlib.nullcontext())
    with no_autocast:
        padded = F.pad(points.float(), (0, 0, 1, 1, 1, 1))
        padded_mask = F.pad(mask, (1, 1, 1, 1))
        centre = padded[:, 1:-1, 1:-1]
        neighbours = {"up": padded[:, :-2, 1:-1], "left": padded[:, 1:-1, :-2],
                      "down": padded[:, 2:, 1:-1], "right": padded[:, 1:-1, 2:]}
        masks = {"up": padded_mask[:, :-2, 1:-1], "left": padded_mask[:, 1:-1, :-2],
                 "down": padded_mask[:, 2:, 1:-1], "right": padded_mask[:, 1:-1, 2:]}
        centre_mask = padded_mask[:, 1:-1, 1:-1]
        pairs = (("up", "left"), ("left", "down"), ("down", "right"), ("right", "up"))
        normals, valids = [], []
        for first, second in pairs:
            normal = torch.linalg.cross(neighbours[first] - centre, neighbours[second] - centre, dim=-1)
            normals.append(F.normalize(normal, p=2, dim=-1, eps=NORMAL_EPS))
            valids.append(centre_mask & masks[first] & masks[second])
        return torch.stack(normals), torch.stack(valids)


def normal_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, conf: torch.Tensor | None = None,
                *, gamma: float = 1.0, alpha: float = 0.2, min_valid: int = 10,
                hard_max: float = 100.0) -> torch.Tensor:
    """``1 − cos`` between predicted and GT normals over valid (direction, pixel) entries.

    Args:
        pred, gt: ``[N,H,W,3]`` point maps; mask: ``[N,H,W]`` bool (GT validity, used for both);
        conf: ``[N,H,W]`` or None.
    """
    pred_normals, _ = point_map_to_normals(pred, mask)
    gt_normals, valid = point_map_to_normals(gt, mask)
    if int(valid.sum()) < min_valid:
        return pred.new_zeros(())
    cosine = (pred_normals * gt_normals).sum(dim=-1).clamp(-1 + NORMAL_EPS, 1 - NORMAL_EPS)
    loss = clip_errors(1 - cosine, hard_max)
    if conf is not None:
        conf_4 = conf[None].expand_as(loss)
        loss = gamma * loss * conf_4 - alpha * torch.log(conf_4)
    return loss[valid].mean()


def multi_scale_structure_loss(kind: str, pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor,
                               conf: torch.Tensor, *, gradient_scales: int, normal_scales: int, gamma: float,
                               alpha: float, normal_min_valid: int, hard_max: float) -> torch.Tensor:
    """The gradient term ``kind`` averaged over scales 1, 2, 4, ... (a scale worth 0 still counts).

    Args:
        pred, gt: ``[B,S,H,W,C]``; mask, conf: ``[B,S,H,W]``.
    """
    flat = lambda x: x.reshape((-1,) + tuple(x.shape[2:]))  # noqa: E731  [B·S, H, W, ...]
    pred, gt, mask, conf = flat(pred), flat(gt), flat(mask), flat(conf)
    weighted = "conf" in kind
    if kind.startswith("grad"):
        scales, one_scale = gradient_scales, gradient_loss
        extra = {}
    elif kind.startswith("normal"):
        scales, one_scale = normal_scales, normal_loss
        extra = {"min_valid": normal_min_valid}
    else:
        return (pred * 0).mean()
    total = pred.new_zeros(())
    for level in range(scales):
        step = 2 ** level
        total = total + one_scale(pred[:, ::step, ::step], gt[:, ::step, ::step], mask[:, ::step, ::step],
                                  conf[:, ::step, ::step] if weighted else None,
                                  gamma=gamma, alpha=alpha, hard_max=hard_max, **extra)
    return total / scales


def dense_losses(pred: torch.Tensor, conf: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, *,
                 gradient_kind: str, gamma: float, alpha: float, valid_range: float, config) -> dict:
    """``{"conf", "reg", "grad"}`` for one dense head.

    Args:
        pred: ``[B,S,H,W,C]``; conf: ``[B,S,H,W]``; gt: ``[B,S,H,W,C]`` (already clipped);
        mask: ``[B,S,H,W]`` bool.
    """
    if int(mask.sum()) < config.dense_min_valid_pixels:
        zero = (0 * pred).mean()
        return {"conf": zero, "reg": zero, "grad": zero}
    conf_term, reg_term = regression_terms(pred, gt, conf, mask, gamma=gamma, alpha=alpha,
                                           valid_range=valid_range, min_elements=config.quantile_min_elements,
                                           hard_max=config.hard_max)
    grad_term = multi_scale_structure_loss(gradient_kind, pred, gt, mask, conf,
                                           gradient_scales=config.gradient_loss_scales,
                                           normal_scales=config.normal_loss_scales, gamma=gamma, alpha=alpha,
                                           normal_min_valid=config.normal_min_valid, hard_max=config.hard_max)
    return {"conf": conf_term, "reg": reg_term, "grad": grad_term}
