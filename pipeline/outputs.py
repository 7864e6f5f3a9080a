"""The run's output folder: the files a run writes (the only ones it ever deletes or replaces: common/outdir.py's
contract), the claim on the folder, the probe that proves it writable, and the full-disk test of a failed run."""

from __future__ import annotations

import errno
import fnmatch
import uuid
from contextlib import AbstractContextManager

from apache_beam.io.filesystems import FileSystems

from common.errors import OutputError
from common.outdir import OutputDir, check_output_dir, claim_output_dir
from pipeline import shards
from pipeline.card.card import PLOTS

OUTPUT_SUBFOLDERS = ("data", "rejects", "failed")  # the shards pipeline.build writes
WORK = "_work"  # scratch folder inside the output dir, read by the driver and then removed
PARTS = "_parts"  # scratch folder inside the output dir: one sub-output per partition, removed after the merge
PLAN = "_plan"  # scratch folder inside the output dir: a budgeted run's dry-run preview
PENDING_DIR, BATCH_STATE_DIR = "batches/pending", "batches/state"
# Rewritten by every run; the journal and the batch state are kept.
OUTPUT_FOLDERS = (*OUTPUT_SUBFOLDERS, WORK, PARTS, PENDING_DIR)

COMMAND = "pipeline"  # the output-folder marker's name for this command
_WRITTEN = (
    *(f"{folder}/*-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].parquet" for folder in OUTPUT_SUBFOLDERS),
    "stats.json", "manifest.json", "README.md", *PLOTS.values(),
    "journal/journal-*.jsonl",  # the default --journal_dir
    f"{PENDING_DIR}/pending-*.jsonl", f"{BATCH_STATE_DIR}/*",
    f"{WORK}/*", f"{PARTS}/*", f"{PLAN}/*",
)
# Everything a run writes in its output folder, with the temporaries of shards.write_bytes and the write probe.
OWN_FILES = (*_WRITTEN, *(f"{p}.partial-*" for p in _WRITTEN), ".write-probe-*", "journal/.write-probe-*")
# A folder the pipeline wrote before output folders were marked: it holds a manifest or journal segments.
LEGACY = ("manifest.json", "journal/journal-*.jsonl")


def is_pipeline_output(relative: str) -> bool:
    """True for a path (relative to the output folder) that a run writes; a user's file beside them is not."""
    return any(fnmatch.fnmatchcase(relative, p) for p in _WRITTEN)


def claim(output_dir: str, overwrite: bool) -> AbstractContextManager[OutputDir]:
    """The run's hold on its output folder (common/outdir.py): empty, or the pipeline's own earlier output, or
    with --overwrite a folder of other files that are none of the run's names; locked while the run writes."""
    return claim_output_dir(output_dir, command=COMMAND, patterns=OWN_FILES, legacy=LEGACY, overwrite=overwrite)


def refuse_foreign(output_dir: str, overwrite: bool) -> None:
    """claim()'s refusal alone, writing nothing: before the plan's write probe creates anything in the folder."""
    check_output_dir(output_dir, command=COMMAND, patterns=OWN_FILES, legacy=LEGACY, overwrite=overwrite)


def clear_outputs(out: OutputDir) -> None:
    """Delete what the previous run wrote in the folders every run rewrites; other files there stay."""
    for folder in OUTPUT_FOLDERS:
        out.remove_own(folder)


def check_writable(*folders: str) -> None:
    """Write and delete a probe file in each output folder, so an unwritable one stops the run before work
    (an output error: exit status 3)."""
    for folder in folders:
        probe = FileSystems.join(folder, f".write-probe-{uuid.uuid4().hex}")
        try:
            shards.write_bytes(probe, b"")
            FileSystems.delete([probe])
        except Exception as e:  # noqa: BLE001 - any filesystem error means the same thing here
            raise OutputError(f"cannot write to {folder}: {e}; choose another --output_dir/--journal_dir "
                              "or fix its permissions") from e


def chain_says_disk_full(error: BaseException | None) -> bool:
    """True when an error or anything in its cause/context chain says a write found no space left (ENOSPC);
    runners may re-raise a worker's error as text, so the text counts too. (common.cli's run_cli looks at the
    error it is given only, and counts a full quota as well.)"""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error) or f"[Errno {errno.ENOSPC}]" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False
