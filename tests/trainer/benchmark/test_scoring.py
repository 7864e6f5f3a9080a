"""The UniIR hit-rate scorer on hand-made run and qrels files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import run_cli
from common.errors import ConfigError
from trainer.benchmark import evaluate
from trainer.benchmark.scoring import read_qrels, read_run, score_run

ROOT = Path(__file__).resolve().parents[3]

# CIRR = dataset 8 (task 7), FashionIQ = dataset 7 (task 7).
CIRR_QRELS = """8:1 0 8:100 1 7
8:1 0 8:101 1 7
8:2 0 8:200 1 7
8:3 0 8:300 1 7
8:4 0 8:999 1 7
8:5 0 8:500 0 7
"""
# 8:1 has two positives, the second at rank 3; 8:2 positive at rank 6; 8:3 positive at rank 5, tied in score
# with rank 6 (file order decides); 8:4's positive is not in the pool (never retrieved); 8:5 has no positive
# (rel 0).
CIRR_RUN = [
    ("8:1", ["8:7", "8:8", "8:101", "8:100"]),
    ("8:2", ["8:1", "8:2", "8:3", "8:4", "8:5", "8:200"]),
    ("8:3", ["8:1", "8:2", "8:3", "8:4", "8:300", "8:301"]),
    ("8:4", ["8:1"]),
    ("8:5", ["8:500"]),
]
FIQ_QRELS = "7:1 0 7:10 1 7\n7:2 0 7:20 1 7\n"
FIQ_RUN = [("7:1", [f"7:{i}" for i in range(1, 10)] + ["7:10"]), ("7:2", ["7:21"])]


def write_run(path, blocks, task_id=7, tie_at=None):
    lines = []
    for qid, dids in blocks:
        for r, did in enumerate(dids, 1):
            score = 0.5 if tie_at and r in tie_at else 1.0 - r / 100
            lines.append(f"{qid} Q0 {did} {r} {score:.4f} test {task_id}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def files(tmp_path):
    qdir = tmp_path / "qrels"
    qdir.mkdir()
    (qdir / "mbeir_cirr_task7_test_qrels.txt").write_text(CIRR_QRELS)
    (qdir / "mbeir_fashioniq_task7_test_qrels.txt").write_text(FIQ_QRELS)
    run = tmp_path / "run.txt"
    write_run(run, CIRR_RUN + FIQ_RUN, tie_at={5, 6})
    return run, qdir


def test_hand_computed_hit_rates(files):
    run, qdir = files
    qrels = read_qrels([qdir])
    result = score_run(read_run(run, qrels).pairs, qrels, ks=(1, 5, 10))
    # CIRR: 5 queries. @1: none. @5: 8:1 (rank 3), 8:3 (rank 5, tie broken by file order) -> 2/5.
    # @10: + 8:2 (rank 6) -> 3/5. 8:4 (positive outside the pool) and 8:5 (no positive) never hit.
    assert result["pairs"]["cirr_task7"] == {"Recall@1": 0.0, "Recall@5": 0.4, "Recall@10": 0.6}
    # FashionIQ headline is R@10: 7:1 hits at rank 10, 7:2 misses.
    assert result["pairs"]["fashioniq_task7"] == {"Recall@1": 0.0, "Recall@5": 0.0, "Recall@10": 0.5}
    assert result["headline"]["fashioniq_task7"] == {"metric": "Recall@10", "value": 0.5}
    assert result["headline"]["cirr_task7"]["metric"] == "Recall@5"
    assert result["average"] == round((0.4 + 0.5) / 2, 4)
    assert result["queries"] == {"cirr_task7": 5, "fashioniq_task7": 2}


def test_rank_column_not_file_order_decides(tmp_path):
    (tmp_path / "mbeir_cirr_task7_test_qrels.txt").write_text("8:1 0 8:9 1 7\n")
    run = tmp_path / "run.txt"
    # Written out of order: the positive carries rank 1 but is on the last line.
    run.write_text("8:1 Q0 8:2 2 0.9 x 7\n8:1 Q0 8:3 3 0.8 x 7\n8:1 Q0 8:9 1 0.99 x 7\n")
    result = score_run(read_run(run).pairs, read_qrels([tmp_path / "mbeir_cirr_task7_test_qrels.txt"]), ks=(1,))
    assert result["pairs"]["cirr_task7"]["Recall@1"] == 1.0


def test_qrels_queries_missing_from_run_count_as_misses(tmp_path):
    q = tmp_path / "mbeir_cirr_task7_test_qrels.txt"
    q.write_text("8:1 0 8:1 1 7\n8:2 0 8:2 1 7\n8:3 0 8:3 1 7\n8:4 0 8:4 1 7\n")
    run = tmp_path / "run.txt"
    write_run(run, [("8:1", ["8:1"])])
    qrels = read_qrels([q])
    assert score_run(read_run(run, qrels).pairs, qrels, ks=(5,))["pairs"]["cirr_task7"]["Recall@5"] == 0.25


# ---- bad input: one line naming file:line, exit 2, no traceback; --skip_bad_lines scores the rest ----
GOOD = "8:1 Q0 8:100 1 0.9 r 7\n"


def score_cli(capsys, *args) -> tuple[int, str, str]:
    status = run_cli(evaluate.main, ["score", *args], prog="python -m trainer.evaluate")
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m trainer.evaluate: error: ")
    return lines[0]


@pytest.mark.parametrize("content, message", [
    (GOOD + b"8:2 Q0 8:\xff 1 0.5 r 7\n".decode("latin-1"), "run.txt:2: not UTF-8 text (byte 0xff at column 10)"),
    (GOOD + "8:2 Q0 8:200 1 0.5 r\n", "run.txt:2: a run line has 7 columns ({qid} Q0 {did} {rank} {score} "
                                      "{run_id} {task_id}), got 6"),
    (GOOD + "8:2 Q0 8:200 1 0.5 r 7 extra\n", "run.txt:2: a run line has 7 columns"),
    (GOOD + "8:2 Q0 8:200 first 0.5 r 7\n", "run.txt:2: rank 'first' is not an integer"),
    (GOOD + "8:2 Q0 8:200 1 high r 7\n", "run.txt:2: score 'high' is not a number"),
    (GOOD + "8:2 Q0 8:200 1 0.5 r 7\n8:2 Q0 8:200 2 0.4 r 7\n", "run.txt:3: (8:2, 8:200) repeats line 2"),
    (GOOD + "8:77 Q0 8:200 1 0.5 r 7\n", "run.txt:2: qid 8:77 is not in the qrels of cirr_task7"),
    (GOOD + "9:1 Q0 9:5 1 0.5 r 0\n", "run.txt:2: pair mscoco_task0 (qid 9:1) has no qrels"),
    (GOOD + "99:1 Q0 8:200 1 0.5 r 7\n", "run.txt:2: qid '99:1' with task '7' is no M-BEIR pair"),
])
def test_bad_run_line_is_one_line_with_file_and_line(tmp_path, capsys, content, message):
    qrels = tmp_path / "mbeir_cirr_task7_test_qrels.txt"
    qrels.write_text("8:1 0 8:100 1 7\n8:2 0 8:200 1 7\n")
    run = tmp_path / "run.txt"
    run.write_bytes(content.encode("latin-1"))
    status, out, err = score_cli(capsys, "--run", str(run), "--qrels", str(qrels))
    assert status == 2 and out == ""
    line = one_line_error(err)
    assert f"{run}:" in line and message in line and "--skip_bad_lines" in line


def test_skip_bad_lines_scores_the_rest_and_counts_by_reason(tmp_path, capsys):
    qrels = tmp_path / "mbeir_cirr_task7_test_qrels.txt"
    qrels.write_text("8:1 0 8:100 1 7\n8:2 0 8:200 1 7\n8:3 0 8:300 1 7\n")
    run = tmp_path / "run.txt"
    run.write_bytes(b"8:1 Q0 8:100 1 0.9 r 7\n8:1 Q0 8:100 2 0.8 r 7\n8:2 Q0 8:\xfe 1 0.5 r 7\n"
                    b"8:2 Q0 8:200 x 0.5 r 7\n8:9 Q0 8:200 1 0.5 r 7\n8:2 Q0 8:201 1 0.5 r\n\n")
    status, out, err = score_cli(capsys, "--run", str(run), "--qrels", str(qrels), "--k", "1",
                                 "--skip_bad_lines")
    assert status == 0 and "Traceback" not in err
    result = json.loads(out)
    # 8:1 hits; 8:2 lost its lines and 8:3 never was in the run: both count as misses, as UniIR counts them.
    assert result["pairs"]["cirr_task7"]["Recall@1"] == round(1 / 3, 4)
    assert result["skipped_lines"] == {"duplicate": 1, "not_utf8": 1, "bad_rank": 1, "unknown_qid": 1,
                                       "wrong_columns": 1}
    assert "skipped 5 bad line(s)" in err and f"{run}:2: (8:1, 8:100) repeats line 1" in err
    with pytest.raises(ConfigError, match="run.txt:2: "):
        read_run(run, read_qrels([qrels]))


@pytest.mark.parametrize("qrels_text, message", [
    ("8:1 0 8:1 1 7\nnot a line\n", "q.txt:2: a qrels line has 4 or 5 columns"),
    ("8:1 0 8:1 yes 7\n", "q.txt:1: relevance 'yes' is not an integer"),
    ("8:1 0 8:1 1 7 x y\n", "q.txt:1: a qrels line has 4 or 5 columns"),
])
def test_bad_qrels_line_is_one_line(tmp_path, capsys, qrels_text, message):
    run = tmp_path / "run.txt"
    run.write_text(GOOD)
    (tmp_path / "q.txt").write_text(qrels_text)
    status, _, err = score_cli(capsys, "--run", str(run), "--qrels", str(tmp_path / "q.txt"))
    assert status == 2 and message in one_line_error(err)


def test_missing_or_empty_inputs_and_bad_flags(tmp_path, capsys):
    run = tmp_path / "run.txt"
    run.write_text(GOOD)
    (tmp_path / "mbeir_cirr_task7_test_qrels.txt").write_text("8:1 0 8:100 1 7\n")
    (tmp_path / "empty").mkdir()
    cases = [
        (["--run", str(tmp_path / "nope.txt"), "--qrels", str(tmp_path)], f"--run {tmp_path / 'nope.txt'}: No such file"),
        (["--run", str(tmp_path), "--qrels", str(tmp_path)], f"--run {tmp_path}: Is a directory"),
        (["--run", str(run), "--qrels", str(tmp_path / "gone")], f"--qrels {tmp_path / 'gone'}: no such file"),
        (["--run", str(run), "--qrels", str(tmp_path / "empty")], "holds no *qrels*.txt files"),
        (["--run", str(run), "--qrels", str(tmp_path), "--k", "0,5"], "argument --k: '0,5': every k must be at least 1"),
        (["--run", str(run), "--qrels", str(tmp_path), "--k", "five"], "argument --k: 'five': give comma-separated"),
        (["--run", str(run), "--qrels", str(tmp_path), "--skip_bad"],
         "unknown flag --skip_bad (did you mean --skip_bad_lines?) (see python -m trainer.evaluate score --help)"),
        (["--run", str(run), "--qrels", str(tmp_path), "--kk", "5"], "unknown flag --kk (did you mean --k?)"),
        (["--qrels", str(tmp_path)], "the following arguments are required: --run"),
    ]
    for argv, message in cases:
        status, _, err = score_cli(capsys, *argv)
        assert status == 2, argv
        assert message in one_line_error(err), (argv, err)


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    argv = ["--run", str(tmp_path / "nope.txt"), "--qrels", str(tmp_path)]
    status = run_cli(evaluate.main, ["score", *argv, "--debug"], prog="p")
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("p: error: ")
    monkeypatch.setenv("MBEIR_DEBUG", "1")
    assert run_cli(evaluate.main, ["score", *argv], prog="p") == 2
    assert "Traceback" in capsys.readouterr().err


def test_cli_subprocess_missing_run_file(tmp_path):
    (tmp_path / "mbeir_cirr_task7_test_qrels.txt").write_text("8:1 0 8:100 1 7\n")
    proc = subprocess.run([sys.executable, "-m", "trainer.evaluate", "score", "--run", str(tmp_path / "r.txt"),
                           "--qrels", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"python -m trainer.evaluate: error: --run {tmp_path / 'r.txt'}: No such file or directory"
