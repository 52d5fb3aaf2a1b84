"""A small Hugging Face Hub look-alike for tests, served on 127.0.0.1.

It speaks the part of the Hub's HTTP protocol that ``huggingface_hub`` (2.x) uses to
download and publish model repositories, so tests go through the real
``hf_hub_download`` / ``HfApi.upload_folder`` / ``timm.create_model("hf-hub:...")`` code:

* ``HEAD``/``GET /{repo}/resolve/{revision}/{path}`` with ``X-Repo-Commit``, ``ETag``
  (git blob sha1 for small files, sha256 for LFS-style weight files, which also get
  ``X-Linked-Etag``/``X-Linked-Size``) and ``Content-Length``; ``Range`` on GET; Hub error
  codes (``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound``) on 404.
* ``POST /api/repos/create``, ``POST /api/validate-yaml``,
  ``POST /api/models/{repo}/preupload/{revision}`` (every file is answered ``regular``, so
  no LFS/Xet transfer is needed) and ``POST /api/models/{repo}/commit/{revision}`` (ndjson).
* ``GET /api/models/{repo}[/revision/{revision}]`` and ``GET /api/models/{repo}/tree/{revision}``.

The ``local_hub`` fixture starts one server per test, points ``huggingface_hub`` at it
(``HF_ENDPOINT`` plus the module constants read at import time), gives it a fresh
``HF_HOME``/``HF_HUB_CACHE`` and refuses every socket connection that is not to loopback.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

# Files stored "in LFS" on the real Hub: their ETag is the sha256 of the content.
LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".msgpack", ".onnx", ".npz")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, which the Hub uses as ETag for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    """One commit of a repository: a full snapshot of its files."""

    oid: str
    files: Dict[str, bytes]
    message: str
    parent: Optional[str]


@dataclass
class Repo:
    """A model repository: commits and branches."""

    repo_id: str
    commits: Dict[str, Commit] = field(default_factory=dict)
    branches: Dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Optional[Commit]:
        """The commit a branch name or a full commit id points at, or None."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        return self.commits.get(revision)


@dataclass
class Request:
    """What the server saw: method, path (unquoted) and headers."""

    method: str
    path: str
    headers: Dict[str, str]


