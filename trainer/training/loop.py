"""The training driver: set up (trainer/training/run.py), resume (trainer/training/checkpoint.py), take optimizer
steps (trainer/training/gradcache.py) to the last one, saving checkpoints on the way, and finish. Each step's
record carries its telemetry (trainer/training/telemetry.py), also sent to --report_to. Its command line is
trainer/training/cli.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import torch

from trainer.training import checkpoint, telemetry
from trainer.training.config import TrainConfig
from trainer.training.data import Example
from trainer.training.gradcache import train_step
from trainer.training.ranks import init_ranks, sum_over_ranks
from trainer.training.run import Run, set_up

LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "train_config.json"
LOSS_TERMS = ("loss", "ce", "nce", "route")


def train(cfg: TrainConfig) -> list[dict]:
    """Run training; returns the per-step log records (rank 0 also writes them to output_dir/train_log.jsonl)."""
    telemetry.check_installed(cfg.report_to)
    resume = checkpoint.resume_from(cfg)
    run = set_up(cfg, init_ranks(), resume)
    if resume is not None:
        checkpoint.resume(run, resume)
    log = StepLog(run)
    try:
        take_steps(run, log)
        if run.ranks.main:
            run.embedder.save(run.out, base_model=run.base_ref)  # the trained model in output_dir itself
    finally:
        log.close()
    return log.records


def take_steps(run: Run, log: StepLog) -> None:
    """Optimizer steps to the last one, each logged, checkpoints saved on the way (outside the steps' time)."""
    meter, batches = telemetry.StepMeter(run.ranks.device), iter(run.data)
    while run.step < run.total:
        parts, lr = take_step(run, meter.next_batch(batches))
        log.write(step_record(run, parts, lr, meter.stop()))
        if (run.cfg.save_every and run.step % run.cfg.save_every == 0) or run.step == run.total:
            checkpoint.save(run, run.out / f"checkpoint-{run.step}")


def take_step(run: Run, examples: list[Example]) -> tuple[dict, float]:
    """One optimizer step over this rank's rows of the global batch: (train_step's parts, the learning rate the
    step applied)."""
    run.optimizer.zero_grad(set_to_none=True)
    parts = train_step(run.step_module, run.embedder, examples, run.cfg)
    torch.nn.utils.clip_grad_norm_(run.params, run.cfg.max_grad_norm)
    lr = run.optimizer.param_groups[0]["lr"]  # the scheduler's step below sets the next step's
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    return parts, lr


def step_record(run: Run, parts: dict, lr: float, stats: telemetry.StepStats) -> dict:
    """A step's log record: losses, learning rate, telemetry (rates over the global batch, this rank's data wait
    and memory), the InfoNCE width, the gradient cache's share and the running skipped tally."""
    tokens = sum_over_ranks([parts["tokens"]], run.ranks.device)[0]
    return {"step": run.step, **{k: parts[k] for k in LOSS_TERMS}, "lr": lr,
            **telemetry.step_rates(parts["rows"], tokens, stats), "nce_candidates": parts["nce_candidates"],
            "extra_pass_share": parts["extra_pass_s"] / stats.seconds, "skipped": dict(run.data.decode.skipped)}


class StepLog:
    """The run's records: train_config.json, then one line per step in train_log.jsonl, the step's scalars to the
    --report_to reporter, a tqdm bar or a printed line every log_every steps (rank 0 only; every rank keeps its
    records)."""

    def __init__(self, run: Run):
        self.cfg, self.main, self.records = run.cfg, run.ranks.main, []
        self.file = run.out / LOG_FILE
        self.bar = self.reporter = None
        if not self.main:
            return
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / CONFIG_FILE).write_text(json.dumps(asdict(run.cfg), indent=2))
        self.reporter = telemetry.open_reporter(run.cfg.report_to, run.out, asdict(run.cfg), run.step + 1)
        if run.cfg.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=run.total, initial=run.step, desc="train", dynamic_ncols=True)

    def write(self, record: dict) -> None:
        self.records.append(record)
        if not self.main:
            return
        with open(self.file, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.reporter is not None:
            self.reporter.log(telemetry.scalars(record), record["step"])
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", ce=f"{record['ce']:.3f}", nce=f"{record['nce']:.3f}")
        elif record["step"] % self.cfg.log_every == 0:
            print(json.dumps(record), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.reporter is not None:
            self.reporter.close()


def summary(log: list[dict], cfg: TrainConfig) -> str:
    """The end-of-training line: steps, last losses, every row, row group or shard skipped, and the mean
    telemetry per step."""
    if not log:
        return f"nothing to train: {cfg.output_dir} is already at its last step"
    last = log[-1]
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(last.get("skipped", {}).items())) or "none"
    line = f"trained to step {last['step']} in {cfg.output_dir}: loss {last['loss']:.4f}; skipped: {skipped}"
    mean = telemetry.means(log)
    return (f"{line}; mean per step: {mean['samples_per_s']:.1f} samples/s, {mean['tokens_per_s']:.0f} tokens/s, "
            f"data wait {mean['data_wait_share']:.1%}, peak memory {mean['peak_mem_mb']:.0f} MB, lr {mean['lr']:.3g}")
