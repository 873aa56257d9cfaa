"""Where stored reconstructions live: a plain folder or any fsspec URL (S3, GCS, a Hub dataset).

The store (``vggt_app.store.entries``) sees one small interface, :class:`vggt_app.store.storage.EntryStorage`:
the named files of one entry, written whole, read, listed and deleted. :func:`open_entry_storage`
picks the implementation from the ``--storage`` value:

- a **folder**: :class:`vggt_app.store.storage.LocalFolderStorage` (temporary file, fsync, rename);
- **object stores** (``s3://`` through s3fs, ``gs://`` through gcsfs, ``memory://`` for tests)
  have no rename, but a single PUT is atomic: an object is either absent or complete;
- a **Hugging Face dataset** (``hf://datasets/<user>/<repo>/<prefix>``, through huggingface_hub's
  ``HfFileSystem``): each write is one commit, which is atomic.

Listings are always fresh (fsspec caches directory listings per instance, and another server may
have changed the store since), because expiry on several servers at once relies on them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from .storage import EntryFile, LocalFolderStorage

__all__ = ["FsspecEntryStorage", "StorageLocation", "parse_storage_location", "open_entry_storage",
           "StorageConfigurationError"]

# The store's manifest, deleted first when an entry expires.
_MANIFEST_NAME = "metadata.json"
_SPOOL_BYTES = 64 * 2 ** 20

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


def _as_os_errors(method):
    """Report a back end's own exception types (httpx's when the Hub is unreachable, say) as
    OSError, which the store treats as transient: never as "gone", never as a crash."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (OSError, ValueError):
            raise
        except Exception as error:  # noqa: BLE001
            raise OSError(f"{type(error).__name__}: {error}") from error
    return wrapper


