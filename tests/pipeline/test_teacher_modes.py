"""Batch API mode and the spend budget, end to end against the reference teacher over HTTP."""

from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq

from pipeline.stats import check_identity
from pipeline.teacher.reference.server import ReferenceServer
from tests.pipeline.conftest import run_pipeline


def _answers(out: str) -> dict[str, str]:
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "data", "*.parquet"))):
        rows += pq.read_table(path).to_pylist()
    return {r["id"]: r["answer"] for r in rows}


def test_batch_mode_submits_resumes_and_finishes_like_online(sample_root, tmp_path):
    with ReferenceServer() as online:
        reference = run_pipeline(sample_root, str(tmp_path / "online"), teacher=online, limit="2")
    out = str(tmp_path / "batch")
    with ReferenceServer(batch_speed=0, batch_forced=["expire"]) as server:
        runs = []
        for _ in range(6):
            stats = run_pipeline(sample_root, out, "--teacher_mode", "batch", teacher=server, limit="2")
            assert check_identity(stats, dry_run=False) is None
            runs.append(stats)
            if not stats["pending"]:
                break
        assert server.stats()["calls"] == 0  # nothing went through chat completions
    first = runs[0]
    assert first["pending"] == {"batch": first["routed"]["reasoning"]}
    assert first["batch"]["submitted"]["submitted_requests"] == first["routed"]["reasoning"]
    # CoT, then verifier, with the first batch expiring half-way: more than two rounds, then done.
    assert len(runs) > 3 and not runs[-1]["pending"]
    assert runs[-1]["accepted"] == reference["accepted"]
    assert _answers(out) == _answers(str(tmp_path / "online"))


def test_budget_stops_cleanly_and_a_rerun_continues(sample_root, tmp_path, capsys):
    out = str(tmp_path / "budget")
    with ReferenceServer() as server:
        stopped = run_pipeline(sample_root, out, "--max_requests", "5", "--verifier", "off", teacher=server,
                               limit="3")
        assert "plan:" in capsys.readouterr().out  # the planned requests and cost come before any call
        assert server.stats()["calls"] == 5
        assert check_identity(stopped, dry_run=False) is None
        assert stopped["pending"] == {"budget": stopped["routed"]["reasoning"] - 5}
        assert stopped["failed"] == {}
        done = run_pipeline(sample_root, out, "--max_requests", "100", "--verifier", "off", teacher=server,
                            limit="3")
        assert server.stats()["calls"] == stopped["routed"]["reasoning"]  # the first 5 came from the journal
        assert not done["pending"] and done["teacher"]["journal_hits"] == 5
