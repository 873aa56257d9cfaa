"""Freezing, parameter groups for gradient clipping, and accumulation chunks."""

from __future__ import annotations

import fnmatch
import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

FREEZE_CHOICES = ("aggregator", "none")
# Gradients are clipped separately for the parameters whose names contain each of these.
CLIP_GROUPS = ("aggregator", "depth", "camera", "point", "track")


def freeze_modules(model: nn.Module, pattern: str | None) -> list[str]:
    """Stop gradients to every module whose name matches the glob ``*<pattern>*`` and keep it in
    eval mode for good (its ``train()`` becomes a no-op). Returns the frozen module names."""
    if pattern is None or pattern == "none":
        return []
    frozen = []
    for name, module in model.named_modules():
        if name and fnmatch.fnmatch(name, f"*{pattern}*") and not any(name.startswith(f + ".") for f in frozen):
            for parameter in module.parameters():
                parameter.requires_grad_(False)
            module.eval()
            module.train = _stay_in_eval.__get__(module)
            frozen.append(name)
    if not frozen:
        raise ValueError(f"no module name matches {pattern!r}")
    return frozen


def _stay_in_eval(self, mode: bool = True):
    return self


def clip_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by clip group (a parameter in several groups is clipped in each; one in
    none goes to "other")."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        matched = [group for group in CLIP_GROUPS if group in name] or ["other"]
        for group in matched:
            groups.setdefault(group, []).append(parameter)
    return groups


def clip_gradients(groups: dict[str, list[nn.Parameter]], max_norm: float) -> dict[str, float]:
    """L2-clip each group to ``max_norm``; returns the norms before clipping."""
    norms = {}
    for name, parameters in groups.items():
        with_grad = [p for p in parameters if p.grad is not None]
        if with_grad:
            norms[name] = float(torch.nn.utils.clip_grad_norm_(with_grad, max_norm))
    return norms


def accumulation_chunks(batch_size: int, accum_steps: int) -> list[slice]:
    """Slices of the batch for gradient accumulation: ``accum_steps`` chunks of ``⌊B/accum⌋``
    sequences, the remainder dropped, as the reference (fewer chunks if ``B < accum_steps``)."""
    if accum_steps <= 1:
        return [slice(0, batch_size)]
    if batch_size < accum_steps:
        return [slice(i, i + 1) for i in range(batch_size)]
    size = batch_size // accum_steps
    return [slice(i * size, (i + 1) * size) for i in range(accum_steps)]


def slice_batch(batch: dict, chunk: slice) -> dict:
    return {key: value[chunk] for key, value in batch.items()}
