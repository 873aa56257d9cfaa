"""The "Hide sky" view control: sky masks computed once per stored reconstruction, lazily.

The first view with the box ticked runs the sky model on the reconstruction's frames, keeps the
mask with the in-memory reconstruction and saves it as an attachment of the stored entry, so
re-renders, other sessions and share links (also after a restart) never compute it again.
"""

from __future__ import annotations

import logging
import threading

from vggt_core.sky import (DEFAULT_SKY_MODEL, SkyModelUnavailableError, SkySegmenter, load_sky_segmenter,
                           sky_mask_from_bytes, sky_mask_to_bytes)
from vggt_core.store import ReconstructionStore, StoredReconstruction

logger = logging.getLogger("vggt_app")

SKY_MASK_ATTACHMENT = "sky_mask.npz"
HIDE_SKY_LABEL = "Hide sky"
HIDE_SKY_INFO = "Drops the pixels a sky-segmentation model sees as sky (computed once per reconstruction)."


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


__all__ = ["HIDE_SKY_INFO", "HIDE_SKY_LABEL", "SKY_MASK_ATTACHMENT", "SkyMasks", "SkyModelUnavailableError"]
