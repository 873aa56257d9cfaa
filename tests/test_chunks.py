"""Chunked reconstruction: aligning chunks predicted in random Sim(3) gauges, the per-pixel
merge of overlap frames, the loop-closure pose graph, and a chunked CLI run of the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vggt_core import geometry, synthetic
from vggt_core.chunks import Sim3, align_chunks, optimise_chunk_poses, plan_chunks
from vggt_core.reconstruction import Reconstruction

TINY_CHECKPOINT = Path(__file__).parent / "fixtures" / "vggt-tiny"


# ----------------------------------------------------------------------------- independent references


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _umeyama_similarity(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Unweighted Umeyama (1991), written here so the test does not rely on the library's fit."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    xs, xt = source - mu_s, target - mu_t
    u, d, vt = np.linalg.svd(xt.T @ xs / len(source))
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(d) @ sign) / (xs ** 2).sum(1).mean()
    return scale, rotation, mu_t - scale * rotation @ mu_s


def _camera_centres(extrinsics: np.ndarray) -> np.ndarray:
    rotation, translation = extrinsics[:, :, :3].astype(np.float64), extrinsics[:, :, 3].astype(np.float64)
    return -np.einsum("sji,sj->si", rotation, translation)


def _ate_and_rra(estimated: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Absolute trajectory error (RMSE of Sim(3)-aligned camera centres) and the largest
    relative rotation error in degrees over all frame pairs (gauge free)."""
    est_centres, true_centres = _camera_centres(estimated), _camera_centres(truth)
    scale, rotation, translation = _umeyama_similarity(est_centres, true_centres)
    aligned = scale * est_centres @ rotation.T + translation
    ate = float(np.sqrt(((aligned - true_centres) ** 2).sum(1).mean()))
    est_r, true_r = estimated[:, :, :3].astype(np.float64), truth[:, :, :3].astype(np.float64)
    worst = 0.0
    for i in range(len(est_r)):
        for j in range(len(est_r)):
            relative_error = (est_r[i] @ est_r[j].T) @ (true_r[i] @ true_r[j].T).T
            # atan2 of sin and cos: arccos of the trace alone loses ~0.03° to float32 rounding.
            skew = relative_error - relative_error.T
            sin = np.linalg.norm([skew[2, 1], skew[0, 2], skew[1, 0]]) / 2
            cos = (np.trace(relative_error) - 1) / 2
            worst = max(worst, float(np.degrees(np.arctan2(sin, cos))))
    return ate, worst


def _chunk_in_random_gauge(scene, frames: slice, rng: np.random.Generator, depth_noise: float) -> Reconstruction:
    """A chunk as VGGT would predict it with perfect accuracy but its own gauge and scale:
    camera centres moved by a random similarity ``c' = s·Q·c + b``, orientations turned by ``Q``,
    depths multiplied by ``s`` (then optionally by 1 + N(0, depth_noise) per pixel)."""
    scale = float(np.exp(rng.uniform(np.log(0.2), np.log(5.0))))
    turn = _random_rotation(rng)
    shift = rng.normal(scale=3.0, size=3)
    extrinsics = scene.extrinsics[frames].astype(np.float64)
    centres = _camera_centres(extrinsics)
    camera_to_world = np.transpose(extrinsics[:, :, :3], (0, 2, 1))
    new_camera_to_world = turn @ camera_to_world
    new_centres = scale * centres @ turn.T + shift
    new_rotation = np.transpose(new_camera_to_world, (0, 2, 1))
    new_extrinsics = np.concatenate([new_rotation, -np.einsum("sij,sj->si", new_rotation, new_centres)[..., None]], 2)
    depth = scene.depth[frames].astype(np.float64) * scale
    if depth_noise:
        depth = depth * (1.0 + depth_noise * rng.standard_normal(depth.shape))
    depth = depth.astype(np.float32)
    intrinsics = scene.intrinsics[frames]
    points = geometry.unproject_depth_map_to_world_points(depth, new_extrinsics.astype(np.float32), intrinsics)
    confidence = rng.uniform(1.0, 5.0, size=depth.shape).astype(np.float32)
    return Reconstruction(images=scene.images[frames], extrinsics=new_extrinsics, intrinsics=intrinsics,
                          depth=depth, depth_conf=confidence, points_from_depth=points,
                          world_points=points, world_points_conf=confidence)


@pytest.fixture(scope="module")
def scene():
    return synthetic.render_scene("room", num_views=14, width=56, height=42, seed=3)


def _split(scene, chunk_size: int, overlap: int, depth_noise: float, seed: int) -> list[Reconstruction]:
    rng = np.random.default_rng(seed)
    plan = plan_chunks(scene.num_views, chunk_size, overlap)
    return [_chunk_in_random_gauge(scene, slice(start, end), rng, depth_noise)
            for start, end in zip(plan.starts, plan.ends)]


