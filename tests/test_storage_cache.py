"""CachedEntryStorage: the bounded local cache of recently opened entries in front of a remote
storage (here fsspec's memory:// store, counted)."""

from __future__ import annotations

import secrets

import pytest

from vggt_app.store.backends import open_entry_storage
from vggt_app.store.local_cache import CachedEntryStorage
from vggt_app.store.entries import ReconstructionNotFoundError, ReconstructionStore


class CountingStorage:
    """Wraps a storage and counts the reads that reach it."""

    def __init__(self, inner):
        self.inner = inner
        self.reads: list[tuple[str, str]] = []

    def read_bytes(self, entry_id, name):
        self.reads.append((entry_id, name))
        return self.inner.read_bytes(entry_id, name)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def remote():
    return CountingStorage(open_entry_storage(f"memory://cache-tests-{secrets.token_hex(4)}/store"))


def test_repeated_reads_are_served_locally_but_the_manifest_never(remote, tmp_path):
    remote.inner.write_bytes("a" * 24, "reconstruction.npz", b"x" * 100)
    remote.inner.write_bytes("a" * 24, "metadata.json", b"{}")
    cached = CachedEntryStorage(remote, tmp_path / "cache", max_bytes=1000)
    for _ in range(3):
        assert cached.read_bytes("a" * 24, "reconstruction.npz") == b"x" * 100
        assert cached.read_bytes("a" * 24, "metadata.json") == b"{}"
    assert remote.reads.count(("a" * 24, "reconstruction.npz")) == 1
    assert remote.reads.count(("a" * 24, "metadata.json")) == 3
    assert cached.cached_bytes == 100


def test_the_cache_stays_under_its_bound_least_recently_used_first(remote, tmp_path):
    ids = [f"{index}" * 24 for index in range(4)]
    for entry_id in ids:
        remote.inner.write_bytes(entry_id, "reconstruction.npz", entry_id.encode()[:1] * 400)
    cached = CachedEntryStorage(remote, tmp_path / "cache", max_bytes=1000)
    for entry_id in ids[:2]:
        cached.read_bytes(entry_id, "reconstruction.npz")
    cached.read_bytes(ids[0], "reconstruction.npz")  # now the most recently used
    cached.read_bytes(ids[2], "reconstruction.npz")  # evicts ids[1]
    assert cached.cached_bytes == 800
    assert sum(1 for path in (tmp_path / "cache").iterdir() if path.is_file()) == 2
    remote.reads.clear()
    cached.read_bytes(ids[0], "reconstruction.npz")
    cached.read_bytes(ids[1], "reconstruction.npz")
    assert remote.reads == [(ids[1], "reconstruction.npz")]
    # A file larger than the whole cache is read through, never cached.
    remote.inner.write_bytes(ids[3], "reconstruction.npz", b"z" * 5000)
    assert cached.read_bytes(ids[3], "reconstruction.npz") == b"z" * 5000
    assert cached.cached_bytes <= 1000


def test_an_entry_expired_by_another_server_is_not_served_from_the_cache(tmp_path, small_reconstruction):
    url = f"memory://cache-tests-{secrets.token_hex(4)}/store"
    options = dict(ttl_seconds=3600, max_bytes=10**9)
    writer = ReconstructionStore(storage=open_entry_storage(url), **options)
    recon_id = writer.save(small_reconstruction)
    reader = ReconstructionStore(storage=CachedEntryStorage(open_entry_storage(url), tmp_path / "cache",
                                                            max_bytes=10**8), memory_cache_size=0, **options)
    assert reader.load(recon_id).reconstruction.num_frames == 2
    assert reader.storage.cached_bytes > 0
    writer.storage.delete_entry(recon_id)  # expired elsewhere
    with pytest.raises(ReconstructionNotFoundError):
        reader.load(recon_id)


def test_a_lost_cache_file_is_read_again_from_the_remote(remote, tmp_path):
    remote.inner.write_bytes("b" * 24, "reconstruction.npz", b"data")
    cached = CachedEntryStorage(remote, tmp_path / "cache", max_bytes=1000)
    cached.read_bytes("b" * 24, "reconstruction.npz")
    for path in (tmp_path / "cache").iterdir():
        path.unlink()
    assert cached.read_bytes("b" * 24, "reconstruction.npz") == b"data"
    assert len(remote.reads) == 2
