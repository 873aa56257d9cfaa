"""Sky masks from the sky-segmentation ONNX model that the VGGT authors' demo uses.

VGGT predicts depth for the sky too (far, noisy, low-confidence points that fog outdoor
scenes). The model ``skyseg.onnx`` (Hub repo ``JianyuanWang/skyseg``) scores each pixel; we run it
with onnxruntime on the CPU, on the frames the model saw, once per reconstruction.

Facts of the authors' demo that we follow (see docs/scene.md, "Sky removal"): the input is
``[1, 3, 320, 320]`` float32 RGB in [0, 1] normalised with the ImageNet mean and std; the output
is squeezed, min–max normalised to 0–255 and resized to the image; pixels whose value is
``≥ 32`` are sky.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .config import IMAGENET_MEAN, IMAGENET_STD
from .errors import WeightsUnavailableError
from .reconstruction import Reconstruction

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SKY_MODEL", "SKY_MODEL_FILE", "SKY_INPUT_SIZE", "SKY_THRESHOLD", "SkyModelUnavailableError",
           "SkySegmenter", "load_sky_segmenter", "sky_model_help", "with_sky_mask", "sky_mask_to_bytes",
           "sky_mask_from_bytes"]

DEFAULT_SKY_MODEL = "JianyuanWang/skyseg"
SKY_MODEL_FILE = "skyseg.onnx"
SKY_INPUT_SIZE = 320
SKY_THRESHOLD = 32  # of the 0-255 normalised score: at or above it is sky


class SkyModelUnavailableError(WeightsUnavailableError):
    """The sky model could not be found or read; ``str()`` says how to get it."""


def sky_model_help(source: str = DEFAULT_SKY_MODEL) -> str:
    return (f"Sky removal needs the sky-segmentation model {SKY_MODEL_FILE} (from the Hugging Face repo "
            f"{DEFAULT_SKY_MODEL}, about 4 MB). On a machine with internet access it downloads by itself; "
            f"otherwise download https://huggingface.co/{DEFAULT_SKY_MODEL}/resolve/main/{SKY_MODEL_FILE} "
            "and start with --sky-model /path/to/skyseg.onnx"
            + (f" (asked for: {source})" if source != DEFAULT_SKY_MODEL else "") + ".")


class SkySegmenter:
    """One onnxruntime session of a sky model; :meth:`sky_mask` per frame."""

    def __init__(self, model_path: str | os.PathLike):
        try:
            import onnxruntime
        except ImportError as error:  # pragma: no cover - a requirement, but keep the message kind
            raise SkyModelUnavailableError("sky removal needs the onnxruntime package (pip install onnxruntime)") \
                from error
        self.model_path = Path(model_path)
        options = onnxruntime.SessionOptions()
        # The model is small; two threads keep a busy server responsive.
        options.intra_op_num_threads = 2
        try:
            self._session = onnxruntime.InferenceSession(str(self.model_path), sess_options=options,
                                                         providers=["CPUExecutionProvider"])
        except Exception as error:  # a corrupt or non-ONNX file
            raise SkyModelUnavailableError(f"could not read the sky model {self.model_path} ({error}). "
                                           + sky_model_help()) from error
        self._input_name = self._session.get_inputs()[0].name

    def sky_score(self, image: np.ndarray) -> np.ndarray:
        """``image [H, W, 3]`` uint8 RGB → uint8 ``[H, W]``, the normalised sky score 0–255."""
        small = Image.fromarray(np.ascontiguousarray(image)).resize((SKY_INPUT_SIZE, SKY_INPUT_SIZE),
                                                                     Image.Resampling.BILINEAR)
        pixels = np.asarray(small, dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        batch = pixels.transpose(2, 0, 1)[None].astype(np.float32)
        score = np.asarray(self._session.run(None, {self._input_name: batch})[0], dtype=np.float64).squeeze()
        if score.ndim != 2:
            raise SkyModelUnavailableError(f"the sky model gave an output of shape {list(score.shape)}, "
                                           "expected one score map")
        low, high = float(score.min()), float(score.max())
        # A constant map (all sky or none) has no contrast to normalise: call it no sky.
        normalised = (score - low) / (high - low) * 255.0 if high > low else np.zeros_like(score)
        score_uint8 = normalised.astype(np.uint8)  # truncation, as the demo's astype does
        height, width = image.shape[:2]
        return np.asarray(Image.fromarray(score_uint8).resize((width, height), Image.Resampling.BILINEAR))

    def sky_mask(self, image: np.ndarray) -> np.ndarray:
        """``image [H, W, 3]`` uint8 RGB → bool ``[H, W]``, True for sky."""
        return self.sky_score(image) >= SKY_THRESHOLD

    def sky_masks(self, images: np.ndarray) -> np.ndarray:
        """``images [S, H, W, 3]`` uint8 → bool ``[S, H, W]``."""
        return np.stack([self.sky_mask(image) for image in images])


def load_sky_segmenter(source: str | os.PathLike = DEFAULT_SKY_MODEL, revision: str | None = None) -> SkySegmenter:
    """The sky model from a local ``.onnx`` file, a folder holding ``skyseg.onnx``, or a Hub repo
    id (downloaded once into the Hugging Face cache, used from it offline).

    Raises:
        SkyModelUnavailableError: not found, not downloadable, or unreadable; the message says how
            to get it.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / SKY_MODEL_FILE
    if path.is_file():
        return SkySegmenter(path)
    text = str(source)
    parts = text.split("/")
    if not (len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~")) and not text.endswith(".onnx")):
        raise SkyModelUnavailableError(f"the sky model {text} does not exist. " + sky_model_help(text))
    from .hub import hub_download, offline_reason

    offline = offline_reason()
    try:
        downloaded = hub_download(text, SKY_MODEL_FILE, revision, cache_only=offline is not None)
    except Exception as error:  # not cached while offline, no such repo, ...
        reason = f"{offline} and it is not in the local cache" if offline else f"{type(error).__name__}: {error}"
        raise SkyModelUnavailableError(f"could not get the sky model from {text} ({reason}). "
                                       + sky_model_help(text)) from error
    return SkySegmenter(downloaded)


def with_sky_mask(recon: Reconstruction, segmenter: SkySegmenter) -> Reconstruction:
    """``recon`` with ``sky_mask`` filled in (the same object if it already has one)."""
    if recon.sky_mask is not None:
        return recon
    import dataclasses

    return dataclasses.replace(recon, sky_mask=segmenter.sky_masks(recon.images), frame_names=list(recon.frame_names))


def sky_mask_to_bytes(mask: np.ndarray) -> bytes:
    """``mask [S, H, W]`` bool → compact bytes (bit-packed ``.npz``, no pickle)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, shape=np.asarray(mask.shape, dtype=np.int64), bits=np.packbits(mask.astype(bool)))
    return buffer.getvalue()


def sky_mask_from_bytes(data: bytes, shape: tuple[int, ...]) -> np.ndarray | None:
    """The mask saved by :func:`sky_mask_to_bytes`, or None when ``data`` is damaged or its shape
    is not ``shape`` (the mask is then simply computed again)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            stored_shape = tuple(int(v) for v in archive["shape"])
            bits = archive["bits"]
        if stored_shape != tuple(shape):
            return None
        count = int(np.prod(stored_shape))
        return np.unpackbits(bits, count=count).astype(bool).reshape(stored_shape)
    except Exception:  # noqa: BLE001 - any damage means "recompute"
        logger.warning("ignoring an unreadable stored sky mask")
        return None
