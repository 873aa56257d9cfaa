"""Time of re-rendering the app's view (point selection + GLB scene) from a stored reconstruction.

    python benchmarks/bench_view.py --frames 50 --size 518x392

What the app does when a view control changes: ``select_points`` (pure numpy) and
``export_glb`` (trimesh scene written to disk). No model runs; the reconstruction is random
data of the given size, which costs the same as real predictions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from vggt_core.export import export_glb  # noqa: E402
from vggt_core.filtering import ViewSettings, select_points  # noqa: E402
from vggt_core.reconstruction import Reconstruction  # noqa: E402


def random_reconstruction(num_frames: int, height: int, width: int) -> Reconstruction:
    rng = np.random.default_rng(0)
    shape = (num_frames, height, width)
    extrinsics = np.tile(np.eye(3, 4, dtype=np.float32), (num_frames, 1, 1))
    extrinsics[:, 0, 3] = np.linspace(0.0, 1.0, num_frames)  # cameras along a line
    intrinsics = np.tile(np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], np.float32),
                         (num_frames, 1, 1))
    return Reconstruction(
        images=rng.integers(0, 256, shape + (3,), dtype=np.uint8),
        extrinsics=extrinsics,
        intrinsics=intrinsics,
        depth=rng.random(shape, dtype=np.float32) + 1.0,
        depth_conf=rng.random(shape, dtype=np.float32) * 20.0 + 1.0,
        points_from_depth=rng.random(shape + (3,), dtype=np.float32),
    )


def best_of(repeats: int, action) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--size", default="518x392", help="WIDTHxHEIGHT of the model-input frames")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    width, height = (int(side) for side in args.size.lower().split("x"))

    recon = random_reconstruction(args.frames, height, width)
    cases = [
        ("50th percentile, 1M points", ViewSettings(max_points=1_000_000)),
        ("90th percentile, 1M points", ViewSettings(confidence_threshold=90, max_points=1_000_000)),
        ("0th percentile, 5M points", ViewSettings(confidence_threshold=0, max_points=5_000_000)),
        ("one frame", ViewSettings(frame_index=args.frames // 2, max_points=1_000_000)),
        ("hide black+white background", ViewSettings(filter_black_background=True, filter_white_background=True,
                                                     max_points=1_000_000)),
    ]
    print(f"{args.frames} frames at {width}x{height} ({args.frames * width * height / 1e6:.1f} M pixels), "
          f"best of {args.repeats}")
    print(f"{'view':<30} {'points':>10} {'select s':>9} {'GLB s':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for label, settings in cases:
            select_seconds = best_of(args.repeats, lambda: select_points(recon, settings))
            results = []
            glb_seconds = best_of(args.repeats,
                                  lambda: results.append(export_glb(recon, Path(folder) / "view.glb", settings)))
            print(f"{label:<30} {results[-1].num_points:>10,} {select_seconds:>9.3f} {glb_seconds:>7.3f}")


if __name__ == "__main__":
    main()
