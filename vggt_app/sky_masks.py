"""The "Hide sky" view control: sky masks computed once per stored reconstruction, lazily.

The first view with the box ticked runs the sky model on the reconstruction's frames, keeps the
mask with the in-memory reconstruction and saves it as an attachment of the stored entry, so
re-renders, other sessions and share links (also after a restart) never compute it again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import gradio as gr

from vggt_core.sky import (DEFAULT_SKY_MODEL, SKY_MODEL_FILE, SkyModelUnavailableError, SkySegmenter,
                           load_sky_segmenter, sky_mask_from_bytes, sky_mask_to_bytes)
from vggt_core.filtering import ViewSettings

from .store.entries import ReconstructionStore, StoredReconstruction
from .view_controls import HIDE_SKY_LABEL

logger = logging.getLogger("vggt_app")

SKY_MASK_ATTACHMENT = "sky_mask.npz"
HIDE_SKY_INFO = "Drops what a sky-segmentation model sees as sky."


class SkyMasks:
    """Sky masks of stored reconstructions; the sky model is loaded on first use."""

    def __init__(self, store: ReconstructionStore, source: str = DEFAULT_SKY_MODEL):
        self.store = store
        self.source = source
        self._segmenter: SkySegmenter | None = None
        self._lock = threading.Lock()
        self.computed = 0  # how many masks were computed (not read back): for tests and logs

    def segmenter(self) -> SkySegmenter:
        """The sky model; raises :class:`SkyModelUnavailableError` saying how to get it."""
        with self._lock:
            if self._segmenter is None:
                self._segmenter = load_sky_segmenter(self.source)
            return self._segmenter

    def ensure(self, stored: StoredReconstruction) -> None:
        """Give ``stored.reconstruction`` its sky mask: kept, read back, or computed and saved."""
        recon = stored.reconstruction
        if recon.sky_mask is not None:
            return
        expected = (recon.num_frames, *recon.image_size_hw)
        data = self.store.load_attachment(stored.id, SKY_MASK_ATTACHMENT)
        mask = sky_mask_from_bytes(data, expected) if data is not None else None
        if mask is None:
            mask = self.segmenter().sky_masks(recon.images)
            self.computed += 1
            try:
                self.store.save_attachment(stored.id, SKY_MASK_ATTACHMENT, sky_mask_to_bytes(mask))
            except Exception:  # a full disk: the mask still serves this process
                logger.exception("could not store the sky mask of %s", stored.id)
        # The in-memory reconstruction is shared by every view of this entry.
        recon.sky_mask = mask

    def apply(self, stored: StoredReconstruction, settings: ViewSettings) -> ViewSettings:
        """``settings`` ready to render: the mask is there when the sky is hidden; without the
        sky model a warning says how to get it and the sky stays visible."""
        if not settings.hide_sky:
            return settings
        try:
            self.ensure(stored)
        except SkyModelUnavailableError as error:
            logger.warning("sky model unavailable: %s", error)
            gr.Warning(str(error), duration=None)
            return dataclasses.replace(settings, hide_sky=False)
        return settings

    def checkbox_info(self) -> str:
        """The checkbox's help text; says how to get the model when it is not at hand yet."""
        if sky_model_at_hand(self.source):
            return HIDE_SKY_INFO
        return (HIDE_SKY_INFO + f" Needs {SKY_MODEL_FILE}: downloaded on first use; offline, start the app "
                "with --sky-model /path/to/skyseg.onnx.")


def sky_model_at_hand(source: str) -> bool:
    """A local file, or already in the Hugging Face cache (no network is asked)."""
    from pathlib import Path

    path = Path(source).expanduser()
    if path.is_file() or (path / SKY_MODEL_FILE).is_file():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(source, SKY_MODEL_FILE), str)
    except Exception:  # noqa: BLE001 - not a repo id, unreadable cache, ...
        return False


__all__ = ["HIDE_SKY_INFO", "HIDE_SKY_LABEL", "SKY_MASK_ATTACHMENT", "SkyMasks", "SkyModelUnavailableError"]
