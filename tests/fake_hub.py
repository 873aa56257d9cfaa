"""An in-memory Hugging Face Hub for the tests, served over real HTTP on 127.0.0.1.

huggingface_hub (``HfApi`` and ``HfFileSystem``) talks to it through its ``endpoint=`` option, so
the ``hf://datasets/<user>/<repo>/<prefix>`` storage back end is tested at the HTTP boundary,
without network. It implements only what that back end needs, for dataset repositories:

- ``GET  /api/datasets/{repo}`` and ``/api/datasets/{repo}/revision/{rev}``: repository info;
- ``GET  /api/datasets/{repo}/tree/{rev}[/{path}]`` (``recursive``, ``expand``, ``cursor``;
  pages linked by a ``Link: <...>; rel="next"`` header): listing;
- ``POST /api/datasets/{repo}/paths-info/{rev}`` (form: ``paths``, ``expand``): path infos;
- ``GET  /api/datasets/{repo}/commits/{rev}``: history, newest first;
- ``POST /api/datasets/{repo}/preupload/{rev}``: always answers the "regular" upload mode, so the
  client sends file contents inline in the commit (no LFS, no Xet);
- ``POST /api/datasets/{repo}/commit/{rev}`` (NDJSON: ``header``, ``file``, ``deletedFile``,
  ``deletedFolder`` lines): one atomic commit;
- ``GET|HEAD /datasets/{repo}/resolve/{rev}/{path}`` (``Range`` supported): file contents, with
  ``ETag`` (git blob id), ``X-Repo-Commit`` and ``Content-Length``.

Errors carry the ``X-Error-Code`` headers huggingface_hub maps to its exceptions (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``). Every request needs ``Authorization: Bearer <token>``
except reads of a public repository; a wrong token gets 401 "Invalid credentials", which
huggingface_hub raises as a plain ``HfHubHTTPError`` (not a "not found").

Each commit replaces the repository's whole file map at once, under one lock, so a reader sees all
of a commit's changes or none; ``main`` resolves to the newest commit, and every commit's sha
still resolves to its own snapshot.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import pytest

DEFAULT_TOKEN = "hf_test"


def git_blob_id(data: bytes) -> str:
    """The git object id of a file's content (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _hub_date(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Commit:
    """One commit: the full file map after it, and what it changed."""

    repo_id: str
    sha: str
    title: str
    date: datetime
    files: dict[str, bytes]
    added: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()


@dataclass
class FakeRepo:
    repo_id: str
    private: bool = True
    commits: list[Commit] = field(default_factory=list)  # oldest first; [0] is the initial commit

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def resolve_revision(self, revision: str) -> Commit | None:
        if revision == "main":
            return self.head
        if len(revision) >= 7:
            for commit in reversed(self.commits):
                if commit.sha.startswith(revision):
                    return commit
        return None


