"""BlobStorage on a Hugging Face dataset (hf://datasets/<user>/<repo>/<prefix>), against the
in-memory Hub of tests/fake_hub.py: huggingface_hub speaks real HTTP to it on 127.0.0.1."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # before huggingface_hub reads it at import
pytest.importorskip("huggingface_hub")

from vggt_core.storage_backends import (BlobStorage, StorageConfigurationError,  # noqa: E402
                                        open_blob_storage, parse_storage_location)

from fake_hub import DEFAULT_TOKEN, HubError, fake_hub  # noqa: E402, F401  (fixture)

STORE_URL = "hf://datasets/me/store/links"


def open_store(hub, url: str = STORE_URL, token=DEFAULT_TOKEN):
    return open_blob_storage(url, storage_options={"endpoint": hub.endpoint, "token": token})


def open_store_unchecked(hub, url: str = STORE_URL, token=DEFAULT_TOKEN):
    """Like open_store, without the check that open_blob_storage makes once at start-up."""
    from huggingface_hub import HfFileSystem

    return BlobStorage(parse_storage_location(url),
                       HfFileSystem(endpoint=hub.endpoint, token=token, skip_instance_cache=True))


def commit_requests(hub) -> int:
    return sum(1 for method, path in hub.requests if method == "POST" and "/commit/" in path)


def test_write_read_list_delete(fake_hub):
    # A repository that also holds files of its own, outside the store's prefix.
    fake_hub.create_dataset("me/shared", files={"README.md": b"# notes", "elsewhere/keep.bin": b"k"})
    storage = open_store(fake_hub, "hf://datasets/me/shared/links")
    assert storage.list_folders() == []
    storage.write("abc/one.bin", b"1" * 10)
    storage.write_group({"abc/sub/two.bin": b"22", "abc/manifest.json": b"{}"})
    storage.write("xyz/one.bin", b"x")
    assert fake_hub.files["me/shared"] == {
        "README.md": b"# notes", "elsewhere/keep.bin": b"k", "links/abc/one.bin": b"1" * 10,
        "links/abc/sub/two.bin": b"22", "links/abc/manifest.json": b"{}", "links/xyz/one.bin": b"x"}
    assert fake_hub.files["me/store"] == {}  # the other repository is untouched

    assert storage.read("abc/one.bin") == b"1" * 10
    assert storage.read("abc/sub/two.bin") == b"22"
    assert storage.exists("abc/manifest.json") and not storage.exists("abc/missing")
    assert storage.list_folders() == ["abc", "xyz"]
    files = storage.list_files("abc")
    assert {key: size for key, (size, _) in files.items()} == {
        "abc/one.bin": 10, "abc/sub/two.bin": 2, "abc/manifest.json": 2}
    storage.write("abc/one.bin", b"replaced")
    assert storage.read("abc/one.bin") == b"replaced"

    other = open_store(fake_hub, "hf://datasets/me/shared/links")
    assert other.read("xyz/one.bin") == b"x"
    other.delete_folder("abc")
    storage.delete_folder("abc")  # already gone: nothing to do, no error
    storage.delete("abc/one.bin")
    assert storage.list_folders() == ["xyz"] and not storage.exists("abc/one.bin")
    assert fake_hub.files["me/shared"] == {
        "README.md": b"# notes", "elsewhere/keep.bin": b"k", "links/xyz/one.bin": b"x"}

    storage.delete("xyz/one.bin")
    assert storage.list_folders() == [] and storage.list_files("xyz") == {}


def test_write_group_is_one_commit(fake_hub):
    storage = open_store(fake_hub)
    objects = {"e1/depth.npz": b"d" * 100, "e1/scene.glb": b"g" * 50, "e1/manifest.json": b'{"v": 1}'}
    storage.write_group(objects, message="Store e1")

    assert commit_requests(fake_hub) == 1 and len(fake_hub.commits) == 1
    commit = fake_hub.commits[0]
    # Every object arrived in that one commit, in the given order (the manifest last).
    assert commit.title == "Store e1"
    assert commit.added == ("links/e1/depth.npz", "links/e1/scene.glb", "links/e1/manifest.json")
    assert commit.files == {"links/" + key: data for key, data in objects.items()}
    assert fake_hub.repos["me/store"].commits[0].files == {}  # before it: none of them
    assert {key: storage.read(key) for key in objects} == objects

    storage.delete_folder("e1")
    assert len(fake_hub.commits) == 2 and commit_requests(fake_hub) == 2
    assert sorted(fake_hub.commits[1].deleted) == sorted("links/" + key for key in objects)
    assert fake_hub.files["me/store"] == {}


def test_rewriting_identical_content_makes_no_commit(fake_hub):
    storage = open_store(fake_hub)
    storage.write("e/data.bin", b"same")
    storage.write("e/data.bin", b"same")  # huggingface_hub skips the unchanged file
    assert len(fake_hub.commits) == 1
    storage.write("e/data.bin", b"changed")
    assert len(fake_hub.commits) == 2 and storage.read("e/data.bin") == b"changed"


def test_a_second_server_sees_the_first_ones_changes(fake_hub):
    writer, reader = open_store(fake_hub), open_store(fake_hub)
    writer.write("old/data.bin", b"old")
    # The reader lists first, so its file system has cached listings to go stale.
    assert reader.list_folders() == ["old"]
    assert set(reader.list_files("old")) == {"old/data.bin"}

    writer.write_group({"new/data.bin": b"new", "new/manifest.json": b"{}"})
    writer.write("old/more.bin", b"more")
    assert reader.list_folders() == ["new", "old"]
    assert set(reader.list_files("old")) == {"old/data.bin", "old/more.bin"}
    assert reader.exists("new/manifest.json") and reader.exists("old/more.bin")
    assert reader.read("new/data.bin") == b"new"  # a folder it never listed

    writer.delete_folder("new")
    assert reader.list_folders() == ["old"] and not reader.exists("new/manifest.json")


def test_reads_are_not_answered_from_a_stale_listing(fake_hub):
    writer, reader = open_store(fake_hub), open_store(fake_hub)
    writer.write("entry/first.bin", b"1")
    assert reader.read("entry/first.bin") == b"1"  # caches the listing of entry/

    writer.write("entry/second.bin", b"2")
    assert reader.read("entry/second.bin") == b"2"
    writer.delete("entry/first.bin")
    with pytest.raises(FileNotFoundError):
        reader.read("entry/first.bin")


def test_the_token_is_sent_and_checked(fake_hub):
    good = open_store(fake_hub)
    good.write("entry/data.bin", b"data")
    commits = len(fake_hub.commits)

    # A wrong token is an error everywhere, never an empty store or a missing object.
    wrong = open_store_unchecked(fake_hub, token="hf_wrong")
    for operation in (lambda: wrong.write("entry/other.bin", b"x"),
                      lambda: wrong.write_group({"e2/a": b"a", "e2/b": b"b"}),
                      lambda: wrong.read("entry/data.bin"),
                      lambda: wrong.exists("entry/data.bin"),
                      wrong.list_folders,
                      lambda: wrong.list_files("entry"),
                      lambda: wrong.delete("entry/data.bin"),
                      lambda: wrong.delete_folder("entry")):
        with pytest.raises(OSError) as raised:
            operation()
        assert not isinstance(raised.value, FileNotFoundError), raised.value
        assert "401" in str(raised.value)

    # No token at all: the private repository refuses the write.
    anonymous = open_store_unchecked(fake_hub, token=False)
    with pytest.raises(OSError):
        anonymous.write("entry/other.bin", b"x")

    assert len(fake_hub.commits) == commits
    assert fake_hub.files["me/store"] == {"links/entry/data.bin": b"data"}
    assert good.read("entry/data.bin") == b"data"


def test_reading_a_missing_key_raises_file_not_found(fake_hub):
    storage = open_store(fake_hub)
    with pytest.raises(FileNotFoundError):
        storage.read("entry/data.bin")  # empty store
    storage.write("entry/data.bin", b"data")
    for key in ("entry/missing.bin", "no-such-entry/data.bin", "entry/data.bin/below"):
        with pytest.raises(FileNotFoundError):
            storage.read(key)
        assert not storage.exists(key)
    with pytest.raises(FileNotFoundError):
        open_store_unchecked(fake_hub, "hf://datasets/me/no-such-repo/links").read("entry/data.bin")


def test_opening_checks_the_dataset_and_token_once(fake_hub):
    """Without the check, a server missing its token would see an empty store and report every
    link as expired; opening the store says so instead."""
    for url, token, message in (("hf://datasets/me/no-such-repo/links", DEFAULT_TOKEN, "not found"),
                                (STORE_URL, False, "HF_TOKEN"),
                                (STORE_URL, "hf_wrong", "refused the token")):
        with pytest.raises(StorageConfigurationError, match=message):
            open_store(fake_hub, url, token=token)
    assert open_store(fake_hub).list_folders() == []


def test_an_error_while_checking_is_not_taken_for_absence(fake_hub):
    storage = open_store(fake_hub)
    storage.write("entry/data.bin", b"data")
    assert storage.exists("entry/data.bin")

    fake_hub.failure = HubError(403, "Forbidden: the token lost its permissions")
    with pytest.raises(OSError):
        storage.read("entry/data.bin")
    with pytest.raises(OSError):
        storage.delete("entry/data.bin")
    with pytest.raises(OSError):
        storage.exists("entry/data.bin")
    fake_hub.failure = None
    assert storage.read("entry/data.bin") == b"data"


def test_large_folders_are_listed_across_pages(fake_hub):
    fake_hub.tree_page_size = 3  # the Hub's is 1000: a few files now span several pages
    storage = open_store(fake_hub)
    objects = {f"big/part-{index // 4}/file-{index}.bin": bytes([index]) * (index + 1) for index in range(14)}
    objects["small/manifest.json"] = b"{}"
    storage.write_group(objects)

    before = len(fake_hub.requests)
    files = storage.list_files("big")
    tree_requests = [path for method, path in fake_hub.requests[before:] if "/tree/" in path]
    assert len(tree_requests) > 1
    assert {key: size for key, (size, _) in files.items()} == {
        key: len(data) for key, data in objects.items() if key.startswith("big/")}
    assert storage.list_folders() == ["big", "small"]


def test_only_the_fake_hub_is_contacted(fake_hub):
    storage = open_blob_storage(STORE_URL, storage_options={"token": DEFAULT_TOKEN})  # endpoint: HF_ENDPOINT
    storage.write("entry/data.bin", b"data")
    assert storage.read("entry/data.bin") == b"data"
    assert fake_hub.requests and all(path.startswith(("/api/datasets/me/store", "/datasets/me/store/"))
                                     for _, path in fake_hub.requests)

    # The fixture's guard turns any other destination into an error, so no test can leave the machine.
    from huggingface_hub import HfApi

    with pytest.raises(Exception, match="may not reach 'huggingface.co'"):
        HfApi(endpoint="https://huggingface.co", token=DEFAULT_TOKEN).dataset_info("me/store")
