import io
import json
import subprocess
import sys

import pytest

from pipeline.mbeir import reasons
from pipeline.mbeir.lines import iter_lines
from pipeline.mbeir.parse import REJECT_TEXT_CHARS, parse_candidate_line, parse_query_line
from pipeline.mbeir.records import CandidateRecord, QueryRecord, Reject

GOOD = {"qid": "8:6", "query_txt": "make it blue", "query_img_path": "mbeir_images/cirr_images/train/a.png",
        "query_modality": "image,text", "query_src_content": None, "pos_cand_list": ["8:12"],
        "neg_cand_list": [], "task_id": 7}


def q(raw, complete=True, dataset="cirr"):
    if isinstance(raw, dict):
        raw = json.dumps(raw).encode()
    return parse_query_line(raw, source_file="query/train/mbeir_cirr_train.jsonl", line_number=3,
                            dataset=dataset, complete=complete)


def with_(**change):
    return {**GOOD, **change}


def without(field):
    return {k: v for k, v in GOOD.items() if k != field}


def test_good_query_line():
    rec = q(GOOD)
    assert isinstance(rec, QueryRecord)
    assert (rec.qid, rec.task_id, rec.dataset, rec.dataset_id, rec.line_number) == ("8:6", 7, "cirr", 8, 3)
    assert rec.pos_cand_list == ("8:12",) and rec.neg_cand_list == ()
    assert rec.key == "query/train/mbeir_cirr_train.jsonl#8:6"


def test_dataset_taken_from_qid_for_union_files():
    rec = q(with_(qid="5:3", task_id=6), dataset="")
    assert isinstance(rec, QueryRecord) and rec.dataset == "oven" and rec.dataset_id == 5


def test_neg_cand_list_optional_and_src_content_kept():
    rec = q({**without("neg_cand_list"), "query_src_content": '{"id": 1}'})
    assert rec.neg_cand_list == () and rec.query_src_content == '{"id": 1}'


@pytest.mark.parametrize("raw, complete, reason", [
    (b'{"qid": "8:6", "query_txt": "make it', True, reasons.INVALID_JSON),
    (b'{"qid": "8:6", "query_txt": "make it', False, reasons.TRUNCATED_LINE),
    (b'{"qid": "8:6", "query_txt": "caf\xe9 au lait"}', True, reasons.INVALID_UTF8),
    (b'["8:6", "make it blue"]', True, reasons.NOT_OBJECT),
    (b'"8:6"', True, reasons.NOT_OBJECT),
    (without("pos_cand_list"), True, reasons.MISSING_FIELD),
    (without("qid"), True, reasons.MISSING_FIELD),
    (with_(query_img_path=None), True, reasons.MISSING_FIELD),
    (with_(query_txt=None), True, reasons.MISSING_FIELD),
    (with_(query_txt="   "), True, reasons.MISSING_FIELD),
    (with_(task_id="7"), True, reasons.BAD_FIELD_TYPE),
    (with_(pos_cand_list="8:12"), True, reasons.BAD_FIELD_TYPE),
    (with_(pos_cand_list=[812]), True, reasons.BAD_FIELD_TYPE),
    (with_(qid="eight:6"), True, reasons.BAD_FIELD_TYPE),
    (with_(qid="3:6"), True, reasons.BAD_FIELD_TYPE),  # an EDIS qid in the CIRR file
    (with_(qid="42:6"), True, reasons.BAD_FIELD_TYPE),
    (with_(qid="8:500000"), True, reasons.BAD_FIELD_TYPE),  # breaks UniIR's qid hashing
    (with_(task_id=5), True, reasons.UNKNOWN_TASK),
    (with_(task_id=0), True, reasons.UNKNOWN_TASK),  # task 0 is text->image: modality disagrees
    (with_(query_modality="text,image"), True, reasons.UNKNOWN_MODALITY),
    (with_(query_img_path="../../etc/passwd"), True, reasons.UNSAFE_IMAGE_PATH),
    (with_(query_img_path="/data/mbeir_images/a.jpg"), True, reasons.UNSAFE_IMAGE_PATH),
    (with_(query_img_path="gs://bucket/a.jpg"), True, reasons.UNSAFE_IMAGE_PATH),
    (with_(query_img_path="mbeir_images/../../x.jpg"), True, reasons.UNSAFE_IMAGE_PATH),
    (with_(query_img_path="C:\\images\\a.jpg"), True, reasons.UNSAFE_IMAGE_PATH),
    (with_(pos_cand_list=[]), True, reasons.EMPTY_POSITIVES),
])
def test_query_rejects(raw, complete, reason):
    rec = q(raw, complete)
    assert isinstance(rec, Reject), rec
    assert rec.reason == reason, rec.detail
    assert rec.detail and rec.source_file.endswith("mbeir_cirr_train.jsonl") and rec.line_number == 3
    assert rec.text and rec.stage == "read"