class HubError(Exception):
    """An HTTP error answer, with the headers huggingface_hub reads to pick its exception."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}


class FakeHub:
    """The fake Hub's state and its HTTP server. ``with FakeHub() as hub:`` serves it.

    Attributes:
        endpoint: ``http://127.0.0.1:<port>``, for ``HfApi(endpoint=...)``/``HfFileSystem``.
        token: the only accepted token.
        repos: repo id -> :class:`FakeRepo`.
        requests: ``(method, path)`` of every request received, path unquoted, without query.
        commits: every commit made through the API, oldest first (initial commits excluded;
            kept after a squash, which rewrites only the repository's own history).
        tree_page_size: entries per page of a tree listing (the Hub's: 1000, and 50 with
            ``expand``); lower it to test pagination.
        failure: when set, a :class:`HubError` that answers every request (an outage, a revoked
            token); use 4xx codes, as huggingface_hub retries 5xx ones for seconds.
    """

    def __init__(self, token: str = DEFAULT_TOKEN):
        self.token = token
        self.tree_page_size = 1000
        self.failure: HubError | None = None
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self.commits: list[Commit] = []
        self.squashes = 0  # super_squash_history calls
        self.lock = threading.Lock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self.endpoint = ""

    # ---- state, for tests to set up and assert on

    def create_dataset(self, repo_id: str, *, private: bool = True,
                       files: dict[str, bytes] | None = None) -> FakeRepo:
        """Add a dataset repository whose initial commit holds ``files``."""
        with self.lock:
            repo = FakeRepo(repo_id, private=private)
            repo.commits.append(self._new_commit(repo_id, "initial commit", dict(files or {}),
                                                 added=tuple(files or ())))
            self.repos[repo_id] = repo
            return repo

    @property
    def files(self) -> dict[str, dict[str, bytes]]:
        """repo id -> {path in repo: content} at ``main`` (a snapshot)."""
        with self.lock:
            return {repo_id: dict(repo.head.files) for repo_id, repo in self.repos.items()}

    def _new_commit(self, repo_id: str, title: str, files: dict[str, bytes], **changes) -> Commit:
        self._counter += 1
        sha = hashlib.sha1(f"{repo_id}\n{self._counter}\n{title}".encode()).hexdigest()
        return Commit(repo_id, sha, title, datetime.now(timezone.utc), files, **changes)

    # ---- serving

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(_HubRequestHandler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # huggingface_hub keeps connections alive in a shared pool: do not wait for them on close.
        self._server.block_on_close = False
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                         name="fake-hub", daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- the API (called by the request handler, with parsed arguments)

    def repo_for(self, repo_id: str, authorization: str | None, *, write: bool = False) -> FakeRepo:
        if authorization is not None and authorization != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        repo = self.repos.get(repo_id)
        if authorization is None and (repo is None or repo.private or write):
            # The Hub answers 401 and does not say whether a private repository exists.
            raise HubError(401, "Repository not found", "RepoNotFound")
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def commit_at(repo: FakeRepo, revision: str) -> Commit:
        commit = repo.resolve_revision(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def repo_info(self, repo: FakeRepo, revision: str, blobs: bool) -> dict:
        commit = self.commit_at(repo, revision)
        siblings = [{"rfilename": path} for path in sorted(commit.files)]
        if blobs:
            for sibling in siblings:
                data = commit.files[sibling["rfilename"]]
                sibling.update(size=len(data), blobId=git_blob_id(data))
        return {"_id": repo.repo_id, "id": repo.repo_id, "author": repo.repo_id.split("/")[0],
                "sha": commit.sha, "private": repo.private, "gated": False, "disabled": False,
                "createdAt": _hub_date(repo.commits[0].date), "lastModified": _hub_date(repo.head.date),
                "tags": [], "downloads": 0, "likes": 0, "siblings": siblings}

    def path_info(self, repo: FakeRepo, commit: Commit, path: str, expand: bool) -> dict | None:
        """The Hub's description of a file or folder at ``commit``; None if neither."""
        if path in commit.files:
            data = commit.files[path]
            info = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
        else:
            below = sorted(name for name in commit.files if name.startswith(path + "/"))
            if not below:
                return None
            tree_id = hashlib.sha1("".join(f"{name}\0{git_blob_id(commit.files[name])}\n"
                                           for name in below).encode()).hexdigest()
            info = {"type": "directory", "oid": tree_id, "size": 0, "path": path}
        if expand:
            last = self._last_commit_touching(repo, commit, path)
            info["lastCommit"] = {"id": last.sha, "title": last.title, "date": _hub_date(last.date)}
        return info

    @staticmethod
    def _last_commit_touching(repo: FakeRepo, commit: Commit, path: str) -> Commit:
        history = repo.commits[: repo.commits.index(commit) + 1]
        for candidate in reversed(history):
            if any(name == path or name.startswith(path + "/") for name in candidate.added + candidate.deleted):
                return candidate
        return history[0]

    def tree(self, repo: FakeRepo, commit: Commit, folder: str, recursive: bool, expand: bool) -> list[dict]:
        """Entries below ``folder`` (``""``: the root), folders included; sorted by path."""
        if folder:
            info = self.path_info(repo, commit, folder, expand=False)
            if info is None or info["type"] != "directory":
                raise HubError(404, f"{folder} does not exist on {commit.sha}", "EntryNotFound")
        prefix = folder + "/" if folder else ""
        paths = set()
        for name in commit.files:
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            for level in range(1, depth + 1):
                paths.add(prefix + "/".join(parts[:level]))
        return [self.path_info(repo, commit, path, expand) for path in sorted(paths)]

    def preupload(self, repo: FakeRepo, revision: str, payload: dict) -> dict:
        commit = self.commit_at(repo, revision)
        answers = []
        for item in payload.get("files", []):
            existing = commit.files.get(item["path"])
            answers.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                            "oid": git_blob_id(existing) if existing is not None else None})
        return {"files": answers, "commitOid": commit.sha}

    def commit(self, repo: FakeRepo, revision: str, lines: list[dict]) -> dict:
        """Apply one NDJSON commit, all or nothing."""
        if revision != "main":
            raise HubError(400, "the fake hub only commits to main")
        if not lines or lines[0].get("key") != "header" or not lines[0]["value"].get("summary"):
            raise HubError(400, "a commit starts with a header line with a summary")
        header = lines[0]["value"]
        with self.lock:
            parent = header.get("parentCommit")
            if parent is not None and not repo.head.sha.startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.head.files)
            added, deleted = [], []
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "").strip("/")
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, "the fake hub only accepts base64 file contents")
                    files[path] = base64.b64decode(value["content"])
                    added.append(path)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    deleted.append(path)
                elif key == "deletedFolder":
                    below = [name for name in files if name.startswith(path + "/")]
                    if not below:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for name in below:
                        del files[name]
                    deleted.extend(below)
                else:  # lfsFile and anything newer: this fake only does regular uploads
                    raise HubError(400, f"the fake hub does not support {key!r} commit lines")
            commit = self._new_commit(repo.repo_id, header["summary"], files,
                                      added=tuple(added), deleted=tuple(deleted))
            repo.commits.append(commit)
            self.commits.append(commit)
        return {"success": True, "commitOid": commit.sha, "pullRequestUrl": None, "hookOutput": "",
                "commitUrl": f"{self.endpoint}/datasets/{repo.repo_id}/commit/{commit.sha}"}

    def super_squash(self, repo: FakeRepo, branch: str, message: str | None) -> dict:
        """The branch becomes one commit holding its current files: older revisions, and the
        files only they held, are gone (the Hub's ``super_squash_history``)."""
        if branch != "main":
            raise HubError(404, f"Revision Not Found: {branch}", code="RevisionNotFound")
        with self.lock:
            files = dict(repo.head.files)
            squashed = self._new_commit(repo.repo_id, message or "Super-squash", files, added=tuple(files))
            repo.commits[:] = [squashed]
            self.squashes += 1
        return {}

    def history(self, repo: FakeRepo, revision: str) -> list[dict]:
        head = self.commit_at(repo, revision)
        history = repo.commits[: repo.commits.index(head) + 1]
        return [{"id": commit.sha, "title": commit.title, "message": "", "date": _hub_date(commit.date),
                 "authors": [{"user": repo.repo_id.split("/")[0]}]} for commit in reversed(history)]


