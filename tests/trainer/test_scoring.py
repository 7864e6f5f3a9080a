"""The UniIR hit-rate scorer on hand-made run and qrels files."""

import pytest

from trainer.scoring import read_qrels, read_run, score_run

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
# (rel 0); 8:6 appears only in the run (no qrels at all).
CIRR_RUN = [
    ("8:1", ["8:7", "8:8", "8:101", "8:100"]),
    ("8:2", ["8:1", "8:2", "8:3", "8:4", "8:5", "8:200"]),
    ("8:3", ["8:1", "8:2", "8:3", "8:4", "8:300", "8:301"]),
    ("8:4", ["8:1"]),
    ("8:5", ["8:500"]),
    ("8:6", ["8:600"]),
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
    result = score_run(read_run(run), read_qrels([qdir]), ks=(1, 5, 10))
    # CIRR: 6 queries. @1: none. @5: 8:1 (rank 3), 8:3 (rank 5, tie broken by file order) -> 2/6.
    # @10: + 8:2 (rank 6) -> 3/6. 8:4 (positive outside the pool), 8:5 (no positive), 8:6 (no qrels) never hit.
    assert result["pairs"]["cirr_task7"] == {"Recall@1": 0.0, "Recall@5": round(2 / 6, 4),
                                             "Recall@10": 0.5}
    # FashionIQ headline is R@10: 7:1 hits at rank 10, 7:2 misses.
    assert result["pairs"]["fashioniq_task7"] == {"Recall@1": 0.0, "Recall@5": 0.0, "Recall@10": 0.5}
    assert result["headline"]["fashioniq_task7"] == {"metric": "Recall@10", "value": 0.5}
    assert result["headline"]["cirr_task7"]["metric"] == "Recall@5"
    assert result["average"] == round((0.3333 + 0.5) / 2, 4)
    assert result["queries"] == {"cirr_task7": 6, "fashioniq_task7": 2}


def test_rank_column_not_file_order_decides(tmp_path):
    (tmp_path / "mbeir_cirr_task7_test_qrels.txt").write_text("8:1 0 8:9 1 7\n")
    run = tmp_path / "run.txt"
    # Written out of order: the positive carries rank 1 but is on the last line.
    run.write_text("8:1 Q0 8:2 2 0.9 x 7\n8:1 Q0 8:3 3 0.8 x 7\n8:1 Q0 8:9 1 0.99 x 7\n")
    result = score_run(read_run(run), read_qrels([tmp_path / "mbeir_cirr_task7_test_qrels.txt"]), ks=(1,))
    assert result["pairs"]["cirr_task7"]["Recall@1"] == 1.0


def test_qrels_queries_missing_from_run_count_as_misses(tmp_path):
    q = tmp_path / "mbeir_cirr_task7_test_qrels.txt"
    q.write_text("8:1 0 8:1 1 7\n8:2 0 8:2 1 7\n8:3 0 8:3 1 7\n8:4 0 8:4 1 7\n")
    run = tmp_path / "run.txt"
    write_run(run, [("8:1", ["8:1"])])
    assert score_run(read_run(run), read_qrels([q]), ks=(5,))["pairs"]["cirr_task7"]["Recall@5"] == 0.25


def test_bad_lines_give_clear_errors(tmp_path):
    run = tmp_path / "run.txt"
    run.write_text("8:1 Q0 8:1 1 0.5 x\n")
    with pytest.raises(ValueError, match="7 columns"):
        read_run(run)
    q = tmp_path / "q.txt"
    q.write_text("8:1 0 8:1 1 7\nnot a line\n")
    with pytest.raises(ValueError, match="q.txt:2"):
        read_qrels([q])

