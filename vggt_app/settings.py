"""The app's settings: every flag, its environment variable and its default (``python app.py --help``).

Hosts where flags cannot be passed (a Space) set the environment variables instead.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vggt_core import DEFAULT_CHECKPOINT, RANDOM_TINY_CHECKPOINT
from vggt_core.sky import DEFAULT_SKY_MODEL
from vggt_core.tracks import DEFAULT_MAX_QUERY_POINTS

from .store.backends import StorageConfigurationError, parse_storage_location
from .store.upload_limits import UploadLimits

APP_DIR = Path(__file__).resolve().parent.parent

# A development checkpoint: the tiny architecture with seeded random weights, so the whole app
# can run without downloading 5 GB. Its results are meaningless and the page says so.


@dataclass(frozen=True)
class AppSettings:
    """Everything the operator of the app can configure (see ``python app.py --help``)."""

    checkpoint: str = DEFAULT_CHECKPOINT
    device: str | None = None
    # Two or more: the model's forward runs sharded over a device group, one worker process per
    # device (vggt_app.runtime.device_group); empty: on ``device`` alone.
    devices: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    max_frames: int = 64
    video_fps: float = 1.0
    storage_dir: Path = APP_DIR / "app-data" / "reconstructions"
    # An fsspec URL (s3://, gs://, hf://datasets/...) instead of storage_dir, or None.
    storage_url: str | None = None
    storage_cache_mb: float = 2048.0
    storage_ttl_hours: float = 72.0
    storage_max_mb: float = 2048.0
    public_url: str | None = None
    sky_model: str = DEFAULT_SKY_MODEL
    cache_max_mb: float = 1024.0
    max_upload_mb: float = UploadLimits.max_file_mb
    max_total_upload_mb: float = UploadLimits.max_total_mb
    refine_tracks: int = DEFAULT_MAX_QUERY_POINTS
    # Percent of storage_max_mb one client's entries may take; over it, its oldest go first.
    client_share_percent: float = 25.0
    # Believe X-Forwarded-For for the client's address (only behind a proxy that sets it).
    trust_forwarded_for: bool = False
    client_runs_per_hour: int = 60
    client_derived_per_hour: int = 120
    # Start on a public Hub dataset (its photos and share ids are then world-readable).
    allow_public_store: bool = False
    prune_interval_s: float = 60.0
    # Most files one upload request may carry (refused while streaming, see upload_route).
    max_upload_files: int = 200

    @property
    def upload_limits(self) -> UploadLimits:
        return UploadLimits(max_file_mb=self.max_upload_mb, max_total_mb=self.max_total_upload_mb)

    @property
    def client_share_bytes(self) -> int:
        return int(self.storage_max_mb * 1e6 * self.client_share_percent / 100)

    @property
    def storage_location(self) -> str:
        """Where reconstructions are stored: the URL, else the folder."""
        return self.storage_url or str(self.storage_dir)

    @property
    def is_untrained(self) -> bool:
        return self.checkpoint == RANDOM_TINY_CHECKPOINT


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {text}")
    return value


def _device(text: str) -> str | None:
    """A torch device string, checked now rather than on the first reconstruction."""
    if text in ("", "auto"):
        return None
    try:
        device = torch.device(text)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"unknown device {text!r} ({error})") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine")
    return text


def _devices(text: str) -> tuple[str, ...] | None:
    """``cuda:0,cuda:1`` (or ``cpu,cpu``), checked now; one device is no group: ``()``; empty or
    ``auto``: None, the default (see :func:`default_devices`)."""
    from vggt_core.device_group import parse_devices

    if text.strip() in ("", "auto"):
        return None
    try:
        return tuple(parse_devices(text))
    except (ValueError, RuntimeError) as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def default_devices(device: str | None) -> tuple[str, ...]:
    """Without ``--devices``: every visible CUDA device when there are several and ``--device`` is
    auto; else none (one device). Never on a Hugging Face Space: ZeroGPU forbids touching CUDA
    outside a GPU call, and grants one GPU."""
    from vggt_core.device_group import parse_devices

    from .runtime.models import spaces_package

    if device is not None or spaces_package() is not None:
        return ()
    return tuple(parse_devices(None))


def _env_flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def build_arg_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The command line; each flag's default comes from its environment variable if set."""
    env = os.environ if environ is None else environ
    defaults = AppSettings()
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="VGGT Reconstruct: a browser app that turns photos or a video into a 3-D point "
                    "cloud with cameras, depth maps, downloads and share links. Every flag can also be "
                    "set with the environment variable named in its help.")
    parser.add_argument(
        "--checkpoint", default=env.get("VGGT_CHECKPOINT", defaults.checkpoint),
        help="model weights: a Hugging Face repo id, a local .pt/.pth/.safetensors file or a folder "
             f"holding one, or '{RANDOM_TINY_CHECKPOINT}' (an untrained tiny model for development) "
             f"[env VGGT_CHECKPOINT; default {defaults.checkpoint}]")
    parser.add_argument(
        "--device", type=_device, default=env.get("VGGT_DEVICE", "auto"),
        help="cuda, cuda:1, mps, cpu or auto [env VGGT_DEVICE; default auto: CUDA, then MPS, then CPU]")
    parser.add_argument(
        "--devices", type=_devices, default=env.get("VGGT_DEVICES") or None,
        help="run each model forward sharded over these devices, one worker process each, with the same "
             "result as one device: cuda:0,cuda:1 (cpu,cpu for tests); a worker that dies makes the server "
             "go on with --device alone [env VGGT_DEVICES; default: every visible CUDA device when there "
             "are several and --device is auto]")
    parser.add_argument(
        "--host", default=env.get("GRADIO_SERVER_NAME", defaults.host),
        help=f"address to listen on; 0.0.0.0 for every interface [env GRADIO_SERVER_NAME; default {defaults.host}]")
    parser.add_argument(
        "--port", type=_port, default=env.get("GRADIO_SERVER_PORT", str(defaults.port)),
        help=f"port to listen on [env GRADIO_SERVER_PORT; default {defaults.port}]")
    parser.add_argument(
        "--share", action=argparse.BooleanOptionalAction, default=_env_flag(env.get("VGGT_SHARE")),
        help="also open a temporary public *.gradio.live link [env VGGT_SHARE=1; default off]")
    parser.add_argument(
        "--max-frames", type=_positive_int, default=env.get("VGGT_MAX_FRAMES", str(defaults.max_frames)),
        help="most frames one reconstruction may have; more photos are refused, videos are thinned "
             f"evenly to fit [env VGGT_MAX_FRAMES; default {defaults.max_frames}]")
    parser.add_argument(
        "--video-fps", type=_positive_float, default=env.get("VGGT_VIDEO_FPS", str(defaults.video_fps)),
        help="initial frames per second sampled from a video (users can change it) "
             f"[env VGGT_VIDEO_FPS; default {defaults.video_fps:g}]")
    parser.add_argument(
        "--storage", "--storage-dir", dest="storage", type=_storage_location,
        default=env.get("VGGT_STORAGE") or env.get("VGGT_STORAGE_DIR") or str(defaults.storage_dir),
        help="where reconstructions are stored: a folder (one sub-folder per share id), or an fsspec URL "
             "shared by several servers: s3://bucket/prefix, gs://bucket/prefix, hf://datasets/<user>/<repo>/<prefix> "
             "(keep it private: entries hold the users' photos) [env VGGT_STORAGE or VGGT_STORAGE_DIR; "
             "default app-data/reconstructions next to app.py]")
    parser.add_argument(
        "--storage-cache-mb", type=_positive_float,
        default=env.get("VGGT_STORAGE_CACHE_MB", str(defaults.storage_cache_mb)),
        help="with a URL storage: keep up to this many megabytes of recently opened reconstructions on "
             f"the local disk [env VGGT_STORAGE_CACHE_MB; default {defaults.storage_cache_mb:g}]")
    parser.add_argument(
        "--storage-ttl-hours", type=_positive_float,
        default=env.get("VGGT_STORAGE_TTL_HOURS", str(defaults.storage_ttl_hours)),
        help="delete stored reconstructions (and break their share links) after this many hours "
             f"[env VGGT_STORAGE_TTL_HOURS; default {defaults.storage_ttl_hours:g}]")
    parser.add_argument(
        "--storage-max-mb", type=_positive_float,
        default=env.get("VGGT_STORAGE_MAX_MB", str(defaults.storage_max_mb)),
        help="keep the storage folder under this many megabytes by deleting the oldest "
             f"reconstructions first [env VGGT_STORAGE_MAX_MB; default {defaults.storage_max_mb:g}]")
    parser.add_argument(
        "--public-url", default=env.get("VGGT_PUBLIC_URL") or None,
        help="the page's public address used in share links, e.g. https://example.org/vggt/ "
             "(needed only behind proxies that hide it) [env VGGT_PUBLIC_URL; default: taken from "
             "the browser's request]")
    parser.add_argument(
        "--sky-model", default=env.get("VGGT_SKY_MODEL", defaults.sky_model),
        help="sky-segmentation model for 'Hide sky': a Hugging Face repo id holding skyseg.onnx, or a local "
             f".onnx file [env VGGT_SKY_MODEL; default {defaults.sky_model}]")
    parser.add_argument(
        "--cache-max-mb", type=_positive_float, default=env.get("VGGT_CACHE_MAX_MB", str(defaults.cache_max_mb)),
        help="keep all derived files (rendered views, depth pictures, download bundles) under this many "
             f"megabytes, least recently used first out [env VGGT_CACHE_MAX_MB; default {defaults.cache_max_mb:g}]")
    parser.add_argument(
        "--max-upload-mb", type=_positive_float, default=env.get("VGGT_MAX_UPLOAD_MB", str(defaults.max_upload_mb)),
        help=f"largest file one may upload [env VGGT_MAX_UPLOAD_MB; default {defaults.max_upload_mb:g}]")
    parser.add_argument(
        "--max-total-upload-mb", type=_positive_float,
        default=env.get("VGGT_MAX_TOTAL_UPLOAD_MB", str(defaults.max_total_upload_mb)),
        help="most megabytes of files one reconstruction may upload in all "
             f"[env VGGT_MAX_TOTAL_UPLOAD_MB; default {defaults.max_total_upload_mb:g}]")
    parser.add_argument(
        "--refine-tracks", type=_positive_int, default=env.get("VGGT_REFINE_TRACKS", str(defaults.refine_tracks)),
        help="most points tracked for 'Refine cameras with bundle adjustment' (fewer is faster, e.g. on a CPU) "
             f"[env VGGT_REFINE_TRACKS; default {defaults.refine_tracks}]")
    parser.add_argument(
        "--client-share", dest="client_share", type=_percent,
        default=env.get("VGGT_CLIENT_SHARE", f"{defaults.client_share_percent:g}"),
        help="percent of --storage-max-mb one client (one address) may hold; over it, that client's own "
             f"oldest reconstructions are deleted first [env VGGT_CLIENT_SHARE; default {defaults.client_share_percent:g}]")
    parser.add_argument(
        "--trust-forwarded-for", action=argparse.BooleanOptionalAction,
        default=_env_flag(env.get("VGGT_TRUST_FORWARDED_FOR")),
        help="take the client's address from X-Forwarded-For (turn on only behind a proxy that sets it, "
             "e.g. a Hugging Face Space; otherwise anyone can pose as many clients) "
             "[env VGGT_TRUST_FORWARDED_FOR=1; default off]")
    parser.add_argument(
        "--client-runs-per-hour", type=_positive_int,
        default=env.get("VGGT_CLIENT_RUNS_PER_HOUR", str(defaults.client_runs_per_hour)),
        help="most reconstructions one client may start per hour "
             f"[env VGGT_CLIENT_RUNS_PER_HOUR; default {defaults.client_runs_per_hour}]")
    parser.add_argument(
        "--client-derived-per-hour", type=_positive_int,
        default=env.get("VGGT_CLIENT_DERIVED_PER_HOUR", str(defaults.client_derived_per_hour)),
        help="most changed copies (scale, camera, tracks) one client may store per hour "
             f"[env VGGT_CLIENT_DERIVED_PER_HOUR; default {defaults.client_derived_per_hour}]")
    parser.add_argument(
        "--allow-public-store", action=argparse.BooleanOptionalAction,
        default=_env_flag(env.get("VGGT_ALLOW_PUBLIC_STORE")),
        help="start even if the hf:// dataset is public (everyone could then read the photos and list the "
             "share ids) [env VGGT_ALLOW_PUBLIC_STORE=1; default off: a public dataset is refused]")
    parser.add_argument(
        "--max-upload-files", type=_positive_int,
        default=env.get("VGGT_MAX_UPLOAD_FILES", str(defaults.max_upload_files)),
        help="most files one upload may carry; a larger upload, or one over --max-total-upload-mb, is refused "
             f"while it streams [env VGGT_MAX_UPLOAD_FILES; default {defaults.max_upload_files}]")
    parser.add_argument(
        "--prune-interval-s", type=_positive_float,
        default=env.get("VGGT_PRUNE_INTERVAL_S", f"{defaults.prune_interval_s:g}"),
        help="how often expiry and the size bound run, in the background "
             f"[env VGGT_PRUNE_INTERVAL_S; default {defaults.prune_interval_s:g}]")
    return parser


