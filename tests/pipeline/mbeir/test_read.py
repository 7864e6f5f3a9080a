from collections import Counter

from pipeline.mbeir import layout
from pipeline.mbeir.read import (
    dataset_of_file,
    iter_candidate_file,
    iter_query_file,
    read_instructions,
    read_qrels,
)
from pipeline.mbeir.records import CandidateRecord, QueryRecord


def test_dataset_of_file():
    assert dataset_of_file("query/val/mbeir_cirr_task7_val.jsonl") == "cirr"
    assert dataset_of_file(layout.local_pool_file("mscoco", 3)) == "mscoco"
    assert dataset_of_file("query/union_train/mbeir_union_up_train.jsonl") == ""


def test_read_sample_files(sample_root):
    queries = list(iter_query_file(sample_root, layout.query_file("test", "oven", 8)))
    assert queries and all(isinstance(q, QueryRecord) and q.dataset == "oven" for q in queries)
    pool = list(iter_candidate_file(sample_root, layout.local_pool_file("oven", 8)))
    assert all(isinstance(c, CandidateRecord) and c.modality == "image,text" for c in pool)
    qrels = read_qrels(sample_root, layout.qrels_file("test", "oven", 8))
    assert qrels == {q.qid: set(q.pos_cand_list) for q in queries}


def test_every_sample_query_has_an_instruction(sample_root):
    ins = read_instructions(sample_root)
    pool = {c.did: c for c in iter_candidate_file(sample_root, layout.UNION_TRAIN_POOL)}
    seen = Counter()
    for dataset in layout.DATASET_TASKS:
        for q in iter_query_file(sample_root, layout.query_file("train", dataset)):
            prompt = ins.choose(q.dataset_id, q.query_modality, pool[q.pos_cand_list[0]].modality, q.qid, 0)
            assert prompt, q
            seen[prompt] += 1
    assert len(seen) > 40  # several prompts per key are used