# ----------------------------------------------------------------------------- tests


def test_plan_chunks_covers_every_frame_with_the_overlap():
    plan = plan_chunks(14, 5, 2)
    assert plan.starts == (0, 3, 6, 9)
    assert plan.ends == (5, 8, 11, 14)
    shifted = plan_chunks(13, 5, 2)  # 0-5, 3-8, 6-11, then the last shifted back to 8-13
    assert shifted.starts[-1] == 8 and shifted.ends[-1] == 13
    assert plan_chunks(4, 5, 2).starts == (0,)


def test_exact_chunks_in_random_gauges_merge_to_the_truth(scene):
    chunks = _split(scene, chunk_size=5, overlap=2, depth_noise=0.0, seed=7)
    merged = align_chunks(chunks, overlap=2)
    assert merged.num_frames == scene.num_views
    ate, rra = _ate_and_rra(merged.extrinsics, scene.extrinsics)
    extent = synthetic.scene_extent("room")
    assert ate <= 1e-4 * extent
    assert rra <= 0.01
    # The output is in the first chunk's gauge: its cameras are untouched.
    np.testing.assert_allclose(merged.extrinsics[:3], chunks[0].extrinsics[:3], atol=1e-5)
    # Depth and both point branches agree with the cameras: points reproject to their depth.
    camera_z = (np.einsum("shwc,sc->shw", merged.world_points, merged.extrinsics[:, 2, :3])
                + merged.extrinsics[:, None, None, 2, 3])
    np.testing.assert_allclose(camera_z, merged.depth, rtol=1e-4, atol=1e-4 * extent)


def test_noisy_depth_keeps_the_trajectory_within_one_percent(scene):
    chunks = _split(scene, chunk_size=5, overlap=2, depth_noise=0.01, seed=11)
    merged = align_chunks(chunks, overlap=2, robust_loss="cauchy")
    ate, _ = _ate_and_rra(merged.extrinsics, scene.extrinsics)
    assert ate <= 0.01 * synthetic.scene_extent("room")


def test_overlap_frames_keep_the_more_confident_prediction_per_pixel(scene):
    rng = np.random.default_rng(0)
    first = _chunk_in_random_gauge(scene, slice(0, 5), rng, 0.0)
    second = _chunk_in_random_gauge(scene, slice(3, 8), rng, 0.0)
    # Give the two predictions of frame 3 different values, so the choice is visible.
    second.depth[0] *= 1.5
    second.depth_conf[0] = np.where(np.arange(56)[None, :] < 20, 9.0, 0.5)
    first.depth_conf[3] = 2.0
    identity_first = Sim3.identity()
    # The gauges are given (not fitted) so the check is about the merge rule alone.
    to_first = _known_gauge(second, scene.extrinsics[3:8], first, scene.extrinsics[0:5])
    merged = align_chunks([first, second], overlap=2, chunk_transforms=[identity_first, to_first])
    expected = np.where(second.depth_conf[0] > first.depth_conf[3], second.depth[0] * to_first.scale,
                        first.depth[3])
    np.testing.assert_allclose(merged.depth[3], expected, rtol=1e-6)
    np.testing.assert_array_equal(merged.depth_conf[3], np.maximum(first.depth_conf[3], second.depth_conf[0]))
    assert (second.depth_conf[0] > first.depth_conf[3]).any() and (second.depth_conf[0] < first.depth_conf[3]).any()


def _known_gauge(chunk: Reconstruction, chunk_truth: np.ndarray, reference: Reconstruction,
                 reference_truth: np.ndarray) -> Sim3:
    """The exact chunk → reference similarity, from camera centres (not from points)."""
    def to_truth(recon, truth):
        return _umeyama_similarity(_camera_centres(recon.extrinsics), _camera_centres(truth))

    s1, r1, t1 = to_truth(chunk, chunk_truth)
    s0, r0, t0 = to_truth(reference, reference_truth)
    return Sim3(s0, r0, t0).inverse() @ Sim3(s1, r1, t1)


def test_pose_graph_loop_closure_removes_drift():
    rng = np.random.default_rng(5)
    truth = [Sim3(float(np.exp(rng.normal(scale=0.1))), _random_rotation(rng), rng.normal(size=3))
             for _ in range(6)]
    truth[0] = Sim3.identity()
    exact_steps = [truth[k].inverse() @ truth[k + 1] for k in range(5)]
    # Each measured step carries a small scale and translation drift, as real chunk fits do.
    drifted = [Sim3(step.scale * 1.02, step.rotation, step.translation + 0.05) for step in exact_steps]
    loop = (0, 5, truth[0].inverse() @ truth[5])
    optimised = optimise_chunk_poses(drifted, [loop], loop_sigma=0.001)
    chained = [Sim3.identity()]
    for step in drifted:
        chained.append(chained[-1] @ step)

    def end_error(poses):
        return np.linalg.norm(poses[5].matrix() - truth[5].matrix())

    assert end_error(optimised) < 0.1 * end_error(chained)
    np.testing.assert_allclose(optimised[0].matrix(), np.eye(4), atol=1e-6)


