"""Ground-truth tracks from depth and cameras, and the paper's track loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vggt_core.config import tiny_config
from vggt_core.model import VGGT
from vggt_core.synthetic import render_scene, save_training_scene
from vggt_core.training import LossConfig, SceneDataset, compute_losses, normalize_ground_truth
from vggt_core.training.track_loss import ground_truth_tracks, track_losses

NUM_TRACKS = 24


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are too small to gain from threads (see test_training_learning.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("track_scene")
    save_training_scene(render_scene("table", num_views=4, width=84, height=56, seed=4), root / "table")
    dataset = SceneDataset(root, frames_per_scene=3, image_width=56, augment=False, allow_duplicate_frames=False,
                           seed=0)
    raw = dataset.sample_batch(batch_size=1)
    raw.update(ground_truth_tracks(raw, NUM_TRACKS, generator=torch.Generator().manual_seed(0)))
    return raw


def _nearest_neighbour_distance(points: np.ndarray, x: float, y: float, target: np.ndarray) -> float:
    """Smallest distance from ``target`` to the points of the 4 pixels around (x, y)."""
    return min(float(np.linalg.norm(points[row, col] - target))
               for row in (int(np.floor(y)), int(np.ceil(y))) for col in (int(np.floor(x)), int(np.ceil(x))))


def test_visible_tracks_land_on_the_same_surface_point(batch):
    tracks, visible = batch["tracks"][0], batch["track_vis_mask"][0]
    assert tracks.shape == (3, NUM_TRACKS, 2) and batch["track_positive_mask"].all()
    assert visible[0].all() and visible[1:].any(dim=0).all()  # every track is seen in another frame
    world = batch["world_points"][0].numpy()
    extrinsics = batch["extrinsics"][0].double().numpy()

    def camera_centre(frame):
        return -extrinsics[frame, :, :3].T @ extrinsics[frame, :, 3]
    checked = 0
    for n in range(NUM_TRACKS):
        qx, qy = tracks[0, n].tolist()
        query_point = world[0, int(qy), int(qx)]
        for frame in range(1, 3):
            if visible[frame, n]:
                x, y = tracks[frame, n].tolist()
                # One pixel of these 56-pixel-wide views spans ~2 % of the depth.
                distance = _nearest_neighbour_distance(world[frame], x, y, query_point)
                assert distance < 0.05 * np.linalg.norm(query_point - camera_centre(frame))
                checked += 1
    assert checked >= NUM_TRACKS


def test_inconsistent_depth_makes_points_invisible(batch):
    wrong = dict(batch)
    wrong["depths"] = batch["depths"].clone()
    wrong["depths"][:, 1] *= 1.2  # frame 1's depth disagrees with the projection by 20 %
    tracks = ground_truth_tracks(wrong, NUM_TRACKS, generator=torch.Generator().manual_seed(0))
    assert not tracks["track_vis_mask"][0, 1].any()
    assert tracks["track_vis_mask"][0, 0].all()


def test_track_loss_is_zero_at_ground_truth_and_grows_with_error(batch):
    gt, visible = batch["tracks"], batch["track_vis_mask"]
    config = LossConfig(track_weight=0.05)
    vis = visible.float().clamp(1e-7, 1 - 1e-7)
    at_truth = track_losses({"track_list": [gt.clone() for _ in range(4)], "vis": vis}, batch, config)
    assert at_truth["loss_track"].item() == 0.0 and at_truth["loss_vis"].item() < 1e-5
    offset = torch.tensor([3.0, -4.0])
    shifted = track_losses({"track_list": [gt + offset for _ in range(4)], "vis": vis}, batch, config)
    # mean(|3|, |4|) = 3.5 px per iteration, weights 0.8^(3-i) summed and divided by 4.
    assert shifted["loss_track"].item() == pytest.approx(3.5 * (1 + 0.8 + 0.64 + 0.512) / 4, rel=1e-5)
    later_is_better = track_losses({"track_list": [gt + offset, gt, gt, gt], "vis": vis}, batch, config)
    earlier_is_better = track_losses({"track_list": [gt, gt, gt, gt + offset], "vis": vis}, batch, config)
    assert later_is_better["loss_track"] < earlier_is_better["loss_track"]
    unsure = track_losses({"track_list": [gt], "vis": torch.full_like(vis, 0.5)}, batch, config)
    assert unsure["loss_vis"].item() == pytest.approx(np.log(2), rel=1e-5)


def test_track_loss_trains_the_track_head_and_is_off_by_default(batch):
    torch.manual_seed(0)
    model = VGGT(tiny_config()).train()
    for parameter in model.aggregator.parameters():
        parameter.requires_grad_(False)
    normalised = normalize_ground_truth(batch)
    predictions = model(normalised["images"], query_points=normalised["tracks"][:, 0])
    assert len(predictions["track_list"]) == model.config.track_head.iters
    default = compute_losses(predictions, normalised)
    assert "loss_track" not in default
    with pytest.raises(ValueError, match="track_list"):
        compute_losses({k: v for k, v in predictions.items() if k != "track_list"}, normalised, track=True)
    losses = compute_losses(predictions, normalised, track=True, config=LossConfig(track_weight=0.05))
    assert losses["objective"].item() == pytest.approx(
        default["objective"].item() + 0.05 * (losses["loss_track"].item() + losses["loss_vis"].item()), rel=1e-5)
    losses["objective"].backward()
    with_grad = [p.grad is not None and p.grad.abs().sum() > 0 for p in model.track_head.parameters()]
    assert sum(with_grad) / len(with_grad) > 0.9


def test_trainer_with_the_track_loss(tmp_path):
    from vggt_core.training.trainer import Trainer, TrainingSettings

    save_training_scene(render_scene("room", num_views=3, width=63, height=42, seed=0), tmp_path / "data" / "room")
    settings = TrainingSettings(data=tmp_path / "data", out=tmp_path / "out", checkpoint="random-tiny", steps=1,
                                frames_per_scene=(2, 2), image_width=42, batch_size=1, accum_steps=1,
                                track_loss=True, track_queries=16, progress=False)
    trainer = Trainer(settings)
    result = trainer.run()[0]
    assert not result.skipped and result.losses["loss_track"] > 0 and result.losses["loss_vis"] > 0
    assert trainer.loss_config.track_weight == 0.05
    # The first step's learning rate is the warm-up's 1e-8, so look at the gradients it applied.
    grads = [p.grad for p in trainer.model.track_head.parameters()]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)
    assert all(p.grad is None for p in trainer.model.aggregator.parameters())
