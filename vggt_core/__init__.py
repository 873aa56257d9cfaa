"""vggt_core: our PyTorch implementation of VGGT and everything around it.

Layers, from the bottom: ``config`` and ``model`` (pure PyTorch network), ``geometry``
(cameras and points), ``weights`` (checkpoint loading), ``images``/``video`` (input),
``reconstruction`` (the Reconstruction type and file), ``inference`` (model run ->
Reconstruction), ``pipeline`` (files -> Reconstruction), ``progress`` (progress callbacks),
``filtering``, ``export``, ``depth_maps``; ``scale``,
``exif``, ``intrinsics`` and ``sky`` (real-world scale, known focal lengths, sky masks);
``tracks`` and ``bundle_adjustment`` (point tracks from several frames, refined cameras);
``chunks`` (long videos in aligned chunks), ``distributed`` and ``device_group`` (one forward
sharded over processes or devices).
"""

from . import geometry, synthetic
from .bundle_adjustment import BundleAdjustmentReport, BundleAdjustmentResult, bundle_adjust
from .chunks import align_chunks, reconstruct_in_chunks
from .config import VGGTConfig
from .errors import FrameLimitError, InputError, WeightsUnavailableError
from .exif import exif_focal_length_px
from .filtering import ViewSettings, select_points
from .frame_names import export_frame_file_name
from .images import FrameTransform, load_images
from .inference import reconstruct
from .model import VGGT
from .pipeline import gather_input_frames, reconstruct_frames
from .progress import ProgressCallback, ProgressRange
from .reconstruction import Reconstruction
from .scale import scale_from_known_distance
from .tracks import TrackQueries, choose_query_points, track_reconstruction
from .video import extract_frames
from .weights import DEFAULT_CHECKPOINT, RANDOM_TINY_CHECKPOINT, load_model, resolve_device, resolve_model_config

__all__ = [
    "DEFAULT_CHECKPOINT", "FrameLimitError", "FrameTransform", "InputError", "Reconstruction", "VGGT",
    "VGGTConfig", "ViewSettings", "WeightsUnavailableError", "extract_frames", "gather_input_frames", "geometry",
    "load_images", "load_model", "reconstruct", "reconstruct_frames", "resolve_device", "select_points",
    "synthetic", "exif_focal_length_px", "scale_from_known_distance",
    "BundleAdjustmentReport", "BundleAdjustmentResult", "TrackQueries", "bundle_adjust", "choose_query_points",
    "track_reconstruction", "align_chunks", "reconstruct_in_chunks",
    "ProgressCallback", "ProgressRange", "RANDOM_TINY_CHECKPOINT", "export_frame_file_name", "resolve_model_config",
]
