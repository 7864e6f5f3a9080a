"""The local-run policy: how a run on this machine uses it. Partitions (so memory stays flat), graph worker
processes (Beam's multi_processing mode), and whether the teacher client gets a process of its own, decided
from the run's size and from the cores idle now.

"Idle now" is sampled: the machine's CPU time over a short interval (/proc/stat), not the 1-minute load
average, which still counts a job that ended a minute ago (measured: right after a Curator run the load average
turned the teacher process off and the run made 392 req/s instead of 654). Other runners (Dataflow) get none
of this: they scale out by their own flags.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from apache_beam.options.pipeline_options import DirectOptions, WorkerOptions

from pipeline.options import AUTO_WORKERS_MIN_QUERIES, is_local, local_worker_count
from pipeline.partition import plan_partitions

if TYPE_CHECKING:
    from pipeline.plan import RunPlan

CPU_SAMPLE_S = 0.25  # long enough to average out a scheduler tick (10 ms), short beside a run's start-up
PROC_STAT = "/proc/stat"
Cores = int | Callable[[], int] | None  # idle cores, or what counts them (asked only when a decision needs it)


def cpu_times(path: str = PROC_STAT) -> tuple[float, float] | None:
    """(idle, total) CPU time of the whole machine so far, in ticks; None where the platform has no /proc/stat.
    Idle counts iowait too: a core waiting on a disk is free to run a worker."""
    try:
        with open(path, encoding="ascii") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already in user/nice
    return fields[3] + fields[4], sum(fields[:8])


def idle_cores(cores: int | None = None, sample: Callable[[], tuple[float, float] | None] = cpu_times,
               interval_s: float = CPU_SAMPLE_S, sleep: Callable[[float], None] = time.sleep) -> int:
    """Cores not busy with other work now: the machine's idle share over `interval_s` times its cores, rounded,
    at least 1. Where the CPU time cannot be sampled, cores minus the 1-minute load average."""
    cores = cores or os.cpu_count() or 1
    before = sample()
    if before is not None:
        sleep(interval_s)
        after = sample()
        if after is not None and after[1] > before[1]:
            idle = (after[0] - before[0]) / (after[1] - before[1]) * cores
            return max(1, min(cores, math.floor(idle + 0.5)))
    try:
        load = os.getloadavg()[0]
    except OSError:  # not every platform has a load average
        load = 0.0
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def _idle(cores: Cores) -> int:
    return cores() if callable(cores) else cores or idle_cores()


def _large(query_lines: int | None) -> bool:
    """Worth a second process: at least AUTO_WORKERS_MIN_QUERIES query lines (None: unknown, counted as large)."""
    return query_lines is None or query_lines >= AUTO_WORKERS_MIN_QUERIES


def teacher_process(setting: str, calls: bool, query_lines: int | None, cores: Cores = None) -> bool:
    """--teacher_process: whether a local run's teacher client gets a process of its own. 'auto': for a large
    run that calls the teacher, once 2 cores are idle (idle_cores, or `cores`)."""
    if setting != "auto":
        return setting == "on"
    return calls and _large(query_lines) and _idle(cores) >= 2


def local_workers(setting: str, query_lines: int | None, cores: Cores = None, teacher_core: bool = False) -> int:
    """Graph worker processes of a local run: --local_workers N, or for 'auto' one per idle core (idle_cores, or
    `cores`; one fewer with `teacher_core`: a teacher process has it) for large runs (_large), else 1.
    On a machine busy with other work a second process only adds its own cost (measured: README)."""
    workers = local_worker_count(setting)
    if workers is not None:
        return workers
    if not _large(query_lines):
        return 1
    return max(1, _idle(cores) - teacher_core)


def partitions(opts, plan: RunPlan) -> list[dict] | None:
    """The query partitions of a local run (one when the input fits in one); None when not partitioned."""
    if not is_local(opts) or opts.partition_queries <= 0:
        return None
    return plan_partitions(plan.root, plan.query_files, opts.tasks, opts.limit, opts.partition_queries,
                           opts.max_line_bytes)


def use_teacher_process(opts, plan: RunPlan, query_lines: int | None, cores: Cores = None) -> RunPlan:
    """The plan with the teacher client in its own process when --teacher_process says so (local runs only)."""
    calls = plan.teacher is not None and not plan.dry_run and plan.policy.mode == "online"
    if not (calls and is_local(opts) and teacher_process(opts.teacher_process, calls, query_lines, cores)):
        return plan
    return dataclasses.replace(plan, teacher=dataclasses.replace(plan.teacher, own_process=True))


def use_workers(opts, argv: list[str], query_lines: int | None, teacher_core: bool = False,
                cores: Cores = None) -> int:
    """Sets Beam's direct options for --local_workers (unless they were given explicitly); the workers used."""
    direct = opts.view_as(DirectOptions)
    if not is_local(opts) or any(a.split("=")[0] in ("--direct_num_workers", "--direct_running_mode")
                                 for a in argv):
        return direct.direct_num_workers if direct.direct_running_mode != "in_memory" else 1
    workers = local_workers(opts.local_workers, query_lines, cores, teacher_core=teacher_core)
    direct.direct_num_workers = workers
    direct.direct_running_mode = "multi_processing" if workers > 1 else "in_memory"
    worker = opts.view_as(WorkerOptions)
    if workers > 1 and not any(a.startswith("--default_sdk_harness_log_level") for a in argv):
        worker.default_sdk_harness_log_level = "WARNING"  # else each worker logs its gRPC set-up at INFO
    return workers


def apply(opts, plan: RunPlan, argv: list[str], query_lines: int | None) -> RunPlan:
    """The teacher process and the graph workers of this run (both 'auto's share one sample of the idle cores);
    prints what a multi-process run uses. Returns the plan, with the teacher in its own process or not."""
    cores = functools.cache(idle_cores)
    plan = use_teacher_process(opts, plan, query_lines, cores)
    own = plan.teacher is not None and plan.teacher.own_process
    workers = use_workers(opts, argv, query_lines, teacher_core=own, cores=cores)
    if workers > 1 or own:
        print(f"local run on {workers} graph worker process{'es' if workers > 1 else ''} (--local_workers)"
              f"{', each with a teacher process (--teacher_process)' if own else ''}", flush=True)
    return plan

