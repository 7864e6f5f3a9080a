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

import sys

from apache_beam.io.filesystems import FileSystems

from common.cli import CliParser, run_cli
from common.hub import (
    PublishError,
    PublishResult,
    check_repo_id,
    commit_once,
    hub_api,
    upload_errors,
    verify_files,
)
from pipeline import shards
from pipeline.outputs import is_pipeline_output

__all__ = ["PublishError", "PublishResult", "collect_files", "publish", "verify"]
PROG = "python -m pipeline.publish"

REPO_TYPE = "dataset"
ALWAYS = ("README.md", "stats.json", "manifest.json")
FOLDERS = ("data", "plots")
REJECT_FOLDERS = ("rejects", "failed")
# Folders this tool owns on the Hub: files there that the new version lacks are deleted in the same commit.
MANAGED = ("data/", "plots/", "rejects/", "failed/")


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
            rel = shards.relative_path(output_dir, path)
            if is_pipeline_output(rel):  # a user's own file beside the shards stays private
                files[rel] = path
    if not any(p.startswith("data/") and p.endswith(".parquet") for p in files):
        raise PublishError(f"{output_dir} has no data/*.parquet shards: run the pipeline first")
    for name in ALWAYS:
        path = FileSystems.join(output_dir, name)
        if FileSystems.exists(path):
            files[name] = path
        elif name == "manifest.json":
            raise PublishError(f"{output_dir} has no manifest.json: the pipeline did not finish")
    return dict(sorted(files.items()))


def _source(path: str):
    """Local files are streamed from disk; remote ones (gs://...) are read into memory."""
    if FileSystems.get_scheme(path) is None:
        return path
    with FileSystems.open(path) as f:
        return f.read()


def _read(path: str) -> bytes:
    with FileSystems.open(path) as f:
        return f.read()


def verify(api, repo_id: str, revision: str, output_dir: str, uploaded: dict[str, str]) -> None:
    """Every manifest file that was uploaded is on the Hub at `revision` with the manifest's sha256 and size."""
    manifest = shards.read_json(FileSystems.join(output_dir, "manifest.json"))
    expected = {f["path"]: (f["sha256"], f["bytes"]) for f in manifest["files"] if f["path"] in uploaded}
    verify_files(api, repo_id, revision, REPO_TYPE, expected, lambda path: _read(uploaded[path]))


def publish(output_dir: str, repo_id: str, *, revision: str = "main", create_pr: bool = False,
            private: bool = False, include_rejects: bool = False, commit_message: str | None = None,
            endpoint: str | None = None) -> PublishResult:
    """Upload output_dir to the dataset repo `repo_id` in one commit (or one PR) and verify it."""
    check_repo_id(repo_id, "dataset", "user/m-beir-cot")
    api = hub_api(endpoint)
    files = collect_files(output_dir, include_rejects)
    api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    manifest = shards.read_json(files["manifest.json"])
    rows = manifest.get("rows", {}).get("data", 0)
    result = commit_once(
        api, repo_id, REPO_TYPE, {p: _source(src) for p, src in files.items()}, managed=MANAGED,
        revision=revision, create_pr=create_pr,
        commit_message=commit_message or f"Upload M-BEIR-CoT: {rows} rows in {len(files)} files",
        commit_description=f"Published by {manifest.get('created_by', 'mbeir-cot')} from {output_dir}.")
    verify(api, repo_id, result.commit_oid, output_dir, files)
    return result


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
    with upload_errors(args.repo):
        result = publish(args.output_dir, args.repo, revision=args.revision, create_pr=args.create_pr,
                         private=args.private, include_rejects=args.include_rejects,
                         commit_message=args.commit_message)
    where = f"pull request {result.pr_url}" if result.pr_url else f"commit {result.commit_url}"
    print(f"published {result.files} files ({result.deleted} stale deleted) to {args.repo} as {where}; "
          "manifest checksums verified")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
