"""Command line: ``vggt reconstruct INPUT... --out DIR`` and ``vggt finetune`` (also ``python -m vggt_core``)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .config import (DEFAULT_FRAMES_CHUNK_SIZE, DEFAULT_MAX_QUERY_POINTS, DEFAULT_NUM_QUERY_FRAMES,
                     QUERY_POINT_METHODS, VGGTConfig)
from .errors import InputError, MeshError, WeightsUnavailableError
from .export.registry import EXPORTERS, default_export_formats, export_formats, parse_export_formats
from .progress import ProgressRange
from .mesh import DEFAULT_MAX_FACES, MESH_QUALITIES
from .scale import LENGTH_UNITS
from .sky import DEFAULT_SKY_MODEL
from .weights import DEFAULT_CHECKPOINT, RANDOM_TINY_CHECKPOINT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vggt",
                                     description="3-D reconstruction from photos or a video with VGGT.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "reconstruct", help="reconstruct cameras, depth maps and a point cloud",
        description="Reconstruct cameras, depth maps and a coloured point cloud from photos, folders of "
                    "photos, or a video, and write them in the chosen formats.")
    run.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, or a video")
    run.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    run.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                     help="Hugging Face repo id, a local .pt/.pth/.safetensors file or folder, or "
                          f"{RANDOM_TINY_CHECKPOINT!r} (an untrained tiny model: meaningless results, for trying "
                          f"the tools out) (default: {DEFAULT_CHECKPOINT})")
    run.add_argument("--config", type=Path, default=None,
                     help="model config JSON (default: config.json beside the checkpoint, else VGGT-1B)")
    run.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    run.add_argument("--mode", choices=("crop", "pad"), default="crop",
                     help="crop: 518 px wide, centre-cropped to 518 rows; pad: longer side 518, white padding "
                          "to a square (default: crop)")
    run.add_argument("--fps", type=float, default=1.0, help="frames per second sampled from a video (default: 1)")
    run.add_argument("--max-frames", type=int, default=None,
                     help="most frames to reconstruct; videos are thinned evenly to fit (default: no limit)")
    run.add_argument("--export", default=",".join(default_export_formats()),
                     help=f"comma-separated formats from {','.join(export_formats())} (default: "
                          f"{','.join(default_export_formats())}); "
                          + "; ".join(f"{exporter.name}: {exporter.description}" for exporter in EXPORTERS.values()))
    run.add_argument("--colmap-format", choices=("bin", "txt"), default="bin",
                     help="COLMAP model as binary .bin files or text .txt files (default: bin)")
    run.add_argument("--conf", type=float, default=50.0,
                     help="confidence threshold as a percentile 0-100 for the exported points (default: 50)")
    run.add_argument("--branch", choices=("depth", "point"), default="depth",
                     help="points from depth maps and cameras (default, more accurate) or the point-map head")
    run.add_argument("--camera", choices=("predicted", "exif"), default="predicted",
                     help="intrinsics for the depth branch: VGGT's predicted ones, or the photos' EXIF focal lengths "
                          "(the depth is re-projected with them; the network does not take intrinsics) "
                          "(default: predicted)")
    run.add_argument("--focal", type=_focal, default=None, metavar="F",
                     help="a known focal length instead: pixels of the photos (e.g. 1200) or 35 mm-equivalent "
                          "millimetres (e.g. 26mm); the depth is re-projected with it")
    run.add_argument("--known-distance", nargs=3, metavar=("A", "B", "LENGTH"), default=None,
                     help="set a real-world scale: A and B are photo pixels 'frame,x,y' (frame index, pixels of "
                          "the original photo) whose true distance is LENGTH in --units")
    run.add_argument("--scale", type=float, default=None,
                     help="multiply every length by this factor (depth, points, camera positions)")
    run.add_argument("--units", default=None, choices=sorted(LENGTH_UNITS),
                     help="the unit of --known-distance or --scale, written into the exports")
    run.add_argument("--hide-sky", action="store_true",
                     help="leave sky pixels out of the exported points (runs the sky-segmentation model)")
    run.add_argument("--sky-model", default=DEFAULT_SKY_MODEL,
                     help=f"sky model: a Hugging Face repo id holding skyseg.onnx, or a local .onnx file "
                          f"(default: {DEFAULT_SKY_MODEL})")
    run.add_argument("--tracks", action="store_true",
                     help="track points across the frames with the track head (stored in the npz; the COLMAP "
                          "export then holds multi-view tracks)")
    run.add_argument("--bundle-adjust", action="store_true",
                     help="track points, then refine cameras and focal lengths with bundle adjustment (pycolmap)")
    run.add_argument("--query-frames", type=_positive_int, default=DEFAULT_NUM_QUERY_FRAMES, metavar="N",
                     help=f"frames, spread over the sequence, that tracks start from (default: "
                          f"{DEFAULT_NUM_QUERY_FRAMES})")
    run.add_argument("--max-query-points", type=_positive_int, default=DEFAULT_MAX_QUERY_POINTS, metavar="N",
                     help=f"most points tracked, over all query frames (default: {DEFAULT_MAX_QUERY_POINTS})")
    run.add_argument("--query-method", choices=QUERY_POINT_METHODS, default="grid",
                     help="grid: the most confident pixels of an even grid; sift: SIFT keypoints (default: grid)")
    run.add_argument("--shared-camera", action="store_true",
                     help="bundle adjustment with one camera (focal length) for all frames, e.g. one video")
    run.add_argument("--masks", type=Path, default=None, metavar="DIR",
                     help="folder of masks of things to leave out (white = leave out), one per photo with the "
                          "photo's file name stem; masked pixels give no point, mesh or track")
    run.add_argument("--mesh", action="store_true",
                     help="also fuse the depth maps into a coloured mesh: mesh.glb and mesh.ply (the same as "
                          "adding mesh,mesh-ply to --export)")
    run.add_argument("--mesh-quality", choices=MESH_QUALITIES, default="standard",
                     help="mesh voxel size relative to the scene's extent (default: standard)")
    run.add_argument("--mesh-max-faces", type=_positive_int, default=DEFAULT_MAX_FACES, metavar="N",
                     help=f"simplify the mesh to at most N faces (default: {DEFAULT_MAX_FACES})")
    run.add_argument("--frames-chunk-size", type=int, default=DEFAULT_FRAMES_CHUNK_SIZE,
                     help=f"frames decoded at once by the dense heads (memory vs speed; default "
                          f"{DEFAULT_FRAMES_CHUNK_SIZE})")
    run.add_argument("--chunk-size", type=_positive_int, default=None, metavar="N",
                     help="run the model on overlapping chunks of at most N frames and align them (bounded "
                          "memory for long videos; see docs/chunks.md)")
    run.add_argument("--overlap", type=_positive_int, default=None, metavar="M",
                     help="frames shared by consecutive chunks (default: a quarter of --chunk-size, at least 1)")
    run.add_argument("--loop-closure", action="store_true",
                     help="with --chunk-size: look for revisited places with the model's image features and "
                          "solve the chunk poses as a pose graph (GTSAM); meaningful with trained weights only")
    run.add_argument("--loop-pairs", type=_frame_pairs, default=None, metavar="I:J,...",
                     help="with --chunk-size: frame pairs (0-based) known to see the same place, for loop closure")
    run.add_argument("--distributed", action="store_true",
                     help="shard the frames over the processes of torchrun (python -m torch.distributed.run "
                          "--nproc-per-node N -m vggt_core reconstruct ... --distributed); NCCL on CUDA, gloo "
                          "on CPU; rank 0 writes the result")
    from .training.command import add_finetune_command

    add_finetune_command(commands)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from error
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {text!r}")
    return value


def _frame_pairs(text: str) -> list[tuple[int, int]]:
    """``3:40,5:61`` → [(3, 40), (5, 61)]."""
    pairs = []
    for item in text.split(","):
        try:
            first, second = (int(part) for part in item.split(":"))
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected frame pairs like 3:40,5:61, got {text!r}") from error
        if first < 0 or second < 0:
            raise argparse.ArgumentTypeError(f"frame indices start at 0, got {item!r}")
        pairs.append((first, second))
    return pairs


def _focal(text: str) -> tuple[float, str]:
    """``1200`` → (1200, "px"); ``26mm`` → (26, "mm35")."""
    unit = "mm35" if text.strip().lower().endswith("mm") else "px"
    number = text.strip().lower().removesuffix("mm").removesuffix("px")
    try:
        value = float(number)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected pixels (1200) or 35 mm-equivalent mm (26mm), got {text!r}") \
            from error
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the focal length must be > 0, got {text!r}")
    return value, unit


def _photo_pixel(text: str) -> tuple[int, float, float]:
    try:
        frame, x, y = text.split(",")
        return int(frame), float(x), float(y)
    except ValueError as error:
        raise InputError(f"a measured point must be 'frame,x,y' (e.g. 0,120,340), got {text!r}") from error


def adjust_scene(recon, args: argparse.Namespace):
    """The camera, scale and sky options applied to a fresh reconstruction, in that order."""
    from .intrinsics import apply_camera_choice
    from .scale import scale_from_known_distance

    if args.focal is not None:
        recon = apply_camera_choice(recon, "manual", *args.focal)
    elif args.camera == "exif":
        recon = apply_camera_choice(recon, "exif")
    if args.known_distance is not None:
        if args.units is None:
            raise InputError("--known-distance needs --units (the unit of LENGTH)")
        a, b, length = args.known_distance
        factor = scale_from_known_distance(recon, _photo_pixel(a), _photo_pixel(b), length, branch=args.branch)
        recon = recon.scaled(factor, units=args.units)
    if args.scale is not None:
        recon = recon.scaled(args.scale, units=args.units)
    elif args.units is not None and args.known_distance is None:
        raise InputError("--units names the unit of --known-distance or --scale; give one of them")
    if args.hide_sky:
        from .sky import load_sky_segmenter, with_sky_mask

        recon = with_sky_mask(recon, load_sky_segmenter(args.sky_model))
    return recon


def track_and_refine(model, recon, args: argparse.Namespace, progress):
    """Tracks from ``--query-frames`` frames, then (``--bundle-adjust``) bundle adjustment.

    Returns ``(reconstruction, report or None)``; a failed adjustment keeps the tracked input.
    """
    from .tracks import track_reconstruction

    recon = track_reconstruction(model, recon, num_query_frames=args.query_frames,
                                 max_query_points=args.max_query_points, method=args.query_method,
                                 frames_chunk_size=args.frames_chunk_size, progress=ProgressRange(progress, 0.9, 0.93))
    if not args.bundle_adjust:
        return recon, None
    from .bundle_adjustment import bundle_adjust

    result = bundle_adjust(recon, shared_camera=args.shared_camera,
                           progress=ProgressRange(progress, 0.93, 0.95))
    return result.reconstruction, result.report


def parse_formats(text: str) -> list[str]:
    """``--export``'s value as format names of the registry (``InputError`` for unknown ones)."""
    return parse_export_formats(text)


