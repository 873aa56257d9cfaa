"""FsspecEntryStorage on a Hugging Face dataset (hf://datasets/<user>/<repo>/<prefix>), against the
in-memory Hub of tests/fake_hub.py: huggingface_hub speaks real HTTP to it on 127.0.0.1."""

from __future__ import annotations

import logging
import os
import time

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # before huggingface_hub reads it at import
pytest.importorskip("huggingface_hub")

from vggt_app.store.backends import (FsspecEntryStorage, StorageConfigurationError,  # noqa: E402
                                        open_entry_storage, parse_storage_location)

from fake_hub import DEFAULT_TOKEN, HubError, fake_hub  # noqa: E402, F401  (fixture)

STORE_URL = "hf://datasets/me/store/links"


def open_store(hub, url: str = STORE_URL, token=DEFAULT_TOKEN):
    return open_entry_storage(url, storage_options={"endpoint": hub.endpoint, "token": token})


def open_store_unchecked(hub, url: str = STORE_URL, token=DEFAULT_TOKEN):
    """Like open_store, without the check that open_entry_storage makes once at start-up."""
    from huggingface_hub import HfFileSystem

    return FsspecEntryStorage(parse_storage_location(url),
                              HfFileSystem(endpoint=hub.endpoint, token=token, skip_instance_cache=True))


def commit_requests(hub) -> int:
    return sum(1 for method, path in hub.requests if method == "POST" and "/commit/" in path)


def test_write_read_list_delete(fake_hub):
    # A repository that also holds files of its own, outside the store's prefix.
    fake_hub.create_dataset("me/shared", files={"README.md": b"# notes", "elsewhere/keep.bin": b"k"})
    storage = open_store(fake_hub, "hf://datasets/me/shared/links")
    assert storage.entry_ids() == [] and storage.list_files("abc") == {}
    storage.write_bytes("abc", "one.bin", b"1" * 10)
    storage.write_bytes("abc", "attachments/sky.bin", b"22")
    storage.write_bytes("abc", "metadata.json", b"{}")
    storage.write_bytes("xyz", "one.bin", b"x")
    assert fake_hub.files["me/shared"] == {
        "README.md": b"# notes", "elsewhere/keep.bin": b"k", "links/abc/one.bin": b"1" * 10,
        "links/abc/attachments/sky.bin": b"22", "links/abc/metadata.json": b"{}", "links/xyz/one.bin": b"x"}
    assert fake_hub.files["me/store"] == {}  # the other repository is untouched

    assert storage.read_bytes("abc", "one.bin") == b"1" * 10
    assert storage.read_bytes("abc", "attachments/sky.bin") == b"22"
    assert storage.exists("abc", "metadata.json") and not storage.exists("abc", "missing")
    assert storage.local_path("abc", "one.bin") is None
    assert storage.entry_ids() == ["abc", "xyz"]
    files = storage.list_files("abc")
    assert {name: file.size for name, file in files.items()} == {
        "one.bin": 10, "attachments/sky.bin": 2, "metadata.json": 2}
    storage.write_bytes("abc", "one.bin", b"replaced")
    assert storage.read_bytes("abc", "one.bin") == b"replaced"

    other = open_store(fake_hub, "hf://datasets/me/shared/links")
    assert other.read_bytes("xyz", "one.bin") == b"x"
    other.delete_entry("abc")
    storage.delete_entry("abc")  # already gone: nothing to do, no error
    storage.delete_entry("never-existed")
    assert storage.entry_ids() == ["xyz"] and not storage.exists("abc", "one.bin")
    assert storage.list_files("abc") == {}
    assert fake_hub.files["me/shared"] == {
        "README.md": b"# notes", "elsewhere/keep.bin": b"k", "links/xyz/one.bin": b"x"}

    storage.delete_entry("xyz")
    assert storage.entry_ids() == [] and storage.list_files("xyz") == {}
    assert fake_hub.files["me/shared"] == {"README.md": b"# notes", "elsewhere/keep.bin": b"k"}


