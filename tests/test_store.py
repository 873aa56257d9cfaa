"""ReconstructionStore: unguessable ids, no path tricks, expiry by age, pruning by size, the
writer pool, attachments, and no data loss under transient I/O errors and concurrent use.
(``small_reconstruction`` is in conftest.py.)"""

from __future__ import annotations

import errno
import json
import os
import threading
import time

import numpy as np
import pytest

from vggt_app.store import entries as store_module
from vggt_core.reconstruction import Reconstruction
from vggt_app.store.storage import LocalFolderStorage
from vggt_app.store.entries import (ReconstructionNotFoundError, ReconstructionStore, StoreBusyError,
                             StoreUnavailableError, is_valid_reconstruction_id)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FlakyStorage(LocalFolderStorage):
    """A folder storage whose operations fail with chosen OSErrors, as a busy server's disk can."""

    def __init__(self, root):
        super().__init__(root)
        self.failures: dict[str, list[int]] = {}  # operation -> errnos to raise, in order
        self.always: dict[str, int] = {}  # operation -> errno raised every time

    def fail(self, operation: str, *codes: int) -> None:
        self.failures.setdefault(operation, []).extend(codes)

    def _maybe_fail(self, operation: str, name: str = "") -> None:
        code = self.always.get(operation) or self.always.get(f"{operation}:{name}")
        queued = self.failures.get(operation) or self.failures.get(f"{operation}:{name}")
        if code is None and queued:
            code = queued.pop(0)
        if code is not None:
            raise OSError(code, os.strerror(code))

    def read_bytes(self, entry_id, name):
        self._maybe_fail("read_bytes", name)
        return super().read_bytes(entry_id, name)

    def write_bytes(self, entry_id, name, data):
        self._maybe_fail("write_bytes", name)
        return super().write_bytes(entry_id, name, data)

    def open_write(self, entry_id, name):
        self._maybe_fail("open_write", name)
        return super().open_write(entry_id, name)

    def list_files(self, entry_id):
        self._maybe_fail("list_files")
        return super().list_files(entry_id)

    def delete_entry(self, entry_id):
        self._maybe_fail("delete_entry")
        return super().delete_entry(entry_id)


def make_store(tmp_path, **kwargs) -> ReconstructionStore:
    kwargs.setdefault("ttl_seconds", 3600)
    kwargs.setdefault("max_bytes", 10**9)
    kwargs.setdefault("retry_delay_s", 0.01)
    return ReconstructionStore(tmp_path, **kwargs)


def entry_files(tmp_path, recon_id) -> set[str]:
    return {p.name for p in (tmp_path / recon_id).iterdir()} if (tmp_path / recon_id).is_dir() else set()


def test_store_round_trip_and_unguessable_ids(tmp_path, small_reconstruction):
    store = make_store(tmp_path)
    ids = {store.save(small_reconstruction, {"seconds": 1.5}) for _ in range(3)}
    assert len(ids) == 3 and all(len(i) >= 22 and is_valid_reconstruction_id(i) for i in ids)
    recon_id = ids.pop()
    # Durable when save returns: the files are complete, manifest included.
    assert entry_files(tmp_path, recon_id) == {"reconstruction.npz", "metadata.json"}
    fresh_store = make_store(tmp_path)  # nothing cached
    stored = fresh_store.load(recon_id)
    np.testing.assert_array_equal(stored.reconstruction.depth, small_reconstruction.depth)
    np.testing.assert_array_equal(stored.reconstruction.points_from_depth, small_reconstruction.points_from_depth)
    assert stored.metadata["seconds"] == 1.5
    # The scene served from memory right after saving equals the one read back later.
    cached = store.load(recon_id).reconstruction
    np.testing.assert_array_equal(cached.depth_conf, stored.reconstruction.depth_conf)