def _run_model(model, frames, args: argparse.Namespace, progress):
    """One model run, in chunks (``--chunk-size``) or sharded over torchrun's ranks
    (``--distributed``); None on distributed ranks other than 0."""
    from .pipeline import decode_frames, reconstruct_frames

    chunked = args.chunk_size is not None
    if not chunked and (args.loop_closure or args.loop_pairs or args.overlap is not None):
        raise InputError("--overlap, --loop-closure and --loop-pairs need --chunk-size")
    if args.distributed:
        if chunked:
            raise InputError("--distributed and --chunk-size cannot be combined yet")
        from .distributed import reconstruct_decoded_distributed

        return reconstruct_decoded_distributed(model, decode_frames(frames, mode=args.mode),
                                               frames_chunk_size=args.frames_chunk_size, progress=progress)
    if not chunked:
        return reconstruct_frames(model, frames, mode=args.mode, frames_chunk_size=args.frames_chunk_size,
                                  progress=progress)
    from .chunks import default_overlap, reconstruct_decoded_in_chunks

    overlap = args.overlap if args.overlap is not None else default_overlap(args.chunk_size)
    if args.chunk_size < 2 or overlap >= args.chunk_size:
        raise InputError(f"--chunk-size must be at least 2 and above --overlap, got {args.chunk_size} and {overlap}")
    progress(0.0, f"Preprocessing {len(frames)} frames")
    decoded = decode_frames(frames, mode=args.mode)
    return reconstruct_decoded_in_chunks(model, decoded, args.chunk_size, overlap,
                                         frames_chunk_size=args.frames_chunk_size, progress=progress,
                                         loop_closure=args.loop_closure, loop_closure_pairs=args.loop_pairs)


