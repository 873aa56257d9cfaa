"""The paper's track loss, and ground-truth tracks made from depth and cameras.

The reference never finished its track loss; this is the paper's form: the L1 tracking error of
every refinement iteration (later ones weighted more), plus binary cross-entropy on visibility.
See docs/training.md, "Track loss".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .normalization import replace_non_finite

BORDER_PIXELS = 4                 # a visible point lands at least this far inside the image
DEPTH_CONSISTENCY = 0.05          # |z_projected − z_map| below this fraction of both depths
MIN_VALID_POINTS = 2              # an iteration with this many valid points or fewer adds 0
PROBABILITY_EPS = 1e-6


def project_frame0_points(world_points: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor):
    """Project points into every frame.

    Args:
        world_points: ``[N, 3]``; extrinsics: ``[S, 3, 4]``; intrinsics: ``[S, 3, 3]``.

    Returns:
        ``(pixels [S, N, 2] (x, y), depth [S, N])``.
    """
    camera = world_points[None] @ extrinsics[:, :, :3].transpose(1, 2) + extrinsics[:, None, :, 3]
    depth = camera[..., 2]
    safe = torch.where(depth.abs() > 1e-12, depth, torch.ones_like(depth))
    x = intrinsics[:, None, 0, 0] * camera[..., 0] / safe + intrinsics[:, None, 0, 2]
    y = intrinsics[:, None, 1, 1] * camera[..., 1] / safe + intrinsics[:, None, 1, 2]
    return torch.stack([x, y], dim=-1), depth


def depth_consistent_visibility(pixels: torch.Tensor, projected_depth: torch.Tensor, depth_maps: torch.Tensor):
    """A projection is visible when it lands ``BORDER_PIXELS`` inside the image and one of the 4
    floor/ceil neighbour pixels of the depth map agrees with its depth within 5 % of both.

    Args:
        pixels: ``[S, N, 2]``; projected_depth: ``[S, N]``; depth_maps: ``[S, H, W]`` (0 = invalid).

    Returns:
        ``[S, N]`` bool.
    """
    frames, height, width = depth_maps.shape
    x, y = pixels[..., 0], pixels[..., 1]
    inside = ((x >= BORDER_PIXELS) & (x <= width - 1 - BORDER_PIXELS) & (y >= BORDER_PIXELS)
              & (y <= height - 1 - BORDER_PIXELS) & (projected_depth > 0))
    consistent = torch.zeros_like(inside)
    frame_index = torch.arange(frames)[:, None].expand_as(x)
    for column in (x.floor(), x.ceil()):
        for row in (y.floor(), y.ceil()):
            c = column.clamp(0, width - 1).long()
            r = row.clamp(0, height - 1).long()
            map_depth = depth_maps[frame_index, r, c]
            difference = (projected_depth - map_depth).abs()
            consistent |= ((map_depth > 0) & (difference < DEPTH_CONSISTENCY * projected_depth)
                           & (difference < DEPTH_CONSISTENCY * map_depth))
    return inside & consistent


def ground_truth_tracks(batch: dict, num_tracks: int, generator: torch.Generator | None = None) -> dict:
    """Tracks of frame-0 pixels through every frame, from GT depth and cameras.

    Frame 0 is the query frame. Candidates are the valid frame-0 pixels whose point is visible
    (see :func:`depth_consistent_visibility`) in at least one other frame; when there are more
    than ``2·num_tracks``, the half seen in most frames is kept. ``num_tracks`` are drawn at
    random (with repetition if there are too few). A sequence with no candidate gets tracks at the
    image centre with ``track_positive_mask`` False.

    Args:
        batch: un-normalised or normalised batch with ``world_points [B,S,H,W,3]``, ``depths
            [B,S,H,W]``, ``point_masks``, ``extrinsics [B,S,3,4]``, ``intrinsics [B,S,3,3]``
            (tracks are invariant to the normalisation).

    Returns:
        ``tracks [B,S,N,2]`` (x, y pixels; frame 0 = the query), ``track_vis_mask [B,S,N]`` bool,
        ``track_positive_mask [B,N]`` bool.
    """
    batch_size, frames, height, width = batch["depths"].shape
    all_tracks, all_visible, all_positive = [], [], []
    for b in range(batch_size):
        mask = batch["point_masks"][b, 0]
        rows, cols = torch.nonzero(mask, as_tuple=True)
        points = batch["world_points"][b, 0][rows, cols].float()
        pixels, depth = project_frame0_points(points, batch["extrinsics"][b].float(), batch["intrinsics"][b].float())
        visible = depth_consistent_visibility(pixels, depth, batch["depths"][b].float())
        visible[0] = True
        seen = visible[1:].sum(dim=0)
        candidates = torch.nonzero(seen >= 1, as_tuple=True)[0]
        if candidates.numel() == 0:
            centre = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0])
            all_tracks.append(centre.expand(frames, num_tracks, 2).clone())
            all_visible.append(torch.zeros(frames, num_tracks, dtype=torch.bool))
            all_positive.append(torch.zeros(num_tracks, dtype=torch.bool))
            continue
        if candidates.numel() // 2 > num_tracks:
            order = torch.argsort(seen[candidates], descending=True, stable=True)
            candidates = candidates[order[:candidates.numel() // 2]]
        if candidates.numel() >= num_tracks:
            chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:num_tracks]]
        else:
            chosen = candidates[torch.randint(candidates.numel(), (num_tracks,), generator=generator)]
        tracks = pixels[:, chosen]
        tracks[0] = torch.stack([cols[chosen], rows[chosen]], dim=-1).float()  # exact query pixels
        all_tracks.append(tracks)
        all_visible.append(visible[:, chosen])
        all_positive.append(torch.ones(num_tracks, dtype=torch.bool))
    return {"tracks": torch.stack(all_tracks), "track_vis_mask": torch.stack(all_visible),
            "track_positive_mask": torch.stack(all_positive)}


def track_losses(predictions: dict, batch: dict, config) -> dict:
    """``loss_track`` (pixels) and ``loss_vis`` (BCE).

    Args:
        predictions: ``track_list`` (n x ``[B,S,N,2]``), ``vis [B,S,N]`` probabilities.
        batch: ``tracks [B,S,N,2]``, ``track_vis_mask [B,S,N]``, optional ``track_positive_mask [B,N]``.
    """
    track_list = predictions["track_list"]
    gt = batch["tracks"].to(track_list[-1].device)
    visible = batch["track_vis_mask"].bool().to(gt.device)
    positive = batch.get("track_positive_mask")
    positive = (torch.ones(visible.shape[0], visible.shape[2], dtype=torch.bool, device=gt.device)
                if positive is None else positive.bool().to(gt.device))
    valid = visible & positive[:, None, :]
    iterations = len(track_list)
    loss_track = (track_list[-1] * 0).mean()
    for index, pred in enumerate(track_list):
        if int(valid.sum()) <= MIN_VALID_POINTS:
            continue
        error = (pred - gt).abs().mean(dim=-1)[valid].mean()
        loss_track = loss_track + config.track_gamma ** (iterations - 1 - index) * error
    loss_track = replace_non_finite(loss_track / iterations)

    vis = predictions["vis"]
    counted = positive[:, None, :].expand_as(vis)
    if counted.any():
        probabilities = vis[counted].clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
        loss_vis = F.binary_cross_entropy(probabilities, visible[counted].to(vis.dtype))
    else:
        loss_vis = (vis * 0).mean()
    return {"loss_track": loss_track, "loss_vis": replace_non_finite(loss_vis)}
