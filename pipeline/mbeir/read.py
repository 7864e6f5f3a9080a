"""Whole-file readers over FileSystems (local or gs://): query files, pools, instructions, qrels."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator

from apache_beam.io.filesystems import CompressionTypes, FileSystems

from pipeline.mbeir.instructions import Instructions
from pipeline.mbeir.layout import DATASET_IDS, INSTRUCTIONS
from pipeline.mbeir.lines import DEFAULT_MAX_LINE_BYTES, iter_lines
from pipeline.mbeir.parse import parse_candidate_line, parse_query_line
from pipeline.mbeir.qrels import parse_qrels
from pipeline.mbeir.records import CandidateRecord, QueryRecord, Reject

_STEM = re.compile(r"mbeir_([a-z0-9]+)_")


def dataset_of_file(rel_path: str) -> str:
    """The dataset stem in an M-BEIR file name ("query/val/mbeir_cirr_task7_val.jsonl" -> "cirr"); "" for
    union files, whose records take their dataset from the qid."""
    m = _STEM.search(rel_path.rsplit("/", 1)[-1])
    return m.group(1) if m and m.group(1) in DATASET_IDS else ""


def _open(root: str, rel_path: str):
    return FileSystems.open(FileSystems.join(root, rel_path), compression_type=CompressionTypes.AUTO)


def read_text(root: str, rel_path: str) -> str:
    with _open(root, rel_path) as f:
        return f.read().decode("utf-8-sig")


def iter_query_file(root: str, rel_path: str, dataset: str | None = None, lines: Collection[int] | None = None,
                    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[QueryRecord | Reject]:
    """Every non-blank line of a query file, parsed (only the line numbers in `lines` when given; the others
    are skipped unparsed); dataset defaults to the one in the file name."""
    dataset = dataset_of_file(rel_path) if dataset is None else dataset
    with _open(root, rel_path) as f:
        for number, raw, complete in iter_lines(f, max_line_bytes):
            if lines is None or number in lines:
                yield parse_query_line(raw, source_file=rel_path, line_number=number, dataset=dataset,
                                       complete=complete, max_line_bytes=max_line_bytes)


def select_queries(root: str, rel_path: str, tasks: Collection[int] | None = None, limit: int | None = None,
                   max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[QueryRecord | Reject]:
    """The inputs of a run in one query file: its first `limit` lines (all when None), leaving out valid
    queries of tasks outside `tasks`. A bad line is an input (it becomes a reject)."""
    taken = 0
    for parsed in iter_query_file(root, rel_path, max_line_bytes=max_line_bytes):
        if limit is not None and taken >= limit:
            break
        if isinstance(parsed, QueryRecord) and tasks is not None and parsed.task_id not in tasks:
            continue  # outside the selection: not an input of this run
        taken += 1
        yield parsed


def iter_candidate_file(root: str, rel_path: str,
                        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[CandidateRecord | Reject]:
    with _open(root, rel_path) as f:
        for number, raw, complete in iter_lines(f, max_line_bytes):
            yield parse_candidate_line(raw, source_file=rel_path, line_number=number, complete=complete,
                                       max_line_bytes=max_line_bytes)


def read_instructions(root: str) -> Instructions:
    """The instructions TSV, parsed and checked; ValueError naming the file and line of a bad row."""
    path = FileSystems.join(root, INSTRUCTIONS)
    try:
        return Instructions.parse(read_text(root, INSTRUCTIONS))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 (byte {e.start})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def read_qrels(root: str, rel_path: str) -> dict[str, set[str]]:
    return parse_qrels(read_text(root, rel_path))