def run_reconstruct(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .export import export_all
    from .filtering import ViewSettings
    from .pipeline import gather_input_frames
    from .weights import load_model

    formats = parse_formats(args.export)
    if args.mesh:  # shorthand for both mesh formats
        formats += [name for name in ("mesh", "mesh-ply") if name not in formats]
    settings = ViewSettings(confidence_threshold=args.conf, branch=args.branch, hide_sky=args.hide_sky)
    started = time.perf_counter()
    with tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {elapsed} {postfix}", file=sys.stderr) as bar:
        def progress(fraction: float, message: str) -> None:
            bar.set_description(message)
            bar.update(max(0, round(100 * fraction) - bar.n))

        progress(0.0, "reading inputs")
        frames = gather_input_frames(args.inputs, fps=args.fps, max_frames=args.max_frames)
        progress(0.05, f"loading weights ({args.checkpoint})")
        config = VGGTConfig.from_json(args.config) if args.config else None
        device = args.device
        if args.distributed:
            from .distributed import init_from_environment

            device = init_from_environment(args.device)
        model = load_model(args.checkpoint, config=config, device=device)

        recon = _run_model(model, frames, args, ProgressRange(progress, 0.1, 0.9))
        if recon is None:  # a distributed rank other than 0: rank 0 writes the result
            return 0
        if args.masks is not None:
            from .masks import load_masks_for_reconstruction

            recon, mask_notes = load_masks_for_reconstruction(recon, args.masks)
            for note in mask_notes:
                print(f"note: {note}", file=sys.stderr)
        recon = adjust_scene(recon, args)
        refinement = None
        if args.tracks or args.bundle_adjust:
            recon, refinement = track_and_refine(model, recon, args, progress)
        progress(0.95, "writing exports")
        try:
            written = export_all(recon, args.out, formats=formats, settings=settings,
                                 colmap_binary=args.colmap_format == "bin",
                                 originals=[frame.source for frame in frames] if len(frames) == recon.num_frames
                                 else None, mesh_quality=args.mesh_quality, mesh_max_faces=args.mesh_max_faces)
        except MeshError as error:
            # The mesh formats come last in the registry: everything else is already written.
            raise InputError(f"no mesh was written: {error} (the other exports are in {args.out})") from error
        progress(1.0, "done")

    height, width = recon.image_size_hw
    print(f"Reconstructed {recon.num_frames} frames at {width}x{height} in {time.perf_counter() - started:.1f} s "
          f"(checkpoint {args.checkpoint}, device {next(model.parameters()).device}).")
    if args.known_distance is not None or args.scale is not None:
        print(f"Scale: every length multiplied by {recon.scale_factor:.6g}; units: {recon.units or 'VGGT units'}.")
    from .intrinsics import focal_length_summary

    print(focal_length_summary(recon) + ".")
    if recon.tracks is not None:
        print(f"Tracked {recon.tracks.shape[1]} points from {len(set(recon.track_query_frames.tolist()))} "
              "query frames.")
    if refinement is not None:
        print(("Bundle adjustment: " if refinement.refined else "warning: bundle adjustment skipped: ")
              + refinement.message)
    for name, path in written.items():
        print(f"  {name:<8} {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "finetune":
            from .training.command import run_finetune

            return run_finetune(args)
        return run_reconstruct(args)
    except (InputError, WeightsUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
