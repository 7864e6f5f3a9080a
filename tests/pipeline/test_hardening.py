"""Whole runs on copies of the sample carrying hostile input (issue 15): every case is rejected with its reason
code or stops the run as a configuration error before any work; the counts identity holds; stats.json and
the card name the codes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

import pyarrow.parquet as pq
import pytest

from common.errors import ConfigError
from pipeline.mbeir import reasons
from pipeline.stats import check_identity
from pipeline.teacher.reference.server import ReferenceServer
from tests.pipeline.conftest import run_pipeline

COCO = "query/train/mbeir_mscoco_train.jsonl"
CIRR = "query/train/mbeir_cirr_train.jsonl"
POOL = "cand_pool/global/mbeir_union_train_cand_pool.jsonl"
INSTRUCTIONS = "instructions/query_instructions.tsv"


def _copy(sample_root: str, tmp_path) -> str:
    root = str(tmp_path / "root")
    shutil.copytree(sample_root, root)
    return root


def _lines(root: str, rel: str) -> list[dict]:
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _append(root: str, rel: str, *lines: bytes | dict) -> None:
    with open(os.path.join(root, rel), "ab") as f:
        for line in lines:
            f.write((json.dumps(line).encode() if isinstance(line, dict) else line) + b"\n")


def _rows(out: str, folder: str) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(os.path.join(out, folder))):
        rows += pq.read_table(os.path.join(out, folder, name)).to_pylist()
    return rows


def _card(out: str) -> str:
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        return f.read()


def _names_codes(out: str, stats: dict, codes: list[str]) -> None:
    card = _card(out)
    for code in codes:
        assert code in stats["rejected"] or code in stats["pool"]["rejected"], code
    for code in (c for c in codes if c in stats["rejected"]):
        assert f"`{code}`" in card and reasons.DESCRIPTIONS[code] in card, code


def test_hostile_lines_are_rejected_and_the_rest_of_the_run_goes_on(sample_root, tmp_path, teacher):
    root = _copy(sample_root, tmp_path)
    good = _lines(root, COCO)[0]
    limit = 20_000  # far above every sample line, far below the 30 KB line below
    hostile = [b'{"a": ' * 3_000, json.dumps({**good, "qid": "9:9001"}).replace('"task_id": 0', '"task_id": NaN').encode(),
               b'{"qid": "9:9002", "task_id": ' + b"9" * 5_000 + b"}",
               json.dumps({**good, "qid": "9:9003", "query_txt": "z" * 30_000}).encode(),
               json.dumps({**good, "qid": "9:9004", "query_txt": "\ud800"}).encode()]
    _append(root, COCO, *hostile)
    _append(root, POOL, b"[" * 15_000, b'{"did": "9:77777", "txt": Infinity}', b"c" * 40_000)
    out = str(tmp_path / "out")
    stats = run_pipeline(root, out, "--datasets", "mscoco", "--max_line_bytes", str(limit), teacher=teacher,
                         limit=None)
    assert check_identity(stats, dry_run=False) is None
    assert stats["input"] == 40 + len(hostile)
    assert stats["accepted"]["direct"] == 40  # every good line still made it
    assert stats["rejected"] == {"too_deeply_nested": 1, "invalid_json": 2, "line_too_long": 1, "invalid_utf8": 1}
    assert stats["pool"]["rejected"] == {"too_deeply_nested": 1, "invalid_json": 1, "line_too_long": 1}
    _names_codes(out, stats, ["too_deeply_nested", "invalid_json", "line_too_long", "invalid_utf8"])
    too_long = next(r for r in _rows(out, "rejects") if r["reason"] == "line_too_long" and r["stage"] == "read")
    assert too_long["line_number"] == 44 and f"over {limit} bytes" in too_long["detail"]


def _outside_image(tmp_path, root: str, name: str) -> str:
    """A symlink inside the root's image folder to a real image outside the root; returns its relative path."""
    images = os.path.join(root, "mbeir_images", "mscoco_images")
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    shutil.copy(os.path.join(images, sorted(os.listdir(images))[0]), outside / name)
    os.symlink(outside / name, os.path.join(images, name))
    return f"mbeir_images/mscoco_images/{name}"


