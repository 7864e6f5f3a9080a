"""Local runs in partitions, so peak memory does not grow with the input.

Beam's in-process runner keeps the whole input of every shuffle in memory (about 6 KB per query here), so a
local run over a million queries would need gigabytes. The driver therefore splits the queries of a local run
into partitions of about --partition_queries lines, runs the graph once per partition over the same journal
and merges the outputs. Dataflow shuffles outside its workers and always runs in one pass.

Every decision the graph makes across queries stays inside one partition:
- a query goes to the partition of its content key (dataset, task, text, image), the key DropDuplicateAnswers
  groups by, so near-duplicate answers to the same query still meet;
- a later line with an already seen qid (DropDuplicateQids' group) goes with the first line of that qid;
- a line that does not parse goes by its file and line number.
The pool is read by every partition; only the first reports pool rejects and pool counts, so they add up.
"""

from __future__ import annotations

import hashlib
import math
import re
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipeline import shards
from pipeline.mbeir.lines import DEFAULT_MAX_LINE_BYTES
from pipeline.mbeir.read import select_queries
from pipeline.mbeir.records import QueryRecord
from pipeline.outputs import OUTPUT_SUBFOLDERS, PARTS, WORK  # noqa: F401 - PARTS: named here before outputs.py
from validators.dedup import query_content_key

_SHARD = re.compile(r"/(?P<split>[^/]+)-\d{5}-of-\d{5}\.parquet$")


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")


def plan_partitions(root: str, files: Sequence[str], tasks: Sequence[int] | None, limit: int | None,
                    per_partition: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> list[dict[str, array]]:
    """Per partition: query file -> ascending line numbers of its inputs. One partition when the input has at
    most `per_partition` query lines. The count depends only on the input, so a rerun splits the same way."""
    wanted = set(tasks) if tasks else None
    per_file: list[tuple[str, array, array]] = []
    for rel in files:
        numbers, hashes = array("I"), array("Q")
        first_of_qid: dict[str, int] = {}
        for item in select_queries(root, rel, wanted, limit, max_line_bytes):
            if isinstance(item, QueryRecord):
                content = query_content_key(item.dataset, item.task_id, item.query_txt, item.query_img_path)
                h = first_of_qid.setdefault(item.qid, _hash(content))
            else:
                h = _hash(f"{rel}#{item.line_number}")
            numbers.append(item.line_number)
            hashes.append(h)
        per_file.append((rel, numbers, hashes))
    total = sum(len(numbers) for _, numbers, _ in per_file)
    count = max(1, math.ceil(total / per_partition)) if per_partition > 0 else 1
    parts: list[dict[str, array]] = [{} for _ in range(count)]
    for rel, numbers, hashes in per_file:
        for number, h in zip(numbers, hashes, strict=True):
            parts[h % count].setdefault(rel, array("I")).append(number)
    return parts


def merge_partitions(output_dir: str, part_dirs: Sequence[str], work: str, card_rows: int,
                     rank: Callable[[dict], Any]) -> None:
    """Move each partition's shards into output_dir under one numbering per folder (partition order, then
    shard order) and write the merged events, file list and card sample into `work`, as one pass would:
    the card keeps the `card_rows` rows of smallest `rank`, like the graph's Top.Of."""
    events: Counter = Counter()
    files: list[tuple[str, dict[str, Any]]] = []  # (partition dir, file entry with a path relative to it)
    sample: list[dict[str, Any]] = []
    for part in part_dirs:
        part_work = FileSystems.join(part, WORK)
        for category, dataset, code, n in shards.read_json(FileSystems.join(part_work, "events.json")):
            events[(category, dataset, code)] += n
        entries = [{**f, "path": shards.relative_path(part, f["path"])}
                   for f in shards.read_json(FileSystems.join(part_work, "files.json"))]
        files += [(part, f) for f in sorted(entries, key=lambda f: f["path"])]
        sample_path = FileSystems.join(part_work, "card_rows.json")
        if FileSystems.exists(sample_path):
            sample += shards.read_json(sample_path)
    moved = []
    for folder in OUTPUT_SUBFOLDERS:
        mine = [(part, f) for part, f in files if f["path"].startswith(folder + "/")]
        for index, (part, f) in enumerate(mine):
            split = _SHARD.search(f["path"]).group("split")
            target = FileSystems.join(output_dir, shards.shard_name(index, len(mine), split=split, folder=folder))
            shards.move(FileSystems.join(part, f["path"]), target)
            moved.append({**f, "path": target})
    shards.write_json(FileSystems.join(work, "events.json"), sorted([*k, n] for k, n in events.items()))
    shards.write_json(FileSystems.join(work, "files.json"), moved)
    if sample:
        shards.write_json(FileSystems.join(work, "card_rows.json"), sorted(sample, key=rank)[:card_rows])