def test_complete_line_that_parses_is_fine_even_without_newline():
    assert isinstance(q(GOOD, complete=False), QueryRecord)


def test_reject_text_is_truncated():
    raw = b'{"qid": "8:6", "query_txt": "' + b"x" * 5000
    rec = q(raw)
    assert rec.reason == reasons.INVALID_JSON and len(rec.text) == REJECT_TEXT_CHARS


def test_reject_keeps_qid_when_known():
    assert q(with_(pos_cand_list=[])).qid == "8:6"


GOOD_CAND = {"txt": None, "img_path": "mbeir_images/cirr_images/dev/b.png", "modality": "image", "did": "8:12",
             "src_content": None}


def c(raw, complete=True):
    if isinstance(raw, dict):
        raw = json.dumps(raw).encode()
    return parse_candidate_line(raw, source_file="cand_pool/local/mbeir_cirr_task7_cand_pool.jsonl",
                                line_number=9, complete=complete)


def test_good_candidate():
    rec = c(GOOD_CAND)
    assert rec == CandidateRecord(did="8:12", txt=None, img_path="mbeir_images/cirr_images/dev/b.png",
                                  modality="image", src_content=None)


@pytest.mark.parametrize("raw, reason", [
    ({k: v for k, v in GOOD_CAND.items() if k != "did"}, reasons.MISSING_FIELD),
    ({**GOOD_CAND, "modality": "video"}, reasons.UNKNOWN_MODALITY),
    ({**GOOD_CAND, "modality": "image,text"}, reasons.MISSING_FIELD),  # text needed
    ({**GOOD_CAND, "img_path": None}, reasons.MISSING_FIELD),
    ({**GOOD_CAND, "img_path": "/abs/b.png"}, reasons.UNSAFE_IMAGE_PATH),
    ({**GOOD_CAND, "did": 812}, reasons.BAD_FIELD_TYPE),
    ({**GOOD_CAND, "did": "8:10000000"}, reasons.BAD_FIELD_TYPE),
    (b"\xff\xfe{}", reasons.INVALID_UTF8),
    (b"42", reasons.NOT_OBJECT),
    (b"{", reasons.INVALID_JSON),
])
def test_candidate_rejects(raw, reason):
    rec = c(raw)
    assert isinstance(rec, Reject) and rec.reason == reason, rec
    assert rec.line_number == 9


def test_file_with_bom_crlf_blank_lines_and_truncated_tail():
    good = json.dumps(GOOD).encode()
    data = b"\xef\xbb\xbf" + good + b"\r\n\n   \n" + good.replace(b"8:6", b"8:7") + b"\n" + good[:40]
    rows = list(iter_lines(io.BytesIO(data)))
    assert [(n, complete) for n, _, complete in rows] == [(1, True), (4, True), (5, False)]
    parsed = [q(raw, complete) for _, raw, complete in rows]
    assert [type(p) for p in parsed[:2]] == [QueryRecord, QueryRecord]
    assert parsed[1].qid == "8:7"
    assert parsed[2].reason == reasons.TRUNCATED_LINE


