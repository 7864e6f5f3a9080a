import hashlib
import json
import os
from collections import Counter

import pytest
from PIL import Image

from pipeline.mbeir import layout
from pipeline.mbeir.lines import iter_lines
from pipeline.mbeir.parse import parse_candidate_line, parse_query_line
from pipeline.mbeir.records import Reject
from pipeline.sample import generate
from pipeline.sample.generate import TRAIN_TASKS
from pipeline.sample.world import BACKGROUNDS, COLOURS


def _tree_digest(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _queries(root: str, rel: str, dataset: str):
    with open(os.path.join(root, rel), "rb") as f:
        return [parse_query_line(raw, source_file=rel, line_number=n, dataset=dataset, complete=c)
                for n, raw, c in iter_lines(f)]


def _pool(root: str, rel: str):
    with open(os.path.join(root, rel), "rb") as f:
        return [parse_candidate_line(raw, source_file=rel, line_number=n, complete=c) for n, raw, c in iter_lines(f)]


def _all_query_files():
    for dataset in TRAIN_TASKS:
        yield "train", dataset, None, layout.query_file("train", dataset)
    for split in ("val", "test"):
        for dataset, task in layout.TEST_PAIRS:
            yield split, dataset, task, layout.query_file(split, dataset, task)


def test_deterministic_byte_identical(tmp_path, sample_root):
    generate(str(tmp_path / "a"), seed=0)
    assert _tree_digest(str(tmp_path / "a")) == _tree_digest(sample_root)
    generate(str(tmp_path / "b"), seed=1)
    assert _tree_digest(str(tmp_path / "b")) != _tree_digest(sample_root)


def test_every_file_parses_and_positives_exist(sample_root):
    union = {s: {c.did: c for c in _pool(sample_root, layout.union_pool_file(s))} for s in layout.SPLITS}
    for pool in union.values():
        assert not [c for c in pool.values() if isinstance(c, Reject)]
    cross = 0
    for split, dataset, task, rel in _all_query_files():
        queries = _queries(sample_root, rel, dataset)
        assert queries and not [q for q in queries if isinstance(q, Reject)], rel
        assert len({q.qid for q in queries}) == len(queries)
        local = {c.did for c in _pool(sample_root, layout.local_pool_file(dataset, task))} if task is not None else {}
        for q in queries:
            assert q.dataset_id == layout.DATASET_IDS[dataset]
            assert set(q.pos_cand_list) | set(q.neg_cand_list) <= set(union[split]), q
            assert q.task_id in TRAIN_TASKS[dataset]
            for did in q.pos_cand_list:
                assert union[split][did].modality == layout.TASKS[q.task_id][1]
            if task is not None:
                assert q.pos_cand_list[0] in local
                cross += any(did not in local for did in q.pos_cand_list)
    assert cross > 0  # some OVEN/InfoSeek positives point at the other dataset's pages


def test_train_task_mix_and_negatives(sample_root):
    for dataset, tasks in TRAIN_TASKS.items():
        queries = _queries(sample_root, layout.query_file("train", dataset), dataset)
        assert set(Counter(q.task_id for q in queries)) == set(tasks)
        assert 30 <= len(queries) <= 60
    cirr = _queries(sample_root, layout.query_file("train", "cirr"), "cirr")
    assert any(q.neg_cand_list for q in cirr)


def test_qrels_agree_with_pos_cand_list(sample_root):
    for split, dataset, task, rel in _all_query_files():
        expected = {(q.qid, did, q.task_id) for q in _queries(sample_root, rel, dataset) for did in q.pos_cand_list}
        with open(os.path.join(sample_root, layout.qrels_file(split, dataset, task))) as f:
            rows = [line.split() for line in f]
        assert all(len(r) == 5 and r[1] == "0" and r[3] == "1" for r in rows)
        assert {(r[0], r[2], int(r[4])) for r in rows} == expected


def test_union_test_pool_is_sorted_union_of_local_pools(sample_root):
    union = _pool(sample_root, layout.UNION_TEST_POOL)
    local = [c for d, t in layout.TEST_PAIRS for c in _pool(sample_root, layout.local_pool_file(d, t))]
    assert [c.did for c in union] == sorted({c.did for c in local}, key=layout.did_to_int)
    for d, t in layout.TEST_PAIRS:
        assert 50 <= len(_pool(sample_root, layout.local_pool_file(d, t))) <= 150


def test_images_decode_and_match_text(sample_root):
    pool = _pool(sample_root, layout.local_pool_file("mscoco", 0))
    paths = {c.img_path for c in pool}
    for _split, dataset, _task, rel in _all_query_files():
        paths |= {q.query_img_path for q in _queries(sample_root, rel, dataset) if q.query_img_path}
    infoseek = _queries(sample_root, layout.query_file("test", "infoseek", 6), "infoseek")
    assert all(q.query_img_path.startswith("mbeir_images/oven_images/") for q in infoseek)
    for path in sorted(paths):
        with Image.open(os.path.join(sample_root, path)) as img:
            img.load()
            assert img.mode == "RGB" and img.size == (64, 64)
    # The picture shows what the caption says: the centre pixel has the caption's colour.
    images = {c.did: c.img_path for c in pool}
    for q in _queries(sample_root, layout.query_file("test", "mscoco", 0), "mscoco"):
        colour = next(w for w in q.query_txt.split() if w in COLOURS)
        pixel = Image.open(os.path.join(sample_root, images[q.pos_cand_list[0]])).getpixel((32, 32))
        assert max(abs(a - b) for a, b in zip(pixel, COLOURS[colour], strict=True)) < 60, (q.query_txt, pixel)


def test_knowledge_query_agrees_with_page(sample_root):
    pages = {c.did: c for c in _pool(sample_root, layout.local_pool_file("oven", 6))}
    for q in _queries(sample_root, layout.query_file("test", "oven", 6), "oven"):
        entity = json.loads(q.query_src_content)["entity_name"]
        assert pages[q.pos_cand_list[0]].txt.startswith(entity + ".")


def test_scale_multiplies_train_queries(tmp_path):
    summary = generate(str(tmp_path), scale=3)
    assert summary["queries"]["train"] == 3 * 400
    with pytest.raises(ValueError, match="scale"):
        generate(str(tmp_path / "x"), scale=0)


def test_cir_targets_show_the_edit(sample_root):
    """'make it blue' -> the target's centre is blue; 'put it on a black background' -> its corner is black."""
    pool = {c.did: c.img_path for c in _pool(sample_root, layout.local_pool_file("cirr", 7))}
    checked = 0
    for q in _queries(sample_root, layout.query_file("train", "cirr"), "cirr"):
        words = q.query_txt.split()
        target = Image.open(os.path.join(sample_root, pool[q.pos_cand_list[0]]))
        if words[0] == "make" or words[:3] == ["change", "the", "colour"]:
            pixel, expected = target.getpixel((32, 32)), COLOURS[words[-1]]
        elif words[:3] == ["put", "it", "on"]:
            pixel, expected = target.getpixel((1, 1)), BACKGROUNDS[words[-2]]
        else:
            continue
        assert max(abs(a - b) for a, b in zip(pixel, expected, strict=True)) < 60, (q.query_txt, pixel)
        checked += 1
    assert checked >= 10