@pytest.mark.parametrize("check", ["none", "decode"])
def test_an_image_linked_out_of_the_root_is_never_read(sample_root, tmp_path, teacher, check):
    root = _copy(sample_root, tmp_path)
    queries = _lines(root, COCO)
    image_query = next(q for q in queries if q["task_id"] == 3)
    text_query = next(q for q in queries if q["task_id"] == 0)
    _append(root, COCO, {**image_query, "qid": "9:9101", "query_img_path": _outside_image(tmp_path, root, "q.jpg")},
            {**text_query, "qid": "9:9102", "pos_cand_list": ["9:99101"]})
    _append(root, POOL, {"did": "9:99101", "txt": None, "img_path": _outside_image(tmp_path, root, "c.jpg"),
                         "modality": "image", "src_content": None})
    out = str(tmp_path / "out")
    stats = run_pipeline(root, out, "--datasets", "mscoco", "--check_images", check, "--embed_images",
                         teacher=teacher, limit=None)
    assert check_identity(stats, dry_run=False) is None
    assert stats["rejected"] == {"unsafe_image_path": 2} and stats["accepted"]["direct"] == 40
    assert {r["qid"] for r in _rows(out, "rejects")} == {"9:9101", "9:9102"}
    _names_codes(out, stats, ["unsafe_image_path"])


def test_an_image_folder_linked_out_of_the_root_is_a_configuration_error(sample_root, tmp_path):
    root = str(tmp_path / "root")
    os.makedirs(root)
    for name in os.listdir(sample_root):
        if name != "mbeir_images":
            shutil.copytree(os.path.join(sample_root, name), os.path.join(root, name))
    os.symlink(os.path.join(sample_root, "mbeir_images"), os.path.join(root, "mbeir_images"))
    with pytest.raises(ConfigError, match="mbeir_images leads out of --mbeir_root.*bind mount"):
        run_pipeline(root, str(tmp_path / "out"), "--dry_run")
    assert not os.path.exists(tmp_path / "out")


def test_a_prompt_over_the_budget_is_never_sent_and_the_dry_run_counts_it(sample_root, tmp_path, teacher):
    root = _copy(sample_root, tmp_path)
    first = _lines(root, CIRR)[0]
    _append(root, CIRR, {**first, "qid": "8:9201", "query_txt": "make it " + "much " * 40_000 + "bluer"})
    args = ("--datasets", "cirr", "--verifier", "off")
    dry = run_pipeline(root, str(tmp_path / "dry"), "--dry_run", *args, limit=None)
    assert check_identity(dry, dry_run=True) is None
    assert dry["plan"]["rejected_unsent"] == {"prompt_too_long": 1}
    assert dry["plan"]["teacher_requests"] == dry["routed"]["reasoning"] - 1
    out = str(tmp_path / "out")
    stats = run_pipeline(root, out, *args, teacher=teacher, limit=None)
    assert check_identity(stats, dry_run=False) is None
    assert stats["rejected"] == {"prompt_too_long": 1}
    assert teacher.stats()["calls"] == stats["teacher"]["requests"] == stats["routed"]["reasoning"] - 1
    reject = next(r for r in _rows(out, "rejects") if r["reason"] == "prompt_too_long")
    assert reject["qid"] == "8:9201" and reject["stage"] == "cot" and "--max_prompt_tokens 8192" in reject["detail"]
    _names_codes(out, stats, ["prompt_too_long"])


def test_a_repeated_did_keeps_the_first_line_and_rejects_the_other(sample_root, tmp_path, teacher):
    root = _copy(sample_root, tmp_path)
    query, second = [q for q in _lines(root, COCO) if q["task_id"] == 0][:2]
    did = query["pos_cand_list"][0]
    pool = _lines(root, POOL)
    second_candidate = next(c for c in pool if c["did"] == second["pos_cand_list"][0])
    number, original = next((n, c) for n, c in enumerate(pool, start=1) if c["did"] == did)
    other_image = next(c["img_path"] for c in pool if c["img_path"] and c["img_path"] != original["img_path"]
                       and "mscoco" in c["img_path"])
    path = os.path.join(root, POOL)
    with open(path, "rb") as f:
        body = f.read()
    with open(path, "wb") as f:  # the different copy comes first: it wins, the original line is the reject
        f.write(json.dumps({**original, "img_path": other_image}).encode() + b"\n" + body)
    _append(root, POOL, original, second_candidate)  # an exact copy of the first line is not a conflict
    out = str(tmp_path / "out")
    stats = run_pipeline(root, out, "--datasets", "mscoco", teacher=teacher, limit=None)
    assert check_identity(stats, dry_run=False) is None
    assert stats["pool"]["rejected"] == {"duplicate_did": 2}  # the original line and its exact copy at the end
    rejects = [r for r in _rows(out, "rejects") if r["reason"] == "duplicate_did"]
    assert sorted(r["line_number"] for r in rejects) == [number + 1, len(pool) + 2]
    assert all(r["stage"] == "pool" and f"already on {POOL}:1 " in r["detail"] for r in rejects)
    row = next(r for r in _rows(out, "data") if r["qid"] == query["qid"])
    assert row["pos_img_path"] == other_image


