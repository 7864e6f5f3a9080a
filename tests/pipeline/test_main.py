"""`python -m pipeline` and `make dataset` answer bad flags and values with one line and exit status 2."""

import os

import pytest

from pipeline import make_dataset
from pipeline.__main__ import main


@pytest.mark.parametrize("extra, message", [
    (["--limt", "3"], "python -m pipeline: error: unknown flag --limt (did you mean --limit?)"),
    (["--limit", "abc"], "python -m pipeline: error: argument --limit: invalid int value: 'abc'"),
    (["--split", "dev"], "argument --split: invalid choice: 'dev'"),
    (["--num_workers", "many"], "argument --num_workers: invalid int value: 'many'"),  # a Beam flag
    (["--datasets", "cirr,nope"], "unknown dataset 'nope' in --datasets"),
])
def test_bad_flags_are_one_line(sample_root, tmp_path, capsys, extra, message):
    argv = ["--mbeir_root", sample_root, "--output_dir", str(tmp_path / "o"), "--dry_run", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "o")


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["--mbeir_root", str(tmp_path / "none"), "--output_dir", str(tmp_path / "o"), "--dry_run",
                 "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith(
        f"python -m pipeline: error: --mbeir_root {tmp_path / 'none'} does not exist")


def test_make_dataset_with_half_a_teacher_is_one_line(tmp_path, capsys, monkeypatch, sample_root):
    monkeypatch.setenv("TEACHER_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.delenv("TEACHER_MODEL", raising=False)
    assert make_dataset.main(["--mbeir_root", sample_root, "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == ("python -m pipeline.make_dataset: error: TEACHER_BASE_URL is set but TEACHER_MODEL is not: "
                   "export TEACHER_MODEL too\n")


def test_sample_cli_bad_scale_and_unwritable_out(tmp_path, capsys):
    from pipeline.sample.__main__ import main as sample_main

    assert sample_main(["--out", str(tmp_path / "s"), "--scale", "0"]) == 2
    assert "argument --scale: 0 is below the minimum 1" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert sample_main(["--out", str(tmp_path / "file/s")]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"python -m pipeline.sample: output error: --out {tmp_path / 'file/s'}: cannot write")
