"""Storing a changed copy of a stored reconstruction (rescaled, re-projected) as a new entry.

A change made after the run (a real-world scale, a known focal length) becomes a new stored entry
with its own id, so its share link carries the change and the original link still shows the
original. The copy keeps the original's sky mask when it has one.
"""

from __future__ import annotations

from vggt_core.reconstruction import Reconstruction

from ..store.entries import ReconstructionStore, StoredReconstruction


def save_derived(store: ReconstructionStore, stored: StoredReconstruction, recon: Reconstruction,
                 change: str) -> str:
    """Store ``recon`` (made from ``stored``) under a new id, with the original's metadata; returns the id."""
    if recon.sky_mask is None and stored.reconstruction.sky_mask is not None:
        recon.sky_mask = stored.reconstruction.sky_mask
    metadata = {key: value for key, value in stored.metadata.items() if key != "created_at"}
    metadata["derived_from"] = stored.id
    metadata["changes"] = [*stored.metadata.get("changes", []), change]
    return store.save(recon, metadata)  # returns once durable: its link is shown next