class HubState:
    """Repositories and request log shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repos: Dict[str, Repo] = {}
        self.requests: List[Request] = []
        self.endpoint = ""

    def create_repo(self, repo_id: str) -> Repo:
        with self.lock:
            if repo_id not in self.repos:
                repo = Repo(repo_id)
                self.repos[repo_id] = repo
                self._commit(repo, "main", {}, "initial commit")
            return self.repos[repo_id]

    def commit(self, repo_id: str, revision: str, files: Dict[str, bytes], message: str,
               deleted: Tuple[str, ...] = ()) -> Commit:
        with self.lock:
            repo = self.repos[repo_id]
            return self._commit(repo, revision, files, message, deleted)

    def _commit(self, repo: Repo, branch: str, files: Dict[str, bytes], message: str,
                deleted: Tuple[str, ...] = ()) -> Commit:
        parent = repo.branches.get(branch)
        snapshot = dict(repo.commits[parent].files) if parent else {}
        for path in deleted:
            snapshot.pop(path, None)
            for p in [p for p in snapshot if p.startswith(path.rstrip("/") + "/")]:
                snapshot.pop(p)
        snapshot.update(files)
        digest = hashlib.sha1()
        digest.update((parent or "").encode() + message.encode() + str(time.time_ns()).encode())
        for path in sorted(snapshot):
            digest.update(path.encode() + b"\0" + git_blob_sha1(snapshot[path]).encode())
        commit = Commit(digest.hexdigest(), snapshot, message, parent)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    # --- plumbing -----------------------------------------------------------------
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence stderr logging
        pass

    @property
    def state(self) -> HubState:
        return self.server.state

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: Optional[Dict[str, str]] = None,
              content_type: str = "application/json", head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, payload: object, headers: Optional[Dict[str, str]] = None,
              head: bool = False) -> None:
        self._send(status, json.dumps(payload).encode(), headers, head=head)

    def _error(self, status: int, code: Optional[str], message: str,
               headers: Optional[Dict[str, str]] = None, head: bool = False) -> None:
        headers = dict(headers or {})
        if code:
            headers["X-Error-Code"] = code
        headers["X-Error-Message"] = message
        self._json(status, {"error": message}, headers, head=head)

    def _record(self) -> Tuple[str, Dict[str, List[str]]]:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        with self.state.lock:
            self.state.requests.append(Request(self.command, path, dict(self.headers.items())))
        return parts.path, parse_qs(parts.query)

    # --- routing ------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802
        raw_path, _ = self._record()
        self._resolve(raw_path, head=True)

    def do_GET(self) -> None:  # noqa: N802
        raw_path, query = self._record()
        if raw_path.startswith("/api/models/"):
            self._api_get(raw_path[len("/api/models/"):], query)
        elif raw_path.startswith("/api/"):
            self._error(404, None, f"Not implemented by the test Hub: GET {raw_path}")
        else:
            self._resolve(raw_path, head=False)

    def do_POST(self) -> None:  # noqa: N802
        raw_path, query = self._record()
        body = self._body()
        if raw_path == "/api/repos/create":
            self._create_repo(json.loads(body or b"{}"))
        elif raw_path == "/api/validate-yaml":
            self._validate_yaml(json.loads(body or b"{}"))
        elif raw_path.startswith("/api/models/") and "/preupload/" in raw_path:
            repo_part, revision = raw_path[len("/api/models/"):].split("/preupload/", 1)
            self._preupload(unquote(repo_part), unquote(revision), json.loads(body or b"{}"))
        elif raw_path.startswith("/api/models/") and "/commit/" in raw_path:
            repo_part, revision = raw_path[len("/api/models/"):].split("/commit/", 1)
            self._commit(unquote(repo_part), unquote(revision), body, query)
        else:
            self._error(404, None, f"Not implemented by the test Hub: POST {raw_path}")

    # --- downloads ----------------------------------------------------------------
    def _resolve(self, raw_path: str, head: bool) -> None:
        # /{org}/{name}/resolve/{revision}/{path...}; the revision may be %-quoted ("refs%2Fpr%2F1")
        segments = raw_path.lstrip("/").split("/")
        if len(segments) < 5 or segments[2] != "resolve" or segments[0] in ("datasets", "spaces"):
            self._error(404, None, f"Not found: {unquote(raw_path)}", head=head)
            return
        repo_id = unquote(segments[0]) + "/" + unquote(segments[1])
        revision = unquote(segments[3])
        filename = unquote("/".join(segments[4:]))
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found", head=head)
            return
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
            return
        data = commit.files.get(filename)
        if data is None:
            self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit.oid}, head=head)
            return
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if filename.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))})
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        status = 200
        rng = self.headers.get("Range")
        if rng and not head and rng.startswith("bytes="):
            start_s, _, end_s = rng[len("bytes="):].partition("-")
            start = int(start_s or 0)
            end = int(end_s) if end_s else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data = data[start:end + 1]
            status = 206
        if head:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
        else:
            self._send(status, data, headers, content_type="application/octet-stream")

    def _api_get(self, rest: str, query: Dict[str, List[str]]) -> None:
        segments = rest.split("/")
        if len(segments) < 2:
            self._error(404, None, "Not found")
            return
        repo_id = unquote(segments[0]) + "/" + unquote(segments[1])
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        tail = segments[2:]
        revision = "main"
        if tail and tail[0] in ("revision", "tree"):
            if len(tail) < 2:
                self._error(404, None, "Not found")
                return
            revision = unquote(tail[1])
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        if tail and tail[0] == "tree":
            prefix = unquote("/".join(tail[2:])).strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            self._json(200, self._tree(commit, prefix, recursive))
            return
        card = commit.files.get("README.md", b"").decode("utf-8", "replace")
        self._json(200, {
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "private": False,
            "disabled": False,
            "gated": False,
            "library_name": "timm",
            "tags": ["timm"],
            "cardData": _front_matter(card),
            "siblings": [{"rfilename": name} for name in sorted(commit.files)],
        })

    @staticmethod
    def _tree(commit: Commit, prefix: str, recursive: bool) -> List[dict]:
        entries: Dict[str, dict] = {}
        for name, data in sorted(commit.files.items()):
            if prefix and not name.startswith(prefix + "/"):
                continue
            rel = name[len(prefix) + 1:] if prefix else name
            if "/" in rel and not recursive:
                folder = (prefix + "/" if prefix else "") + rel.split("/")[0]
                entries.setdefault(folder, {"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
                continue
            entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": name}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries[name] = entry
        return list(entries.values())

    # --- uploads ------------------------------------------------------------------
    def _create_repo(self, payload: dict) -> None:
        name, org = payload.get("name"), payload.get("organization")
        if payload.get("type") not in (None, "model"):
            self._error(400, None, "The test Hub only hosts model repositories")
            return
        if not name or not org:
            self._error(400, None, "The test Hub needs an explicit '<organization>/<name>' repo id")
            return
        repo_id = f"{org}/{name}"
        url = f"{self.state.endpoint}/{repo_id}"
        if repo_id in self.state.repos:  # the Hub's 409 still carries the repo url
            self._json(409, {"error": "You already created this model repo", "url": url},
                       {"X-Error-Message": "You already created this model repo"})
            return
        self.state.create_repo(repo_id)
        self._json(200, {"url": url, "name": repo_id})

    def _validate_yaml(self, payload: dict) -> None:
        import yaml

        content = payload.get("content", "")
        try:
            _front_matter(content, strict=True)
        except (yaml.YAMLError, ValueError) as e:
            self._json(400, {"errors": [{"message": f"Invalid YAML metadata: {e}"}], "warnings": []},
                       {"X-Error-Message": "Invalid YAML metadata"})
            return
        self._json(200, {"errors": [], "warnings": []})

    def _preupload(self, repo_id: str, revision: str, payload: dict) -> None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        commit = repo.resolve(revision)
        files = []
        for item in payload.get("files", []):
            existing = commit.files.get(item["path"]) if commit else None
            files.append({
                "path": item["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_sha1(existing) if existing is not None else None,
            })
        self._json(200, {"files": files, "commitOid": commit.oid if commit else None})

    def _commit(self, repo_id: str, revision: str, body: bytes, query: Dict[str, List[str]]) -> None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        if query.get("create_pr"):
            self._error(400, None, "The test Hub does not support pull requests")
            return
        if revision not in repo.branches:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        header: dict = {}
        files: Dict[str, bytes] = {}
        deleted: List[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    self._error(400, None, f"Unsupported encoding {value.get('encoding')!r}")
                    return
                files[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                self._error(400, None, f"The test Hub does not support {key!r} commit operations")
                return
        parent = header.get("parentCommit")
        if parent and not repo.branches[revision].startswith(parent):
            self._error(412, None, "A commit has happened since. Please refresh and try again.")
            return
        commit = self.state.commit(repo_id, revision, files, header.get("summary", ""), tuple(deleted))
        self._json(200, {
            "commitUrl": f"{self.state.endpoint}/{repo_id}/commit/{commit.oid}",
            "commitOid": commit.oid,
            "success": True,
            "pullRequestUrl": None,
        })


def _front_matter(card: str, strict: bool = False) -> Optional[dict]:
    """The YAML front matter of a model card as a dict (None when there is none)."""
    import yaml

    if not card.startswith("---"):
        return None
    end = card.find("\n---", 3)
    if end < 0:
        if strict:
            raise ValueError("front matter is not closed by '---'")
        return None
    try:
        data = yaml.safe_load(card[3:end])
    except yaml.YAMLError:
        if strict:
            raise
        return None
    if data is not None and not isinstance(data, dict):
        if strict:
            raise ValueError("front matter must be a mapping")
        return None
    return data


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    state: HubState


class LocalHub:
    """A running test Hub. ``url`` is its endpoint; ``requests`` is everything it has seen."""

    def __init__(self) -> None:
        self.state = HubState()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self.state.endpoint = self.url
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)

    def start(self) -> "LocalHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; later requests get 'connection refused'."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    # --- seeding and inspection (server side, no HTTP) ----------------------------
    def add_files(self, repo_id: str, files: Dict[str, Union[bytes, str, Path]],
                  message: str = "add files", revision: str = "main") -> str:
        """Commit files straight into a repo (created when missing); returns the commit id."""
        self.state.create_repo(repo_id)
        contents = {}
        for name, value in files.items():
            if isinstance(value, Path):
                value = value.read_bytes()
            elif isinstance(value, str):
                value = value.encode()
            contents[name] = value
        return self.state.commit(repo_id, revision, contents, message).oid

    def add_folder(self, repo_id: str, folder: Union[str, Path], message: str = "add folder") -> str:
        """Commit every file of a local folder into a repo; returns the commit id."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.add_files(repo_id, files, message)

    def files(self, repo_id: str, revision: str = "main") -> Dict[str, bytes]:
        """The files of a repo at a revision."""
        commit = self.state.repos[repo_id].resolve(revision)
        assert commit is not None, f"{repo_id} has no revision {revision}"
        return dict(commit.files)

    def head_commit(self, repo_id: str, revision: str = "main") -> str:
        return self.state.repos[repo_id].branches[revision]

    def requests_for(self, method: str, path_contains: str = "") -> List[Request]:
        """Requests seen with this method whose path contains ``path_contains``."""
        with self.state.lock:
            return [r for r in self.state.requests if r.method == method and path_contains in r.path]

    def clear_log(self) -> None:
        with self.state.lock:
            self.state.requests.clear()

    @contextlib.contextmanager
    def offline(self) -> Iterator[None]:
        """``HF_HUB_OFFLINE=1`` for the duration (env var and the constant read at import time)."""
        from huggingface_hub import constants

        mp = pytest.MonkeyPatch()
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        try:
            yield
        finally:
            mp.undo()


