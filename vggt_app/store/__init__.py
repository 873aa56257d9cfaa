"""Reconstructions under unguessable share ids, and where their bytes live.

``entries`` (the store: save, load, expire), ``storage`` / ``backends`` / ``local_cache`` (a
folder, S3, GCS or a Hub dataset, with a local cache of remote entries), ``first_view`` (what a
link shows first, from a few megabytes), ``derived_cache`` (GLBs, pictures and downloads under
one byte cap) and ``upload_limits``. See docs/store.md and docs/storage.md.
"""

from .entries import PendingSave, ReconstructionStore, StoredReconstruction, StoreError

__all__ = ["PendingSave", "ReconstructionStore", "StoreError", "StoredReconstruction"]
