"""A small Hugging Face Hub-compatible HTTP server for tests (no registry package offers an upload-capable one).

Serves what huggingface_hub (HfApi: create_repo, preupload_lfs_files, create_commit, list_repo_tree,
get_paths_info, list_repo_refs, list_repo_commits) and `datasets.load_dataset(repo)` need, with the classic
LFS protocol (set HF_HUB_DISABLE_XET=1 in clients). Repos live in memory, blobs in a temp dir.

    with HubServer(token="hf_test") as hub:
        hub.endpoint        # "http://127.0.0.1:PORT"
        hub.blob_puts       # LFS blobs received so far (a resumed upload must not re-send any)
        hub.fail_blob_puts_after = 2   # fault knob: every blob PUT after the 2nd fails (HTTP 507, not retried)

`HF_ENDPOINT` and `HF_HUB_DISABLE_XET` are read by huggingface_hub when it is imported. What works:
- in process (huggingface_hub only): `HfApi(endpoint=hub.endpoint)` plus
  `monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)` (checked at call time);
- `datasets.load_dataset(repo)` and CLIs: a subprocess with `env=hub.env(HF_TOKEN=...)`, which sets HF_ENDPOINT,
  HF_HUB_DISABLE_XET=1 and a private HF_HOME before anything is imported.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

USER = "tester"
LFS_SUFFIXES = (".parquet", ".png", ".jpg", ".jpeg", ".bin", ".safetensors", ".arrow")
EPOCH = "2026-01-01T00:00:00.000Z"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class Entry:
    sha256: str
    size: int
    lfs: bool

    def oid(self, blobs: dict[str, bytes] | None = None) -> str:
        if self.lfs:
            return git_blob_sha1(lfs_pointer(self.sha256, self.size))
        return git_blob_sha1(blobs[self.sha256]) if blobs is not None else self.sha256

    def info(self, path: str, oid: str) -> dict:
        out = {"type": "file", "path": path, "size": self.size, "oid": oid}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": self.size,
                          "pointerSize": len(lfs_pointer(self.sha256, self.size))}
        return out


@dataclass
class Commit:
    oid: str
    title: str
    message: str
    parent: str | None
    files: dict[str, Entry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # "main" or "refs/pr/1" -> commit oid
    prs: int = 0

    def resolve(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        return self.commits.get(revision)

    def history(self, oid: str) -> list[Commit]:
        out = []
        while oid:
            out.append(self.commits[oid])
            oid = self.commits[oid].parent
        return out


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


HUB_TOKEN = "hf_TestSecret_9f8e7d6c5b4a"  # a token no output, log or blob may ever contain


class HubServer:
    """Context manager running the test Hub on 127.0.0.1 with a free port."""

    def __init__(self, token: str = "hf_test_token"):
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blob_puts = 0  # LFS blobs stored
        self.uploaded: list[str] = []  # sha256 of each stored LFS blob, in order
        self.fail_blob_puts_after: int | None = None
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._dir = ""
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle
    def __enter__(self) -> HubServer:
        self._dir = tempfile.mkdtemp(prefix="hub-server-")
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a client subprocess pointed at this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=self.endpoint, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HOME=os.path.join(self._dir, "client-home"))
        env.update(extra)
        return env

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> list[Commit]:
        repo = self.repos[(repo_type, repo_id)]
        return repo.history(repo.resolve(revision).oid)

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        commit = self.repos[(repo_type, repo_id)].resolve(revision)
        return {p: self.blob(e.sha256) for p, e in commit.files.items()}

    # --- storage
    def blob(self, sha256: str) -> bytes:
        if sha256 in self._blobs:
            return self._blobs[sha256]
        with open(os.path.join(self._dir, sha256), "rb") as f:
            return f.read()

    def has_blob(self, sha256: str) -> bool:
        return sha256 in self._blobs or os.path.exists(os.path.join(self._dir, sha256))

    def store_lfs(self, sha256: str, data: bytes) -> None:
        with self._lock:
            if self.fail_blob_puts_after is not None and self.blob_puts >= self.fail_blob_puts_after:
                raise HubError(507, "injected fault: blob storage unavailable")
            if hashlib.sha256(data).hexdigest() != sha256:
                raise HubError(400, "sha256 mismatch")
            with open(os.path.join(self._dir, sha256), "wb") as f:
                f.write(data)
            self.blob_puts += 1
            self.uploaded.append(sha256)

    def new_commit(self, repo: Repo, ref: str, title: str, message: str, files: dict[str, Entry],
                   parent: str | None) -> Commit:
        oid = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        commit = Commit(oid, title, message, parent, files)
        repo.commits[oid] = commit
        repo.refs[ref] = oid
        return commit

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type, repo_id, private)
        attributes = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
        sha = hashlib.sha256(attributes).hexdigest()
        self._blobs[sha] = attributes
        self.new_commit(repo, "main", "initial commit", "", {".gitattributes": Entry(sha, len(attributes), False)},
                        None)
        self.repos[(repo_type, repo_id)] = repo
        return repo


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:  # quiet
        pass

    # --- plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.hub.requests.append((self.command, self.path, status))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.hub.token}"

    def _require_auth(self) -> None:
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _dispatch(self) -> None:
        body = self._body()  # always drain, even when the answer is an error
        try:
            self._route(urlsplit(self.path), body)
        except HubError as err:
            headers = {"X-Error-Message": str(err)}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json({"error": str(err)}, err.status, headers)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch

    # --- routing
    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authorized()):
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
        return commit

    def _route(self, url, body: bytes) -> None:
        path, query = url.path, parse_qs(url.query)
        repo_part = r"(?P<type>model|dataset|space)s/(?P<repo>[^/]+/[^/]+)"
        routes = [
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", lambda **_: self._json({"errors": [], "warnings": []})),
            ("GET", rf"/api/{repo_part}(?:/revision/(?P<rev>[^/]+))?", self._repo_info),
            ("POST", rf"/api/{repo_part}/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/api/{repo_part}/commit/(?P<rev>[^/]+)", self._create_commit),
            ("GET", rf"/api/{repo_part}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self._tree),
            ("POST", rf"/api/{repo_part}/paths-info/(?P<rev>[^/]+)", self._paths_info),
            ("GET", rf"/api/{repo_part}/refs", self._refs),
            ("GET", rf"/api/{repo_part}/commits/(?P<rev>[^/]+)", self._list_commits),
            ("POST", r"/(?:(?P<type>dataset|space)s/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch",
             self._lfs_batch),
            ("PUT", r"/lfs-upload/(?P<sha>[0-9a-f]{64})", self._lfs_put),
            ("GET|HEAD", r"/lfs-files/(?P<sha>[0-9a-f]{64})", self._lfs_file),
            ("GET|HEAD", r"/(?:(?P<type>dataset|space)s/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<sub>.+)",
             self._resolve),
        ]
        for methods, pattern, handler in routes:
            m = re.fullmatch(pattern, path)
            if m and self.command in methods.split("|"):
                args = {k: v for k, v in m.groupdict().items()}
                if "type" in args:
                    args["type"] = args["type"] or "model"
                handler(body=body, query=query, **args)
                return
        raise HubError(404, f"no route for {self.command} {path}")

    # --- API
    def _whoami(self, **_) -> None:
        self._require_auth()
        self._json({"type": "user", "name": USER, "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})

    def _create_repo(self, body: bytes, **_) -> None:
        self._require_auth()
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.endpoint}/{prefix}{repo_id}"
        with self.hub._lock:
            if (repo_type, repo_id) in self.hub.repos:
                self._json({"error": "You already created this repo", "url": url}, 409)
                return
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            self.hub.create_repo(repo_type, repo_id, private)
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _repo_info(self, type: str, repo: str, rev: str | None = None, **_) -> None:
        r = self._repo(type, repo)
        commit = self._commit(r, rev or "main")
        siblings = []
        for p, e in sorted(commit.files.items()):
            s = {"rfilename": p, "size": e.size, "blobId": e.oid(self.hub._blobs)}
            if e.lfs:
                s["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": len(lfs_pointer(e.sha256, e.size))}
            siblings.append(s)
        self._json({"_id": repo, "id": repo, "author": repo.split("/")[0], "sha": commit.oid,
                    "private": r.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                    "tags": [], "lastModified": EPOCH, "createdAt": EPOCH, "siblings": siblings})

    def _preupload(self, type: str, repo: str, rev: str, body: bytes, **_) -> None:
        self._require_auth()
        r = self._repo(type, repo)
        commit = r.resolve(rev)
        files = []
        for f in json.loads(body)["files"]:
            lfs = f["path"].lower().endswith(LFS_SUFFIXES)
            existing = commit.files.get(f["path"]) if commit else None
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": existing.oid(self.hub._blobs) if existing else None})
        self._json({"files": files})

    def _lfs_batch(self, type: str, repo: str, body: bytes, **_) -> None:
        self._require_auth()
        self._repo(type, repo)
        objects = []
        for obj in json.loads(body)["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.hub.has_blob(obj["oid"]):
                item["actions"] = {"upload": {"href": f"{self.hub.endpoint}/lfs-upload/{obj['oid']}"}}
            objects.append(item)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, sha: str, body: bytes, **_) -> None:
        self.hub.store_lfs(sha, body)
        self._send(200, b"", content_type="text/plain")

    def _create_commit(self, type: str, repo: str, rev: str, body: bytes, query: dict, **_) -> None:
        self._require_auth()
        r = self._repo(type, repo)
        base = self._commit(r, rev)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        if header.get("parentCommit") and header["parentCommit"] != base.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(base.files)
        for item in lines:
            key, v = item["key"], item["value"]
            if key == "file":
                data = base64.b64decode(v["content"])
                sha = hashlib.sha256(data).hexdigest()
                self.hub._blobs[sha] = data
                files[v["path"]] = Entry(sha, len(data), False)
            elif key == "lfsFile":
                if not self.hub.has_blob(v["oid"]):
                    raise HubError(400, f"LFS object {v['oid']} for {v['path']} was never uploaded")
                files[v["path"]] = Entry(v["oid"], int(v.get("size") or len(self.hub.blob(v["oid"]))), True)
            elif key == "deletedFile":
                files.pop(v["path"], None)
            elif key == "deletedFolder":
                prefix = v["path"].rstrip("/") + "/"
                files = {p: e for p, e in files.items() if not p.startswith(prefix)}
        prefix = "" if type == "model" else f"{type}s/"
        pr_url = None
        with self.hub._lock:
            if query.get("create_pr") == ["1"]:
                r.prs += 1
                ref = f"refs/pr/{r.prs}"
                pr_url = f"{self.hub.endpoint}/{prefix}{repo}/discussions/{r.prs}"
            else:
                ref = unquote(rev) if unquote(rev) in r.refs else "main"
            commit = self.hub.new_commit(r, ref, header.get("summary", ""), header.get("description", ""),
                                         files, base.oid)
        self._json({"commitUrl": f"{self.hub.endpoint}/{prefix}{repo}/commit/{commit.oid}",
                    "commitOid": commit.oid, "pullRequestUrl": pr_url, "success": True})

    def _entries(self, commit: Commit, sub: str, recursive: bool) -> list[dict]:
        sub = sub.strip("/")
        prefix = sub + "/" if sub else ""
        out, dirs = [], set()
        for p, e in sorted(commit.files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            parts = rest.split("/")
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                dirs.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                out.append(e.info(p, e.oid(self.hub._blobs)))
        out += [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0}
                for d in sorted(dirs)]
        return sorted(out, key=lambda x: x["path"])

    def _tree(self, type: str, repo: str, rev: str, query: dict, sub: str | None = None, **_) -> None:
        commit = self._commit(self._repo(type, repo), rev)
        sub = unquote(sub or "")
        if sub and sub not in commit.files and not any(p.startswith(sub.rstrip("/") + "/") for p in commit.files):
            raise HubError(404, f"{sub} does not exist on {unquote(rev)}", "EntryNotFound")
        recursive = query.get("recursive", ["False"])[0].lower() in ("1", "true")
        self._json(self._entries(commit, sub, recursive))

    def _paths_info(self, type: str, repo: str, rev: str, body: bytes, **_) -> None:
        commit = self._commit(self._repo(type, repo), rev)
        form = parse_qs(body.decode())
        paths = form.get("paths", []) or json.loads(body or b"{}").get("paths", [])
        out = []
        for p in paths:
            p = p.strip("/")
            if p in commit.files:
                out.append(commit.files[p].info(p, commit.files[p].oid(self.hub._blobs)))
            elif any(f.startswith(p + "/") for f in commit.files):
                out.append({"type": "directory", "path": p, "oid": hashlib.sha1(p.encode()).hexdigest()})
        self._json(out)

    def _refs(self, type: str, repo: str, query: dict, **_) -> None:
        r = self._repo(type, repo)

        def ref(name: str) -> dict:
            full = name if name.startswith("refs/") else f"refs/heads/{name}"
            return {"name": name, "ref": full, "targetCommit": r.refs[name]}

        out = {"branches": [ref(n) for n in r.refs if not n.startswith("refs/pr/")], "tags": [], "converts": []}
        if query.get("include_prs"):
            out["pullRequests"] = [ref(n) for n in r.refs if n.startswith("refs/pr/")]
        self._json(out)

    def _list_commits(self, type: str, repo: str, rev: str, **_) -> None:
        r = self._repo(type, repo)
        history = r.history(self._commit(r, rev).oid)
        self._json([{"id": c.oid, "title": c.title, "message": c.message, "authors": [{"user": USER}],
                     "date": EPOCH} for c in history])

    # --- file download
    def _serve_bytes(self, data: bytes, headers: dict[str, str]) -> None:
        headers = {**headers, "Accept-Ranges": "bytes"}
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if m and self.command == "GET":
            start = int(m.group(1)) if m.group(1) else max(0, len(data) - int(m.group(2)))
            end = int(m.group(2)) if m.group(1) and m.group(2) else len(data) - 1
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self._send(206, data[start:end + 1], headers, "application/octet-stream")
        else:
            self._send(200, data, headers, "application/octet-stream")

    def _resolve(self, type: str, repo: str, rev: str, sub: str, **_) -> None:
        r = self._repo(type, repo)
        commit = self._commit(r, rev)
        path = unquote(sub)
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.oid(self.hub._blobs)}"'}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size),
                            "Location": f"{self.hub.endpoint}/lfs-files/{entry.sha256}?commit={commit.oid}"})
            self._send(302, b"", headers, "text/plain")
            return
        self._serve_bytes(self.hub.blob(entry.sha256), headers)

    def _lfs_file(self, sha: str, query: dict, **_) -> None:
        if not self.hub.has_blob(sha):
            raise HubError(404, "no such object")
        headers = {"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"'}
        if query.get("commit"):
            headers["X-Repo-Commit"] = query["commit"][0]
        self._serve_bytes(self.hub.blob(sha), headers)


__all__ = ["HubServer", "git_blob_sha1"]
