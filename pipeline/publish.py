"""Publish an output folder to the Hugging Face Hub as a dataset repo, in ONE commit (or one pull request).

    HF_TOKEN=... python -m pipeline.publish --repo user/m-beir-cot --output_dir out/m-beir-cot [--create_pr]

Uploads data/, README.md, plots/, stats.json, manifest.json (rejects/ and failed/ with --include_rejects).
Resumable: large files are uploaded first with `HfApi.preupload_lfs_files`; the Hub's LFS batch endpoint (or Xet's
deduplication, when hf_xet is installed) answers "already stored" for every blob a previous, interrupted run sent,
so a rerun sends only the missing blobs. Nothing is visible on the Hub until the single `create_commit` at the end.
Files of an older version that are not in this one (e.g. data/train-00003-of-00004.parquet) are deleted in that
same commit. Afterwards every manifest file is checked on the Hub (paths-info: LFS sha256 and size).

HF_TOKEN comes from the environment and is never printed; HF_ENDPOINT (read at call time) selects the Hub.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass

from apache_beam.io.filesystems import FileSystems

from pipeline import shards
from pipeline.mbeir.cli import CliParser, run_cli
from pipeline.mbeir.errors import ConfigError, OutputError, network_errors

PROG = "python -m pipeline.publish"
REPO_TYPE = "dataset"
ALWAYS = ("README.md", "stats.json", "manifest.json")
FOLDERS = ("data", "plots")
REJECT_FOLDERS = ("rejects", "failed")
# Folders this tool owns on the Hub: files there that the new version lacks are deleted in the same commit.
MANAGED = ("data/", "plots/", "rejects/", "failed/")


class PublishError(ConfigError):
    """A problem the user must fix before uploading (missing token, bad repo id, incomplete output folder)."""


@dataclass(frozen=True)
class PublishResult:
    commit_oid: str
    commit_url: str
    pr_url: str | None
    files: int
    deleted: int


def _list(output_dir: str, folder: str) -> list[str]:
    pattern = FileSystems.join(output_dir, folder, "**")
    found = FileSystems.match([pattern])[0].metadata_list
    return sorted(m.path for m in found)


def collect_files(output_dir: str, include_rejects: bool = False) -> dict[str, str]:
    """{path in repo: source path} for everything to upload; PublishError when data/ or manifest.json is missing."""
    files: dict[str, str] = {}
    if not FileSystems.exists(output_dir):
        raise PublishError(f"--output_dir {output_dir} does not exist: give the pipeline's output folder")
    for folder in FOLDERS + (REJECT_FOLDERS if include_rejects else ()):
        for path in _list(output_dir, folder):
            files[shards.relative_path(output_dir, path)] = path
    if not any(p.startswith("data/") and p.endswith(".parquet") for p in files):
        raise PublishError(f"{output_dir} has no data/*.parquet shards: run the pipeline first")
    for name in ALWAYS:
        path = FileSystems.join(output_dir, name)
        if FileSystems.exists(path):
            files[name] = path
        elif name == "manifest.json":
            raise PublishError(f"{output_dir} has no manifest.json: the pipeline did not finish")
    return dict(sorted(files.items()))


def _token() -> str:
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        raise PublishError("HF_TOKEN is not set: export a Hugging Face write token as HF_TOKEN")
    return token


def _source(path: str):
    """Local files are streamed from disk; remote ones (gs://...) are read into memory."""
    if FileSystems.get_scheme(path) is None:
        return path
    with FileSystems.open(path) as f:
        return f.read()


def _git_sha1(path: str) -> str:
    with FileSystems.open(path) as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def verify(api, repo_id: str, revision: str, output_dir: str, uploaded: dict[str, str]) -> None:
    """Every manifest file that was uploaded is on the Hub at `revision` with the manifest's sha256 and size."""
    manifest = shards.read_json(FileSystems.join(output_dir, "manifest.json"))
    expected = {f["path"]: f for f in manifest["files"] if f["path"] in uploaded}
    if not expected:
        return
    remote = {f.path: f for f in api.get_paths_info(repo_id, list(expected), revision=revision,
                                                    repo_type=REPO_TYPE)}
    problems = []
    for path, want in sorted(expected.items()):
        got = remote.get(path)
        if got is None:
            problems.append(f"{path}: missing on the Hub")
        elif got.lfs is not None:
            if (got.lfs.sha256, got.lfs.size) != (want["sha256"], want["bytes"]):
                problems.append(f"{path}: Hub has sha256 {got.lfs.sha256} ({got.lfs.size} bytes), "
                                f"manifest says {want['sha256']} ({want['bytes']} bytes)")
        elif got.blob_id != _git_sha1(uploaded[path]):
            problems.append(f"{path}: Hub content differs from the local file")
    if problems:
        raise OutputError("upload verification failed: " + "; ".join(problems) + "; rerun the same command")


def publish(output_dir: str, repo_id: str, *, revision: str = "main", create_pr: bool = False,
            private: bool = False, include_rejects: bool = False, commit_message: str | None = None,
            endpoint: str | None = None) -> PublishResult:
    """Upload output_dir to the dataset repo `repo_id` in one commit (or one PR) and verify it."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"--repo {repo_id!r}: expected a dataset repo id owner/name, e.g. user/m-beir-cot")
    token = _token()
    files = collect_files(output_dir, include_rejects)
    api = HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)

    additions = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=_source(src)) for p, src in files.items()]
    existing = api.list_repo_files(repo_id, repo_type=REPO_TYPE, revision=revision)
    deletions = [CommitOperationDelete(path_in_repo=p) for p in existing
                 if p.startswith(MANAGED) and p not in files]
    # Blobs first (resumable: the Hub skips blobs it already has), then one atomic commit.
    api.preupload_lfs_files(repo_id, additions=additions, repo_type=REPO_TYPE, revision=revision,
                            create_pr=create_pr)
    manifest = shards.read_json(files["manifest.json"])
    rows = manifest.get("rows", {}).get("data", 0)
    info = api.create_commit(
        repo_id, operations=[*deletions, *additions], repo_type=REPO_TYPE, revision=revision,
        create_pr=create_pr,
        commit_message=commit_message or f"Upload M-BEIR-CoT: {rows} rows in {len(files)} files",
        commit_description=f"Published by {manifest.get('created_by', 'mbeir-cot')} from {output_dir}.",
    )
    verify(api, repo_id, info.oid, output_dir, files)
    return PublishResult(info.oid, info.commit_url, info.pr_url, len(files), len(deletions))


def _main(argv: list[str]) -> int:
    parser = CliParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, help="dataset repo id, e.g. user/m-beir-cot")
    parser.add_argument("--output_dir", required=True, help="pipeline output folder (local or gs://...)")
    parser.add_argument("--revision", default="main", help="branch to commit to (or to open the PR against)")
    parser.add_argument("--create_pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--private", action="store_true", help="create the repo private if it does not exist")
    parser.add_argument("--include_rejects", action="store_true", help="also upload rejects/ and failed/")
    parser.add_argument("--commit_message", default=None)
    args = parser.parse_args(argv)
    from huggingface_hub.errors import HfHubHTTPError

    try:
        result = publish(args.output_dir, args.repo, revision=args.revision, create_pr=args.create_pr,
                         private=args.private, include_rejects=args.include_rejects,
                         commit_message=args.commit_message)
    except HfHubHTTPError as err:
        status = getattr(err.response, "status_code", None)
        if status in (401, 403):
            raise ConfigError(f"the Hub refused HF_TOKEN for {args.repo} (HTTP {status}): use a token with "
                              "write access to it") from err
        raise _upload_failed(err) from err
    except OutputError:
        raise
    except (OSError, RuntimeError, *network_errors()) as err:  # huggingface_hub wraps a failed upload in RuntimeError
        raise _upload_failed(err) from err
    where = f"pull request {result.pr_url}" if result.pr_url else f"commit {result.commit_url}"
    print(f"published {result.files} files ({result.deleted} stale deleted) to {args.repo} as {where}; "
          "manifest checksums verified")
    return 0


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _upload_failed(err: BaseException) -> OutputError:
    why = _first_line(err) + (f" ({_first_line(err.__cause__)})" if err.__cause__ else "")
    return OutputError(f"upload failed: {why}. Rerun the same command to resume: blobs already on the Hub "
                       "are not sent again")


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
