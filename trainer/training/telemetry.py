"""Training telemetry: a step's wall time and the part of it spent waiting for data, its memory peak (StepMeter),
the per-step rates the train log records, and the reporters that copy each step's scalars to TensorBoard or
Weights & Biases (--report_to). The reporting libraries are imported only when asked for (pip install '.[telemetry]').
"""

from __future__ import annotations

import importlib.util
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import torch

from common.errors import ConfigError

REPORT_TO = ("none", "tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"  # under output_dir; W&B writes output_dir/wandb/ itself
TAG_PREFIX = "train/"
MEAN_FIELDS = ("samples_per_s", "tokens_per_s", "data_wait_share", "peak_mem_mb", "lr")
INSTALL = "pip install '.[telemetry]'"

T = TypeVar("T")


def check_report_to(name: str) -> None:
    """ConfigError unless `name` is a known reporter (a rule of the config, so also of a train_config.json read
    back where the library may be absent)."""
    if name not in REPORT_TO:
        raise ConfigError(f"--report_to {name!r} is not one of {', '.join(REPORT_TO)}: none (train_log.jsonl only), "
                          "tensorboard or wandb")


def check_installed(name: str) -> None:
    """ConfigError unless the reporter's library is installed (found without importing it), before a run starts."""
    if name != "none" and importlib.util.find_spec(name) is None:
        raise ConfigError(f"--report_to {name} needs the {name} package, which is not installed: {INSTALL}")


@dataclass(frozen=True)
class StepStats:
    seconds: float  # wall time of the step, from asking for its batch to the end of its update
    data_wait: float  # seconds of it blocked on the data iterator
    peak_mem_mb: float


class StepMeter:
    """Times this rank's steps on its own clock. A step starts when its batch is asked for; on CUDA its memory
    peak is reset then (the step's own peak), on CPU it is the process's peak RSS since start (ru_maxrss cannot be
    reset)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._start = self._wait = 0.0

    def next_batch(self, batches: Iterator[T]) -> T:
        """Start a step: its batch from `batches`, timing the wait."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start = time.perf_counter()
        batch = next(batches)
        self._wait = time.perf_counter() - self._start
        return batch

    def stop(self) -> StepStats:
        """End the step (on CUDA once its queued kernels are done)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - self._start
        return StepStats(seconds, self._wait, peak_mem_mb(self.device))


def peak_mem_mb(device: torch.device) -> float:
    """CUDA max allocated on a GPU since its last reset; the process's peak resident memory on CPU (MB = 2**20)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def step_rates(rows: float, tokens: float, stats: StepStats) -> dict[str, float]:
    """The step's throughput (rows and input tokens of the global batch per second), the share of it spent
    waiting for data, and its memory peak."""
    return {"samples_per_s": rows / stats.seconds, "tokens_per_s": tokens / stats.seconds,
            "data_wait_share": stats.data_wait / stats.seconds, "peak_mem_mb": stats.peak_mem_mb}


def means(records: list[dict]) -> dict[str, float]:
    """The mean of each MEAN_FIELDS field over step records (at least one)."""
    return {name: sum(r[name] for r in records) / len(records) for name in MEAN_FIELDS}


def scalars(record: dict) -> dict[str, float]:
    """A step record's numbers (not its step, not its skipped tally), tagged TAG_PREFIX + field."""
    return {TAG_PREFIX + k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}


class Reporter(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardReporter:
    """Scalars into event files under output_dir/tensorboard (`tensorboard --logdir OUTPUT_DIR/tensorboard`)."""

    def __init__(self, log_dir: Path, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run hides the steps an earlier run logged past its checkpoint: they are logged again now.
        self.writer = SummaryWriter(str(log_dir), purge_step=first_step if first_step > 1 else None)

    def log(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    """A W&B run in output_dir/wandb: its project from WANDB_PROJECT, offline with WANDB_MODE=offline (wandb's
    own variables), the run's TrainConfig as its config."""

    def __init__(self, out: Path, config: dict):
        import wandb

        try:
            self.run = wandb.init(dir=str(out), config=config)
        except wandb.errors.UsageError as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"--report_to wandb: {first} (log in with `wandb login` or WANDB_API_KEY, or set "
                              "WANDB_MODE=offline and sync later with `wandb sync`)") from None

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def open_reporter(name: str, out: Path, config: dict, first_step: int) -> Reporter | None:
    """The reporter --report_to names (None for none); first_step is the first step this run will log."""
    if name == "tensorboard":
        return TensorBoardReporter(out / TENSORBOARD_DIR, first_step)
    if name == "wandb":
        return WandbReporter(out, config)
    return None
