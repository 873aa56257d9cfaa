"""A share link opens from its entry's small first view, without reading the arrays; any other
view, and entries without a first view, still load the full scene."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

import pytest

import app
import vggt_app.renderer
import vggt_app.service
import vggt_app.share_links
from storage_servers import S3_CREDENTIALS, make_bucket, s3_endpoint  # noqa: F401 (fixture)
from vggt_app.store.first_view import FirstView, load_first_view, save_first_view
from vggt_app.store.backends import open_entry_storage
from vggt_app.store.entries import ReconstructionNotFoundError, ReconstructionStore


class CountingStorage:
    """A storage wrapper that records which files are read."""

    def __init__(self, inner):
        self.inner = inner
        self.reads: list[str] = []

    def read_bytes(self, entry_id, name):
        self.reads.append(name)
        return self.inner.read_bytes(entry_id, name)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def make_service(storage, tmp_path) -> vggt_app.service.ReconstructionService:
    store = ReconstructionStore(storage=storage, ttl_seconds=3600, max_bytes=10**10, memory_cache_size=0)
    renderer = vggt_app.renderer.ViewRenderer(tmp_path / f"views-{secrets.token_hex(3)}")
    return vggt_app.service.ReconstructionService(app.AppSettings(), store, renderer, None)


@pytest.fixture(params=["memory", "s3"])
def remote_url(request, monkeypatch):
    if request.param == "memory":
        return f"memory://first-view-{secrets.token_hex(4)}/store", None
    endpoint = request.getfixturevalue("s3_endpoint")
    for key, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return f"s3://{make_bucket(endpoint)}/links", {"endpoint_url": endpoint}


def test_a_link_opens_on_another_server_without_reading_the_arrays(remote_url, tmp_path, small_reconstruction):
    url, options = remote_url
    first = make_service(open_entry_storage(url, storage_options=options), tmp_path)
    recon_id = first.store.save(small_reconstruction, {"seconds": 1.0})
    shown = first.scene_view(recon_id, vggt_app.share_links.DEFAULT_VIEW_SETTINGS, "http://first/")
    first.save_first_view(recon_id, vggt_app.share_links.DEFAULT_VIEW_SETTINGS)
    link = shown.share_link

    counting = CountingStorage(open_entry_storage(url, storage_options=options))
    second = make_service(counting, tmp_path)
    second._prefetch = lambda recon_id: None  # count only what opening the link itself reads
    opened = second.scene_view(recon_id, vggt_app.share_links.DEFAULT_VIEW_SETTINGS, "http://second/",
                                  vggt_app.share_links.share_link_query(link))
    assert ReconstructionStore.RECONSTRUCTION_FILE not in counting.reads
    assert Path(opened.glb_path).read_bytes() == Path(shown.glb_path).read_bytes()  # the same scene
    assert opened.summary == shown.summary
    assert [Path(path).read_bytes() for path, _ in opened.gallery] == [Path(path).read_bytes()
                                                                       for path, _ in shown.gallery]
    assert [caption for _, caption in opened.gallery] == [caption for _, caption in shown.gallery]
    assert opened.id == recon_id and f"?r={recon_id}" in opened.share_link

    # Another view needs the arrays, and gets them.
    other = dataclasses.replace(vggt_app.share_links.DEFAULT_VIEW_SETTINGS, confidence_threshold=80.0)
    changed = second.scene_view(recon_id, other, "http://second/")
    assert ReconstructionStore.RECONSTRUCTION_FILE in counting.reads
    assert Path(changed.glb_path).stat().st_size > 0 and changed.settings.confidence_threshold == 80.0


def test_entries_without_a_first_view_still_open(tmp_path, small_reconstruction):
    service = make_service(open_entry_storage(f"memory://first-view-{secrets.token_hex(4)}/s"), tmp_path)
    recon_id = service.store.save(small_reconstruction)
    assert load_first_view(service.store, recon_id) is None
    assert service.scene_view(recon_id, vggt_app.share_links.DEFAULT_VIEW_SETTINGS, "http://x/").id == recon_id


def test_first_view_round_trip_and_damage(tmp_path, small_reconstruction):
    store = ReconstructionStore(storage=open_entry_storage(f"memory://first-view-{secrets.token_hex(4)}/s"),
                                ttl_seconds=3600, max_bytes=10**10)
    recon_id = store.save(small_reconstruction)
    view = FirstView(settings_key="abc", num_frames=2, summary="**2 frames**", frame_choices=["All", "0: a"],
                     glb=b"glTF-bytes", gallery=[("input-0000.jpg", "0 · input", b"\xff\xd8jpeg")])
    save_first_view(store, recon_id, view)
    assert load_first_view(store, recon_id) == view
    store.save_attachment(recon_id, "first-view.json", b"{not json")
    assert load_first_view(store, recon_id) is None  # unreadable: the caller loads the scene
    with pytest.raises(ReconstructionNotFoundError):
        load_first_view(store, "x" * 24)
