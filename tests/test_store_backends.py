"""The store's guarantees on every storage back end: a folder, fsspec's memory:// and a real S3
server (moto, on 127.0.0.1). Several ReconstructionStore instances on one storage stand for
several servers behind a load balancer."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from vggt_app.store import entries as store_module
from vggt_app.store.backends import open_entry_storage
from vggt_app.store.entries import ReconstructionNotFoundError, ReconstructionStore

from storage_servers import s3_endpoint, storage_url  # noqa: F401  (fixtures)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_server(url, options, clock=None, **kwargs) -> ReconstructionStore:
    """One "server": its own store object and storage client on the shared storage."""
    kwargs.setdefault("ttl_seconds", 3600)
    kwargs.setdefault("max_bytes", 10**9)
    kwargs.setdefault("retry_delay_s", 0.01)
    if clock is not None:
        kwargs["clock"] = clock
    return ReconstructionStore(storage=open_entry_storage(url, storage_options=options), **kwargs)


def test_any_server_opens_any_link(storage_url, small_reconstruction):
    url, options = storage_url
    first, second = open_server(url, options), open_server(url, options)
    recon_id = first.save(small_reconstruction, {"seconds": 2.0})
    stored = second.load(recon_id)  # never in the second server's memory
    np.testing.assert_array_equal(stored.reconstruction.depth, small_reconstruction.depth)
    np.testing.assert_allclose(stored.reconstruction.points_from_depth, small_reconstruction.points_from_depth,
                               rtol=1e-6, atol=1e-6)
    assert stored.metadata["seconds"] == 2.0
    second.save_attachment(recon_id, "sky.bin", b"mask")
    assert first.load_attachment(recon_id, "sky.bin") == b"mask"
    assert first.load_attachment(recon_id, "other.bin") is None


def test_expiry_on_two_servers_at_once_deletes_exactly_the_expired_entries(storage_url, small_reconstruction):
    url, options = storage_url
    clock = FakeClock()
    servers = [open_server(url, options, clock) for _ in range(2)]
    old = [servers[index % 2].save(small_reconstruction) for index in range(3)]
    clock.now += 1800
    young = [servers[index % 2].save(small_reconstruction) for index in range(2)]
    clock.now += 1801  # the first three are now past the 1-hour TTL, the other two are not

    results: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def expire(index: int) -> None:
        barrier.wait()
        results[index] = servers[index].prune()

    threads = [threading.Thread(target=expire, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Between them they deleted each expired entry (deleting is idempotent, so both may claim
    # one), and nothing else.
    assert set(results[0]) | set(results[1]) == set(old)
    fresh = open_server(url, options, clock)
    for recon_id in old:
        with pytest.raises(ReconstructionNotFoundError):
            fresh.load(recon_id)
    for recon_id in young:
        assert fresh.load(recon_id).reconstruction.num_frames == small_reconstruction.num_frames
    assert sorted(fresh.storage.entry_ids()) == sorted(young)


def test_the_size_bound_keeps_the_newest_entries_on_every_server(storage_url, small_reconstruction):
    url, options = storage_url
    clock = FakeClock()
    writer = open_server(url, options, clock)
    ids = []
    for _ in range(4):
        ids.append(writer.save(small_reconstruction))
        clock.now += 10
    entry_bytes = sum(file.size for file in writer.storage.list_files(ids[0]).values())
    bounded = [open_server(url, options, clock, max_bytes=int(entry_bytes * 2.5)) for _ in range(2)]
    removed = set(bounded[0].prune()) | set(bounded[1].prune())
    assert removed == set(ids[:2])
    assert sorted(writer.storage.entry_ids()) == sorted(ids[2:])


def test_an_entry_without_its_manifest_is_invisible_then_cleaned_up(storage_url, small_reconstruction,
                                                                     monkeypatch):
    """What a writer killed between the arrays and the manifest leaves behind."""
    url, options = storage_url
    server = open_server(url, options)
    recon_id = server.save(small_reconstruction)
    server.storage.read_bytes(recon_id, ReconstructionStore.METADATA_FILE)
    # Remove the manifest only, as if the writer never got to it.
    storage = server.storage
    arrays = storage.read_bytes(recon_id, ReconstructionStore.RECONSTRUCTION_FILE)
    storage.delete_entry(recon_id)
    storage.write_bytes(recon_id, ReconstructionStore.RECONSTRUCTION_FILE, arrays)

    other = open_server(url, options)
    with pytest.raises(ReconstructionNotFoundError):
        other.load(recon_id)
    assert other.prune() == [] and recon_id in storage.entry_ids()  # maybe still being written
    monkeypatch.setattr(store_module, "INCOMPLETE_ENTRY_GRACE_SECONDS", -60.0)
    other.prune()
    assert recon_id not in storage.entry_ids()


_KILLED_WRITER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[3])
    from vggt_core.reconstruction import reconstruction_from_synthetic_scene
    from vggt_app.store.backends import open_entry_storage
    from vggt_app.store.entries import ReconstructionStore
    from vggt_core.synthetic import render_scene

    storage = open_entry_storage(sys.argv[1], storage_options={"endpoint_url": sys.argv[2]} if sys.argv[2] else None)
    real_write = storage.write_bytes

    def write_then_die(entry_id, name, data):
        if name == ReconstructionStore.METADATA_FILE:
            print(entry_id, flush=True)
            os._exit(9)  # killed after the arrays, before the manifest
        real_write(entry_id, name, data)

    storage.write_bytes = write_then_die
    store = ReconstructionStore(storage=storage, ttl_seconds=3600, max_bytes=10**9)
    scene = render_scene("table", num_views=2, width=56, height=42)
    store.save(reconstruction_from_synthetic_scene(scene))
""")


@pytest.mark.parametrize("backend", ["folder", "s3"])
def test_a_writer_killed_before_the_manifest_leaves_nothing_visible(backend, tmp_path, request, monkeypatch):
    if backend == "folder":
        url, endpoint = str(tmp_path / "store"), ""
    else:
        from storage_servers import make_bucket

        endpoint = request.getfixturevalue("s3_endpoint")
        url = f"s3://{make_bucket(endpoint)}/share"
    import vggt_core

    project_root = str(__import__("pathlib").Path(vggt_core.__file__).resolve().parents[1])
    finished = subprocess.run([sys.executable, "-c", _KILLED_WRITER, url, endpoint, project_root],
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 9, finished.stderr
    recon_id = finished.stdout.strip()
    options = {"endpoint_url": endpoint} if endpoint else {}
    server = open_server(url, options)
    assert recon_id in server.storage.entry_ids()
    assert set(server.storage.list_files(recon_id)) == {ReconstructionStore.RECONSTRUCTION_FILE}
    with pytest.raises(ReconstructionNotFoundError):
        server.load(recon_id)
    assert server.prune() == []
    monkeypatch.setattr(store_module, "INCOMPLETE_ENTRY_GRACE_SECONDS", -60.0)
    server.prune()
    assert recon_id not in server.storage.entry_ids()
