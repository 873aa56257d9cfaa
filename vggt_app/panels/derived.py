"""Storing a changed copy of a stored reconstruction (rescaled, re-projected, tracked) as a new entry.

A change made after the run (a real-world scale, a known focal length, tracks) becomes a new
stored entry with its own id, so its share link carries the change and the original link still
shows the original. The new entry is a derived entry: it stores only what differs from the
original (a scale ratio, intrinsics, tracks) and the original's id, a few percent of its bytes
(see ``ReconstructionStore.save_derived``). The copy keeps the original's sky mask when it has
one. Each client may make only so many per hour (``ClientQuota``).
"""

from __future__ import annotations

from typing import Any

from vggt_core.reconstruction import Reconstruction

from ..store.client_quota import DERIVED_SCENE
from ..store.entries import ReconstructionStore, StoredReconstruction

# Describe the parent entry itself, not the scene: never copied to a derived entry.
ENTRY_OWN_KEYS = ("created_at", "client", "parent", "entry_format")


def save_derived(store: ReconstructionStore, stored: StoredReconstruction, recon: Reconstruction,
                 change: str, request: Any = None) -> str:
    """Store ``recon`` (made from ``stored``) under a new id, with the original's metadata; returns the id.

    Raises:
        RateLimitedError: the request's client made too many derived scenes lately ("…try again in N s").
    """
    client = store.client_quota.admit(request, DERIVED_SCENE) if store.client_quota is not None else None
    if recon.sky_mask is None and stored.reconstruction.sky_mask is not None:
        recon.sky_mask = stored.reconstruction.sky_mask
    metadata = {key: value for key, value in stored.metadata.items() if key not in ENTRY_OWN_KEYS}
    metadata["derived_from"] = stored.id
    metadata["changes"] = [*stored.metadata.get("changes", []), change]
    if client is not None:
        metadata["client"] = client
    return store.save_derived(stored, recon, metadata)  # returns once durable: its link is shown next
