"""Time and accuracy of fusing the depth maps into a mesh (vggt_core.mesh), issue 21's target:
50 frames at 518×392 in at most 10 s on the CPU.

    python benchmarks/bench_mesh.py --frames 50 --size 518x392 --json benchmarks/results/mesh-fusion.json

The synthetic room is rendered with exact depth and cameras (rendering is not timed). The
fusion runs at the default "standard" quality with the default face budget, and each quality's
accuracy is reported as the issue states it (on the mesh before simplification, and the
vertices also after it): the share of mesh vertices within 1.5 voxels of
the true surfaces, and of true surface points (the exact depth, unprojected) within 1.5 voxels
of the mesh (its faces, sampled densely). Wall-clock and CPU seconds are both kept: on a
shared machine the wall clock also counts other processes' time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from vggt_core.filtering import ViewSettings  # noqa: E402
from vggt_core.mesh import DEFAULT_MAX_FACES, fuse_depth_to_mesh  # noqa: E402
from vggt_core.reconstruction import reconstruction_from_synthetic_scene  # noqa: E402
from vggt_core.synthetic import render_scene, scene_surface_distance  # noqa: E402


def coverage(mesh, truth: np.ndarray) -> float:
    import trimesh
    from scipy.spatial import cKDTree

    surface = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    samples, _ = trimesh.sample.sample_surface(surface, 2_000_000, seed=0)
    distance, _ = cKDTree(samples).query(truth)
    return float(np.mean(distance <= 1.5 * mesh.voxel_size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--size", default="518x392")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    width, height = (int(value) for value in args.size.split("x"))
    recon = reconstruction_from_synthetic_scene(render_scene("room", num_views=args.frames, width=width,
                                                             height=height, seed=0))
    settings = ViewSettings(confidence_threshold=0.0)
    truth = recon.points_from_depth.reshape(-1, 3)[::23]
    results = {"frames": args.frames, "load_average_before": os.getloadavg()[0], "size": args.size, "cpu_count": os.cpu_count(),
               "machine": platform.processor() or platform.machine(), "qualities": {}}
    for quality in ("draft", "standard", "fine"):
        times, cpu_times = [], []
        for _ in range(args.repeats if quality == "standard" else 1):
            started, cpu_started = time.perf_counter(), time.process_time()
            mesh = fuse_depth_to_mesh(recon, settings, quality=quality, max_faces=DEFAULT_MAX_FACES)
            times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - cpu_started)
        unsimplified = fuse_depth_to_mesh(recon, settings, quality=quality, max_faces=None)
        within = scene_surface_distance("room", unsimplified.vertices) <= 1.5 * unsimplified.voxel_size
        entry = {
            "seconds_min": min(times), "seconds_all": times, "cpu_seconds_min": min(cpu_times), "voxel_size": mesh.voxel_size,
            "faces": mesh.num_faces, "faces_before_simplification": mesh.num_faces_before_simplification,
            "vertices_within_1.5_voxels": float(np.mean(within)),
            "truth_within_1.5_voxels_of_mesh": coverage(unsimplified, truth),
            "simplified_vertices_within_1.5_voxels": float(np.mean(
                scene_surface_distance("room", mesh.vertices) <= 1.5 * mesh.voxel_size)),
        }
        results["qualities"][quality] = entry
        print(quality, json.dumps(entry))
    results["target_seconds"] = 10.0
    results["meets_target"] = results["qualities"]["standard"]["seconds_min"] <= 10.0
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