def test_each_write_is_one_commit_and_deleting_an_entry_is_one_more(fake_hub):
    storage = open_store(fake_hub)
    objects = {"reconstruction.npz": b"d" * 100, "attachments/scene.glb": b"g" * 50,
               "metadata.json": b'{"v": 1}'}
    for number, (name, data) in enumerate(objects.items(), start=1):
        storage.write_bytes("e1", name, data)
        assert commit_requests(fake_hub) == number and len(fake_hub.commits) == number
        commit = fake_hub.commits[-1]
        assert commit.added == ("links/e1/" + name,) and commit.deleted == ()
        assert commit.title == "Store a reconstruction"
    assert fake_hub.files["me/store"] == {"links/e1/" + name: data for name, data in objects.items()}
    assert {name: storage.read_bytes("e1", name) for name in objects} == objects

    storage.delete_entry("e1")
    assert len(fake_hub.commits) == 4 and commit_requests(fake_hub) == 4
    deletion = fake_hub.commits[-1]
    assert deletion.title == "Expire a reconstruction" and deletion.added == ()
    assert sorted(deletion.deleted) == sorted("links/e1/" + name for name in objects)
    assert deletion.deleted[0] == "links/e1/metadata.json"  # the manifest leads the commit
    assert fake_hub.files["me/store"] == {}

    storage.delete_entry("e1")  # nothing left: no empty commit
    assert len(fake_hub.commits) == 4


def test_open_write_commits_once_when_the_block_ends(fake_hub):
    storage = open_store(fake_hub)
    with storage.open_write("entry", "data.bin") as handle:
        handle.write(b"first part, ")
        handle.write(b"second part")
        assert not storage.exists("entry", "data.bin") and fake_hub.commits == []
    assert len(fake_hub.commits) == 1 and fake_hub.commits[0].added == ("links/entry/data.bin",)
    assert storage.read_bytes("entry", "data.bin") == b"first part, second part"

    for name in ("data.bin", "attachments/new.bin"):
        with pytest.raises(RuntimeError, match="the export failed"):
            with storage.open_write("entry", name) as handle:
                handle.write(b"half of a file")
                raise RuntimeError("the export failed")
    assert len(fake_hub.commits) == 1 and commit_requests(fake_hub) == 1
    assert fake_hub.files["me/store"] == {"links/entry/data.bin": b"first part, second part"}
    assert set(storage.list_files("entry")) == {"data.bin"}


def test_modification_times_are_the_commit_dates(fake_hub):
    storage = open_store(fake_hub)
    before = time.time()
    storage.write_bytes("entry", "data.bin", b"data")
    storage.write_bytes("entry", "attachments/sky.bin", b"sky")
    first, second = fake_hub.commits
    files = storage.list_files("entry")
    assert set(files) == {"data.bin", "attachments/sky.bin"}
    # The Hub's dates have millisecond precision; the fake's are taken when it commits.
    assert files["data.bin"].modified_at == pytest.approx(first.date.timestamp(), abs=0.002)
    assert files["attachments/sky.bin"].modified_at == pytest.approx(second.date.timestamp(), abs=0.002)
    for file in files.values():
        assert before - 60 < file.modified_at < time.time() + 60

    # A listing cached before a rewrite is not reused: the new date shows.
    storage.write_bytes("entry", "data.bin", b"newer")
    assert storage.list_files("entry")["data.bin"].modified_at == pytest.approx(
        fake_hub.commits[-1].date.timestamp(), abs=0.002)


def test_rewriting_identical_content_makes_no_commit(fake_hub):
    storage = open_store(fake_hub)
    storage.write_bytes("e", "data.bin", b"same")
    storage.write_bytes("e", "data.bin", b"same")  # huggingface_hub skips the unchanged file
    assert len(fake_hub.commits) == 1
    storage.write_bytes("e", "data.bin", b"changed")
    assert len(fake_hub.commits) == 2 and storage.read_bytes("e", "data.bin") == b"changed"


