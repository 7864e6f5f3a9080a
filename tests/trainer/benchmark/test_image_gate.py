"""The evaluator opens query and pool images through the image gate: a hostile image is counted in its pair's or
pool's read stats under the gate's reason code (a missing one stays in missing_images), never decoded, never a
hang; the query or candidate keeps its text."""

from __future__ import annotations

import json
import os

from pipeline.mbeir.instructions import Instructions
from pipeline.mbeir.records import CandidateRecord
from tests.pipeline.mbeir.hostile_images import FOLDER, HOSTILE, hostile_root, no_hang
from trainer.benchmark.evalset import (
    EvalPair,
    ReadStats,
    candidate_input,
    iter_candidates,
    query_inputs,
    read_queries,
)

PAIR = EvalPair("cirr", 7)
NAMES = ["ok.jpg", "gone.jpg", *sorted(HOSTILE)]
WANT = {"rejected": {code: 1 for code in HOSTILE.values()}, "missing_images": 1, "empty_inputs": 0}


def _write(root: str, rel: str, lines: list[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    with open(os.path.join(root, rel), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)


def test_pool_images_are_counted_per_pool_by_code(tmp_path):
    root = hostile_root(tmp_path)
    _write(root, PAIR.pool_file, [{"did": f"8:{n}", "txt": "a shirt", "img_path": f"{FOLDER}/{name}",
                                   "modality": "image,text", "src_content": None} for n, name in enumerate(NAMES)])
    stats = ReadStats()
    inputs = no_hang(lambda: [candidate_input(root, rec, stats) for rec in iter_candidates(root, PAIR.pool_file,
                                                                                          stats)])
    assert [inp.image is not None for inp in inputs] == [True] + [False] * (len(NAMES) - 1)
    assert all(inp.text == "a shirt" for inp in inputs)
    assert stats.as_dict() == WANT


def test_query_images_are_counted_per_pair_by_code(tmp_path):
    root = hostile_root(tmp_path)
    _write(root, PAIR.query_file, [{"qid": f"8:{n}", "query_txt": "make it blue", "query_modality": "image,text",
                                    "query_img_path": f"{FOLDER}/{name}", "query_src_content": None,
                                    "pos_cand_list": ["8:1"], "neg_cand_list": [], "task_id": 7}
                                   for n, name in enumerate(NAMES)])
    instructions = Instructions.parse("q\tc\tname\tid\tp1\nimage,text\timage\tCIRR\t8\tFind the edited image.\n")
    stats = ReadStats()
    records = read_queries(root, PAIR, stats)
    inputs = no_hang(lambda: query_inputs(root, records, instructions, seed=0, stats=stats))
    assert [inp.image is not None for inp in inputs] == [True] + [False] * (len(NAMES) - 1)
    assert stats.as_dict() == WANT


def test_an_image_only_candidate_with_a_hostile_image_is_left_out_and_counted(tmp_path):
    root = hostile_root(tmp_path)
    stats = ReadStats()
    rec = CandidateRecord("8:9", None, f"{FOLDER}/fifo.jpg", "image")
    assert no_hang(lambda: candidate_input(root, rec, stats)) is None
    assert stats.as_dict() == {"rejected": {HOSTILE["fifo.jpg"]: 1}, "missing_images": 0, "empty_inputs": 1}
