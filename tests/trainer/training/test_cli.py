"""`python -m trainer.train`: flags and defaults, and every bad flag, path or checkpoint as one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.cli import run_cli
from trainer.training.cli import PROG, check_inputs, parse_args
from trainer.training.config import TrainConfig


def test_cli_applies_tiny_defaults_and_paper_defaults():
    tiny = parse_args(["--data", "d", "--model", "tiny", "--lora_r", "4"])
    assert tiny.lora_r == 4 and tiny.global_batch == 16
    real = parse_args(["--data", "d", "--model", "Qwen/Qwen2.5-VL-7B-Instruct"])
    assert (real.lr, real.global_batch, real.lora_r, real.lora_alpha, real.temperature, real.warmup_ratio) == \
        (TrainConfig.lr, 1024, 128, 256, 0.05, 0.03)


def train_cli(capsys, argv) -> tuple[int, str]:
    status = run_cli(main_with_errors, argv, prog=PROG)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), err
    return status, lines[0]


def main_with_errors(argv):
    """trainer.train's main without its own error handling, so run_cli's answer is what is checked."""
    cfg = parse_args(argv)
    check_inputs(cfg)
    return 0


@pytest.mark.parametrize("flags, message", [
    (["--micro_batch", "0"], "--micro_batch 0 is out of range: it must be at least 1"),
    (["--global_batch", "1"], "--global_batch 1 is out of range: it must be at least 2"),
    (["--temperature", "0"], "--temperature 0.0 is out of range: it must be above 0"),
    (["--temperature", "nan"], "--temperature nan is out of range"),
    (["--lr", "-0.001"], "--lr -0.001 is out of range: it must be above 0"),
    (["--warmup_ratio", "1.5"], "--warmup_ratio 1.5 is out of range: it must be in [0, 1)"),
    (["--lora_dropout", "1"], "--lora_dropout 1.0 is out of range"),
    (["--global_batch", "16", "--micro_batch", "32"], "--micro_batch 32 is above --global_batch 16"),
    (["--epochs", "0"], "--epochs 0 with --max_steps 0 trains nothing"),
    (["--ce_weight", "0", "--nce_weight", "0", "--route_weight", "0"], "all 0: nothing to train"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--progress", "maybe"], "argument --progress: 'maybe' is not a boolean: use true or false"),
    (["--negatives", "all"], "--negatives 'all' is not one of global, micro"),
    (["--batch_size", "8"], "unknown flag --batch_size (did you mean --global_batch or --micro_batch?)"),
])
def test_flag_out_of_range(sample_cot, capsys, flags, message):
    status, line = train_cli(capsys, ["--data", sample_cot, *flags])
    assert status == 2 and message in line, line


def _fake_ckpt(path, trace: dict, files=()) -> str:
    path.mkdir(parents=True)
    torch.save({}, path / "training_state.pt")
    (path / "trace_config.json").write_text(json.dumps(trace))
    for name, text in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return str(path)


def test_bad_paths_and_checkpoints(sample_cot, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notamodel").mkdir()
    base_a, base_b = tmp_path / "base_a", tmp_path / "base_b"
    for folder, width in ((base_a, 64), (base_b, 128)):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "hidden_size": width}))
    lora = _fake_ckpt(tmp_path / "lora/checkpoint-2", {"base_model": "Qwen/Qwen2-VL-2B-Instruct", "lora_r": 128},
                      [("adapter/adapter_config.json", "{}")])
    full = _fake_ckpt(tmp_path / "full/checkpoint-2", {"base_model": ".", "lora_r": 0},
                      [("config.json", (base_a / "config.json").read_text()), ("model.safetensors", "")])
    data = ["--data", sample_cot]
    cases = [
        (["--data", str(tmp_path / "gone")], f"--data {tmp_path / 'gone'} does not exist"),
        (["--data", str(tmp_path / "empty")], f"--data {tmp_path / 'empty'}: no Parquet shards there"),
        ([], "--data is required"),
        ([*data, "--model", str(tmp_path / "nomodel")], f"--model {tmp_path / 'nomodel'} does not exist"),
        ([*data, "--model", str(tmp_path / "notamodel")], "is a folder without config.json"),
        ([*data, "--mbeir_root", str(tmp_path / "nowhere")], f"--mbeir_root {tmp_path / 'nowhere'} is not a folder"),
        ([*data, "--resume", str(tmp_path / "empty")], f"--resume {tmp_path / 'empty'} is not a training checkpoint"),
        ([*data, "--model", "Qwen/Qwen2-VL-7B-Instruct", "--resume", lora],
         f"--resume {lora} was trained from Qwen/Qwen2-VL-2B-Instruct, not --model Qwen/Qwen2-VL-7B-Instruct"),
        ([*data, "--model", "Qwen/Qwen2-VL-2B-Instruct", "--lora_r", "64", "--resume", lora],
         f"--resume {lora} was trained with --lora_r 128, not 64: pass --lora_r 128"),
        ([*data, "--model", str(base_b), "--lora_r", "0", "--resume", full],
         f"--resume {full} was trained from a model of another architecture"),
        ([*data, "--model", "tiny", "--resume", lora], "was trained with --lora_r 128, not 0"),
    ]
    for argv, message in cases:
        status, line = train_cli(capsys, argv)
        assert status == 2 and message in line, (argv, line)
    assert main_with_errors([*data, "--model", str(base_a), "--lora_r", "0", "--resume", full]) == 0


def test_unwritable_output_is_exit_3(sample_cot, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert run_cli(main_with_errors, ["--data", sample_cot, "--output_dir", str(tmp_path / "file/out")],
                   prog=PROG) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"{PROG}: output error: --output_dir {tmp_path / 'file/out'}: cannot write there")


def test_cli_subprocess_wiring(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer.train", "--data", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"{PROG}: error: --data {tmp_path / 'none'} does not exist: give an M-BEIR-CoT " \
                                  "folder (DATA/data/*.parquet), a glob or a Parquet file"


def test_a_model_that_cannot_be_loaded_is_one_line(sample_cot, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "trainer.train", "--data", sample_cot, "--model",
                           "nobody/no-such-model", "--output_dir", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{PROG}: error: cannot load the model at nobody/no-such-model: "), proc.stderr
