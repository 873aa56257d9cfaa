"""The store's entry storage on a folder, fsspec's memory store and a real S3 server (moto);
location parsing. The Hugging Face back end has its own file, tests/test_storage_hf.py."""

from __future__ import annotations

import time

import pytest

from vggt_app.store.storage import LocalFolderStorage
from vggt_app.store.backends import (FsspecEntryStorage, StorageConfigurationError, open_entry_storage,
                                        parse_storage_location)

from storage_servers import s3_endpoint, storage_url  # noqa: F401  (fixtures)


def test_write_read_list_delete(storage_url):
    url, options = storage_url
    storage = open_entry_storage(url, storage_options=options)
    assert isinstance(storage, LocalFolderStorage if "://" not in url else FsspecEntryStorage)
    assert storage.entry_ids() == [] and storage.list_files("abc") == {}
    storage.write_bytes("abc", "one.bin", b"1" * 10)
    storage.write_bytes("abc", "attachments/sky.bin", b"22")
    storage.write_bytes("abc", "metadata.json", b"{}")
    storage.write_bytes("xyz", "one.bin", b"x")

    assert storage.read_bytes("abc", "one.bin") == b"1" * 10
    assert storage.read_bytes("abc", "attachments/sky.bin") == b"22"
    assert storage.exists("abc", "metadata.json") and storage.exists("abc", "attachments/sky.bin")
    assert not storage.exists("abc", "missing") and not storage.exists("nope", "one.bin")
    assert sorted(storage.entry_ids()) == ["abc", "xyz"]
    files = storage.list_files("abc")
    assert {name: file.size for name, file in files.items()} == {
        "one.bin": 10, "attachments/sky.bin": 2, "metadata.json": 2}
    storage.write_bytes("abc", "one.bin", b"replaced")
    assert storage.read_bytes("abc", "one.bin") == b"replaced"
    assert storage.list_files("abc")["one.bin"].size == len(b"replaced")
    for entry_id, name in (("abc", "missing"), ("nope", "one.bin"), ("abc", "attachments/missing.bin")):
        with pytest.raises(FileNotFoundError):
            storage.read_bytes(entry_id, name)

    # Folders hand out the file itself (downloads link it); remote stores have none.
    if isinstance(storage, LocalFolderStorage):
        assert storage.local_path("abc", "one.bin").read_bytes() == b"replaced"
    else:
        assert storage.local_path("abc", "one.bin") is None

    # A second instance (another server) sees the same objects, and deleting is idempotent.
    other = open_entry_storage(url, storage_options=options)
    assert other.read_bytes("xyz", "one.bin") == b"x"
    assert set(other.list_files("abc")) == {"one.bin", "attachments/sky.bin", "metadata.json"}
    other.delete_entry("abc")
    storage.delete_entry("abc")  # already gone: nothing to do, no error
    storage.delete_entry("never-existed")
    assert storage.entry_ids() == ["xyz"] and storage.list_files("abc") == {}
    assert not storage.exists("abc", "one.bin") and not storage.exists("abc", "metadata.json")
    assert storage.read_bytes("xyz", "one.bin") == b"x"


def test_modification_times_are_real(storage_url):
    url, options = storage_url
    storage = open_entry_storage(url, storage_options=options)
    before = time.time()
    storage.write_bytes("entry", "data.bin", b"data")
    storage.write_bytes("entry", "attachments/sky.bin", b"sky")
    files = storage.list_files("entry")
    assert set(files) == {"data.bin", "attachments/sky.bin"}
    for file in files.values():
        # Not 0.0 (the fallback for a listing without dates): expiry compares these with now.
        assert before - 60 < file.modified_at < time.time() + 60


