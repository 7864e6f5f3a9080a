"""Ids are ids: a qid or did must be exactly "{dataset id}:{n}" (layout.is_mbeir_id, matched whole), else its line
is rejected as bad_field_type by the pipeline's parser and counted by the evaluation readers; qrels and run files
refuse such ids too. The schemas' id patterns say the same under both JSON Schema engines the parser uses."""

from __future__ import annotations

import json
import os

import fastjsonschema
import pytest

import schemas
from common.errors import ConfigError
from pipeline.mbeir import reasons
from pipeline.mbeir.layout import is_mbeir_id
from pipeline.mbeir.parse import parse_candidate_line, parse_query_line
from pipeline.mbeir.qrels import parse_qrels
from pipeline.mbeir.records import CandidateRecord, QueryRecord, Reject
from trainer.benchmark.evalset import EvalPair, ReadStats, iter_candidates, read_queries
from trainer.benchmark.scoring import read_qrels, read_run

HOSTILE_IDS = ["8:6\n", " 8:6", "8:6 ", "8:\t6", "8:6\t", "8:6\u2028", "8:6\x00", "\x008:6", "8:06", "08:6",
               "+8:6", "8:-6", "8:6:1", "8", "8:", ":6", "８:６", "8:" + "9" * 5_000, ""]
GOOD_QUERY = {"qid": "8:6", "query_txt": "make it blue", "query_img_path": "mbeir_images/cirr_images/a.png",
              "query_modality": "image,text", "query_src_content": None, "pos_cand_list": ["8:12"],
              "neg_cand_list": [], "task_id": 7}
GOOD_CAND = {"did": "8:12", "txt": "a blue shirt", "img_path": None, "modality": "text", "src_content": None}
PAIR = EvalPair("cirr", 7)


def _query(**change) -> QueryRecord | Reject:
    raw = json.dumps({**GOOD_QUERY, **change}).encode()
    return parse_query_line(raw, source_file=PAIR.query_file, line_number=1, dataset="cirr")


def _cand(did: str) -> CandidateRecord | Reject:
    return parse_candidate_line(json.dumps({**GOOD_CAND, "did": did}).encode(), source_file="pool", line_number=1)


def test_the_id_rule():
    assert all(is_mbeir_id(i) for i in ("8:6", "0:0", "9:499999", "5:123456789"))
    assert not any(is_mbeir_id(i) for i in HOSTILE_IDS) and not is_mbeir_id(86) and not is_mbeir_id(None)


@pytest.mark.parametrize("bad", HOSTILE_IDS)
def test_a_hostile_id_rejects_its_line_in_every_id_field(bad):
    for rec in (_query(qid=bad), _query(pos_cand_list=["8:12", bad]), _query(neg_cand_list=[bad]), _cand(bad)):
        assert isinstance(rec, Reject) and rec.reason == reasons.BAD_FIELD_TYPE, (bad, rec)
    assert isinstance(_query(), QueryRecord) and isinstance(_cand("8:12"), CandidateRecord)


@pytest.mark.parametrize("name, field", [("mbeir_query", "qid"), ("mbeir_candidate", "did"),
                                         ("mbeir_cot_row", "qid"), ("mbeir_cot_row", "pos_did")])
def test_the_schema_patterns_agree_with_the_rule_under_both_engines(name, field):
    prop = {"type": "string", "pattern": schemas.load(name)["properties"][field]["pattern"]}
    fast = fastjsonschema.compile(prop)
    slow = schemas.validator(name).__class__(prop)
    for value in ["8:6", "0:0", *HOSTILE_IDS]:
        try:
            fast(value)
            fast_ok = True
        except fastjsonschema.JsonSchemaException:
            fast_ok = False
        assert fast_ok == slow.is_valid(value) == is_mbeir_id(value), repr(value)


def test_the_evaluation_readers_count_hostile_ids(tmp_path):
    root = tmp_path / "root"
    lines = {PAIR.query_file: [json.dumps({**GOOD_QUERY, "qid": bad}) for bad in HOSTILE_IDS]
             + [json.dumps(GOOD_QUERY)],
             PAIR.pool_file: [json.dumps({**GOOD_CAND, "did": bad}) for bad in HOSTILE_IDS] + [json.dumps(GOOD_CAND)]}
    for rel, text in lines.items():
        os.makedirs(os.path.dirname(root / rel), exist_ok=True)
        (root / rel).write_text("\n".join(text) + "\n", encoding="utf-8")
    stats, pool_stats = ReadStats(), ReadStats()
    assert [r.qid for r in read_queries(root, PAIR, stats)] == ["8:6"]
    assert [c.did for c in iter_candidates(root, PAIR.pool_file, pool_stats)] == ["8:12"]
    assert stats.rejected == pool_stats.rejected == {reasons.BAD_FIELD_TYPE: len(HOSTILE_IDS)}


@pytest.mark.parametrize("bad", ["8:6\x00", "8:06", "8:6\ufeff"])  # ids whitespace splitting cannot break
def test_qrels_and_run_files_refuse_hostile_ids(tmp_path, bad):
    with pytest.raises(ValueError, match="not an M-BEIR id"):
        parse_qrels(f"{bad} 0 8:12 1 7\n")
    qrels = tmp_path / "mbeir_cirr_task7_test_qrels.txt"
    qrels.write_text(f"8:6 0 {bad} 1 7\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not an M-BEIR id"):
        read_qrels([qrels])
    qrels.write_text("8:6 0 8:12 1 7\n", encoding="utf-8")
    run = tmp_path / "run.txt"
    run.write_text(f"8:6 Q0 8:12 1 0.9 r 7\n{bad} Q0 8:12 1 0.9 r 7\n8:6 Q0 {bad} 2 0.8 r 7\n", encoding="utf-8")
    scored = read_run(run, read_qrels([qrels]), skip_bad_lines=True)
    assert scored.pairs == {"cirr_task7": {"8:6": ["8:12"]}} and scored.skipped == {"bad_id": 2}