class FsspecEntryStorage:
    """The store's entries (see :class:`vggt_app.store.storage.EntryStorage`) on an fsspec filesystem:
    object ``<root>/<entry id>/<name>`` for each file.

    Every write is one whole object (a PUT, or one Hub commit), so readers see an object either
    complete or not at all; there is no rename on object stores, which is why the store writes
    its manifest last and trusts only entries that have one.
    """

    def __init__(self, location: StorageLocation, filesystem: Any = None):
        if location.is_local:
            raise ValueError("use vggt_app.store.storage.LocalFolderStorage for folders")
        self.location = location
        self.fs = filesystem if filesystem is not None else _import_filesystem_class(location)()

    def __repr__(self) -> str:
        return f"FsspecEntryStorage({self.location.url!r})"

    # ---- paths

    def _path(self, entry_id: str, name: str | None = None) -> str:
        if "/" in entry_id:  # one path component, or it could climb out of the root
            raise ValueError(f"invalid entry id {entry_id!r}")
        parts = [entry_id] + (name.split("/") if name is not None else [])
        if any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid storage key {entry_id!r}/{name!r}")
        return posixpath.join(self.location.root, *parts)

    def _repo_path(self, entry_id: str, name: str) -> str:
        return posixpath.join(self.location.hf_prefix or "", entry_id, *[p for p in name.split("/") if p])

    # ---- writing

    @_as_os_errors
    def write_bytes(self, entry_id: str, name: str, data: bytes) -> None:
        """Create or replace one object, all or nothing."""
        path = self._path(entry_id, name)
        if self.location.protocol == "hf":
            from huggingface_hub import CommitOperationAdd

            self._commit([CommitOperationAdd(path_in_repo=self._repo_path(entry_id, name),
                                             path_or_fileobj=bytes(data))], "Store a reconstruction")
            return
        self.fs.pipe_file(path, bytes(data))  # one PUT: atomic on object stores

    @contextlib.contextmanager
    def open_write(self, entry_id: str, name: str) -> Iterator[BinaryIO]:
        """A spooled buffer (in memory up to 64 MB, then a temporary file) uploaded as one object
        when the block ends without error; nothing is written if it raises."""
        self._path(entry_id, name)  # refuse a bad key before the caller does the work
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as buffer:
            yield buffer
            buffer.seek(0)
            self.write_bytes(entry_id, name, buffer.read())

    # ---- reading

    @_as_os_errors
    def read_bytes(self, entry_id: str, name: str) -> bytes:
        """The object's bytes. FileNotFoundError when it does not exist; any other OSError (a
        network or permission error) propagates, so it is never mistaken for "gone"."""
        path = self._path(entry_id, name)
        self._invalidate(path)  # another server may have added or deleted it since we listed
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            raise
        except KeyError as error:  # fsspec's memory filesystem raises KeyError for a missing key
            raise FileNotFoundError(path) from error
        except OSError as error:
            if _is_hf_entry_not_found(error):  # deleted between listing and download
                raise FileNotFoundError(path) from error
            raise

    @_as_os_errors
    def exists(self, entry_id: str, name: str) -> bool:
        path = self._path(entry_id, name)
        self._invalidate(path)
        try:  # not fs.exists(): fsspec's turns every error (auth, outage) into False
            return self.fs.info(path).get("type") != "directory"
        except FileNotFoundError:
            return False

    def local_path(self, entry_id: str, name: str) -> None:
        return None  # nothing on the local disk: downloads copy the bytes

    # ---- listing (only the store's housekeeping lists; nothing lists entries to users)

    @_as_os_errors
    def entry_ids(self) -> list[str]:
        """Names of the folders directly below the root (the store's entries)."""
        self._invalidate(self.location.root)
        try:
            listing = self.fs.ls(self.location.root, detail=True)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(item["name"].rstrip("/")) for item in listing
                      if item.get("type") == "directory")

    @_as_os_errors
    def list_files(self, entry_id: str) -> dict[str, EntryFile]:
        """Every object of the entry: name → size and modification time; empty if it has none."""
        base = self._path(entry_id)
        self._invalidate(base)
        files: dict[str, EntryFile] = {}
        folders = [base]
        while folders:  # an entry is at most two levels deep (attachments/)
            folder = folders.pop()
            try:
                listing = self.fs.ls(folder, detail=True, **self._listing_options())
            except FileNotFoundError:
                continue
            for item in listing:
                name = item["name"].strip("/")
                if item.get("type") == "directory":
                    folders.append(name)
                    continue
                relative = posixpath.relpath("/" + name, "/" + base.strip("/"))
                if relative.startswith(".."):
                    continue
                files[relative] = EntryFile(int(item.get("size") or 0), _modified_time(item) or 0.0)
        return files

    # ---- deleting

    @_as_os_errors
    def delete_entry(self, entry_id: str) -> None:
        """Remove the entry, its manifest first (so a half-deleted entry is invisible, like a
        half-written one); idempotent, since several servers may expire the same entry at once."""
        names = sorted(self.list_files(entry_id), key=lambda name: name != _MANIFEST_NAME)
        if not names:
            return
        if self.location.protocol == "hf":
            from huggingface_hub import CommitOperationDelete

            operations = [CommitOperationDelete(path_in_repo=self._repo_path(entry_id, name)) for name in names]
            try:
                self._commit(operations, "Expire a reconstruction")
            except OSError:
                if self.list_files(entry_id):  # not merely deleted by another server first
                    raise
            return
        for name in names:
            try:
                self.fs.rm_file(self._path(entry_id, name))
            except FileNotFoundError:
                pass
        self._invalidate(self._path(entry_id))

    @_as_os_errors
    def compact_history(self) -> None:
        """Erase deleted entries from the store's history too. A Hub dataset keeps every
        commit, so a file deleted by a commit stays downloadable from an older revision: this
        squashes the branch to one commit (``super_squash_history``). Other back ends keep no
        history (an S3 bucket with versioning on is the operator's choice; see the README)."""
        if self.location.protocol != "hf":
            return
        from huggingface_hub import HfApi

        api = HfApi(endpoint=getattr(self.fs, "endpoint", None), token=getattr(self.fs, "token", None))
        api.super_squash_history(self.location.hf_repo_id, repo_type="dataset",
                                 commit_message="Erase expired reconstructions from the history")
        self.fs.invalidate_cache()

    # ---- helpers

    def _listing_options(self) -> dict[str, Any]:
        # The Hub's tree listing gives modification times (of the last commit) only when asked.
        return {"refresh": True, "expand_info": True} if self.location.protocol == "hf" else {}

    def _invalidate(self, path: str) -> None:
        invalidate = getattr(self.fs, "invalidate_cache", None)
        if invalidate is not None:
            invalidate(path)

    def _commit(self, operations: list, message: str) -> None:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=getattr(self.fs, "endpoint", None), token=getattr(self.fs, "token", None))
        api.create_commit(repo_id=self.location.hf_repo_id, repo_type="dataset", operations=operations,
                          commit_message=message)
        self.fs.invalidate_cache()


