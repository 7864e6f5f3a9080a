"""Local runs in partitions: the same rows, rejects, failures and counts as one pass, whatever the split."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pyarrow.parquet as pq

from pipeline.mbeir.read import select_queries
from pipeline.partition import plan_partitions
from tests.pipeline.conftest import read_json, run_pipeline

COCO = "query/train/mbeir_mscoco_train.jsonl"
CIRR = "query/train/mbeir_cirr_train.jsonl"


def _with_duplicates(sample_root: str, root: str) -> None:
    """The sample plus: a repeated qid whose copy has other content, a new qid repeating a CIR query's content
    (the teacher gives it the same answer: duplicate_answer), and two lines that do not parse."""
    shutil.copytree(sample_root, root)
    with open(os.path.join(root, COCO), encoding="utf-8") as f:
        coco = [json.loads(line) for line in f]
    with open(os.path.join(root, CIRR), encoding="utf-8") as f:
        cirr = [json.loads(line) for line in f]
    with open(os.path.join(root, COCO), "a", encoding="utf-8") as f:
        f.write(json.dumps({**coco[0], "query_txt": "another text under a seen qid"}) + "\n")
        f.write('{"qid": "9:7001", "query_txt": \n')
    with open(os.path.join(root, CIRR), "a", encoding="utf-8") as f:
        f.write(json.dumps({**cirr[3], "qid": "8:99001"}) + "\n")
        f.write("[1, 2]\n")


def _table(out: str, folder: str) -> list[str]:
    rows = []
    for path in glob.glob(os.path.join(out, folder, "*.parquet")):
        rows += [json.dumps(r, sort_keys=True, default=str) for r in pq.read_table(path).to_pylist()]
    return sorted(rows)


def test_partitions_keep_duplicate_groups_together(sample_root, tmp_path):
    root = str(tmp_path / "dup")
    _with_duplicates(sample_root, root)
    files = [COCO, CIRR]
    parts = plan_partitions(root, files, None, None, per_partition=9)
    assert len(parts) == 10  # 41 + 42 input lines, 9 per partition
    seen = sorted((rel, n) for part in parts for rel, lines in part.items() for n in lines)
    assert seen == sorted((rel, item.line_number) for rel in files for item in select_queries(root, rel))
    where = {(rel, n): i for i, part in enumerate(parts) for rel, lines in part.items() for n in lines}
    assert where[(COCO, 1)] == where[(COCO, 41)]  # the repeated qid goes with its first line
    assert where[(CIRR, 4)] == where[(CIRR, 41)]  # the same query content under a new qid: same partition
    assert plan_partitions(root, files, None, None, per_partition=9) == parts  # a rerun splits the same way
    assert len(plan_partitions(root, files, None, None, per_partition=0)) == 1
    limited = plan_partitions(root, files, [7], 5, per_partition=2)
    assert sorted(n for part in limited for n in part.get(CIRR, ())) == [1, 2, 3, 4, 5]
    # task 0 is outside --tasks 7; the line that does not parse is still an input (a reject)
    assert sorted(n for part in limited for n in part.get(COCO, ())) == [42]


def test_partitioned_run_equals_one_pass(sample_root, tmp_path, teacher):
    root = str(tmp_path / "dup")
    _with_duplicates(sample_root, root)
    outs = {}  # run() raises when the counts identity does not hold
    for name, size in (("one", "0"), ("parts", "9")):
        out = str(tmp_path / name)
        stats = run_pipeline(root, out, "--datasets", "mscoco,cirr", "--partition_queries", size,
                             teacher=teacher, limit=None)
        outs[name] = (out, stats)
    (one, one_stats), (parts, part_stats) = outs["one"], outs["parts"]
    assert part_stats["rejected"].get("duplicate_qid") == 1
    assert part_stats["rejected"].get("duplicate_answer") == 1
    for key in ("input", "routed", "accepted", "rejected", "failed", "per_dataset", "pool"):
        assert part_stats[key] == one_stats[key], key
    for folder in ("data", "rejects", "failed"):
        assert _table(parts, folder) == _table(one, folder), folder
    manifest = read_json(os.path.join(parts, "manifest.json"))
    names = sorted(f["path"] for f in manifest["files"] if f["path"].startswith("rejects/"))
    assert names == [f"rejects/rejects-{i:05d}-of-{len(names):05d}.parquet" for i in range(len(names))]
    assert manifest["rows"] == read_json(os.path.join(one, "manifest.json"))["rows"]
    assert manifest["partitions"] == 10 and read_json(os.path.join(one, "manifest.json"))["partitions"] == 1
    assert not os.path.exists(os.path.join(parts, "_parts"))
    assert _card(parts) == _card(one)  # same examples and figures; only file sizes and the command differ


def _card(out: str) -> list[str]:
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        return [line for line in f if not any(w in line for w in ("size", "bytes", "--partition_queries"))]