def _is_loopback(address: object) -> bool:
    if not isinstance(address, tuple) or not address:
        return True  # AF_UNIX paths and the like never leave the machine
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NetworkBlockedError(ConnectionRefusedError):
    """Raised when a test tries to connect anywhere but loopback."""


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A fresh local Hub server, with huggingface_hub pointed at it and an empty cache.

    Every outgoing socket connection other than to loopback raises ``NetworkBlockedError``.
    """
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    hub = LocalHub().start()
    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                "HUGGINGFACE_CO_STAGING", "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TORCH_HOME": str(tmp_path / "torch_home"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # huggingface_hub reads these once, at import time.
    constant_values = {
        "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
    }
    for key, value in constant_values.items():
        monkeypatch.setattr(constants, key, value)
    # The module-level HfApi (huggingface_hub.model_info & co) captured the endpoint at import.
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)

    # Nothing leaves loopback: refuse every other connection at the socket level.
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded_connect(sock: socket.socket, address: object) -> None:
        if not _is_loopback(address):
            raise NetworkBlockedError(f"test network guard: refused connection to {address!r} (only loopback)")
        return real_connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: object) -> int:
        if not _is_loopback(address):
            raise NetworkBlockedError(f"test network guard: refused connection to {address!r} (only loopback)")
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)

    _http.close_session()  # drop pooled connections to any earlier server
    try:
        yield hub
    finally:
        _http.close_session()
        hub.stop()
