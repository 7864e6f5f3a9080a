"""The trainer's readers of M-BEIR files and images take the pipeline's safety rules (issue 15): hostile lines
are counted as rejects, never raised; an image whose real path leaves the root is never opened."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from pipeline.mbeir import images, reasons
from pipeline.mbeir.records import CandidateRecord
from trainer.benchmark.evalset import EvalPair, ReadStats, candidate_input, iter_candidates, read_queries
from trainer.training.data import ImageLoader, RowDecoder


def _root(tmp_path) -> str:
    root = tmp_path / "root"
    (root / "mbeir_images" / "cirr_images").mkdir(parents=True)
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(outside)
    os.symlink(outside, root / "mbeir_images" / "cirr_images" / "out.jpg")
    return str(root)


def test_hostile_query_and_pool_lines_are_counted(tmp_path):
    root = _root(tmp_path)
    pair = EvalPair("cirr", 7)
    good = {"qid": "8:1", "query_txt": "make it blue", "query_img_path": "mbeir_images/cirr_images/out.jpg",
            "query_modality": "image,text", "query_src_content": None, "pos_cand_list": ["8:2"],
            "neg_cand_list": [], "task_id": 7}
    lines = [b"[" * 100_000, json.dumps(good).replace('"task_id": 7', '"task_id": NaN').encode(),
             b"x" * (2 << 20), json.dumps(good).encode()]
    for rel in (pair.query_file, pair.pool_file):
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(b"\n".join(lines) + b"\n")
    stats = ReadStats()
    assert [q.qid for q in read_queries(root, pair, stats)] == ["8:1"]
    assert stats.rejected == {"too_deeply_nested": 1, "invalid_json": 1, "line_too_long": 1}
    pool_stats = ReadStats()
    assert list(iter_candidates(root, pair.pool_file, pool_stats)) == []
    assert pool_stats.rejected["line_too_long"] == 1 and sum(pool_stats.rejected.values()) == 4


def test_an_image_linked_out_of_the_root_is_never_opened(tmp_path):
    root = _root(tmp_path)
    rel = "mbeir_images/cirr_images/out.jpg"
    stats = ReadStats()
    cand = CandidateRecord("8:2", "a blue shirt", rel, "image,text")
    assert candidate_input(root, cand, stats).image is None
    assert stats.rejected == {reasons.UNSAFE_IMAGE_PATH: 1} and stats.missing_images == 0
    with pytest.raises(images.UnsafeImagePath):
        ImageLoader(root)(None, rel)
    decode = RowDecoder(ImageLoader(root))
    row = {"target": "<|emb|>", "query_img_path": rel, "instruction": "Find it", "query_txt": "x",
           "dataset": "cirr", "task_id": 7, "pos_txt": "a shirt"}
    assert decode(row) is None and decode.skipped == {"unsafe_image_path": 1}
