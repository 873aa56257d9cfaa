"""BlobStorage on a folder, fsspec's memory store and a real S3 server; location parsing."""

from __future__ import annotations

import pytest

from vggt_core.storage_backends import (StorageConfigurationError, open_blob_storage,
                                        parse_storage_location)

from storage_servers import s3_endpoint, storage_url  # noqa: F401  (fixtures)


def test_write_read_list_delete(storage_url):
    url, options = storage_url
    storage = open_blob_storage(url, storage_options=options)
    assert storage.list_folders() == []
    storage.write("abc/one.bin", b"1" * 10)
    storage.write_group({"abc/sub/two.bin": b"22", "abc/manifest.json": b"{}"})
    storage.write("xyz/one.bin", b"x")
    assert storage.read("abc/one.bin") == b"1" * 10
    assert storage.exists("abc/manifest.json") and not storage.exists("abc/missing")
    assert storage.list_folders() == ["abc", "xyz"]
    files = storage.list_files("abc")
    assert {key: size for key, (size, _) in files.items()} == {
        "abc/one.bin": 10, "abc/sub/two.bin": 2, "abc/manifest.json": 2}
    storage.write("abc/one.bin", b"replaced")
    assert storage.read("abc/one.bin") == b"replaced"
    with pytest.raises(FileNotFoundError):
        storage.read("abc/missing")

    # A second instance (another server) sees the same objects, and deleting is idempotent.
    other = open_blob_storage(url, storage_options=options)
    assert other.read("xyz/one.bin") == b"x"
    other.delete_folder("abc")
    storage.delete_folder("abc")
    storage.delete("abc/one.bin")
    assert storage.list_folders() == ["xyz"] and not storage.exists("abc/one.bin")


def test_keys_cannot_leave_the_root(tmp_path):
    storage = open_blob_storage(tmp_path / "root")
    for key in ("../escape", "a/../../b", "", "/"):
        with pytest.raises(ValueError):
            storage.write(key, b"no")
    assert not (tmp_path / "escape").exists()


def test_local_writes_leave_no_partial_files(tmp_path, monkeypatch):
    storage = open_blob_storage(tmp_path / "root")
    storage.write("entry/data.bin", b"old")

    def failing_fsync(_fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", failing_fsync)
    with pytest.raises(OSError):
        storage.write("entry/data.bin", b"new")
    assert storage.read("entry/data.bin") == b"old"
    assert sorted(p.name for p in (tmp_path / "root" / "entry").iterdir()) == ["data.bin"]


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


def test_missing_optional_backend_names_the_package(monkeypatch):
    import fsspec

    def unavailable(protocol):
        raise ImportError(f"Install s3fs to access {protocol}")

    monkeypatch.setattr(fsspec, "get_filesystem_class", unavailable)
    with pytest.raises(StorageConfigurationError, match="s3fs.*requirements-storage.txt"):
        open_blob_storage("s3://bucket/prefix")
