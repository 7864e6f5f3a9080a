"""Encode the chunks this process owns and has not found cached, with a progress bar and a summary per job.

The model's thread takes prepared pieces from the workers (trainer/benchmark/prefetch.py), embeds them and
writes each chunk when its last piece is in. Seconds spent blocked on the next piece are the model's wait for
data; JobRun keeps them beside the loop's wall time, so the share is measured, not estimated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from tqdm import tqdm

from trainer.benchmark.chunks import Chunk
from trainer.benchmark.config import EvalConfig
from trainer.benchmark.jobs import Assembly, Job
from trainer.benchmark.prefetch import ChunkSource, default_workers, pieces_of
from trainer.benchmark.sharding import Sharding


@dataclass
class JobRun:
    """What this run did for one job (summed over ranks by `merge`; seconds is the slowest rank's wall time)."""

    chunks_encoded: int = 0
    chunks_reused: int = 0  # of the chunks this process owned, those found complete in the cache
    rows: int = 0  # lines (candidates) or queries in the chunks encoded
    seconds: float = 0.0
    busy_seconds: float = 0.0  # wall time summed over ranks
    model_seconds: float = 0.0
    data_wait_seconds: float = 0.0

    def merge(self, other: JobRun) -> JobRun:
        summed = {k: v + getattr(other, k) for k, v in asdict(self).items()}
        return JobRun(**{**summed, "seconds": max(self.seconds, other.seconds)})

    def as_dict(self) -> dict:
        out = {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}
        out["data_wait_share"] = round(self.data_wait_seconds / self.busy_seconds, 4) if self.busy_seconds else None
        return out


def workers(cfg: EvalConfig) -> int:
    return default_workers() if cfg.num_workers is None else cfg.num_workers


def owned_units(jobs: Sequence[Job], sharding: Sharding) -> list[tuple[list[int], int]]:
    """Per job: (the chunks this process must encode, how many of its own it found complete). Work item j is the
    j-th chunk over all jobs in plan order, owned by rank j % world."""
    out, item = [], 0
    for job in jobs:
        mine = [i for i in range(job.store.total) if sharding.mine(item + i)]
        missing = [i for i in mine if not job.store.done(i)]
        out.append((missing, len(mine) - len(missing)))
        item += job.store.total
    return out


def encode_job(job: Job, units: Sequence[int], cfg: EvalConfig, show: bool,
               sink: Callable[[int, Chunk], None] | None = None) -> JobRun:
    """Encode `units` (chunk indices) of `job`; each finished chunk goes to `sink` (default: the cache)."""
    run = JobRun()
    if not units:
        return run
    if sink is None:
        job.store.prepare()
        sink = job.store.write
    assembling: dict[int, Assembly] = {}
    t0 = time.perf_counter()
    total = sum(job.unit_lines(u) for u in units)
    with tqdm(total=total, desc=job.label, unit=f" {job.unit}", disable=not show, mininterval=1.0,
              dynamic_ncols=True, leave=False) as bar:
        pieces = pieces_of(ChunkSource(units, job.pieces), min(workers(cfg), len(units)))  # no idle workers
        while True:
            t = time.perf_counter()
            piece = next(pieces, None)
            run.data_wait_seconds += time.perf_counter() - t
            if piece is None:
                break
            part = assembling.setdefault(piece.unit, Assembly())
            if piece.payload is not None:
                t = time.perf_counter()
                embeddings, extra = job.embed(piece.payload)
                part.add(piece, embeddings, extra, time.perf_counter() - t)
                bar.update(len(piece.ids))
            if piece.end is not None:
                sink(piece.unit, assembling.pop(piece.unit).chunk(piece.end, job.dtype))
                bar.update(piece.end["lines"] - len(part.ids))
                run.chunks_encoded += 1
                run.rows += piece.end["lines"]
                run.model_seconds += part.seconds
    run.seconds = run.busy_seconds = time.perf_counter() - t0
    return run


def encode_all(jobs: Sequence[Job], sharding: Sharding, cfg: EvalConfig) -> list[JobRun]:
    """Encode this process's missing chunks of every job; one JobRun per job."""
    show = cfg.progress and (sharding.rank == 0 or sharding.kind == "shard jobs")
    runs = []
    for job, (units, reused) in zip(jobs, owned_units(jobs, sharding), strict=True):
        run = encode_job(job, units, cfg, show)
        run.chunks_reused = reused
        runs.append(run)
    return runs


def merge_ranks(per_rank: Sequence[Sequence[JobRun]]) -> list[JobRun]:
    merged = list(per_rank[0])
    for runs in per_rank[1:]:
        merged = [a.merge(b) for a, b in zip(merged, runs, strict=True)]
    return merged


def summary(job: Job, run: JobRun) -> str:
    """One line per job: chunks reused and encoded, rows per second, the model's wait for data."""
    line = (f"{job.label}: {job.store.total} chunks, {run.chunks_reused} found cached, {run.chunks_encoded} "
            f"encoded")
    if run.chunks_encoded:
        rate = run.rows / run.seconds if run.seconds else float("inf")
        share = run.data_wait_seconds / run.busy_seconds if run.busy_seconds else 0.0
        line += (f": {run.rows} {job.unit} in {run.seconds:.1f} s ({rate:.1f}/s), model waited for data "
                 f"{100 * share:.0f}% of the time")
    return line