def test_store_rejects_paths_before_touching_the_file_system(tmp_path, small_reconstruction):
    root = tmp_path / "store"
    store = make_store(root)
    # A valid reconstruction outside the store must stay unreachable.
    outside = tmp_path / "secret"
    outside.mkdir()
    small_reconstruction.save(outside / "reconstruction.npz")
    (outside / "metadata.json").write_text(json.dumps({"created_at": time.time()}))
    for bad in ("../secret", "..", "/etc", "secret/../secret", "a" * 21, "a" * 65, "ab cd" * 6, None, 42):
        with pytest.raises(ReconstructionNotFoundError, match="invalid or has expired"):
            store.load(bad)


def test_store_expires_entries_by_age(tmp_path, small_reconstruction):
    clock = FakeClock()
    store = make_store(tmp_path, clock=clock)
    old_id = store.save(small_reconstruction)
    clock.now += 1800
    young_id = store.save(small_reconstruction)
    clock.now += 1801  # the first is now 3601 s old, the second 1801 s

    with pytest.raises(ReconstructionNotFoundError):
        store.load(old_id)  # refused even though it is still in the memory cache
    assert store.load(young_id).id == young_id
    assert store.prune() == [old_id]
    assert not (tmp_path / old_id).exists()

    clock.now += 3600
    assert store.prune() == [young_id]
    assert not (tmp_path / young_id).exists()


def test_store_prunes_the_oldest_entries_over_the_size_limit(tmp_path, small_reconstruction):
    clock = FakeClock()
    store = make_store(tmp_path, ttl_seconds=10**6, max_bytes=10**12, clock=clock)
    ids = []
    for _ in range(4):
        ids.append(store.save(small_reconstruction))
        clock.now += 10
    entry_bytes = store.total_bytes() // 4

    store.max_bytes = int(2.5 * entry_bytes)  # room for two entries
    assert store.prune() == ids[:2]  # oldest first
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ids[2:])

    store.max_bytes = 1  # even the newest does not fit, but the newest entry is kept
    newest = store.save(small_reconstruction)
    assert len(list(tmp_path.iterdir())) == 3  # saves never prune (the background pruner does)
    store.prune()
    assert [p.name for p in tmp_path.iterdir()] == [newest]


def test_a_background_save_is_usable_at_once_and_durable_when_waited_for(tmp_path, small_reconstruction):
    store = make_store(tmp_path, memory_cache_size=1)
    pending = store.save_async(small_reconstruction)
    assert store.load(pending.id).reconstruction is not None  # from memory, before the files exist
    assert pending.wait(10) == pending.id
    store.save(small_reconstruction)  # pushes the first out of the one-entry memory cache
    copy = store.copy_npz(pending.id, tmp_path / "download.npz")
    np.testing.assert_array_equal(Reconstruction.load(copy).depth, small_reconstruction.depth)
    assert store.npz_path(pending.id) == tmp_path / pending.id / "reconstruction.npz"


# ---------------------------------------------------------------------------------------------
# Transient errors never delete
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("file", ["reconstruction.npz", "metadata.json"])
def test_a_transient_read_error_keeps_the_entry_and_says_so(tmp_path, small_reconstruction, code, file):
    storage = FlakyStorage(tmp_path)
    recon_id = make_store(tmp_path, storage=storage).save(small_reconstruction)
    reader = make_store(tmp_path, storage=storage)  # a restarted server: nothing in memory
    storage.fail(f"read_bytes:{file}", code)
    with pytest.raises(StoreUnavailableError, match="try again") as caught:
        reader.load(recon_id)
    assert os.strerror(code).lower() in str(caught.value) and str(tmp_path) not in str(caught.value)
    assert entry_files(tmp_path, recon_id) == {"reconstruction.npz", "metadata.json"}
    assert reader.load(recon_id).id == recon_id  # the next try works


@pytest.mark.parametrize("operation", ["read_bytes:metadata.json", "list_files"])
def test_transient_errors_while_pruning_delete_nothing(tmp_path, small_reconstruction, operation):
    clock = FakeClock()
    storage = FlakyStorage(tmp_path)
    store = make_store(tmp_path, storage=storage, clock=clock, ttl_seconds=100)
    ids = [store.save(small_reconstruction) for _ in range(3)]
    clock.now += 50
    storage.always[operation] = errno.EMFILE
    store.max_bytes = 1  # every entry would go for size, if its size and age were known
    assert store.prune() == []
    assert all(entry_files(tmp_path, recon_id) for recon_id in ids)
    del storage.always[operation]
    clock.now += 51  # now really expired: only expiry deletes them
    assert sorted(store.prune()) == sorted(ids)


