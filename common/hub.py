"""Hugging Face Hub upload in ONE commit, resumable: the Beam-free core of the dataset upload (pipeline/publish.py)
and of the model release (trainer/release/), so the trainer can use it without Beam.

Large files are uploaded first with `HfApi.preupload_lfs_files`; the Hub's LFS batch endpoint (or Xet's
deduplication) answers "already stored" for every blob an interrupted run sent, so a rerun sends only the
missing blobs. Nothing is visible on the Hub until the single `create_commit`. HF_TOKEN is read from the
environment, registered with common.redact and never printed: error messages are redacted, and the commit and PR
URLs are shown without credentials (an HF_ENDPOINT may carry `user:password@`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from common.errors import ConfigError, OutputError, network_errors
from common.redact import display_url, redact, register_secret

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


class PublishError(ConfigError):
    """A problem the user must fix before uploading (missing token, bad repo id, incomplete folder): exit 2."""


@dataclass(frozen=True)
class PublishResult:
    commit_oid: str
    commit_url: str
    pr_url: str | None
    files: int
    deleted: int


def hub_token() -> str:
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        raise PublishError("HF_TOKEN is not set: export a Hugging Face write token as HF_TOKEN")
    register_secret(token)
    return token


def check_repo_id(repo_id: str, kind: str, example: str) -> str:
    if not REPO_ID.fullmatch(repo_id):
        raise PublishError(f"--repo {repo_id!r}: expected a {kind} repo id owner/name, e.g. {example}")
    return repo_id


@contextmanager
def upload_errors(repo_id: str) -> Iterator[None]:
    """A refused token is a configuration error (exit 2); any other failure of the upload is an output error
    (exit 3) saying that a rerun resumes."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status in (401, 403):
            raise ConfigError(f"the Hub refused HF_TOKEN for {repo_id} (HTTP {status}): use a token with "
                              "write access to it") from err
        raise _upload_failed(err) from err
    except (ConfigError, OutputError):
        raise
    except (OSError, RuntimeError, *network_errors()) as err:  # huggingface_hub wraps a failed upload in RuntimeError
        raise _upload_failed(err) from err


def _first_line(err: BaseException) -> str:
    return redact((str(err).strip().splitlines() or [type(err).__name__])[0])


def _upload_failed(err: BaseException) -> OutputError:
    why = _first_line(err) + (f" ({_first_line(err.__cause__)})" if err.__cause__ else "")
    return OutputError(f"upload failed: {why}. Rerun the same command to resume: blobs already on the Hub "
                       "are not sent again")


def hub_api(endpoint: str | None = None):
    """An HfApi with the token from HF_TOKEN; HF_ENDPOINT (read now) selects the Hub."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=hub_token())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table for a Hub card (the dataset card and the model card)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def commit_once(api, repo_id: str, repo_type: str, files: Mapping[str, str | bytes | BinaryIO], *,
                managed: Sequence[str] = (), revision: str = "main", create_pr: bool = False,
                commit_message: str, commit_description: str = "") -> PublishResult:
    """Upload `files` ({path in repo: local path or bytes}) in one commit (or one PR). Files already in the repo
    under a `managed` prefix that `files` lacks are deleted in that same commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    additions = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=src) for p, src in files.items()]
    existing = api.list_repo_files(repo_id, repo_type=repo_type, revision=revision)
    deletions = [CommitOperationDelete(path_in_repo=p) for p in existing
                 if p.startswith(tuple(managed)) and p not in files]
    # Blobs first (resumable: the Hub skips blobs it already has), then one atomic commit.
    api.preupload_lfs_files(repo_id, additions=additions, repo_type=repo_type, revision=revision,
                            create_pr=create_pr)
    info = api.create_commit(repo_id, operations=[*deletions, *additions], repo_type=repo_type, revision=revision,
                             create_pr=create_pr, commit_message=commit_message,
                             commit_description=commit_description)
    return PublishResult(info.oid, display_url(info.commit_url), display_url(info.pr_url), len(files), len(deletions))


def verify_files(api, repo_id: str, revision: str, repo_type: str, expected: Mapping[str, tuple[str, int]],
                 read: Callable[[str], bytes]) -> None:
    """Every path in `expected` ({path: (sha256, bytes)}) is on the Hub at `revision` with that content; an LFS
    file is checked by its sha256 and size, a regular one by its git blob id (`read(path)` gives the local bytes)."""
    if not expected:
        return
    remote = {f.path: f for f in api.get_paths_info(repo_id, list(expected), revision=revision,
                                                    repo_type=repo_type)}
    problems = []
    for path, (sha256, size) in sorted(expected.items()):
        got = remote.get(path)
        if got is None:
            problems.append(f"{path}: missing on the Hub")
        elif got.lfs is not None:
            if (got.lfs.sha256, got.lfs.size) != (sha256, size):
                problems.append(f"{path}: Hub has sha256 {got.lfs.sha256} ({got.lfs.size} bytes), "
                                f"expected {sha256} ({size} bytes)")
        elif got.blob_id != git_blob_sha1(read(path)):
            problems.append(f"{path}: Hub content differs from the local file")
    if problems:
        raise OutputError("upload verification failed: " + "; ".join(problems) + "; rerun the same command")