def test_reason_codes_are_all_described():
    codes = {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}
    assert codes == set(reasons.ALL) and all(reasons.DESCRIPTIONS[r] for r in reasons.ALL)


@pytest.mark.parametrize("raw, reason", [
    (b"[" * 100_000, reasons.TOO_DEEPLY_NESTED),
    (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, reasons.TOO_DEEPLY_NESTED),
    (json.dumps(GOOD).replace('"task_id": 7', '"task_id": NaN').encode(), reasons.INVALID_JSON),
    (json.dumps(GOOD).replace('"task_id": 7', '"task_id": -Infinity').encode(), reasons.INVALID_JSON),
    (json.dumps(GOOD).replace('"task_id": 7', '"task_id": ' + "7" * 5000).encode(), reasons.INVALID_JSON),
    (json.dumps(with_(query_txt="\ud800 lone")).encode(), reasons.INVALID_UTF8),  # a lone surrogate escape
    (b"x" * 5000, reasons.INVALID_JSON),
])
def test_hostile_lines_are_rejected_never_raised(raw, reason):
    assert q(raw).reason == reason
    cand = parse_candidate_line(raw, source_file="p.jsonl", line_number=1)
    assert isinstance(cand, Reject) and cand.reason in (reason, reasons.NOT_OBJECT)


def test_a_paired_surrogate_escape_is_a_character():
    raw = json.dumps(with_(query_txt="\U0001F600 blue")).encode()
    assert b"\\ud83d" in raw and q(raw).query_txt == "\U0001F600 blue"


def test_line_over_the_limit_is_rejected_unparsed_and_never_held_whole():
    good = json.dumps(GOOD).encode()
    huge = json.dumps(with_(query_txt="z" * 300_000)).encode()
    stream = io.BytesIO(good + b"\n" + huge + b"\n" + good + b"\n" + b"y" * 50_000)
    rows = list(iter_lines(stream, max_line_bytes=len(good) + 10))
    assert [n for n, _, _ in rows] == [1, 2, 3, 4]
    assert all(len(raw) <= len(good) + 11 for _, raw, _ in rows)  # only the head of a long line is kept
    limit = {"max_line_bytes": len(good) + 10}
    parsed = [parse_query_line(raw, source_file="f", line_number=n, dataset="cirr", complete=c, **limit)
              for n, raw, c in rows]
    assert [type(p).__name__ for p in parsed] == ["QueryRecord", "Reject", "QueryRecord", "Reject"]
    assert parsed[1].reason == parsed[3].reason == reasons.LINE_TOO_LONG
    assert "--max_line_bytes" in parsed[1].detail and len(parsed[1].text) <= REJECT_TEXT_CHARS
    assert [c for _, _, c in rows] == [True, True, True, False]


def test_a_line_of_exactly_the_limit_is_parsed():
    good = json.dumps(GOOD).encode()
    rows = list(iter_lines(io.BytesIO(good + b"\r\n"), max_line_bytes=len(good)))
    assert rows == [(1, good, True)]
    assert isinstance(parse_query_line(good, source_file="f", line_number=1, dataset="cirr",
                                       max_line_bytes=len(good)), QueryRecord)


def test_parsing_and_sample_need_no_beam(tmp_path):
    """Trainer machines have no Beam: parsing, instructions and the sample generator must work without it."""
    code = ("import sys; sys.modules['apache_beam'] = None\n"
            "from pipeline.sample import generate\n"
            "from pipeline.mbeir.parse import parse_query_line\n"
            "from pipeline.mbeir.instructions import Instructions\n"
            f"generate({str(tmp_path)!r})\n"
            f"line = open({str(tmp_path / 'query/test/mbeir_cirr_task7_test.jsonl')!r}, 'rb').readline()\n"
            "print(type(parse_query_line(line, source_file='f', line_number=1, dataset='cirr')).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "QueryRecord"
