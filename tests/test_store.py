"""ReconstructionStore: unguessable ids, no path tricks, expiry by age, pruning by size,
background saving. (``small_reconstruction`` is in conftest.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from vggt_core.reconstruction import Reconstruction
from vggt_core.store import ReconstructionNotFoundError, ReconstructionStore, is_valid_reconstruction_id


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_store_round_trip_and_unguessable_ids(tmp_path, small_reconstruction):
    store = ReconstructionStore(tmp_path, ttl_seconds=3600, max_bytes=10**9)
    ids = {store.save(small_reconstruction, {"seconds": 1.5}) for _ in range(3)}
    assert len(ids) == 3 and all(len(i) >= 22 and is_valid_reconstruction_id(i) for i in ids)
    recon_id = ids.pop()
    fresh_store = ReconstructionStore(tmp_path, ttl_seconds=3600, max_bytes=10**9)  # nothing cached
    stored = fresh_store.load(recon_id)
    np.testing.assert_array_equal(stored.reconstruction.depth, small_reconstruction.depth)
    assert stored.metadata["seconds"] == 1.5


def test_store_rejects_paths_before_touching_the_file_system(tmp_path, small_reconstruction):
    root = tmp_path / "store"
    store = ReconstructionStore(root, ttl_seconds=3600, max_bytes=10**9)
    # A valid reconstruction outside the store must stay unreachable.
    outside = tmp_path / "secret"
    outside.mkdir()
    small_reconstruction.save(outside / "reconstruction.npz")
    for bad in ("../secret", "..", "/etc", "secret/../secret", "a" * 21, "a" * 65, "ab cd" * 6, None, 42):
        with pytest.raises(ReconstructionNotFoundError, match="invalid or has expired"):
            store.load(bad)


def test_store_expires_entries_by_age(tmp_path, small_reconstruction):
    clock = FakeClock()
    store = ReconstructionStore(tmp_path, ttl_seconds=3600, max_bytes=10**9, clock=clock)
    old_id = store.save(small_reconstruction)
    clock.now += 1800
    young_id = store.save(small_reconstruction)
    clock.now += 1801  # the first is now 3601 s old, the second 1801 s

    with pytest.raises(ReconstructionNotFoundError):
        store.load(old_id)  # refused even though it is still in the memory cache
    assert not (tmp_path / old_id).exists()
    assert store.load(young_id).id == young_id

    clock.now += 3600
    assert store.prune() == [young_id]
    assert not (tmp_path / young_id).exists()


def test_store_prunes_the_oldest_entries_over_the_size_limit(tmp_path, small_reconstruction):
    clock = FakeClock()
    store = ReconstructionStore(tmp_path, ttl_seconds=10**6, max_bytes=10**12, clock=clock)
    ids = []
    for _ in range(4):
        ids.append(store.save(small_reconstruction))
        clock.now += 10
    entry_bytes = store.total_bytes() // 4

    store.max_bytes = int(2.5 * entry_bytes)  # room for two entries
    assert store.prune() == ids[:2]  # oldest first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ids[2:])

    store.max_bytes = 1  # even the newest does not fit, but the one being saved is kept
    newest = store.save(small_reconstruction)
    assert [p.name for p in tmp_path.iterdir()] == [newest]


def test_store_saving_in_the_background_is_usable_at_once(tmp_path, small_reconstruction):
    store = ReconstructionStore(tmp_path, ttl_seconds=3600, max_bytes=10**9, memory_cache_size=1)
    recon_id = store.save(small_reconstruction, background=True)
    store.save(small_reconstruction)  # pushes the first out of the one-entry memory cache
    assert store.load(recon_id).reconstruction is not None
    path = store.npz_path(recon_id)  # waits for the writer thread
    assert path == tmp_path / recon_id / "reconstruction.npz" and path.is_file()
    np.testing.assert_array_equal(Reconstruction.load(path).depth, small_reconstruction.depth)
    assert not list(tmp_path.glob(".incoming-*"))
