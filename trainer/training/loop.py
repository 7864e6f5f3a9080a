"""The training driver: set up (trainer/training/run.py), resume (trainer/training/checkpoint.py), take optimizer
steps (trainer/training/gradcache.py) to the last one, saving checkpoints on the way, and finish. Its command line
is trainer/training/cli.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import torch

from trainer.training import checkpoint
from trainer.training.config import TrainConfig
from trainer.training.data import Example
from trainer.training.gradcache import train_step
from trainer.training.ranks import init_ranks
from trainer.training.run import Run, set_up

LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "train_config.json"


def train(cfg: TrainConfig) -> list[dict]:
    """Run training; returns the per-step log records (rank 0 also writes them to output_dir/train_log.jsonl)."""
    resume = checkpoint.resume_from(cfg)
    run = set_up(cfg, init_ranks(), resume)
    if resume is not None:
        checkpoint.resume(run, resume)
    log = StepLog(run)
    batches = iter(run.data)
    while run.step < run.total:
        log.write(take_step(run, next(batches)))
        if (cfg.save_every and run.step % cfg.save_every == 0) or run.step == run.total:
            checkpoint.save(run, run.out / f"checkpoint-{run.step}")
    finish(run, log)
    return log.records


def take_step(run: Run, examples: list[Example]) -> dict:
    """One optimizer step over this rank's rows of the global batch; its log record."""
    t0 = time.perf_counter()
    run.optimizer.zero_grad(set_to_none=True)
    parts = train_step(run.step_module, run.embedder, examples, run.cfg)
    torch.nn.utils.clip_grad_norm_(run.params, run.cfg.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    dt = time.perf_counter() - t0
    return {"step": run.step, **{k: parts[k] for k in ("loss", "ce", "nce", "route")},
            "lr": run.scheduler.get_last_lr()[0], "samples_per_s": parts["rows"] / dt,
            "tokens_per_s": parts["tokens"] * run.ranks.world / dt, "nce_candidates": parts["nce_candidates"],
            "extra_pass_share": parts["extra_pass_s"] / dt, "skipped": dict(run.data.decode.skipped)}


def finish(run: Run, log: StepLog) -> None:
    """The trained model in output_dir itself (rank 0)."""
    if run.ranks.main:
        run.embedder.save(run.out, base_model=run.base_ref)
    log.close()


class StepLog:
    """The run's records: train_config.json, then one line per step in train_log.jsonl, a tqdm bar or a printed
    line every log_every steps (rank 0 only; every rank keeps its records)."""

    def __init__(self, run: Run):
        self.cfg, self.main, self.records = run.cfg, run.ranks.main, []
        self.file = run.out / LOG_FILE
        self.bar = None
        if self.main:
            run.out.mkdir(parents=True, exist_ok=True)
            (run.out / CONFIG_FILE).write_text(json.dumps(asdict(run.cfg), indent=2))
        if self.main and run.cfg.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=run.total, initial=run.step, desc="train", dynamic_ncols=True)

    def write(self, record: dict) -> None:
        self.records.append(record)
        if not self.main:
            return
        with open(self.file, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", ce=f"{record['ce']:.3f}", nce=f"{record['nce']:.3f}")
        elif record["step"] % self.cfg.log_every == 0:
            print(json.dumps(record), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary(log: list[dict], cfg: TrainConfig) -> str:
    """The end-of-training line: steps, last losses, and every row, row group or shard skipped."""
    if not log:
        return f"nothing to train: {cfg.output_dir} is already at its last step"
    last = log[-1]
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(last.get("skipped", {}).items())) or "none"
    return (f"trained to step {last['step']} in {cfg.output_dir}: loss {last['loss']:.4f}; skipped: {skipped}")
