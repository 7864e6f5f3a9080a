"""Resilience: SIGKILLed and restarted runs against a faulty teacher end where an undisturbed run ends, an
unwritable output directory fails before any paid call and leaves no shard, and a journal segment cut
mid-record (a crash while writing) costs exactly one repeated call."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import sys

import pyarrow.parquet as pq
import pytest

from common.errors import OutputError
from tests.pipeline import testfs
from tests.pipeline.conftest import output_files, run_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def chaos_run():
    spec = importlib.util.spec_from_file_location("chaos_run", os.path.join(REPO, "scripts", "chaos_run.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos_run"] = module  # its dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_killed_runs_against_a_faulty_teacher_match_an_undisturbed_run(chaos_run, sample_root, tmp_path, teacher):
    # Short version of `scripts/chaos_run.py` (three kills, more queries): two kills, 40 queries in three local
    # partitions (so a restart also redoes finished partitions), and the undisturbed run in this process
    # against a clean teacher.
    partitions = ("--partition_queries", "15")
    clean = str(tmp_path / "clean")
    run_pipeline(sample_root, clean, *partitions, limit="4", teacher=teacher)
    report = chaos_run.chaos(sample_root, str(tmp_path / "chaos"), limit=4, kills=2, seed=0, latency_ms=400,
                             max_in_flight=2, flush_interval_s=0.5, max_delay_s=1.0, slack_s=1.0,
                             reference=(clean, teacher.stats()["ok"]), extra=partitions)
    assert report["problems"] == [], json.dumps(report, indent=2)
    assert report["kills"] == 2 and report["attempts"] == 3
    faults = report["chaos_outcomes"]
    assert faults["429"] + faults["500"] + faults["hang"] + faults["malformed"] > 0, faults
    assert report["rows"] > 0 and 0 <= report["extra_ok_answers"] <= report["extra_bound"]


def test_spend_bound_counts_in_flight_and_the_last_flush_interval(chaos_run):
    arrivals = [[9.0, "ok"], [9.6, "ok"], [9.9, "429"], [10.0, "ok"], [10.5, "ok"], [20.0, "ok"]]
    assert chaos_run.spend_bound([10.2], arrivals, 4, 0.5, 0.5) == 4 + 2  # 9.6 and 10.0 are within 1 s
    assert chaos_run.spend_bound([10.2, 20.0], arrivals, 4, 0.5, 0.0) == 4 + 1 + 4 + 1
    assert chaos_run.spend_bound([], arrivals, 4, 0.5, 0.5) == 0


def test_unwritable_output_dir_fails_before_any_call_and_writes_no_shard(sample_root, tmp_path, teacher):
    blocker = tmp_path / "file.txt"  # a regular file as a parent folder: unwritable even for root
    blocker.write_text("not a folder")
    out = str(blocker / "out")
    with pytest.raises(OutputError) as caught:  # an output error (exit 3): stops before any work
        run_pipeline(sample_root, out, limit="2", teacher=teacher)
    message = str(caught.value)
    assert "cannot write to" in message and str(blocker) in message, message
    assert teacher.stats()["calls"] == 0
    assert sorted(os.listdir(tmp_path)) == ["file.txt"] and blocker.read_text() == "not a folder"
    assert not glob.glob(str(tmp_path / "**" / "*.parquet"), recursive=True)


def test_full_disk_stops_with_a_clear_error_and_no_truncated_file(sample_root, tmp_path, teacher, monkeypatch):
    root = tmp_path / "fs"
    shutil.copytree(sample_root, root / "mbeir")
    args = ("testfs://mbeir", "testfs://out", "--journal_dir", str(tmp_path / "journal"))
    with testfs.mounted(str(root)):
        testfs.reset_quota()
        monkeypatch.setenv(testfs.QUOTA_ENV, "30000")  # room for one of the shard and the card sample (~22 KB)
        with pytest.raises(OutputError) as caught:
            run_pipeline(*args, limit="3", teacher=teacher)
        assert "no space left" in str(caught.value) and "rerun" in str(caught.value)
        written = [p for p in (root / "out").rglob("*") if p.is_file()]
        assert not [p for p in written if ".partial-" in p.name]  # nothing half-written left
        for path in written:
            if path.suffix == ".parquet":
                pq.read_table(path)  # every shard under its final name is complete
        calls = teacher.stats()["calls"]
        assert calls > 0
        monkeypatch.delenv(testfs.QUOTA_ENV)  # space freed: the same command finishes from the journal
        stats = run_pipeline(*args, limit="3", teacher=teacher)
    assert teacher.stats()["calls"] == calls and sum(stats["accepted"].values()) > 0


def _journal_lines(out: str) -> dict[str, list[bytes]]:
    segments = {}
    for path in sorted(glob.glob(os.path.join(out, "journal", "journal-*.jsonl"))):
        with open(path, "rb") as f:
            segments[path] = f.read().splitlines(keepends=True)
    return segments


def test_journal_cut_mid_record_is_read_up_to_the_damage(sample_root, tmp_path, teacher):
    out = str(tmp_path / "out")
    run_pipeline(sample_root, out, limit="3", teacher=teacher)
    first_calls = teacher.stats()["calls"]
    before = output_files(out)
    segments = _journal_lines(out)
    path, lines = max(segments.items(), key=lambda kv: len(kv[1]))
    assert len(lines) >= 2
    damaged = json.loads(lines[-1])["key"]
    with open(path, "wb") as f:  # as after a crash while writing the segment's last record
        f.write(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])

    again = run_pipeline(sample_root, out, limit="3", teacher=teacher)
    assert teacher.stats()["calls"] - first_calls == 1
    assert again["teacher"]["requests"] == 1
    new = [p for p in _journal_lines(out) if p not in segments]
    assert [json.loads(line)["key"] for p in new for line in _journal_lines(out)[p]] == [damaged]
    after = output_files(out)
    data = [k for k in before if k.startswith("data/")]
    assert data and all(before[k] == after[k] for k in data)
