"""Time bundle adjustment and track prediction on this machine (CPU).

    python benchmarks/bench_bundle_adjust.py --frames 32 --tracks 4096

Bundle adjustment: a synthetic room seen by ``--frames`` cameras, true tracks of ``--tracks``
surface points with 0.5 px noise, cameras perturbed by 3° / 3 % of the scene depth / 4 % focal,
one shared camera. The budget is 30 s for 32 frames × 4,096 tracks.

Track prediction: the tiny random model (``vggt_core.config.tiny_config``) tracking
``--query-points`` points from 4 query frames over ``--track-frames`` frames of 518×392 pixels
(the aggregator and track feature head once, the tracker once per query frame). The tiny model's
time says nothing about VGGT-1B's; GPU figures are not measured here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from vggt_core.bundle_adjustment import bundle_adjust  # noqa: E402
from vggt_core.reconstruction import reconstruction_from_synthetic_scene  # noqa: E402
from vggt_core.synthetic import render_scene  # noqa: E402


def _rotation_about(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.radians(degrees)
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def _in_first_camera(scene):
    first = np.eye(4)
    first[:3] = scene.extrinsics[0]
    moved = np.einsum("sij,jk->sik", scene.extrinsics.astype(np.float64), np.linalg.inv(first))
    return dataclasses.replace(scene, extrinsics=moved.astype(np.float32))


def _perturbed(recon, rng: np.random.Generator):
    size = float(np.median(recon.depth))
    extrinsics = recon.extrinsics.astype(np.float64).copy()
    for index in range(1, recon.num_frames):
        rotation, translation = extrinsics[index, :, :3], extrinsics[index, :, 3]
        centre = -rotation.T @ translation + rng.normal(size=3) / math.sqrt(3) * 0.03 * size
        rotation = _rotation_about(rng.normal(size=3), 3.0) @ rotation
        extrinsics[index] = np.concatenate([rotation, (-rotation @ centre)[:, None]], axis=1)
    intrinsics = recon.intrinsics.copy()
    intrinsics[:, [0, 1], [0, 1]] *= 1.04
    return dataclasses.replace(recon, extrinsics=extrinsics.astype(np.float32), intrinsics=intrinsics,
                               frame_names=list(recon.frame_names), info=dict(recon.info))


def bench_bundle_adjustment(frames: int, tracks: int) -> None:
    started = time.perf_counter()
    scene = _in_first_camera(render_scene("room", num_views=frames, width=294, height=224, seed=3))
    truth = reconstruction_from_synthetic_scene(scene, num_tracks=tracks, track_noise_px=0.5, seed=5)
    start = _perturbed(truth, np.random.default_rng(1))
    print(f"scene: {frames} frames 294x224, {tracks} tracks, "
          f"{int((truth.track_visibility > 0.5).sum())} visible observations "
          f"(prepared in {time.perf_counter() - started:.1f} s)")
    cpu_started = time.process_time()
    result = bundle_adjust(start, shared_camera=True)
    cpu_seconds = time.process_time() - cpu_started
    report = result.report
    focal_error = abs(float(result.reconstruction.intrinsics[0, 0, 0]) / float(truth.intrinsics[0, 0, 0]) - 1)
    # CPU time (all threads of this process) next to wall time: on a shared machine the wall
    # time also counts waiting for the cores.
    print(f"bundle adjustment: {report.seconds:.2f} s wall, {cpu_seconds:.2f} s CPU  ({report.message}) "
          f"focal error {100 * focal_error:.2f} %")


def bench_track_prediction(frames: int, query_points: int) -> None:
    import torch

    from vggt_core.config import tiny_config
    from vggt_core.model import VGGT
    from vggt_core.tracks import track_reconstruction

    torch.manual_seed(0)
    model = VGGT(tiny_config()).eval()
    recon = reconstruction_from_synthetic_scene(render_scene("room", num_views=frames, width=518, height=392))
    track_reconstruction(model, recon, max_query_points=16)  # warm-up
    started, cpu_started = time.perf_counter(), time.process_time()
    tracked = track_reconstruction(model, recon, num_query_frames=4, max_query_points=query_points)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"track prediction (tiny random model, CPU, {torch.get_num_threads()} threads): {frames} frames 518x392, "
          f"{tracked.tracks.shape[1]} points from 4 query frames: {seconds:.2f} s wall, {cpu_seconds:.2f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--tracks", type=int, default=4096)
    parser.add_argument("--track-frames", type=int, default=8)
    parser.add_argument("--query-points", type=int, default=1024)
    parser.add_argument("--skip-tracking", action="store_true")
    args = parser.parse_args()
    bench_bundle_adjustment(args.frames, args.tracks)
    if not args.skip_tracking:
        bench_track_prediction(args.track_frames, args.query_points)


if __name__ == "__main__":
    main()