def test_a_second_server_sees_the_first_ones_changes(fake_hub):
    writer, reader = open_store(fake_hub), open_store(fake_hub)
    writer.write_bytes("old", "data.bin", b"old")
    # The reader lists first, so its file system has cached listings to go stale.
    assert reader.entry_ids() == ["old"]
    assert set(reader.list_files("old")) == {"data.bin"}

    writer.write_bytes("new", "data.bin", b"new")
    writer.write_bytes("new", "metadata.json", b"{}")
    writer.write_bytes("old", "attachments/more.bin", b"more")
    assert reader.entry_ids() == ["new", "old"]
    assert set(reader.list_files("old")) == {"data.bin", "attachments/more.bin"}
    assert reader.exists("new", "metadata.json") and reader.exists("old", "attachments/more.bin")
    assert reader.read_bytes("new", "data.bin") == b"new"  # an entry it never listed

    writer.delete_entry("new")
    assert reader.entry_ids() == ["old"] and not reader.exists("new", "metadata.json")
    assert reader.list_files("new") == {}


def test_reads_are_not_answered_from_a_stale_listing(fake_hub):
    writer, reader = open_store(fake_hub), open_store(fake_hub)
    writer.write_bytes("entry", "first.bin", b"1")
    assert reader.read_bytes("entry", "first.bin") == b"1"  # caches the listing of entry/

    writer.write_bytes("entry", "second.bin", b"2")
    assert reader.read_bytes("entry", "second.bin") == b"2"
    writer.delete_entry("entry")
    with pytest.raises(FileNotFoundError):
        reader.read_bytes("entry", "first.bin")
    assert not reader.exists("entry", "second.bin")


def test_deleting_an_entry_another_server_just_deleted_is_not_an_error(fake_hub, monkeypatch):
    first, second = open_store(fake_hub), open_store(fake_hub)
    first.write_bytes("entry", "data.bin", b"data")
    first.write_bytes("entry", "metadata.json", b"{}")
    stale_listing = first.list_files("entry")
    second.delete_entry("entry")
    commits = len(fake_hub.commits)

    # The first server listed the entry just before the second one deleted it: its commit then
    # names files that are gone, which the Hub refuses; the entry is gone all the same.
    real_list_files = first.list_files
    listings = iter([stale_listing])
    monkeypatch.setattr(first, "list_files", lambda entry_id: next(listings, None) or real_list_files(entry_id))
    first.delete_entry("entry")
    assert commit_requests(fake_hub) == commits + 1  # it did try
    assert len(fake_hub.commits) == commits and fake_hub.files["me/store"] == {}


def test_the_token_is_sent_and_checked(fake_hub):
    good = open_store(fake_hub)
    good.write_bytes("entry", "data.bin", b"data")
    commits = len(fake_hub.commits)

    def write_streamed(storage):
        with storage.open_write("e2", "a.bin") as handle:
            handle.write(b"a")

    # A wrong token is an error everywhere, never an empty store or a missing object.
    wrong = open_store_unchecked(fake_hub, token="hf_wrong")
    for operation in (lambda: wrong.write_bytes("entry", "other.bin", b"x"),
                      lambda: write_streamed(wrong),
                      lambda: wrong.read_bytes("entry", "data.bin"),
                      lambda: wrong.exists("entry", "data.bin"),
                      wrong.entry_ids,
                      lambda: wrong.list_files("entry"),
                      lambda: wrong.delete_entry("entry")):
        with pytest.raises(OSError) as raised:
            operation()
        assert not isinstance(raised.value, FileNotFoundError), raised.value
        assert "401" in str(raised.value)

    # No token at all: the private repository refuses the write.
    anonymous = open_store_unchecked(fake_hub, token=False)
    with pytest.raises(OSError):
        anonymous.write_bytes("entry", "other.bin", b"x")

    assert len(fake_hub.commits) == commits
    assert fake_hub.files["me/store"] == {"links/entry/data.bin": b"data"}
    assert good.read_bytes("entry", "data.bin") == b"data"


