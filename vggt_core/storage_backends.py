"""Where stored reconstructions live: a plain folder or any fsspec URL (S3, GCS, a Hub dataset).

The store (``vggt_core.store``) sees one small interface, :class:`BlobStorage`: whole objects
under ``/``-separated keys below one root, written, read, listed and deleted. Everything
backend-specific stays here:

- a **folder** writes each object to a temporary name, fsyncs and renames it, so a reader (or a
  crash) never sees half an object;
- **object stores** (``s3://`` through s3fs, ``gs://`` through gcsfs, ``memory://`` for tests)
  have no rename, but a single PUT is atomic: an object is either absent or complete;
- a **Hugging Face dataset** (``hf://datasets/<user>/<repo>/<prefix>``, through huggingface_hub's
  ``HfFileSystem``) writes a group of objects as one commit, which is atomic as a whole.

Listings are always fresh (fsspec caches directory listings per instance, and another server may
have changed the store since), because expiry on several servers at once relies on them.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["BlobStorage", "StorageLocation", "parse_storage_location", "open_blob_storage",
           "StorageConfigurationError"]

# Backends that need a package beyond requirements.txt: protocol -> (package, purpose).
logger = logging.getLogger(__name__)

_OPTIONAL_BACKENDS = {
    "s3": ("s3fs", "S3 and S3-compatible stores (AWS, MinIO, R2)"),
    "gs": ("gcsfs", "Google Cloud Storage"),
    "gcs": ("gcsfs", "Google Cloud Storage"),
}
SUPPORTED_PROTOCOLS = ("file", "memory", "s3", "gs", "gcs", "hf")
_HF_DATASET_PATTERN = re.compile(r"datasets/(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:/(?P<prefix>.*))?")


class StorageConfigurationError(ValueError):
    """The storage location cannot be used; ``str()`` says why and what to do."""


@dataclass(frozen=True)
class StorageLocation:
    """A parsed ``--storage`` value.

    Attributes:
        protocol: ``file``, ``memory``, ``s3``, ``gs``/``gcs`` or ``hf``.
        root: the path below which entries live, in the backend's own notation (an absolute
            folder for ``file``, ``bucket/prefix`` for object stores, ``datasets/<user>/<repo>/<prefix>``
            for ``hf``), without a trailing slash.
        url: the location as the user would write it again.
        hf_repo_id: ``<user>/<repo>`` for ``hf``, else None.
        hf_prefix: the folder inside that dataset repo (possibly ``""``), else None.
    """

    protocol: str
    root: str
    url: str
    hf_repo_id: str | None = None
    hf_prefix: str | None = None

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"


def parse_storage_location(text: str | os.PathLike) -> StorageLocation:
    """Turn a folder or an fsspec URL into a :class:`StorageLocation`.

    Raises:
        StorageConfigurationError: an empty value, an unknown protocol, a bucket-less object-store
            URL, or an ``hf://`` URL that is not a dataset repository.
    """
    value = os.fspath(text).strip()
    if not value:
        raise StorageConfigurationError("The storage location is empty: give a folder or a URL such as s3://bucket/prefix.")
    if "://" not in value:
        return StorageLocation("file", str(Path(value).expanduser().resolve()), value)
    protocol, rest = value.split("://", 1)
    protocol = protocol.lower()
    rest = rest.strip("/")
    if protocol not in SUPPORTED_PROTOCOLS:
        raise StorageConfigurationError(
            f"Unsupported storage URL {value!r}: use a folder, or one of "
            + ", ".join(f"{name}://" for name in SUPPORTED_PROTOCOLS if name != "gcs") + ".")
    if protocol == "file":
        return StorageLocation("file", str(Path("/" + rest).resolve()), value)
    if protocol == "hf":
        match = _HF_DATASET_PATTERN.fullmatch(rest)
        if match is None:
            raise StorageConfigurationError(
                f"{value!r} is not a Hugging Face dataset location: use hf://datasets/<user>/<repo>/<prefix> "
                "(a private dataset repository; models and Spaces cannot hold reconstructions).")
        prefix = (match.group("prefix") or "").strip("/")
        return StorageLocation("hf", rest, value, hf_repo_id=match.group("repo"), hf_prefix=prefix)
    if not rest:
        raise StorageConfigurationError(f"{value!r} names no bucket: use {protocol}://<bucket>/<prefix>.")
    return StorageLocation(protocol, rest, value)


def _import_filesystem_class(location: StorageLocation):
    import fsspec

    try:
        return fsspec.get_filesystem_class(location.protocol)
    except (ImportError, ValueError) as error:
        package, purpose = _OPTIONAL_BACKENDS.get(location.protocol, (location.protocol, location.protocol))
        raise StorageConfigurationError(
            f"{location.url} needs the optional package {package} ({purpose}): "
            f"pip install -r requirements-storage.txt") from error


class BlobStorage:
    """Whole objects under ``/``-separated keys below one root (see the module docstring).

    Keys are relative (``"<id>/manifest.json"``); the caller validates them, and this class
    refuses anything that would climb out of the root.
    """

    def __init__(self, location: StorageLocation, filesystem: Any = None):
        self.location = location
        if filesystem is None:
            filesystem_class = _import_filesystem_class(location)
            filesystem = filesystem_class()
        self.fs = filesystem
        if location.is_local:
            Path(location.root).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"BlobStorage({self.location.url!r})"

    # ---- paths

    def _path(self, key: str) -> str:
        parts = [part for part in key.split("/") if part]
        if not parts or any(part in (".", "..") for part in parts):
            raise ValueError(f"invalid storage key {key!r}")
        return posixpath.join(self.location.root, *parts)

    # ---- writing

    def write(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any previous object, all or nothing."""
        path = self._path(key)
        if self.location.is_local:
            _write_file_atomically(Path(path), data)
        elif self.location.protocol == "hf":
            self.write_group({key: data})
        else:
            self.fs.pipe_file(path, data)  # one PUT: atomic on object stores

    def write_group(self, objects: Mapping[str, bytes], *, message: str = "Store a reconstruction") -> None:
        """Write several objects, in the given order (so the last one can be a manifest).

        On a Hub dataset the group is one commit, so it appears all at once; elsewhere the objects
        appear one after another, each complete.
        """
        if self.location.protocol != "hf":
            for key, data in objects.items():
                self.write(key, data)
            return
        from huggingface_hub import CommitOperationAdd

        operations = [CommitOperationAdd(path_in_repo=self._repo_path(key), path_or_fileobj=bytes(data))
                      for key, data in objects.items()]
        self._hf_api().create_commit(repo_id=self.location.hf_repo_id, repo_type="dataset",
                                     operations=operations, commit_message=message)
        self.fs.invalidate_cache()

    # ---- reading

    def read(self, key: str) -> bytes:
        """The object's bytes. Raises FileNotFoundError when it does not exist; other OSErrors
        (a transient network or disk error) propagate unchanged, so no caller mistakes them for
        "gone"."""
        path = self._path(key)
        if self.location.is_local:
            return Path(path).read_bytes()
        self._invalidate(path)  # another server may have added or deleted it since we listed
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            raise
        except KeyError as error:  # some fsspec backends (memory) raise KeyError for a missing key
            raise FileNotFoundError(key) from error
        except OSError as error:
            if _is_hf_entry_not_found(error):  # deleted between listing and download
                raise FileNotFoundError(key) from error
            raise

    def exists(self, key: str) -> bool:
        path = self._path(key)
        if self.location.is_local:
            return Path(path).is_file()
        self._invalidate(path)
        try:  # not fs.exists(): fsspec's turns every error (auth, outage) into False
            return self.fs.info(path).get("type") != "directory"
        except FileNotFoundError:
            return False

    # ---- listing (only the store's housekeeping lists; nothing lists entries to users)

    def list_folders(self) -> list[str]:
        """Names of the folders directly below the root (the store's entries)."""
        if self.location.is_local:
            root = Path(self.location.root)
            return sorted(child.name for child in root.iterdir() if child.is_dir())
        self._invalidate(self.location.root)
        try:
            listing = self.fs.ls(self.location.root, detail=True)
        except FileNotFoundError:
            return []
        names = []
        for item in listing:
            if item.get("type") == "directory":
                names.append(posixpath.basename(item["name"].rstrip("/")))
        return sorted(names)

    def list_files(self, folder: str) -> dict[str, tuple[int, float | None]]:
        """Every object below ``folder``: key relative to the root → (bytes, modified time or None)."""
        base = self._path(folder)
        result: dict[str, tuple[int, float | None]] = {}
        if self.location.is_local:
            for path in Path(base).rglob("*"):
                try:
                    if path.is_file():
                        status = path.stat()
                        result[path.relative_to(self.location.root).as_posix()] = (status.st_size, status.st_mtime)
                except OSError:  # deleted meanwhile
                    continue
            return result
        self._invalidate(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return result
        root = self.location.root.strip("/") + "/"
        for name, info in found.items():
            name = name.strip("/")
            if info.get("type") == "directory" or not name.startswith(root):
                continue
            result[name[len(root):]] = (int(info.get("size") or 0), _modified_time(info))
        return result

    # ---- deleting

    def delete(self, key: str) -> None:
        """Remove one object; a missing one is fine (several servers may expire the same entry)."""
        path = self._path(key)
        if self.location.is_local:
            try:
                Path(path).unlink()
            except FileNotFoundError:
                pass
            return
        if self.location.protocol == "hf":
            self.delete_group([key])
            return
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        self._invalidate(path)

    def delete_group(self, keys: Iterable[str]) -> None:
        """Remove several objects (one commit on a Hub dataset); missing ones are fine."""
        keys = list(keys)
        if self.location.protocol != "hf":
            for key in keys:
                self.delete(key)
            return
        from huggingface_hub import CommitOperationDelete

        existing = [key for key in keys if self.exists(key)]
        if not existing:
            return
        operations = [CommitOperationDelete(path_in_repo=self._repo_path(key)) for key in existing]
        try:
            self._hf_api().create_commit(repo_id=self.location.hf_repo_id, repo_type="dataset",
                                         operations=operations, commit_message="Expire a reconstruction")
        except Exception as error:  # another server deleted them first
            if any(self.exists(key) for key in existing):
                raise OSError(f"could not delete {len(existing)} object(s) from {self.location.url}") from error
        self.fs.invalidate_cache()

    def delete_folder(self, folder: str) -> None:
        """Remove a folder and everything below it; idempotent."""
        keys = list(self.list_files(folder))
        if self.location.is_local:
            import shutil

            shutil.rmtree(self._path(folder), ignore_errors=True)
            return
        self.delete_group(keys)

    # ---- helpers

    def _invalidate(self, path: str) -> None:
        invalidate = getattr(self.fs, "invalidate_cache", None)
        if invalidate is not None:
            invalidate(path)

    def _repo_path(self, key: str) -> str:
        return posixpath.join(self.location.hf_prefix or "", *[p for p in key.split("/") if p])

    def _hf_api(self):
        from huggingface_hub import HfApi

        endpoint = getattr(self.fs, "endpoint", None)
        token = getattr(self.fs, "token", None)
        return HfApi(endpoint=endpoint, token=token)


def open_blob_storage(text: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None) -> BlobStorage:
    """:class:`BlobStorage` for a folder or URL. Credentials come from each backend's usual
    environment (AWS_* variables and ~/.aws for s3fs, Google's application-default credentials for
    gcsfs, HF_TOKEN for the Hub); ``storage_options`` are passed to the fsspec filesystem."""
    location = parse_storage_location(text)
    if location.is_local:
        return BlobStorage(location)
    filesystem_class = _import_filesystem_class(location)
    options = dict(storage_options or {})
    if location.protocol == "s3" and "endpoint_url" not in options and os.environ.get("AWS_ENDPOINT_URL"):
        # botocore reads AWS_ENDPOINT_URL itself from 1.31 on; passing it also covers older ones.
        options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    if location.protocol == "hf" and os.environ.get("HF_ENDPOINT") and "endpoint" not in options:
        options["endpoint"] = os.environ["HF_ENDPOINT"]
    # A fresh instance per store: fsspec's instance cache would share listing caches between
    # stores that must see each other's changes.
    options.setdefault("skip_instance_cache", True)
    storage = BlobStorage(location, filesystem_class(**options))
    if location.protocol == "hf":
        _check_dataset_is_visible(storage)
    return storage


def _check_dataset_is_visible(storage: BlobStorage) -> None:
    """A private dataset that the token cannot see answers exactly like an empty one, so without
    this check a server missing its HF_TOKEN would report every share link as expired."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    advice = ("create it as a private dataset repository and set HF_TOKEN to a token with write access "
              "to it")
    try:
        storage._hf_api().repo_info(storage.location.hf_repo_id, repo_type="dataset")
    except RepositoryNotFoundError as error:
        raise StorageConfigurationError(
            f"The dataset {storage.location.hf_repo_id} was not found, or the token cannot see it: "
            f"{advice}.") from error
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise StorageConfigurationError(
                f"The Hub refused the token for {storage.location.hf_repo_id} ({status}): {advice}.") from error
        # Anything else (the Hub briefly unreachable) must not keep the server from starting:
        # every later operation reports its own error.
        logger.warning("could not check the dataset %s: %s", storage.location.hf_repo_id, error)


def _is_hf_entry_not_found(error: BaseException) -> bool:
    try:
        from huggingface_hub.utils import EntryNotFoundError
    except ImportError:
        return False
    return isinstance(error, EntryNotFoundError)


def _write_file_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            temporary.unlink()
        except OSError:
            pass
        raise


def _modified_time(info: Mapping[str, Any]) -> float | None:
    for field in ("mtime", "LastModified", "last_modified", "created", "updated", "timeCreated"):
        value = info.get(field)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None

