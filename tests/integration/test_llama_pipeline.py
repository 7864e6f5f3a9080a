"""The whole pipeline against a real (tiny, text-only) model served by llama.cpp: its messy output must flow
through the quality gate with every record accounted for."""

from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq

from pipeline.stats import check_identity
from tests.integration.conftest import LLAMA_MODEL


def _rows(out: str, folder: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(out, folder, "*.parquet"))):
        rows += pq.read_table(path).to_pylist()
    return rows


def test_pipeline_with_smollm2(sample_root, tmp_path, llama_base_url):
    from pipeline.run import run

    out = str(tmp_path / "llama")
    # webqa questions go to reasoning under the heuristic routing; task-1 ones are text-only requests, while
    # oven queries and webqa task-2 targets carry images, which this text-only server refuses.
    stats = run(["--mbeir_root", sample_root, "--output_dir", out, "--teacher_base_url", llama_base_url,
                 "--teacher_model", LLAMA_MODEL, "--datasets", "webqa,oven", "--routing", "heuristic",
                 "--limit", "3", "--max_tokens", "160", "--temperature", "0.7", "--verifier", "off",
                 "--max_reasks", "1", "--max_retries", "1", "--max_in_flight", "1", "--teacher_timeout_s", "300"])
    assert check_identity(stats, dry_run=False) is None
    assert stats["routed"]["reasoning"] > 0
    failed = _rows(out, "failed")
    image_failures = [f for f in failed if f["dataset"] == "oven"]
    assert image_failures and all(f["error"] in ("server_error", "bad_request") and "multimodal" in f["detail"]
                                  for f in image_failures)
    # Every text-only CoT ended somewhere explicit: accepted, rejected by a rule, or failed as malformed.
    gate_rejects = [r for r in _rows(out, "rejects") if r["stage"] in ("rules", "dedup")]
    malformed = [f for f in failed if f["error"] == "malformed_output"]
    assert stats["accepted"]["reasoning"] + len(gate_rejects) + len(malformed) > 0
    assert all(r["reason"] and r["text"] for r in gate_rejects)
    print(f"SmolLM2 via llama.cpp: {stats['accepted']} accepted, rejected {stats['rejected']}, "
          f"failed {stats['failed']}")