@pytest.mark.parametrize("row, message", [
    ("text\timage\tMSCOCO\tnine\tFind it.", "line 18: expected query modality"),
    ("txt\timage\tMSCOCO\t9\tFind it.", "line 18: query modality 'txt' is not one of"),
    ("text\timage\tMSCOCO\t42\tFind it.", "line 18: dataset id 42 is not an M-BEIR dataset id"),
])
def test_a_bad_instruction_row_stops_the_run_before_any_work(sample_root, tmp_path, row, message):
    root = _copy(sample_root, tmp_path)
    path = os.path.join(root, INSTRUCTIONS)
    with open(path, encoding="utf-8") as f:
        assert len(f.read().splitlines()) == 17
    with open(path, "a", encoding="utf-8") as f:
        f.write(row + "\n")
    with pytest.raises(ConfigError, match=f"{INSTRUCTIONS}: query_instructions.tsv {message}"):
        run_pipeline(root, str(tmp_path / "out"), "--dry_run")
    assert not os.path.exists(tmp_path / "out")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_teacher_is_exit_status_2_within_seconds_and_writes_nothing(sample_root, tmp_path, capsys):
    from pipeline.__main__ import main

    url = f"http://127.0.0.1:{_closed_port()}/v1"
    out = tmp_path / "out"
    start = time.monotonic()
    status = main(["--mbeir_root", sample_root, "--output_dir", str(out), "--teacher_base_url", url,
                   "--teacher_model", "reference-teacher", "--limit", "1"])
    assert status == 2 and time.monotonic() - start < 15
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url in err[0] and "start the teacher server or fix the URL" in err[0]
    assert not os.path.exists(out / "failed") and not os.path.exists(out / "stats.json")


@pytest.mark.parametrize("server, model, message", [
    ({"api_key": "sk-right"}, "reference-teacher", "refused the API key"),
    ({"models": ["reference-teacher"]}, "gpt-typo", "no model 'gpt-typo'"),
])
def test_a_wrong_key_or_model_is_a_configuration_error(sample_root, tmp_path, server, model, message):
    from pipeline.run import run

    with ReferenceServer(**server) as srv:
        with pytest.raises(ConfigError, match=message):
            run(["--mbeir_root", sample_root, "--output_dir", str(tmp_path / "out"), "--limit", "1",
                 "--teacher_base_url", srv.base_url, "--teacher_model", model])
        assert srv.stats()["calls"] == 0
    assert not os.path.exists(tmp_path / "out" / "failed")


def test_an_image_that_cannot_be_embedded_rejects_its_query_and_the_run_goes_on(sample_root, tmp_path, teacher):
    # --check_images none lets the path through the read check; --embed_images then meets a FIFO and a vanished file
    root = _copy(sample_root, tmp_path)
    image_query = next(q for q in _lines(root, COCO) if q["task_id"] == 3)
    folder = os.path.join(root, "mbeir_images", "mscoco_images")
    os.mkfifo(os.path.join(folder, "fifo.jpg"))
    _append(root, COCO, {**image_query, "qid": "9:9201", "query_img_path": "mbeir_images/mscoco_images/fifo.jpg"},
            {**image_query, "qid": "9:9202", "query_img_path": "mbeir_images/mscoco_images/gone.jpg"})
    out = str(tmp_path / "out")
    stats = run_pipeline(root, out, "--datasets", "mscoco", "--check_images", "none", "--embed_images",
                         teacher=teacher, limit=None)
    assert check_identity(stats, dry_run=False) is None
    assert stats["rejected"] == {"image_not_a_file": 1, "missing_image": 1} and stats["accepted"]["direct"] == 40
    assert {(r["qid"], r["stage"]) for r in _rows(out, "rejects")} == {("9:9201", "emit"), ("9:9202", "emit")}
