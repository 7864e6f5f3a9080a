"""The output-folder contract (common/outdir.py) as `python -m pipeline`, `make dataset` and `python -m
pipeline.sample` keep it: a foreign folder is refused (exit 2, one line naming it and --overwrite), --overwrite
writes beside other files and never over them, a rerun replaces only the run's own files, a second run is refused
at once naming the holder, and a killed run does not block the rerun."""

from __future__ import annotations

import os

import pytest

from common.outdir import LOCK, MARKER
from pipeline.__main__ import main as pipeline_main
from pipeline.outputs import COMMAND
from tests.common.holder import held_elsewhere, kill, refused
from tests.pipeline.conftest import LIMIT, output_files, run_pipeline

USER_FILES = {"thesis.tex": "years of work", "data/notes.txt": "mine", "data/mine.parquet": "not a shard",
              "rejects/keep.md": "mine", "failed/why.txt": "mine", "plots/my-plot.png": "mine"}


def _dry(root: str, out, *extra: str) -> list[str]:
    return ["--mbeir_root", root, "--output_dir", str(out), "--dry_run", "--limit", LIMIT, *extra]


def _write(folder, files: dict[str, str]) -> None:
    for rel, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
        with open(os.path.join(folder, rel), "w") as f:
            f.write(text)


def test_a_foreign_folder_is_refused_naming_it_and_overwrite(sample_root, tmp_path, capsys):
    _write(tmp_path / "o", {"thesis.tex": "years of work"})
    status = pipeline_main(_dry(sample_root, tmp_path / "o"))
    refused(capsys, status, f"--output_dir {tmp_path / 'o'}", "thesis.tex", "--overwrite")
    assert os.listdir(tmp_path / "o") == ["thesis.tex"]  # left as it was


def test_overwrite_writes_beside_user_files_and_refuses_one_in_the_way(sample_root, tmp_path, capsys):
    out = tmp_path / "o"
    _write(out, USER_FILES)
    assert pipeline_main(_dry(sample_root, out, "--overwrite")) == 0
    assert os.path.exists(out / "stats.json") and os.path.exists(out / MARKER)
    assert {rel: open(out / rel).read() for rel in USER_FILES} == USER_FILES
    _write(tmp_path / "p", {"README.md": "my own card"})
    status = pipeline_main(_dry(sample_root, tmp_path / "p", "--overwrite"))
    refused(capsys, status, "README.md is in the way")
    assert (tmp_path / "p" / "README.md").read_text() == "my own card"


def test_rerun_replaces_only_its_own_files(sample_root, tmp_path, teacher):
    out = str(tmp_path / "o")
    run_pipeline(sample_root, out, teacher=teacher)
    first = output_files(out)
    assert set(first) >= {MARKER, LOCK, "manifest.json", "README.md", "data/train-00000-of-00001.parquet"}
    _write(out, {**USER_FILES, "data/train-00003-of-00004.parquet": "a stale shard of an earlier run"})
    run_pipeline(sample_root, out, teacher=teacher)
    after = output_files(out)
    assert {rel: after.pop(rel).decode() for rel in USER_FILES} == USER_FILES
    assert after.keys() == first.keys()  # the stale shard is gone
    same = [rel for rel in first if rel.endswith(".parquet") or rel.startswith(".mbeir-cot")]
    assert len(same) > 3 and all(after[rel] == first[rel] for rel in same)  # (stats count the journal hits)
    from pipeline.publish import collect_files

    published = collect_files(out, include_rejects=True)
    assert "data/train-00000-of-00001.parquet" in published and not set(USER_FILES) & set(published)


def test_output_from_before_markers_is_recognised_by_its_manifest(sample_root, tmp_path):
    out = tmp_path / "o"
    run_pipeline(sample_root, str(out), "--dry_run")
    os.remove(out / MARKER)
    run_pipeline(sample_root, str(out), "--dry_run")
    assert os.path.exists(out / MARKER)


def test_a_second_run_is_refused_at_once_and_a_killed_one_blocks_nothing(sample_root, tmp_path, capsys):
    out = tmp_path / "o"
    with held_elsewhere(out, COMMAND) as child:
        status = pipeline_main(_dry(sample_root, out))
        refused(capsys, status, f"{out} is being written by another run: pipeline (pid {child.pid} ")
        kill(child)
        assert pipeline_main(_dry(sample_root, out)) == 0
    assert (out / LOCK).read_text() == ""


def test_partitions_stay_inside_the_claim_and_leave_nothing_behind(sample_root, tmp_path, capsys):
    out = tmp_path / "o"
    assert pipeline_main(_dry(sample_root, out, "--partition_queries", "20")) == 0
    assert "partition 2/" in capsys.readouterr().out
    assert not os.path.exists(out / "_parts") and not os.path.exists(out / "_work")
    _write(tmp_path / "p", {"_parts/mine.txt": "x"})
    refused(capsys, pipeline_main(_dry(sample_root, tmp_path / "p", "--overwrite")), "_parts/mine.txt is in the way")


def test_an_object_store_folder_follows_the_contract(sample_root, tmp_path, capsys):
    from tests.pipeline import testfs

    with testfs.mounted(str(tmp_path)):
        _write(tmp_path / "bucket/o", {"notes.txt": "mine"})
        out = testfs.PREFIX + "bucket/o"
        refused(capsys, pipeline_main(_dry(sample_root, out)), f"--output_dir {out}", "--overwrite")
        assert pipeline_main(_dry(sample_root, out, "--overwrite")) == 0
    assert (tmp_path / "bucket/o/notes.txt").read_text() == "mine"
    assert os.path.exists(tmp_path / "bucket/o/stats.json") and not os.path.exists(tmp_path / "bucket/o" / LOCK)


def test_sample_command_follows_the_contract(tmp_path, capsys):
    from pipeline.sample.__main__ import main as sample_main

    _write(tmp_path / "real", {"query/train/mbeir_mscoco_train.jsonl": "a real M-BEIR file\n"})
    refused(capsys, sample_main(["--out", str(tmp_path / "real")]), f"--out {tmp_path / 'real'}", "--overwrite")
    refused(capsys, sample_main(["--out", str(tmp_path / "real"), "--overwrite"]),
             "query/train/mbeir_mscoco_train.jsonl is in the way")
    _write(tmp_path / "s", {"notes.txt": "mine"})
    assert sample_main(["--out", str(tmp_path / "s"), "--overwrite"]) == 0
    first = output_files(str(tmp_path / "s"))
    assert sample_main(["--out", str(tmp_path / "s")]) == 0  # its own output now
    assert output_files(str(tmp_path / "s")) == first and first["notes.txt"] == b"mine"


def test_make_dataset_refuses_a_foreign_output_or_sample_folder_before_writing(tmp_path, capsys):
    from pipeline import make_dataset

    _write(tmp_path / "out", {"notes.txt": "mine"})
    refused(capsys, make_dataset.main(["--output_dir", str(tmp_path / "out")]), f"--output_dir {tmp_path / 'out'}")
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no sample written next to it
    _write(tmp_path / "mbeir-sample", {"photos/cat.jpg": "mine"})
    status = make_dataset.main(["--output_dir", str(tmp_path / "new")])
    refused(capsys, status, str(tmp_path / "mbeir-sample"), "--overwrite")
    assert not os.path.exists(tmp_path / "new")


@pytest.fixture(autouse=True)
def _no_teacher_env(monkeypatch):
    monkeypatch.delenv("TEACHER_BASE_URL", raising=False)
