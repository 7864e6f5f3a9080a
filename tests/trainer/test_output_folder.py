"""The output-folder contract (common/outdir.py) as the trainer's commands keep it: a foreign folder is refused
(exit 2, one line naming it and --overwrite), --overwrite writes beside other files and never over them, a rerun
replaces only the command's own files, a second run is refused at once naming the holder, and a killed run does
not block the rerun."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.cli import run_cli
from common.outdir import LOCK, MARKER, claim_output_dir
from tests.common.holder import held_elsewhere, kill, refused
from tests.trainer.benchmark.test_evaluate import BagOfWordsEmbedder, build_root
from trainer.benchmark import bench, evaluate


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory) -> Path:
    return build_root(tmp_path_factory.mktemp("eval") / "mbeir")


def _bench(root: Path, out: Path, *extra: str) -> int:
    argv = ["--mbeir_root", str(root), "--checkpoint", "unused", "--pairs", "mscoco_task0", "--modes", "direct",
            "--limit", "2", "--output_dir", str(out), *extra]
    return run_cli(lambda a: bench.main(a, embedder=BagOfWordsEmbedder()), argv, prog="python -m trainer.bench")


def test_bench_refuses_a_foreign_folder_and_writes_beside_it_with_overwrite(eval_root, tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused(capsys, _bench(eval_root, out), f"--output_dir {out}", "notes.txt", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert _bench(eval_root, out, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "bench.json").exists()
    assert _bench(eval_root, out) == 0  # its own output now: no --overwrite needed
    assert (out / "notes.txt").read_text() == "mine"
    capsys.readouterr()
    other = tmp_path / "c"
    other.mkdir()
    (other / "bench.png").write_text("my plot")
    refused(capsys, _bench(eval_root, other, "--overwrite"), "bench.png is in the way")
    assert (other / "bench.png").read_text() == "my plot"


def test_bench_second_run_is_refused_and_a_killed_one_blocks_nothing(eval_root, tmp_path, capsys):
    out = tmp_path / "b"
    with held_elsewhere(out, bench.COMMAND) as child:
        refused(capsys, _bench(eval_root, out), f"{out} is being written by another run: trainer.bench (pid {child.pid} ")
        kill(child)
        assert _bench(eval_root, out) == 0
    assert (out / LOCK).read_text() == "" and (out / MARKER).exists()


def _evaluate(root: Path, out: Path, *extra: str) -> int:
    argv = ["--mbeir_root", str(root), "--checkpoint", "unused", "--pairs", "webqa_task1", "--output_dir", str(out),
            "--progress", "false", *extra]
    return run_cli(lambda a: evaluate.main(a, embedder=BagOfWordsEmbedder()), argv, prog="python -m trainer.evaluate")


def test_evaluate_refuses_a_foreign_folder_and_writes_beside_it_with_overwrite(eval_root, tmp_path, capsys):
    out = tmp_path / "e"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "my_notes.txt").write_text("mine")
    refused(capsys, _evaluate(eval_root, out), f"--output_dir {out}", "runs/my_notes.txt", "--overwrite")
    assert _evaluate(eval_root, out, "--overwrite") == 0
    assert (out / "runs" / "my_notes.txt").read_text() == "mine" and (out / "results.json").exists()
    assert any((out / "embedding_cache").rglob("*.chunk"))
    assert _evaluate(eval_root, out) == 0  # its own output, the cache included
    assert (out / "runs" / "my_notes.txt").read_text() == "mine"
    capsys.readouterr()
    for theirs in ("results.tsv", "embedding_cache/their-cache.bin"):
        other = tmp_path / theirs.replace("/", "_")
        (other / theirs).parent.mkdir(parents=True, exist_ok=True)
        (other / theirs).write_text("theirs")
        refused(capsys, _evaluate(eval_root, other, "--overwrite"), f"{theirs} is in the way")


def test_evaluate_shard_jobs_share_the_folder_and_keep_a_scoring_run_out(eval_root, tmp_path, capsys):
    out = tmp_path / "e"
    with claim_output_dir(out, command=evaluate.COMMAND, patterns=(), shared=True):  # shard job 0 of 2, running
        assert _evaluate(eval_root, out, "--num_shards", "2", "--shard_index", "1") == 0
        capsys.readouterr()
        refused(capsys, _evaluate(eval_root, out), f"{out} is being written by another run: trainer.evaluate (pid ")
    assert _evaluate(eval_root, out) == 0


def test_evaluate_killed_run_does_not_block_the_rerun(eval_root, tmp_path, capsys):
    out = tmp_path / "e"
    with held_elsewhere(out, evaluate.COMMAND) as child:
        refused(capsys, _evaluate(eval_root, out), f"trainer.evaluate (pid {child.pid} ")
        kill(child)
        assert _evaluate(eval_root, out) == 0
    assert (out / LOCK).read_text() == ""


def _train(data: str, root: str, out: Path, *extra: str) -> int:
    from trainer.training.cli import main

    return main(["--data", data, "--mbeir_root", root, "--model", "tiny", "--global_batch", "4", "--micro_batch", "4",
                 "--max_steps", "1", "--progress", "false", "--output_dir", str(out), *extra])


def test_train_refuses_a_foreign_folder_and_never_replaces_its_files(sample_cot, sample_root, tmp_path, capsys):
    out = tmp_path / "t"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused(capsys, _train(sample_cot, sample_root, out), f"--output_dir {out}", "notes.txt", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    for theirs in ("config.json", "train_log.jsonl"):
        other = tmp_path / theirs
        other.mkdir()
        (other / theirs).write_text("theirs")
        refused(capsys, _train(sample_cot, sample_root, other, "--overwrite"), f"{theirs} is in the way")
        assert (other / theirs).read_text() == "theirs"
    assert _train(sample_cot, sample_root, out, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "trace_config.json").exists()


def test_train_reruns_and_resumes_in_its_own_folder(sample_cot, sample_root, tmp_path):
    out = tmp_path / "t"
    assert _train(sample_cot, sample_root, out, "--save_every", "1") == 0
    (out / "notes.txt").write_text("mine")  # the user's, beside the run's files
    assert _train(sample_cot, sample_root, out, "--max_steps", "2", "--resume", "auto") == 0
    steps = [line for line in (out / "train_log.jsonl").read_text().splitlines() if line]
    assert len(steps) == 2 and (out / "notes.txt").read_text() == "mine"  # resumed: the log goes on


def test_train_second_run_is_refused_and_a_killed_one_blocks_nothing(sample_cot, sample_root, tmp_path, capsys):
    from trainer.training.cli import COMMAND

    out = tmp_path / "t"
    with held_elsewhere(out, COMMAND) as child:
        refused(capsys, _train(sample_cot, sample_root, out), f"trainer.train (pid {child.pid} ")
        kill(child)
        assert _train(sample_cot, sample_root, out) == 0
    assert (out / LOCK).read_text() == ""


def test_under_torchrun_only_rank_0_claims_the_folder(tmp_path, monkeypatch):
    from trainer.training.cli import claim_output
    from trainer.training.config import TrainConfig

    cfg = TrainConfig(output_dir=str(tmp_path / "t"))
    monkeypatch.setenv("RANK", "1")
    with claim_output(cfg):
        assert not (tmp_path / "t").exists()
    monkeypatch.setenv("RANK", "0")
    with claim_output(cfg):
        assert (tmp_path / "t" / MARKER).exists()


def test_output_from_before_markers_is_recognised(eval_root, tmp_path, capsys):
    for name, run, legacy in (("b", _bench, "bench.json"), ("e", _evaluate, "results.json")):
        out = tmp_path / name
        out.mkdir()
        (out / legacy).write_text("{}")  # an earlier run's, written before output folders were marked
        assert run(eval_root, out) == 0, capsys.readouterr().err
        assert (out / MARKER).exists()
