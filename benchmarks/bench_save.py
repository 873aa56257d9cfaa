"""Time and size of saving a reconstruction in several layouts, to choose the stored format.

    python benchmarks/bench_save.py --frames 50 --size 518x392

The data imitate a real prediction: photo-like frames (a synthetic scene, with sensor noise),
smooth depth with float noise in its low bits, confidences ``1 + exp(x)`` and a point map
close to the unprojected depth. Each layout is written to a file with ``fsync`` (what the store
does before a share link is shown) and read back; "load" includes recomputing
``points_from_depth`` where a layout leaves it out. The last line times the layout that
``Reconstruction.save`` actually writes.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from vggt_core.geometry import unproject_depth_maps_in_frame_chunks  # noqa: E402
from vggt_core.reconstruction import Reconstruction  # noqa: E402


def realistic_arrays(num_frames: int, height: int, width: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (num_frames, height, width)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    extrinsics = np.tile(np.eye(3, 4, dtype=np.float32), (num_frames, 1, 1))
    extrinsics[:, 0, 3] = np.linspace(0.0, 1.0, num_frames)
    intrinsics = np.tile(np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], np.float32),
                         (num_frames, 1, 1))
    base = (np.sin(rows / 23.0) * np.cos(cols / 31.0) * 0.5 + 2.0)[None]
    depth = (base + rng.normal(0, 1e-3, shape)).astype(np.float32)
    stripes = ((np.sin(cols / 7.0 + rows / 11.0) + 1) * 100)[None, ..., None]
    images = np.clip(stripes + rng.normal(0, 6, shape + (3,)), 0, 255).astype(np.uint8)
    points = unproject_depth_maps_in_frame_chunks(depth, extrinsics, intrinsics)
    return {
        "images": images, "extrinsics": extrinsics, "intrinsics": intrinsics, "depth": depth,
        "depth_conf": (1 + np.exp(rng.normal(1, 1, shape))).astype(np.float32),
        "points_from_depth": points,
        "world_points": (points + rng.normal(0, 1e-2, points.shape)).astype(np.float32),
        "world_points_conf": (1 + np.exp(rng.normal(1, 1, shape))).astype(np.float32),
    }


def write_zip(path: Path, arrays: dict[str, np.ndarray], compression: int, level: int | None,
              compress_names: set[str] | None = None) -> None:
    """An npz (what np.savez writes) with a chosen deflate level, optionally only for some arrays."""
    with open(path, "wb") as handle:
        with zipfile.ZipFile(handle, "w", allowZip64=True) as archive:
            for name, value in arrays.items():
                method = compression if compress_names is None or name in compress_names else zipfile.ZIP_STORED
                info = zipfile.ZipInfo(name + ".npy")
                info.compress_type = method
                with archive.open(info, "w", force_zip64=True) as member:
                    if method == zipfile.ZIP_DEFLATED and level is not None:
                        member._compressor = __import__("zlib").compressobj(level, 8, -15)
                    np.lib.format.write_array(member, np.ascontiguousarray(value), allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())


def load_zip(path: Path, recompute_points: bool) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    for name in ("depth_conf", "world_points_conf"):
        arrays[name] = arrays[name].astype(np.float32)
    if recompute_points:
        arrays["points_from_depth"] = unproject_depth_maps_in_frame_chunks(
            arrays["depth"], arrays["extrinsics"], arrays["intrinsics"])
    return arrays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--size", default="518x392", help="WIDTHxHEIGHT of the model-input frames")
    parser.add_argument("--skip-slow", action="store_true", help="leave out savez_compressed (level 6)")
    args = parser.parse_args(argv)
    width, height = (int(side) for side in args.size.lower().split("x"))
    full = realistic_arrays(args.frames, height, width)
    lean = {key: value for key, value in full.items() if key != "points_from_depth"}
    lean16 = dict(lean, depth_conf=lean["depth_conf"].astype(np.float16),
                  world_points_conf=lean["world_points_conf"].astype(np.float16))
    deflated = zipfile.ZIP_DEFLATED
    layouts = [
        ("everything, deflate level 6 (savez_compressed)", full, deflated, 6, None, False),
        ("everything, stored (savez)", full, zipfile.ZIP_STORED, None, None, False),
        ("no points_from_depth, stored", lean, zipfile.ZIP_STORED, None, None, True),
        ("no points_from_depth, deflate level 1", lean, deflated, 1, None, True),
        ("no points_from_depth, float16 confidences, stored", lean16, zipfile.ZIP_STORED, None, None, True),
        ("no points_from_depth, float16 confidences, deflate 1", lean16, deflated, 1, None, True),
        ("no points_from_depth, float16 conf., deflate 1 on images only", lean16, deflated, 1, {"images"}, True),
    ]
    if args.skip_slow:
        layouts = layouts[1:]
    print(f"{args.frames} frames at {width}x{height}; raw arrays {sum(v.nbytes for v in full.values()) / 1e6:.0f} MB")
    print(f"{'layout':64s} {'save s':>7s} {'load s':>7s} {'MB':>7s}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.npz"
        for label, arrays, compression, level, only, recompute in layouts:
            started = time.perf_counter()
            write_zip(path, arrays, compression, level, only)
            saved = time.perf_counter() - started
            started = time.perf_counter()
            load_zip(path, recompute)
            loaded = time.perf_counter() - started
            print(f"{label:64s} {saved:7.2f} {loaded:7.2f} {path.stat().st_size / 1e6:7.1f}")

        recon = Reconstruction(**full)
        started = time.perf_counter()
        buffer = io.BytesIO()
        recon.save(path)
        saved = time.perf_counter() - started
        started = time.perf_counter()
        Reconstruction.load(path)
        loaded = time.perf_counter() - started
        print(f"{'Reconstruction.save / load (the chosen format)':64s} {saved:7.2f} {loaded:7.2f} "
              f"{path.stat().st_size / 1e6:7.1f}")
        del buffer


if __name__ == "__main__":
    main()