def _percent(text: str) -> float:
    value = float(text.strip().rstrip("%"))
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"must be a percentage in (0, 100], got {text}")
    return value


def _storage_location(text: str) -> str:
    try:
        parse_storage_location(text)
    except StorageConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def parse_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> AppSettings:
    args = build_arg_parser(environ).parse_args(argv)
    defaults_storage_dir = AppSettings.storage_dir
    devices = args.devices if args.devices is not None else default_devices(args.device)
    return AppSettings(checkpoint=args.checkpoint, device=args.device, devices=devices, host=args.host, port=args.port,
                       share=args.share, max_frames=args.max_frames, video_fps=args.video_fps,
                       storage_dir=(defaults_storage_dir if "://" in args.storage else Path(args.storage).expanduser()),
                       storage_url=args.storage if "://" in args.storage else None,
                       storage_cache_mb=args.storage_cache_mb,
                       storage_ttl_hours=args.storage_ttl_hours, storage_max_mb=args.storage_max_mb,
                       public_url=args.public_url, sky_model=args.sky_model, cache_max_mb=args.cache_max_mb,
                       max_upload_mb=args.max_upload_mb, max_total_upload_mb=args.max_total_upload_mb,
                       refine_tracks=args.refine_tracks, client_share_percent=args.client_share,
                       trust_forwarded_for=args.trust_forwarded_for, client_runs_per_hour=args.client_runs_per_hour,
                       client_derived_per_hour=args.client_derived_per_hour,
                       allow_public_store=args.allow_public_store, prune_interval_s=args.prune_interval_s,
                       max_upload_files=args.max_upload_files)


