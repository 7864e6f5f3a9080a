"""Training telemetry: each step's throughput, data wait, memory peak and learning rate in train_log.jsonl and
the end summary, and the same scalars in TensorBoard event files (read back) or an offline W&B run."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.cli import run_cli
from trainer.training import telemetry
from trainer.training.cli import PROG, main, parse_args
from trainer.training.run import cosine_with_warmup

TELEMETRY_FIELDS = ("lr", "samples_per_s", "tokens_per_s", "data_wait_share", "peak_mem_mb")


def _tiny_run(sample_cot, sample_root, out, *flags) -> list[dict]:
    torch.set_num_threads(1)
    assert main(["--data", sample_cot, "--mbeir_root", sample_root, "--model", "tiny", "--global_batch", "8",
                 "--micro_batch", "8", "--progress", "false", "--output_dir", str(out), *flags]) == 0
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _schedule(base_lr: float, warmup_ratio: float, total: int) -> list[float]:
    """The learning rate each of `total` steps applies under run.py's schedule."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = cosine_with_warmup(opt, round(warmup_ratio * total), total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def read_scalars(log_dir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the event files under log_dir, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _f32(x: float) -> float:
    return float(np.float32(x))  # event files hold float32


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs the telemetry extra")
def test_step_fields_summary_and_tensorboard_scalars_equal_the_train_log(sample_cot, sample_root, tmp_path,
                                                                        capsys):
    out = tmp_path / "tb"
    log = _tiny_run(sample_cot, sample_root, out, "--max_steps", "4", "--warmup_ratio", "0.5",
                    "--report_to", "tensorboard")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for record in log:
        assert 0 <= record["data_wait_share"] <= 1 and record["samples_per_s"] > 0, record
        assert record["tokens_per_s"] > record["samples_per_s"] and record["peak_mem_mb"] > 0, record
    # warm-up to the base rate over 2 steps, then cosine decay: the rate each step applied
    assert [r["lr"] for r in log] == pytest.approx(_schedule(3e-4, 0.5, 4), rel=1e-12)
    lrs = [r["lr"] for r in log]
    assert lrs[0] < lrs[1] == pytest.approx(3e-4) and lrs[3] < lrs[2], lrs

    scalars = read_scalars(out / telemetry.TENSORBOARD_DIR)
    for field in ("loss", "ce", "nce", "route", *TELEMETRY_FIELDS, "extra_pass_share", "nce_candidates"):
        assert scalars[f"train/{field}"] == {r["step"]: _f32(r[field]) for r in log}, field

    mean = {k: sum(r[k] for r in log) / 4 for k in TELEMETRY_FIELDS}
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"trained to step 4 in {out}")
    assert (f"mean per step: {mean['samples_per_s']:.1f} samples/s, {mean['tokens_per_s']:.0f} tokens/s, "
            f"data wait {mean['data_wait_share']:.1%}, peak memory {mean['peak_mem_mb']:.0f} MB, "
            f"lr {mean['lr']:.3g}") in summary


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="needs the telemetry extra")
def test_wandb_offline_writes_its_run_under_the_output_folder(sample_cot, sample_root, tmp_path, monkeypatch):
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"),
                        ("WANDB_CONFIG_DIR", tmp_path / "cfg"), ("WANDB_CACHE_DIR", tmp_path / "cache"),
                        ("WANDB_DATA_DIR", tmp_path / "data")):
        monkeypatch.setenv(name, str(value))
    out = tmp_path / "wb"
    _tiny_run(sample_cot, sample_root, out, "--max_steps", "1", "--report_to", "wandb")
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(f.stat().st_size > 0 for f in runs[0].glob("run-*.wandb")), runs


def test_tensorboard_hides_the_steps_a_resumed_run_logs_again(tmp_path):
    pytest.importorskip("tensorboard")
    first = telemetry.open_reporter("tensorboard", tmp_path, {}, first_step=1)
    for step in (1, 2, 3, 4):
        first.log({"train/loss": float(step)}, step)
    first.close()
    resumed = telemetry.open_reporter("tensorboard", tmp_path, {}, first_step=3)
    for step in (3, 4):
        resumed.log({"train/loss": 10.0 * step}, step)
    resumed.close()
    assert read_scalars(tmp_path / telemetry.TENSORBOARD_DIR)["train/loss"] == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_data_wait_share_is_the_time_blocked_on_the_iterator_over_the_whole_step(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(telemetry.time, "perf_counter", clock)

    def batches():
        while True:
            clock.now += 3.0  # blocked reading
            yield ["row"] * 6

    meter, it = telemetry.StepMeter(torch.device("cpu")), batches()
    assert meter.next_batch(it) == ["row"] * 6
    clock.now += 1.0  # the step's compute
    stats = meter.stop()
    assert (stats.seconds, stats.data_wait) == (4.0, 3.0) and stats.peak_mem_mb > 0
    rates = telemetry.step_rates(rows=6, tokens=600, stats=stats)
    assert rates == {"samples_per_s": 1.5, "tokens_per_s": 150.0, "data_wait_share": 0.75,
                     "peak_mem_mb": stats.peak_mem_mb}


def test_scalars_are_the_numbers_of_a_record_tagged():
    record = {"step": 3, "loss": 1.5, "nce_candidates": 16, "lr": 1e-4, "skipped": {"bad_row": 1}, "flag": True}
    assert telemetry.scalars(record) == {"train/loss": 1.5, "train/nce_candidates": 16.0, "train/lr": 1e-4}


@pytest.mark.parametrize("value, message", [
    ("mlflow", "--report_to 'mlflow' is not one of none, tensorboard, wandb"),
    ("TensorBoard", "--report_to 'TensorBoard' is not one of none, tensorboard, wandb"),
])
def test_bad_report_to_is_one_line_exit_2(capsys, value, message):
    assert run_cli(parse_args, ["--data", "d", "--report_to", value], prog=PROG) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: ") and message in err, err


def test_a_reporter_whose_library_is_missing_is_one_line_naming_the_extra_before_the_model_loads(
        sample_cot, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert parse_args(["--data", "d", "--report_to", "wandb"]).report_to == "wandb"  # a valid config all the same
    assert main(["--data", sample_cot, "--output_dir", str(tmp_path / "out"), "--report_to", "wandb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--report_to wandb needs the wandb package" in err, err
    assert "pip install '.[telemetry]'" in err and not (tmp_path / "out" / "tiny_base").exists()


def test_report_to_defaults_to_none_and_imports_no_reporting_library():
    code = ("import sys; from pathlib import Path; from trainer.training import cli, telemetry; "
            "assert cli.parse_args(['--data', 'd']).report_to == 'none'; "
            "assert telemetry.open_reporter('none', Path('.'), {}, 1) is None; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('wandb', 'tensorboard') "
            "or m.startswith('torch.utils.tensorboard')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_a_train_config_naming_a_reporter_reads_back_where_its_library_is_absent(tmp_path, monkeypatch):
    from dataclasses import asdict, replace

    from trainer.training.config import TrainConfig
    from trainer.training.config_file import read_train_config

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # trainer.release's machine
    path = tmp_path / "train_config.json"
    path.write_text(json.dumps(asdict(replace(TrainConfig(data="d"), report_to="wandb"))))
    assert read_train_config(path)["report_to"] == "wandb"