def test_reconstruct_in_chunks_reports_each_chunk_and_closes_loops_exactly(scene):
    """The whole chunked run with a stand-in for the model: each run returns the true geometry of
    the frames it is given in a fresh random gauge (the frame index is encoded in the pixels).
    Loop closure adds a model run per pair; with exact runs the pose graph keeps the truth."""
    import torch

    from vggt_core.chunks import reconstruct_in_chunks

    rng = np.random.default_rng(2)
    runs = []

    def exact_run(model, images, frames_chunk_size, progress, frame_names, transforms):
        frames = np.rint(images[:, 0, 0, 0].numpy() * 100).astype(int)
        runs.append(frames.tolist())
        progress(0.5, "running the model")
        return _chunk_in_random_gauge(_subset(scene, frames), slice(None), rng, 0.0)

    images = torch.arange(scene.num_views, dtype=torch.float32).div(100).view(-1, 1, 1, 1).expand(-1, 3, 42, 56)
    messages = []
    merged = reconstruct_in_chunks(None, images, 5, 2, run_chunk=exact_run, loop_closure_pairs=[(1, 12)],
                                   progress=lambda fraction, message: messages.append((fraction, message)))
    assert runs[:4] == [[0, 1, 2, 3, 4], [3, 4, 5, 6, 7], [6, 7, 8, 9, 10], [9, 10, 11, 12, 13]]
    assert runs[4] == [0, 1, 11, 12]  # windows of `overlap` frames around 1 (chunk 0) and 12 (chunk 3)
    for number in range(1, 5):
        assert any(message.startswith(f"chunk {number} of 4") for _, message in messages)
    assert any(message.startswith("loop closure 1/1") for _, message in messages)
    fractions = [fraction for fraction, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert merged.info["chunk_alignment"]["from_pose_graph"]
    ate, rra = _ate_and_rra(merged.extrinsics, scene.extrinsics)
    assert ate <= 1e-4 * synthetic.scene_extent("room") and rra <= 0.01


def _subset(scene, frames):
    return synthetic.SyntheticScene(scene.name, scene.images[frames], scene.depth[frames],
                                    scene.extrinsics[frames], scene.intrinsics[frames])


def test_chunked_cli_run_of_the_tiny_model(tmp_path):
    from vggt_core.cli import main

    # The CLI resizes photos to the model's 518-pixel width, so few frames keep this quick.
    scene = synthetic.render_scene("table", num_views=5, width=56, height=42, seed=2)
    photos = synthetic.save_scene_images(scene, tmp_path / "photos")
    out = tmp_path / "out"
    code = main(["reconstruct", *map(str, photos), "--out", str(out), "--checkpoint", str(TINY_CHECKPOINT),
                 "--device", "cpu", "--export", "npz", "--chunk-size", "3", "--overlap", "1"])
    assert code == 0
    recon = Reconstruction.load(next(out.glob("*.npz")))
    assert recon.num_frames == 5
    alignment = recon.info["chunk_alignment"]
    assert alignment["num_chunks"] == 2 and alignment["chunk_size"] == 3
    assert alignment["chunk_first_frames"] == [0, 2]
    assert recon.frame_names == [Path(photo).name for photo in photos]
    assert np.isfinite(recon.points_from_depth).all()


def test_chunk_run_memory_is_flat_in_the_sequence_length():
    """Small numbers from benchmarks/bench_chunks.py, in one fresh process (its allocator setting
    must not leak into the test session): the largest per-chunk rise of resident memory for 24
    and 96 frames agrees within 10 %, while one unchunked run of 96 frames needs more than twice
    as much (so the measurement would see a chunked run that is not)."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    script = ("import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/benchmarks'];"
              "from bench_chunks import measure_one;"
              "print(json.dumps([measure_one(n, 56, 56, 8, 2, single_run=True) for n in (24, 96)]))")
    output = subprocess.run([sys.executable, "-c", script, str(repo)], capture_output=True, text=True,
                            timeout=120, check=True).stdout
    short, long = json.loads(output.strip().splitlines()[-1])
    assert long["chunks"] > short["chunks"]
    assert long["chunk_run_peak_increase_bytes"] <= 1.1 * short["chunk_run_peak_increase_bytes"]
    assert long["single_run_peak_increase_bytes"] > 2 * long["chunk_run_peak_increase_bytes"]
