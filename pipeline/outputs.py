"""The run's output folder: the folders a run writes and rewrites, the probe that proves it writable, and the
full-disk test of a failed run."""

from __future__ import annotations

import errno
import uuid

from apache_beam.io.filesystems import FileSystems

from common.errors import OutputError
from pipeline import shards

OUTPUT_SUBFOLDERS = ("data", "rejects", "failed")  # the shards pipeline.build writes
WORK = "_work"  # scratch folder inside the output dir, read by the driver and then removed
PARTS = "_parts"  # scratch folder inside the output dir: one sub-output per partition, removed after the merge
PENDING_DIR, BATCH_STATE_DIR = "batches/pending", "batches/state"
# Rewritten by every run; the journal and the batch state are kept.
OUTPUT_FOLDERS = (*OUTPUT_SUBFOLDERS, WORK, PARTS, PENDING_DIR)


def clear_outputs(output_dir: str) -> None:
    """Delete what the previous run wrote."""
    for folder in OUTPUT_FOLDERS:
        shards.delete_tree(FileSystems.join(output_dir, folder))


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
