"""The whole pipeline on the mini-M-BEIR sample: dry run, full run with the reference teacher over HTTP,
reruns, bad input, configuration errors, failures and secrets."""

from __future__ import annotations

import glob
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from common.errors import ConfigError
from pipeline import shards
from pipeline.stats import check_identity
from tests.pipeline.conftest import output_files, read_json, run_pipeline

STATS_KEYS = {"input", "routed", "accepted", "rejected", "failed", "per_dataset", "teacher"}


def _rejects(out: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "rejects", "*.parquet"))):
        rows += pq.read_table(path).to_pylist()
    return rows


def _data_rows(out: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "data", "*.parquet"))):
        rows += pq.read_table(path).to_pylist()
    return rows


def test_dry_run_plans_without_calls(sample_root, tmp_path, teacher):
    out = str(tmp_path / "dry")
    stats = run_pipeline(sample_root, out, "--dry_run", teacher=teacher)
    assert STATS_KEYS | {"plan"} <= set(stats)
    assert stats["input"] == 60
    assert check_identity(stats, dry_run=True) is None
    # PAPER.md §2 Phase 1: CIRR, FashionIQ, InfoSeek and OVEN reason; the six others go direct.
    assert stats["routed"] == {"direct": 36, "reasoning": 24}
    assert stats["per_dataset"]["cirr"]["routed"] == {"direct": 0, "reasoning": 6}
    assert stats["plan"]["teacher_requests"] == 48  # a CoT and a verifier call per reasoning query
    assert stats["plan"]["est_prompt_tokens"] > 0
    assert teacher.stats()["calls"] == 0
    assert not os.path.exists(os.path.join(out, "data"))
    assert read_json(os.path.join(out, "stats.json")) == stats


@pytest.mark.parametrize("lookup", ["index", "join"])  # how the rerun finds its answers (--journal_lookup)
def test_full_run_then_rerun_is_free_and_identical(sample_root, tmp_path, teacher, lookup):
    out = str(tmp_path / "full")
    stats = run_pipeline(sample_root, out, "--journal_lookup", lookup, teacher=teacher)
    assert check_identity(stats, dry_run=False) is None
    calls = teacher.stats()["calls"]
    assert calls == stats["teacher"]["requests"] > 0
    rows = _data_rows(out)
    assert len(rows) == sum(stats["accepted"].values())
    shards.validate_rows(rows)
    reasoning = [r for r in rows if r["route"] == "reasoning"]
    assert reasoning and all(r["target"].endswith("<|emb|>") and r["answer"] in r["target"] for r in reasoning)
    assert all(r["target"] == "<|emb|>" and r["reasoning"] == "" for r in rows if r["route"] == "direct")
    assert all(r["verifier_confidence"] > 0.7 for r in reasoning)
    assert {r["prompt_id"] for r in reasoning} <= {"cot_cir", "cot_knowledge"}
    for name in ("README.md", "manifest.json", "plots/lengths.png"):
        assert os.path.exists(os.path.join(out, name)), name
    first = output_files(out)

    again = run_pipeline(sample_root, out, "--journal_lookup", lookup, teacher=teacher)
    assert teacher.stats()["calls"] == calls  # the journal answers everything
    assert again["teacher"]["requests"] == 0 and again["teacher"]["journal_hits"] > 0
    second = output_files(out)
    data = [k for k in first if k.startswith("data/")]
    assert data and all(first[k] == second[k] for k in data)


def test_loads_with_datasets(sample_root, tmp_path, teacher):
    import datasets

    out = str(tmp_path / "hf")
    stats = run_pipeline(sample_root, out, "--verifier", "off", "--routing", "heuristic", teacher=teacher)
    ds = datasets.load_dataset(out, split="train")
    assert ds.num_rows == sum(stats["accepted"].values())
    assert set(ds.unique("route_source")) == {"heuristic"}


def test_judge_routing_asks_the_teacher(sample_root, tmp_path, teacher):
    out = str(tmp_path / "judge")
    stats = run_pipeline(sample_root, out, "--routing", "judge", "--verifier", "off", teacher=teacher, limit="2")
    assert check_identity(stats, dry_run=False) is None
    rows = _data_rows(out)
    assert {r["route_source"] for r in rows} == {"judge"}
    assert all(r["route_confidence"] is not None for r in rows)
    assert teacher.stats()["calls"] >= stats["input"]  # one judge call per query, plus the CoTs


