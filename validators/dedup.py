"""Deduplication of (query, answer) pairs (PAPER.md §2 Phase 3: "normalise the answer (lower-case, strip
punctuation), drop near-duplicate (query, answer) pairs").

A near-duplicate is two rows of the same query whose answers are equal after `normalize_answer`. "The same
query" is whatever key the caller groups by; `query_content_key` is the recommended one: dataset, task and the
query's normalised text and image path, so that a query repeated under another qid (the upsampled union file,
identical CIRR/FashionIQ queries) and a re-generated response for the same qid both count. The grouping itself
happens in Beam (group by `dedup_key`); `pick_kept` decides within a group.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

DUPLICATE_REASON = "duplicate_answer"
_SPACE = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Lower-case, punctuation and symbols replaced by spaces (apostrophes dropped), whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text or "").lower().replace("'", "").replace("\u2019", "")
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return _SPACE.sub(" ", text).strip()


def query_content_key(dataset: str, task_id: int, query_txt: str | None, query_img_path: str | None) -> str:
    """The identity of a query by content: same dataset/task, same normalised text, same image."""
    return f"{dataset}|{task_id}|{normalize_answer(query_txt or '')}|{query_img_path or ''}"


def dedup_key(query_key: str, answer: str) -> str:
    """Group key: rows with equal keys are near-duplicates."""
    return hashlib.sha256(f"{query_key}\n{normalize_answer(answer)}".encode()).hexdigest()[:32]


def _order(row: dict) -> tuple:
    rid = row.get("id")
    rank = (0, rid, "") if isinstance(rid, int) and not isinstance(rid, bool) else (1, 0, str(rid))
    return (*rank, json.dumps(row, sort_keys=True, default=str))


def pick_kept(rows: list[dict]) -> tuple[dict, list[dict]]:
    """(the kept row, the dropped rows) of one duplicate group, independent of input order.

    The kept copy is the one with the smallest `id` (integers numerically, otherwise as strings; the whole row's
    canonical JSON breaks ties); each dropped row gets reason `duplicate_answer`."""
    if not rows:
        raise ValueError("pick_kept needs at least one row")
    ordered = sorted(rows, key=_order)
    return ordered[0], ordered[1:]