def test_open_write_appears_only_when_the_block_ends(storage_url):
    url, options = storage_url
    storage = open_entry_storage(url, storage_options=options)
    with storage.open_write("entry", "data.bin") as handle:
        handle.write(b"first part, ")
        handle.write(b"second part")
        assert not storage.exists("entry", "data.bin")
        assert "data.bin" not in storage.list_files("entry")
    assert storage.read_bytes("entry", "data.bin") == b"first part, second part"
    assert storage.list_files("entry")["data.bin"].size == len(b"first part, second part")

    # A block that raises writes nothing: no new object, and a replaced one keeps its old bytes.
    for name in ("data.bin", "attachments/new.bin"):
        with pytest.raises(RuntimeError, match="the export failed"):
            with storage.open_write("entry", name) as handle:
                handle.write(b"half of a file")
                raise RuntimeError("the export failed")
    assert storage.read_bytes("entry", "data.bin") == b"first part, second part"
    assert not storage.exists("entry", "attachments/new.bin")
    assert set(storage.list_files("entry")) == {"data.bin"}
    assert storage.entry_ids() == ["entry"]

    # Nor does a failed first write create the entry.
    with pytest.raises(RuntimeError):
        with storage.open_write("other", "data.bin") as handle:
            handle.write(b"x")
            raise RuntimeError("cancelled")
    assert storage.list_files("other") == {} and not storage.exists("other", "data.bin")
    if not isinstance(storage, LocalFolderStorage):  # a folder keeps the empty entry folder it made
        assert storage.entry_ids() == ["entry"]


BAD_ENTRY_IDS = ["..", ".", "", "a/b", "../escape", "a/../b", "/abs"]
BAD_NAMES = ["..", "../escape", "attachments/../../escape", "a/./b", "", "/abs", "attachments/"]


@pytest.mark.parametrize("entry_id, name", [
    *[(entry_id, "data.bin") for entry_id in BAD_ENTRY_IDS],
    *[("entry", name) for name in BAD_NAMES],
])
def test_fsspec_storage_refuses_paths_that_leave_the_entry(entry_id, name):
    import fsspec

    root = f"vggt-tests-{time.time_ns()}"
    storage = open_entry_storage(f"memory://{root}/store")
    operations = [lambda: storage.write_bytes(entry_id, name, b"no"),
                  lambda: storage.read_bytes(entry_id, name),
                  lambda: storage.exists(entry_id, name)]
    if name == "data.bin":  # these take the id alone
        operations += [lambda: storage.list_files(entry_id), lambda: storage.delete_entry(entry_id)]
    for operation in operations:
        with pytest.raises(ValueError):
            operation()
    with pytest.raises(ValueError):
        with storage.open_write(entry_id, name) as handle:
            handle.write(b"no")
    memory = fsspec.filesystem("memory")
    assert not [key for key in memory.store if key.lstrip("/").startswith(root)]
    assert storage.entry_ids() == []


@pytest.mark.parametrize("text, protocol, root", [
    ("app-data/store", "file", None),
    ("s3://bucket/some/prefix/", "s3", "bucket/some/prefix"),
    ("gs://bucket", "gs", "bucket"),
    ("memory://x/y", "memory", "x/y"),
    ("hf://datasets/me/my-store/links", "hf", "datasets/me/my-store/links"),
    ("hf://datasets/me/my-store", "hf", "datasets/me/my-store"),
])
def test_location_parsing(text, protocol, root):
    location = parse_storage_location(text)
    assert location.protocol == protocol
    if root is not None:
        assert location.root == root
    else:
        assert location.root.endswith("app-data/store") and location.root.startswith("/")
    if protocol == "hf":
        assert location.hf_repo_id == "me/my-store"
        assert location.hf_prefix == ("links" if text.endswith("links") else "")
    else:
        assert location.hf_repo_id is None and location.hf_prefix is None


def test_a_folder_opens_as_local_folder_storage(tmp_path):
    storage = open_entry_storage(tmp_path / "store")
    assert isinstance(storage, LocalFolderStorage) and storage.root == tmp_path / "store"
    assert (tmp_path / "store").is_dir()
    with pytest.raises(ValueError):
        FsspecEntryStorage(parse_storage_location(tmp_path / "store"))


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("ftp://host/x", "Unsupported"),
    ("s3://", "no bucket"),
    ("hf://models/me/model", "dataset"),
    ("hf://spaces/me/space", "dataset"),
    ("hf://datasets/only-user", "dataset"),
])
def test_bad_locations_are_refused_with_a_message(text, message):
    with pytest.raises(StorageConfigurationError, match=message):
        parse_storage_location(text)
    with pytest.raises(StorageConfigurationError, match=message):
        open_entry_storage(text)


def test_missing_optional_backend_names_the_package(monkeypatch):
    import fsspec

    def unavailable(protocol):
        raise ImportError(f"Install s3fs to access {protocol}")

    monkeypatch.setattr(fsspec, "get_filesystem_class", unavailable)
    with pytest.raises(StorageConfigurationError, match="s3fs.*requirements-storage.txt"):
        open_entry_storage("s3://bucket/prefix")