def test_teacher_failures_go_to_failed(sample_root, tmp_path):
    from pipeline.teacher.reference.server import ReferenceServer

    out = str(tmp_path / "fail")
    with ReferenceServer(p500=1.0) as broken:
        stats = run_pipeline(sample_root, out, "--max_retries", "1", teacher=broken, limit="2")
    assert check_identity(stats, dry_run=False) is None
    assert stats["failed"] == {"server_error": stats["routed"]["reasoning"]}
    failed = pq.read_table(glob.glob(os.path.join(out, "failed", "*.parquet"))[0]).to_pylist()
    assert len(failed) == stats["routed"]["reasoning"] and all(f["attempts"] == 2 for f in failed)


def test_api_key_never_written(sample_root, tmp_path, teacher, monkeypatch, capsys):
    secret = "sk-test-DO-NOT-LEAK-1234567890"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    out = str(tmp_path / "secret")
    run_pipeline(sample_root, out, teacher=teacher, limit="2")
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    for folder, _, names in os.walk(out):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                assert secret.encode() not in f.read(), name


@pytest.mark.parametrize("argv, message", [
    (["--output_dir", "OUT"], "--mbeir_root is required"),
    (["--mbeir_root", "ROOT", "--output_dir", "OUT", "--datasets", "cirr,nope"], "unknown dataset 'nope'"),
    (["--mbeir_root", "ROOT", "--output_dir", "OUT"], "--teacher_base_url"),
    (["--mbeir_root", "/does/not/exist", "--output_dir", "OUT", "--dry_run"], "/does/not/exist"),
])
def test_configuration_errors_stop_before_work(sample_root, tmp_path, argv, message):
    from pipeline.run import run

    argv = [a.replace("ROOT", sample_root).replace("OUT", str(tmp_path / "o")) for a in argv]
    with pytest.raises(ConfigError, match=message):
        run(argv)
    assert not os.path.exists(tmp_path / "o")


def test_missing_key_for_remote_teacher_is_a_config_error(sample_root, tmp_path, monkeypatch):
    from pipeline.run import run

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        run(["--mbeir_root", sample_root, "--output_dir", str(tmp_path / "o"),
             "--teacher_base_url", "https://api.example.com/v1", "--teacher_model", "gpt-4o"])


def _corrupt_copy(sample_root: str, root: str) -> dict[str, int]:
    """A copy of the sample with one bad line or file of every kind; returns the expected reason counts."""
    shutil.copytree(sample_root, root)
    coco = os.path.join(root, "query/train/mbeir_mscoco_train.jsonl")
    good = json.loads(open(coco, encoding="utf-8").readline())

    def line(**changes) -> bytes:
        obj = {**good, **changes}
        return (json.dumps({k: v for k, v in obj.items() if v is not ...}) + "\n").encode()

    with open(os.path.join(root, "cand_pool/global/mbeir_union_train_cand_pool.jsonl"), encoding="utf-8") as f:
        pool = [json.loads(x) for x in f]
    # image queries point to a caption, as M-BEIR's image->text task does, so only their image is wrong
    caption = next(c["did"] for c in pool if c["did"].startswith("9:") and c["modality"] == "text")

    def image_query(path: str) -> dict:
        return {"query_modality": "image", "query_txt": None, "query_img_path": path, "task_id": 3,
                "pos_cand_list": [caption]}

    img = "mbeir_images/mscoco_images/broken.jpg"
    with open(os.path.join(root, img), "wb") as f:
        f.write(open(os.path.join(sample_root, "mbeir_images/mscoco_images",
                                  sorted(os.listdir(os.path.join(sample_root, "mbeir_images/mscoco_images")))[0]),
                     "rb").read()[:200])
    bad = [
        b'{"qid": "9:9001", "query_txt": \n',  # invalid_json
        b"[1, 2, 3]\n",  # not_object
        b'{"qid": "9:9002", "query_txt": "caf\xe9"}\n',  # invalid_utf8
        line(qid="9:9003", pos_cand_list=...),  # missing_field
        line(qid="9:9004", task_id=5),  # unknown_task
        line(qid="9:9005", query_modality="text,image"),  # unknown_modality
        line(qid="9:9006", **image_query("../../etc/passwd")),
        line(qid="9:9007", **image_query("mbeir_images/x/none.jpg")),
        line(qid="9:9008", **image_query(img)),  # unreadable
        line(qid=good["qid"]),  # duplicate_qid
        line(qid="9:9009", pos_cand_list=[]),  # empty_positives
        line(qid="9:9010", pos_cand_list=["9:999999"]),  # positive_not_found
    ]
    with open(coco, "rb") as f:
        body = f.read()
    with open(coco, "wb") as f:
        f.write(b"\xef\xbb\xbf" + body + b"".join(bad) + b'{"qid": "9:9011", "query_tx')  # BOM; truncated tail
    return {"invalid_json": 1, "not_object": 1, "invalid_utf8": 1, "missing_field": 1, "unknown_task": 1,
            "unknown_modality": 1, "unsafe_image_path": 1, "missing_image": 1, "unreadable_image": 1,
            "duplicate_qid": 1, "empty_positives": 1, "positive_not_found": 1, "truncated_line": 1}