def open_entry_storage(text: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None,
                       cache_folder: str | os.PathLike | None = None, cache_max_bytes: int = 0,
                       allow_public: bool = False):
    """The store's storage for a folder or URL: a :class:`~vggt_app.store.storage.LocalFolderStorage`,
    or a :class:`FsspecEntryStorage`, behind a
    :class:`~vggt_app.store.local_cache.CachedEntryStorage` of ``cache_max_bytes`` in
    ``cache_folder`` when both are given (a folder needs no cache). Credentials come from each backend's usual
    environment (AWS_* variables and ~/.aws for s3fs, Google's application-default credentials for
    gcsfs, HF_TOKEN for the Hub); ``storage_options`` are passed to the fsspec filesystem.

    Raises:
        StorageConfigurationError: a Hub dataset that the token cannot see, or one that is public
            (entries hold the users' photos) unless ``allow_public``.
    """
    location = parse_storage_location(text)
    if location.is_local:
        return LocalFolderStorage(location.root)
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
    storage = FsspecEntryStorage(location, filesystem_class(**options))
    if location.protocol == "hf":
        _check_dataset_is_visible(storage, allow_public)
    if cache_folder is not None and cache_max_bytes > 0:
        from .local_cache import CachedEntryStorage

        return CachedEntryStorage(storage, cache_folder, max_bytes=cache_max_bytes)
    return storage


def _check_dataset_is_visible(storage: FsspecEntryStorage, allow_public: bool = False) -> None:
    """A private dataset that the token cannot see answers exactly like an empty one, so without
    this check a server missing its HF_TOKEN would report every share link as expired. A public
    one would show everyone the users' photos and list every share id: refused unless
    ``allow_public``."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    advice = ("create it as a private dataset repository and set HF_TOKEN to a token with write access "
              "to it")
    try:
        info = HfApi(endpoint=getattr(storage.fs, "endpoint", None), token=getattr(storage.fs, "token", None)).repo_info(
            storage.location.hf_repo_id, repo_type="dataset")
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
    except Exception as error:  # noqa: BLE001  (no network: httpx's errors are not OSErrors)
        logger.warning("could not reach the Hub to check the dataset %s: %s", storage.location.hf_repo_id, error)
    else:
        if getattr(info, "private", None) is False:
            if not allow_public:
                raise StorageConfigurationError(
                    f"The dataset {storage.location.hf_repo_id} is public: anyone could download the users' "
                    "photos and list every share link. Make it private in its settings on the Hub, or start "
                    "with --allow-public-store to accept that.")
            logger.warning("the dataset %s is PUBLIC (--allow-public-store): everyone can read the stored "
                           "photos and list the share ids", storage.location.hf_repo_id)


def _is_hf_entry_not_found(error: BaseException) -> bool:
    try:
        from huggingface_hub.utils import EntryNotFoundError
    except ImportError:
        return False
    return isinstance(error, EntryNotFoundError)


def _modified_time(info: Mapping[str, Any]) -> float | None:
    last_commit = info.get("last_commit")  # the Hub: the date of the commit that last changed it
    if last_commit is not None:
        date = last_commit.get("date") if isinstance(last_commit, Mapping) else getattr(last_commit, "date", None)
        if date is not None:
            info = {"date": date}
    for field in ("mtime", "LastModified", "last_modified", "created", "updated", "timeCreated", "date"):
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