def test_a_failed_delete_is_retried_by_the_next_prune(tmp_path, small_reconstruction):
    clock = FakeClock()
    storage = FlakyStorage(tmp_path)
    store = make_store(tmp_path, storage=storage, clock=clock, ttl_seconds=100)
    recon_id = store.save(small_reconstruction)
    clock.now += 101
    storage.fail("delete_entry", errno.EBUSY)
    assert store.prune() == []
    assert store.prune() == [recon_id]


def test_damaged_files_are_reported_but_not_deleted(tmp_path, small_reconstruction):
    clock = FakeClock(time.time())
    store = make_store(tmp_path, clock=clock)
    damaged_npz, damaged_metadata = store.save(small_reconstruction), store.save(small_reconstruction)
    (tmp_path / damaged_npz / "reconstruction.npz").write_bytes(b"not a zip")
    (tmp_path / damaged_metadata / "metadata.json").write_text("{broken")
    fresh = make_store(tmp_path, clock=clock)
    with pytest.raises(ReconstructionNotFoundError, match="damaged"):
        fresh.load(damaged_npz)
    # A broken manifest: the entry still opens, aged by its files' time.
    assert fresh.load(damaged_metadata).created_at == pytest.approx(time.time(), abs=60)
    assert fresh.prune() == []
    assert entry_files(tmp_path, damaged_npz) and entry_files(tmp_path, damaged_metadata)


def test_an_interrupted_save_is_invisible_and_cleaned_up_after_a_grace_period(tmp_path, small_reconstruction):
    store = make_store(tmp_path)
    recon_id = store.save(small_reconstruction)
    (tmp_path / recon_id / "metadata.json").unlink()  # as if killed before the manifest
    fresh = make_store(tmp_path)
    with pytest.raises(ReconstructionNotFoundError):
        fresh.load(recon_id)
    assert fresh.prune() == [] and (tmp_path / recon_id).exists()  # maybe still being written
    old = time.time() - store_module.INCOMPLETE_ENTRY_GRACE_SECONDS - 10
    os.utime(tmp_path / recon_id / "reconstruction.npz", (old, old))
    fresh.prune()
    assert not (tmp_path / recon_id).exists()


# ---------------------------------------------------------------------------------------------
# Writing: retries, failures surfaced, back-pressure
# ---------------------------------------------------------------------------------------------


def test_a_failed_write_is_retried(tmp_path, small_reconstruction):
    storage = FlakyStorage(tmp_path)
    store = make_store(tmp_path, storage=storage)
    storage.fail("open_write", errno.ENOSPC)
    storage.fail("write_bytes:metadata.json", errno.EMFILE)
    recon_id = store.save(small_reconstruction)
    assert make_store(tmp_path).load(recon_id).id == recon_id


def test_a_write_that_keeps_failing_is_surfaced_and_leaves_nothing(tmp_path, small_reconstruction):
    storage = FlakyStorage(tmp_path)
    store = make_store(tmp_path, storage=storage, write_attempts=3)
    storage.always["write_bytes:metadata.json"] = errno.ENOSPC
    pending = store.save_async(small_reconstruction)
    with pytest.raises(StoreUnavailableError, match="could not be saved.*no space left"):
        pending.wait(10)
    with pytest.raises(ReconstructionNotFoundError):
        store.load(pending.id)  # not served from memory either: it was never shown
    assert not (tmp_path / pending.id).exists()
    with pytest.raises(StoreUnavailableError):
        store.save(small_reconstruction)


