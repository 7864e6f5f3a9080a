"""qrels files: `{qid} 0 {did} 1 {task_id}` per positive (MBEIR.md); 4-column trec lines are tolerated."""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.mbeir.layout import is_mbeir_id


def _rows(text: str) -> Iterator[tuple[str, str, int | None]]:
    for number, line in enumerate(text.splitlines(), start=1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) not in (4, 5):
            raise ValueError(f"qrels line {number}: expected 5 columns 'qid 0 did 1 task_id', got {line!r}")
        if not (is_mbeir_id(cols[0]) and is_mbeir_id(cols[2])):
            raise ValueError(f"qrels line {number}: qid {cols[0]!r} or did {cols[2]!r} is not an M-BEIR id")
        if cols[3] == "0":  # a zero relevance grade is not a positive
            continue
        yield cols[0], cols[2], int(cols[4]) if len(cols) == 5 else None


def parse_qrels(text: str) -> dict[str, set[str]]:
    """qid -> set of positive dids."""
    out: dict[str, set[str]] = {}
    for qid, did, _ in _rows(text):
        out.setdefault(qid, set()).add(did)
    return out


def parse_qrels_with_tasks(text: str) -> dict[str, dict[str, int | None]]:
    """qid -> {did: task_id} (task_id None for 4-column lines)."""
    out: dict[str, dict[str, int | None]] = {}
    for qid, did, task in _rows(text):
        out.setdefault(qid, {})[did] = task
    return out