def test_reading_a_missing_file_raises_file_not_found(fake_hub):
    storage = open_store(fake_hub)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("entry", "data.bin")  # empty store
    storage.write_bytes("entry", "data.bin", b"data")
    for entry_id, name in (("entry", "missing.bin"), ("no-such-entry", "data.bin"),
                           ("entry", "data.bin/below"), ("entry", "attachments/missing.bin")):
        with pytest.raises(FileNotFoundError):
            storage.read_bytes(entry_id, name)
        assert not storage.exists(entry_id, name)
    assert not storage.exists("entry", "attachments")  # a folder is not a file
    with pytest.raises(FileNotFoundError):
        open_store_unchecked(fake_hub, "hf://datasets/me/no-such-repo/links").read_bytes("entry", "data.bin")


def test_opening_checks_the_dataset_and_token_once(fake_hub):
    """Without the check, a server missing its token would see an empty store and report every
    link as expired; opening the store says so instead."""
    for url, token, message in (("hf://datasets/me/no-such-repo/links", DEFAULT_TOKEN, "not found"),
                                (STORE_URL, False, "HF_TOKEN"),
                                (STORE_URL, "hf_wrong", "refused the token")):
        with pytest.raises(StorageConfigurationError, match=message):
            open_store(fake_hub, url, token=token)
    before = len(fake_hub.requests)
    storage = open_store(fake_hub)
    info_requests = [path for method, path in fake_hub.requests[before:] if path == "/api/datasets/me/store"]
    assert len(info_requests) == 1
    assert storage.entry_ids() == []


def test_a_hub_hiccup_while_opening_does_not_stop_the_server(fake_hub, caplog):
    fake_hub.failure = HubError(400, "Bad request: try again later")
    with caplog.at_level(logging.WARNING, logger="vggt_app.store.backends"):
        storage = open_store(fake_hub)
    assert "could not check the dataset me/store" in caplog.text
    fake_hub.failure = None
    storage.write_bytes("entry", "data.bin", b"data")
    assert storage.read_bytes("entry", "data.bin") == b"data"


def test_an_error_while_checking_is_not_taken_for_absence(fake_hub):
    storage = open_store(fake_hub)
    storage.write_bytes("entry", "data.bin", b"data")
    storage.write_bytes("entry", "metadata.json", b"{}")
    assert storage.exists("entry", "data.bin")

    fake_hub.failure = HubError(403, "Forbidden: the token lost its permissions")
    for operation in (lambda: storage.read_bytes("entry", "data.bin"),
                      lambda: storage.exists("entry", "data.bin"),
                      lambda: storage.list_files("entry"),
                      storage.entry_ids,
                      lambda: storage.delete_entry("entry")):
        with pytest.raises(OSError) as raised:
            operation()
        assert not isinstance(raised.value, FileNotFoundError), raised.value
    fake_hub.failure = None
    assert storage.read_bytes("entry", "data.bin") == b"data"
    assert set(storage.list_files("entry")) == {"data.bin", "metadata.json"}


