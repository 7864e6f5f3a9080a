"""Where the M-BEIR files come from: a local folder, any Beam FileSystems path (gs://...), or a Hugging Face
dataset repo (hf://TIGER-Lab/M-BEIR[@revision]) from which only the selected files are downloaded."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Sequence

from apache_beam.io.filesystems import FileSystems

from common.errors import ConfigError, network_errors
from pipeline.mbeir import layout

HF_SCHEME = "hf://"
DEFAULT_HF_REPO = "hf://TIGER-Lab/M-BEIR"


def validate_selection(split: str, datasets: Iterable[str] | None, tasks: Iterable[int] | None) -> None:
    """Raise ConfigError for an unknown split, dataset or task id, or a selection that matches nothing."""
    if split not in layout.SPLITS:
        raise ConfigError(f"unknown split {split!r} in --split; known: {', '.join(layout.SPLITS)}")
    known = ", ".join(layout.DATASET_IDS)
    for d in datasets or ():
        if d not in layout.DATASET_IDS:
            raise ConfigError(f"unknown dataset {d!r} in --datasets; known: {known}")
    for t in tasks or ():
        if t not in layout.TASKS:
            raise ConfigError(f"unknown task id {t!r} in --tasks; known: {', '.join(map(str, layout.TASKS))}")
    if not _pairs(split, datasets, tasks):
        raise ConfigError(f"--datasets {sorted(datasets or [])} with --tasks {sorted(tasks or [])} select nothing "
                          f"in split {split!r}; each dataset's tasks: {layout.DATASET_TASKS}")


def _pairs(split: str, datasets: Iterable[str] | None, tasks: Iterable[int] | None) -> list[tuple[str, int]]:
    ds, ts = set(datasets or layout.DATASET_IDS), set(tasks or layout.TASKS)
    pairs = ([(d, t) for d, tt in layout.DATASET_TASKS.items() for t in tt] if split == "train"
             else list(layout.TEST_PAIRS))
    return [(d, t) for d, t in pairs if d in ds and t in ts]


def selection_files(split: str, datasets: Iterable[str] | None = None, tasks: Iterable[int] | None = None, *,
                    global_pool: bool = False) -> list[str]:
    """Relative paths of everything a run over the selection reads (sorted, no duplicates).

    train: per-dataset query files and qrels, the union train pool. val/test: per-pair query files, qrels and
    local pools; val also the union val pool; test the 2.4 GB union test pool only when global_pool.
    Always the instructions TSV.
    """
    validate_selection(split, datasets, tasks)
    files = {layout.INSTRUCTIONS}
    for dataset, task in _pairs(split, datasets, tasks):
        if split == "train":
            files |= {layout.query_file(split, dataset), layout.qrels_file(split, dataset)}
        else:
            files |= {layout.query_file(split, dataset, task), layout.qrels_file(split, dataset, task),
                      layout.local_pool_file(dataset, task)}
    if split != "test" or global_pool:
        files.add(layout.union_pool_file(split))
    return sorted(files)


def _parse_hf(root: str) -> tuple[str, str | None]:
    repo = root[len(HF_SCHEME):].strip("/")
    repo, _, revision = repo.partition("@")
    if repo.count("/") != 1:
        raise ConfigError(f"--mbeir_root {root!r}: expected hf://owner/name (e.g. {DEFAULT_HF_REPO})")
    return repo, revision or None


def _download_hf(root: str, files: list[str], images: bool, cache_dir: str | None,
                 log: Callable[[str], None]) -> str:
    """Download `files` (and the image archive when asked) from the dataset repo; every way the Hub can fail
    (unreachable, no such repo or revision, a selected file absent) is a ConfigError naming the root."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = _parse_hf(root)
    endpoint = os.environ.get("HF_ENDPOINT")
    where = endpoint or "https://huggingface.co"
    try:
        info = HfApi(endpoint=endpoint).dataset_info(repo, revision=revision, files_metadata=images)
        present = {s.rfilename for s in info.siblings or []}
        missing = [f for f in files if f not in present]
        if missing:
            raise ConfigError(f"--mbeir_root {root} lacks {len(missing)} selected file(s): {_shown(missing)}; "
                              f"narrow --datasets/--tasks or choose another revision (hf://{repo}@REV)")
        patterns = list(files)
        if images:
            parts = [s for s in info.siblings or [] if fnmatch.fnmatch(s.rfilename, layout.IMAGE_ARCHIVE_PATTERN)]
            size = sum(s.size or 0 for s in parts)
            log(f"downloading the M-BEIR image archive from {repo}: {len(parts)} parts, {size / 1e9:.1f} GB")
            patterns.append(layout.IMAGE_ARCHIVE_PATTERN)
        local = snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=patterns,
                                  cache_dir=cache_dir, endpoint=endpoint)
    except RevisionNotFoundError as e:
        raise ConfigError(f"--mbeir_root {root}: the dataset repo {repo} has no revision {revision!r}") from e
    except RepositoryNotFoundError as e:
        raise ConfigError(f"--mbeir_root {root}: no dataset repo {repo} on {where} (or it is private and "
                          "HF_TOKEN has no access); check the name, e.g. " + DEFAULT_HF_REPO) from e
    except OfflineModeIsEnabled as e:
        raise ConfigError(f"--mbeir_root {root} needs the Hub but HF_HUB_OFFLINE is set: unset it, or download "
                          "the files and give the local folder") from e
    except (LocalEntryNotFoundError, *network_errors()) as e:
        raise ConfigError(f"--mbeir_root {root}: cannot reach the Hugging Face Hub at {where} ({_first_line(e)}); "
                          "check the network or HF_ENDPOINT, or download the files and give the local folder") from e
    except (EntryNotFoundError, HfHubHTTPError) as e:
        raise ConfigError(f"--mbeir_root {root}: the Hub answered {_first_line(e)}; rerun later, or download the "
                          "files and give the local folder") from e
    if images and not os.path.isdir(os.path.join(local, layout.IMAGE_DIR)):
        log(f"unpack the images before running (takes hours): cd {local} && "
            f"cat {layout.IMAGE_ARCHIVE_PATTERN} | tar -xzf -   (creates {layout.IMAGE_DIR}/)")
    return local


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _shown(paths: Sequence[str]) -> str:
    return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def resolve_root(root: str, files: Sequence[str], *, images: bool = False, cache_dir: str | None = None,
                 log: Callable[[str], None] = print) -> str:
    """A root every file in `files` can be read from: hf:// is downloaded (only `files`, plus the image
    archive when images=True) and its local folder returned; other roots are checked and returned as given."""
    if not root:
        raise ConfigError(f"--mbeir_root is empty: give a folder, gs://bucket/prefix or {DEFAULT_HF_REPO}")
    if root.startswith(HF_SCHEME):
        return _download_hf(root, list(files), images, cache_dir, log)
    if "://" not in root and not os.path.isdir(root):
        raise ConfigError(f"--mbeir_root {root} does not exist (expected the M-BEIR folder holding query/, "
                          f"cand_pool/, instructions/; or use {DEFAULT_HF_REPO}, or `python -m pipeline.sample "
                          f"--out DIR` for the sample)")
    missing = [f for f in files if not FileSystems.exists(FileSystems.join(root, f))]
    if missing:
        raise ConfigError(f"--mbeir_root {root} lacks {len(missing)} selected file(s): {_shown(missing)}; "
                          f"download them or narrow --datasets/--tasks")
    if images and not FileSystems.exists(FileSystems.join(root, layout.IMAGE_DIR)) and "://" not in root:
        log(f"{root}/{layout.IMAGE_DIR} is missing: queries with images will be rejected as missing_image")
    return root
