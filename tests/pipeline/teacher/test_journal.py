import json
import time

from pipeline.teacher.client import TeacherClient
from pipeline.teacher.config import TeacherConfig
from pipeline.teacher.journal import (
    JournalIndex,
    JournalWriter,
    journal_glob,
    load_journal,
    parse_journal_line,
)
from pipeline.teacher.prompting import build_cot_request
from pipeline.teacher.reference.server import ReferenceServer

from .conftest import make_example


def _rec(i):
    return {"key": f"k{i}", "kind": "cot", "model": "m", "content": f"<reasoning>r{i}</reasoning><answer>a</answer>"}


def test_parse_journal_line_rejects_damage():
    good = json.dumps(_rec(1))
    assert parse_journal_line(good)["key"] == "k1"
    assert parse_journal_line(good.encode()) == parse_journal_line(good)
    assert parse_journal_line(good[:-5]) is None  # truncated mid-write
    assert parse_journal_line(b"\xff\xfe garbage") is None
    assert parse_journal_line(json.dumps({"key": "k", "model": "m"})) is None  # no content
    assert parse_journal_line("[1, 2]") is None


def test_results_are_durable_within_the_flush_interval(tmp_path):
    journal = str(tmp_path / "j")
    with ReferenceServer() as srv:
        client = TeacherClient(TeacherConfig(srv.base_url, "m", journal_dir=journal, flush_interval_s=0.2))
        try:
            req = build_cot_request(make_example(query_img=None, target_img=None), model="m", params={})
            assert client.submit(req).result(timeout=10).ok
            deadline = time.monotonic() + 3.0
            while client.stats()["journal_writes"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.stats()["journal_writes"] == 1  # before close(): written by the periodic flush
            assert req.key in load_journal(journal)
        finally:
            client.close()


def _one_segment(journal: str, n: int) -> JournalWriter:
    """A writer whose first segment holds records k0 .. k(n-1)."""
    writer = JournalWriter(journal, flush_interval_s=3600)
    for i in range(n):
        writer.append(_rec(i))
    writer.flush()
    return writer


def _crash_mid_record(journal_path) -> None:
    """A crash while writing the next record: half a line at the end of the last segment."""
    with open(sorted(journal_path.glob("journal-*.jsonl"))[-1], "ab") as f:
        f.write(json.dumps(_rec(4)).encode()[:20])


def test_segments_rotate_and_loader_skips_a_damaged_last_line(tmp_path):
    journal = str(tmp_path / "j")
    writer = _one_segment(journal, 3)
    writer.append(_rec(3))
    writer.close()
    segments = sorted((tmp_path / "j").glob("journal-*.jsonl"))
    assert len(segments) == 2 and writer.writes == 4
    assert journal_glob(journal).endswith("journal-*.jsonl")
    _crash_mid_record(tmp_path / "j")
    loaded = load_journal(journal)
    assert sorted(loaded) == ["k0", "k1", "k2", "k3"]
    assert loaded["k2"]["content"] == _rec(2)["content"]


def test_missing_journal_dir_is_empty(tmp_path):
    assert load_journal(str(tmp_path / "nothing")) == {}


def test_index_finds_the_latest_record_of_each_key_and_picks_up_new_segments(tmp_path):
    journal = str(tmp_path / "j")
    writer = _one_segment(journal, 3)
    index = JournalIndex(journal)
    index.refresh()
    assert len(index) == 3 and index.get("k1")["content"] == _rec(1)["content"] and index.get("k9") is None
    writer.append({**_rec(1), "content": "<reasoning>again</reasoning><answer>b</answer>"})
    writer.append(_rec(3))
    writer.close()
    _crash_mid_record(tmp_path / "j")
    index.refresh()  # only the new segment is read
    assert len(index) == 4 and index.get("k4") is None
    assert index.get("k1")["content"].startswith("<reasoning>again") and index.get("k3")["key"] == "k3"
    assert {k: index.get(k) for k in ("k0", "k1", "k2", "k3")} == load_journal(journal)


def test_index_of_a_missing_journal_is_empty(tmp_path):
    index = JournalIndex(str(tmp_path / "nothing"))
    index.refresh()
    assert len(index) == 0 and index.get("k0") is None


def test_index_forgets_segments_that_went_away(tmp_path):
    journal = str(tmp_path / "j")
    _one_segment(journal, 1).close()
    index = JournalIndex(journal)
    index.refresh()
    assert index.get("k0") is not None
    for segment in (tmp_path / "j").glob("journal-*.jsonl"):
        segment.unlink()
    assert index.get("k0") is None  # read fails: a miss, not an error
    index.refresh()
    assert len(index) == 0
