"""Ground-truth normalisation: the first frame's camera becomes the world, mean point distance 1.

See docs/training.md, "Ground-truth normalisation". Predictions are never normalised: the network
learns to output poses, depths and points directly in this frame.
"""

from __future__ import annotations

import torch

NORMALISED_KEYS = ("extrinsics", "cam_points", "world_points", "depths")
SCALE_DENOMINATOR_EPS = 1e-3
SCALE_MIN, SCALE_MAX = 1e-6, 1e6


def replace_non_finite(values: torch.Tensor) -> torch.Tensor:
    """NaN and ±Inf become 0 (gradient 0 there)."""
    return torch.where(torch.isfinite(values), values, torch.zeros_like(values))


@torch.autocast("cpu", enabled=False)
def normalize_ground_truth(batch: dict) -> dict:
    """Express every sequence in its frame-0 camera frame and divide lengths by the mean distance.

    Args:
        batch: dict with ``extrinsics [B,S,3,4]`` (camera-from-world, OpenCV), ``world_points
            [B,S,H,W,3]``, ``cam_points [B,S,H,W,3]``, ``depths [B,S,H,W]`` and ``point_masks
            [B,S,H,W]`` bool; other keys are passed through untouched.

    Returns:
        A new dict (the input is not modified) where ``extrinsics`` = ``E_i·E_0⁻¹`` with the
        translation divided by the scale ``s_b``, ``world_points`` = ``(R_0·X + t_0)/s_b``,
        ``cam_points`` and ``depths`` divided by ``s_b``; non-finite results become 0. ``s_b`` is the
        mean distance of the valid points from the first camera (clamped to [1e-6, 1e6]; an empty
        sequence gets 1e-6, and the losses ignore it).

        An optional ``depth_available [B]`` bool marks camera-only sequences (e.g. a COLMAP model
        without dense depth): their scale is the mean distance of the camera centres from the
        first camera instead (1 if they coincide). Without the key every sequence uses its points,
        exactly as the reference.
    """
    extrinsics = batch["extrinsics"].float()
    world_points = batch["world_points"].float()
    masks = batch["point_masks"].bool()
    batch_size = extrinsics.shape[0]
    depth_available = batch.get("depth_available")

    device = extrinsics.device
    homogeneous_row = torch.zeros(extrinsics.shape[:-2] + (1, 4), dtype=extrinsics.dtype, device=device)
    homogeneous_row[..., 0, 3] = 1.0
    extrinsics_4x4 = torch.cat([extrinsics, homogeneous_row], dim=-2)  # [B,S,4,4]

    new_extrinsics, new_world_points, new_cam_points, new_depths = [], [], [], []
    for b in range(batch_size):
        rotation_0 = extrinsics[b, 0, :, :3]
        translation_0 = extrinsics[b, 0, :, 3]
        inverse_0 = torch.eye(4, dtype=extrinsics.dtype, device=device)
        inverse_0[:3, :3] = rotation_0.T
        inverse_0[:3, 3] = -rotation_0.T @ translation_0
        relative = extrinsics_4x4[b] @ inverse_0  # [S,4,4]

        points = world_points[b] @ rotation_0.T + translation_0  # [S,H,W,3]
        mask = masks[b].to(points.dtype)
        distance_sum = (points.norm(dim=-1) * mask).sum()
        scale = (distance_sum / (mask.sum() + SCALE_DENOMINATOR_EPS)).clamp(SCALE_MIN, SCALE_MAX)
        if depth_available is not None and not bool(depth_available[b]):
            scale = _camera_centre_scale(relative)

        relative = relative[:, :3].clone()
        relative[:, :, 3] = relative[:, :, 3] / scale
        new_extrinsics.append(relative)
        new_world_points.append(points / scale)
        new_cam_points.append(batch["cam_points"][b].float() / scale)
        new_depths.append(batch["depths"][b].float() / scale)

    normalised = dict(batch)
    normalised["extrinsics"] = replace_non_finite(torch.stack(new_extrinsics))
    normalised["world_points"] = replace_non_finite(torch.stack(new_world_points))
    normalised["cam_points"] = replace_non_finite(torch.stack(new_cam_points))
    normalised["depths"] = replace_non_finite(torch.stack(new_depths))
    return normalised


def _camera_centre_scale(relative_extrinsics: torch.Tensor) -> torch.Tensor:
    """Mean distance of the camera centres from camera 0. relative_extrinsics: ``[S, 4, 4]``."""
    rotations = relative_extrinsics[:, :3, :3]
    translations = relative_extrinsics[:, :3, 3]
    centres = -(rotations.transpose(1, 2) @ translations[..., None])[..., 0]
    scale = centres.norm(dim=-1).mean()
    if not torch.isfinite(scale) or scale < SCALE_MIN:
        return torch.ones((), dtype=relative_extrinsics.dtype, device=relative_extrinsics.device)
    return scale.clamp(SCALE_MIN, SCALE_MAX)