def test_large_entries_are_listed_across_pages(fake_hub):
    fake_hub.tree_page_size = 3  # the Hub's is 1000 (50 with dates): a few files now span several pages
    fake_hub.create_dataset("me/big", files={
        **{f"links/big/part-{index // 4}/file-{index}.bin": bytes([index]) * (index + 1) for index in range(14)},
        "links/small/metadata.json": b"{}"})
    storage = open_store(fake_hub, "hf://datasets/me/big/links")

    before = len(fake_hub.requests)
    files = storage.list_files("big")
    tree_requests = [path for method, path in fake_hub.requests[before:] if "/tree/" in path]
    assert len(tree_requests) > 1
    assert {name: file.size for name, file in files.items()} == {
        f"part-{index // 4}/file-{index}.bin": index + 1 for index in range(14)}
    initial_commit = fake_hub.repos["me/big"].commits[0].date.timestamp()
    assert all(file.modified_at == pytest.approx(initial_commit, abs=0.002) for file in files.values())
    assert storage.entry_ids() == ["big", "small"]


def test_only_the_fake_hub_is_contacted(fake_hub):
    storage = open_entry_storage(STORE_URL, storage_options={"token": DEFAULT_TOKEN})  # endpoint: HF_ENDPOINT
    storage.write_bytes("entry", "data.bin", b"data")
    assert storage.read_bytes("entry", "data.bin") == b"data"
    assert fake_hub.requests and all(path.startswith(("/api/datasets/me/store", "/datasets/me/store/"))
                                     for _, path in fake_hub.requests)

    # The fixture's guard turns any other destination into an error, so no test can leave the machine.
    from huggingface_hub import HfApi

    with pytest.raises(Exception, match="may not reach 'huggingface.co'"):
        HfApi(endpoint="https://huggingface.co", token=DEFAULT_TOKEN).dataset_info("me/store")


def test_an_unreachable_hub_is_a_transient_error_not_a_crash(fake_hub):
    """httpx's connection errors are not OSErrors; the store must still see "try again"."""
    from storage_servers import free_port

    storage = open_entry_storage(STORE_URL, storage_options={"endpoint": f"http://127.0.0.1:{free_port()}",
                                                             "token": DEFAULT_TOKEN})
    for operation in (storage.entry_ids, lambda: storage.read_bytes("entry", "data.bin")):
        with pytest.raises(OSError) as raised:
            operation()
        assert not isinstance(raised.value, FileNotFoundError)


# ---- private stores (issue #19)


def test_a_public_dataset_is_refused_unless_allowed(fake_hub, caplog):
    fake_hub.create_dataset("me/open", private=False)
    with pytest.raises(StorageConfigurationError, match="is public.*--allow-public-store"):
        open_store(fake_hub, "hf://datasets/me/open/links")
    with caplog.at_level(logging.WARNING, logger="vggt_app.store.backends"):
        storage = open_entry_storage("hf://datasets/me/open/links", allow_public=True,
                                     storage_options={"endpoint": fake_hub.endpoint, "token": DEFAULT_TOKEN})
    assert storage.entry_ids() == []
    assert any("PUBLIC" in record.getMessage() for record in caplog.records)
    assert open_store(fake_hub).entry_ids() == []  # the private one opens as before


def test_expired_entries_are_erased_from_the_datasets_history(fake_hub, small_reconstruction):
    from vggt_app.store.entries import ReconstructionStore

    now = [1_000_000.0]
    store = ReconstructionStore(storage=open_store(fake_hub), ttl_seconds=100, max_bytes=10**9,
                                clock=lambda: now[0])
    expired = store.save(small_reconstruction)
    now[0] += 150
    kept = store.save(small_reconstruction)
    old_revisions = [commit.sha for commit in fake_hub.repos["me/store"].commits]
    assert any(f"links/{expired}/" in path for commit in fake_hub.repos["me/store"].commits for path in commit.files)

    assert store.prune() == [expired]
    repo = fake_hub.repos["me/store"]
    assert fake_hub.squashes == 1 and len(repo.commits) == 1
    assert not any(expired in path for commit in repo.commits for path in commit.files)
    assert any(f"links/{kept}/" in path for path in repo.head.files)
    assert all(repo.resolve_revision(sha) is None for sha in old_revisions)
    assert store.prune() == [] and fake_hub.squashes == 1  # nothing deleted: nothing to squash