def test_bad_input_is_rejected_with_reasons_and_counted(sample_root, tmp_path):
    root = str(tmp_path / "bad")
    expected = _corrupt_copy(sample_root, root)
    out = str(tmp_path / "out")
    stats = run_pipeline(root, out, "--dry_run", "--datasets", "mscoco", limit=None)
    assert check_identity(stats, dry_run=True) is None
    assert stats["rejected"] == expected
    good_lines = 40  # the sample's mscoco queries (the BOM on the first line is read, not rejected)
    assert stats["input"] == good_lines + sum(expected.values())
    rejects = _rejects(out)
    assert sorted(r["reason"] for r in rejects) == sorted(k for k, n in expected.items() for _ in range(n))
    by_reason = {r["reason"]: r for r in rejects}
    assert by_reason["invalid_utf8"]["line_number"] == good_lines + 3
    assert by_reason["duplicate_qid"]["qid"] == "9:1"
    assert all(r["source_file"] == "query/train/mbeir_mscoco_train.jsonl" for r in rejects)


def test_verifier_threshold_rejects_low_confidence(sample_root, tmp_path, teacher):
    out = str(tmp_path / "strict")
    # The reference verifier answers "consistent" with confidence 0.9 for answers that share the target's words.
    stats = run_pipeline(sample_root, out, "--verifier_threshold", "0.95", teacher=teacher, limit="2")
    assert check_identity(stats, dry_run=False) is None
    assert stats["accepted"]["reasoning"] == 0
    assert stats["rejected"].get("verifier_low_confidence", 0) > 0
    stages = {r["stage"] for r in _rejects(out)}
    assert "verifier" in stages


def test_embed_images_loads_as_hf_images(sample_root, tmp_path, teacher):
    import datasets

    out = str(tmp_path / "images")
    run_pipeline(sample_root, out, "--embed_images", "--verifier", "off", teacher=teacher, limit="1")
    ds = datasets.load_dataset(out, split="train")
    assert isinstance(ds.features["query_image"], datasets.Image)
    with_image = [r for r in ds if r["query_img_path"]]
    assert with_image and with_image[0]["query_image"].size[0] > 0


def test_image_that_cannot_be_encoded_fails_at_call_time_and_is_counted(sample_root, tmp_path, teacher):
    root = str(tmp_path / "root")
    shutil.copytree(sample_root, root)
    cirr = os.path.join(root, "query/train/mbeir_cirr_train.jsonl")
    image = json.loads(open(cirr, encoding="utf-8").readline())["query_img_path"]
    with open(os.path.join(root, image), "r+b") as f:
        f.truncate(100)  # passes --check_images exists; images are encoded only for the call
    stats = run_pipeline(root, str(tmp_path / "out"), "--datasets", "cirr", "--check_images", "exists",
                         teacher=teacher)
    failed = pq.read_table(glob.glob(os.path.join(tmp_path, "out", "failed", "*.parquet"))[0]).to_pylist()
    assert failed and {f["error"] for f in failed} == {"unreadable_image"}
    assert stats["failed"] == {"unreadable_image": len(failed)} and check_identity(stats, dry_run=False) is None


@pytest.mark.parametrize("url, flags, transport", [
    ("http://127.0.0.1:9/v1", [], "direct"),  # a teacher on this machine: its client's CPU is what limits
    ("https://api.example.com/v1", [], "aiohttp"),  # an API: the openai client
    ("http://127.0.0.1:9/v1", ["--teacher_transport", "aiohttp"], "aiohttp"),
    ("https://api.example.com/v1", ["--teacher_transport", "direct"], "direct"),
])
def test_remote_teachers_are_called_through_the_openai_client_unless_told_otherwise(sample_root, tmp_path,
                                                                                  monkeypatch, url, flags, transport):
    from pipeline.options import MbeirCotOptions
    from pipeline.run import resolve_plan

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    opts = MbeirCotOptions(["--mbeir_root", sample_root, "--output_dir", str(tmp_path / "out"),
                            "--teacher_base_url", url, "--teacher_model", "m", *flags])
    assert resolve_plan(opts).teacher.transport == transport