class _HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client expects
    timeout = 10  # an idle kept-alive connection's thread ends after this
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    fake_hub: FakeHub

    def log_message(self, format, *args):  # quiet: the tests assert on `FakeHub.requests`
        pass

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    # ---- dispatch

    def _handle(self, method: str) -> None:
        hub = self.fake_hub
        url = urlsplit(self.path)
        # Segments are unquoted one by one: a revision or path segment may hold an encoded "/".
        segments = [unquote(segment) for segment in url.path.strip("/").split("/")]
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        body = self._read_body()
        with hub.lock:
            hub.requests.append((method, "/" + "/".join(segments)))
        try:
            if hub.failure is not None:
                raise hub.failure
            self._route(method, segments, query, body, url)
        except HubError as error:
            self._send_error(error)

    def _route(self, method: str, segments: list[str], query: dict, body: bytes, url) -> None:
        hub = self.fake_hub
        authorization = self.headers.get("Authorization")
        if segments[:2] == ["api", "datasets"] and len(segments) >= 4:
            repo_id, action, rest = "/".join(segments[2:4]), segments[4:5], segments[5:]
            revision = rest[0] if rest else "main"
            path = "/".join(rest[1:]).strip("/")
            write = method == "POST" and action in (["preupload"], ["commit"], ["super-squash"])
            repo = hub.repo_for(repo_id, authorization, write=write)
            if method == "GET" and (not action or action == ["revision"]):
                return self._send_json(hub.repo_info(repo, revision, _flag(query.get("blobs"))))
            if method == "GET" and action == ["tree"]:
                return self._send_tree(repo, revision, path, query, url)
            if method == "POST" and action == ["paths-info"]:
                form = parse_qs(body.decode())
                expand = _flag(form.get("expand", ["false"])[-1])
                commit = hub.commit_at(repo, revision)
                infos = [hub.path_info(repo, commit, p.strip("/"), expand) for p in form.get("paths", [])]
                return self._send_json([info for info in infos if info is not None])
            if method == "GET" and action == ["commits"]:
                return self._send_json(hub.history(repo, revision))
            if method == "POST" and action == ["preupload"]:
                self._refuse_pull_requests(query)
                return self._send_json(hub.preupload(repo, revision, json.loads(body)))
            if method == "POST" and action == ["super-squash"]:
                return self._send_json(hub.super_squash(repo, revision, json.loads(body or b"{}").get("message")))
            if method == "POST" and action == ["commit"]:
                self._refuse_pull_requests(query)
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                return self._send_json(hub.commit(repo, revision, lines))
        if method in ("GET", "HEAD") and segments[:1] == ["datasets"] and segments[3:4] == ["resolve"]:
            repo = hub.repo_for("/".join(segments[1:3]), authorization)
            return self._send_file(repo, segments[4], "/".join(segments[5:]))
        raise HubError(400, f"the fake hub does not implement {method} {url.path}")

    @staticmethod
    def _refuse_pull_requests(query: dict) -> None:
        if _flag(query.get("create_pr")):
            raise HubError(400, "the fake hub does not do pull requests")

    # ---- answers

    def _send_tree(self, repo: FakeRepo, revision: str, path: str, query: dict, url) -> None:
        hub = self.fake_hub
        expand = _flag(query.get("expand"))
        with hub.lock:
            entries = hub.tree(repo, hub.commit_at(repo, revision), path, _flag(query.get("recursive")), expand)
        page_size = min(hub.tree_page_size, 50) if expand else hub.tree_page_size
        start = int(query.get("cursor", 0))
        headers = {}
        if start + page_size < len(entries):
            next_query = urlencode({**query, "cursor": start + page_size})
            headers["Link"] = f'<{hub.endpoint}{url.path}?{next_query}>; rel="next"'
        self._send_json(entries[start:start + page_size], headers)

    def _send_file(self, repo: FakeRepo, revision: str, path: str) -> None:
        with self.fake_hub.lock:
            commit = self.fake_hub.commit_at(repo, revision)
        data = commit.files.get(path)
        if data is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        headers = {"ETag": f'"{git_blob_id(data)}"', "X-Repo-Commit": commit.sha,
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        status, body = 200, data
        requested = self.headers.get("Range")
        if requested:
            first, last = _parse_range(requested, len(data))
            if first >= len(data):
                raise HubError(416, "Requested range not satisfiable",
                               headers={"Content-Range": f"bytes */{len(data)}"})
            status, body = 206, data[first:last + 1]
            headers["Content-Range"] = f"bytes {first}-{first + len(body) - 1}/{len(data)}"
        self._send(status, body, headers)

    def _send_json(self, value, headers: dict | None = None) -> None:
        self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _send_error(self, error: HubError) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": error.message, **error.headers}
        if error.code:
            headers["X-Error-Code"] = error.code
        self._send(error.status, json.dumps({"error": error.message}).encode(), headers)

    def _send(self, status: int, body: bytes, headers: dict) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the headers of the GET one, no body
            self.wfile.write(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
                if size == 0:
                    return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


def _flag(value: str | None) -> bool:
    return str(value).lower() in ("1", "true")


def _parse_range(header: str, size: int) -> tuple[int, int]:
    """``bytes=first-last`` / ``bytes=first-`` / ``bytes=-suffix`` -> inclusive (first, last)."""
    first, _, last = header.removeprefix("bytes=").split(",")[0].strip().partition("-")
    if not first:
        return max(size - int(last), 0), size - 1
    return int(first), min(int(last), size - 1) if last else size - 1


# ---- pytest wiring

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def refuse_non_local_connections(monkeypatch) -> None:
    """Make any name lookup other than 127.0.0.1's fail, so a stray request to huggingface.co
    (telemetry, a default endpoint) fails the test instead of leaving the machine."""
    real_getaddrinfo = socket.getaddrinfo

    def local_getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL_HOSTS and not (isinstance(host, bytes) and host.decode() in LOCAL_HOSTS):
            raise OSError(f"tests may not reach {host!r}: only the fake hub on 127.0.0.1")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_getaddrinfo)


@pytest.fixture
def fake_hub(monkeypatch):
    """A running :class:`FakeHub` with one private dataset repository, ``me/store``.

    ``HF_ENDPOINT`` points at it (``open_blob_storage`` passes it on as ``endpoint``), telemetry
    is off, and connections to anything but 127.0.0.1 fail.
    """
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    refuse_non_local_connections(monkeypatch)
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        hub.create_dataset("me/store")
        yield hub


__all__ = ["FakeHub", "FakeRepo", "Commit", "HubError", "fake_hub", "git_blob_id",
           "refuse_non_local_connections", "DEFAULT_TOKEN"]