def test_saves_wait_for_a_small_writer_pool_and_refuse_when_it_stays_full(tmp_path, small_reconstruction):
    release = threading.Event()

    class SlowStorage(LocalFolderStorage):
        def write_bytes(self, entry_id, name, data):
            release.wait(10)
            super().write_bytes(entry_id, name, data)

    store = make_store(tmp_path, storage=SlowStorage(tmp_path), writer_threads=1, max_queued_saves=1,
                       queue_timeout_s=0.2)
    first, second = store.save_async(small_reconstruction), store.save_async(small_reconstruction)
    threads_before = set(threading.enumerate())
    started = time.perf_counter()
    with pytest.raises(StoreBusyError, match="busy"):
        store.save_async(small_reconstruction)
    assert 0.15 < time.perf_counter() - started < 2
    # No thread per save. Compared as sets: idle threads of other tests' stores may end meanwhile.
    assert set(threading.enumerate()) - threads_before == set()
    release.set()
    assert first.wait(10) and second.wait(10)
    assert store.save(small_reconstruction)  # room again


# ---------------------------------------------------------------------------------------------
# Attachments
# ---------------------------------------------------------------------------------------------


def test_attachments_are_stored_counted_and_deleted_with_their_entry(tmp_path, small_reconstruction):
    clock = FakeClock()
    store = make_store(tmp_path, clock=clock, ttl_seconds=100)
    recon_id = store.save(small_reconstruction)
    before = store.total_bytes()
    assert store.load_attachment(recon_id, "sky-mask.png") is None
    store.save_attachment(recon_id, "sky-mask.png", b"\x89PNG data")
    store.save_attachment(recon_id, "sky-mask.png", b"replaced")
    assert store.load_attachment(recon_id, "sky-mask.png") == b"replaced"
    assert make_store(tmp_path, clock=clock).load_attachment(recon_id, "sky-mask.png") == b"replaced"
    assert store.total_bytes() == before + len(b"replaced")
    for bad in ("Sky.png", "../metadata.json", "a/b", "..", ".", "", "x y", None):
        with pytest.raises(ValueError):
            store.save_attachment(recon_id, bad, b"x")
    with pytest.raises(ReconstructionNotFoundError):
        store.save_attachment("A" * 24, "sky.png", b"x")
    with pytest.raises(ReconstructionNotFoundError):
        store.load_attachment("../" + recon_id, "sky.png")
    clock.now += 101
    with pytest.raises(ReconstructionNotFoundError):
        store.save_attachment(recon_id, "late.png", b"x")
    assert store.prune() == [recon_id] and not (tmp_path / recon_id).exists()


# ---------------------------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------------------------


def test_an_entry_being_read_is_never_expired_under_the_reader(tmp_path, small_reconstruction):
    clock = FakeClock()
    store = make_store(tmp_path, clock=clock, ttl_seconds=100)
    recon_id = store.save(small_reconstruction)
    clock.now += 101
    with store.reading(recon_id):
        assert store.prune() == []
        assert entry_files(tmp_path, recon_id)
    assert store.prune() == [recon_id]


def test_loads_and_downloads_while_the_pruner_runs(tmp_path, small_reconstruction):
    clock = FakeClock()
    store = make_store(tmp_path, clock=clock, ttl_seconds=1000, memory_cache_size=0)
    doomed = [store.save(small_reconstruction) for _ in range(6)]
    clock.now += 500
    live = store.save(small_reconstruction)
    clock.now += 501  # the doomed entries are expired, the live one is 501 s old
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(index: int) -> None:
        while not stop.is_set():
            try:
                assert store.load(live).id == live  # read from disk each time (no memory cache)
                store.copy_npz(live, tmp_path.parent / f"{tmp_path.name}-copy-{index}.npz")
            except BaseException as error:  # noqa: BLE001
                errors.append(error)
                return

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    removed = []
    for _ in range(3):
        removed += store.prune()
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert errors == [] and sorted(removed) == sorted(doomed)
    assert store.load(live).id == live


def test_parallel_identical_downloads_all_succeed(tmp_path, small_reconstruction):
    store = make_store(tmp_path)
    recon_id = store.save(small_reconstruction)
    target = tmp_path.parent / f"{tmp_path.name}-same.npz"
    results, errors = [], []

    def download() -> None:
        try:
            results.append(store.copy_npz(recon_id, target))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=download) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == [] and len(results) == 8
    Reconstruction.load(target)
