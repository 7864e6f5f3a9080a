"""The driver: plan (pipeline.plan: every check before any paid call) -> preflight (the teacher answers) ->
execute (the graph, once or per local partition, under the local-run policy of pipeline.local) -> finalize
(pipeline.finalize: stats.json, manifest.json, the card), then the summary. A batch-mode run collects and
submits around it (pipeline.batch_run). All of it holds the output folder (pipeline.outputs.claim): a foreign
folder is refused before the plan touches it, and a run deletes or replaces only files a run writes."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from common.errors import OutputError
from common.outdir import OutputDir
from common.redact import display_url
from pipeline import local
from pipeline.batch_run import BatchRun
from pipeline.build import CARD_SAMPLE_ROWS, build, sample_rank
from pipeline.finalize import REFERENCE_OWNER, finalize, is_reference_teacher
from pipeline.local import idle_cores, local_workers, teacher_process
from pipeline.loopback import loopback_grpc
from pipeline.options import is_local
from pipeline.outputs import (
    BATCH_STATE_DIR,
    OUTPUT_FOLDERS,
    PARTS,
    PENDING_DIR,
    PLAN,
    WORK,
    chain_says_disk_full,
    claim,
    clear_outputs,
    refuse_foreign,
)
from pipeline.partition import merge_partitions
from pipeline.plan import RunPlan, parse_options, resolve_plan, select_files
from pipeline.stats import check_identity, summary
from pipeline.teacher.preflight import preflight
from pipeline.teacher.registry import close_clients

# The driver's names from before its rooms were split out, still importable from here.
__all__ = ["BATCH_STATE_DIR", "OUTPUT_FOLDERS", "PENDING_DIR", "REFERENCE_OWNER", "execute", "finalize",
           "idle_cores", "is_reference_teacher", "local_workers", "resolve_plan", "run", "select_files",
           "teacher_process"]
log = logging.getLogger("pipeline")


def run(argv: list[str] | None = None) -> dict:
    """`python -m pipeline` without the error style (pipeline.__main__ adds it): the stats of the run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    opts, dry_run = parse_options(argv)
    if opts.output_dir:
        refuse_foreign(opts.output_dir, opts.overwrite)
    plan = resolve_plan(opts, dry_run)
    with claim(plan.output_dir, opts.overwrite) as out:
        return _run_claimed(opts, plan, argv, out)


def _run_claimed(opts, plan: RunPlan, argv: list[str], out: OutputDir) -> dict:
    if plan.teacher is not None and not plan.dry_run and not opts.skip_preflight:
        log.info("teacher preflight at %s: %s", display_url(plan.teacher.base_url), preflight(plan.teacher))
    batch = BatchRun.start(plan)
    if plan.policy.budgeted and not plan.dry_run:
        _preview_spend(opts, plan, argv, out)
    with _full_disk_is_an_output_error(plan):
        stats = execute(opts, plan, argv, out)
    print(summary(stats, dry_run=plan.dry_run))
    problem = check_identity(stats, dry_run=plan.dry_run)
    if problem:
        raise RuntimeError(problem)
    if batch is not None:
        stats["batch"] = batch.submit()
    return stats


def execute(opts, plan: RunPlan, argv: list[str], out: OutputDir) -> dict:
    """Run the graph (once, or once per partition on a local runner) and write stats.json, manifest.json and
    the card into `out`, the claimed plan.output_dir."""
    clear_outputs(out)
    try:
        parts = local.partitions(opts, plan)
        lines = sum(len(v) for p in parts for v in p.values()) if parts else None
        graph_plan = local.apply(opts, plan, argv, lines)
        if parts is None or len(parts) == 1:
            _run_graph(opts, graph_plan)
        else:
            _run_partitioned(opts, graph_plan, parts, out)
    finally:
        close_clients()  # in-process runners: make the journal durable before the driver moves on
    return finalize(opts, graph_plan, argv, partitions=len(parts) if parts else 1)


def _run_graph(opts, plan: RunPlan) -> None:
    listen = loopback_grpc() if is_local(opts) else contextlib.nullcontext()  # worker processes: pipeline.loopback
    with listen, beam.Pipeline(options=opts) as p:
        build(p, opts, plan)


def _run_partitioned(opts, plan: RunPlan, parts: list[dict], out: OutputDir) -> None:
    part_dirs = []
    for i, lines in enumerate(parts):
        part_dir = FileSystems.join(plan.output_dir, PARTS, f"p{i:04d}")
        print(f"partition {i + 1}/{len(parts)}: {sum(len(v) for v in lines.values())} query lines", flush=True)
        _run_graph(opts, dataclasses.replace(plan, output_dir=part_dir, query_lines=lines, report_pool=i == 0))
        part_dirs.append(part_dir)
    merge_partitions(plan.output_dir, part_dirs, FileSystems.join(plan.output_dir, WORK), CARD_SAMPLE_ROWS,
                     sample_rank)
    out.remove_own(PARTS)


def _preview_spend(opts, plan: RunPlan, argv: list[str], out: OutputDir) -> None:
    """With a budget, print the dry-run plan (requests, estimated cost) before any call."""
    scratch = out.sub(PLAN)
    preview = execute(opts, dataclasses.replace(plan, dry_run=True, output_dir=scratch.path), argv, scratch)
    out.remove_own(PLAN)
    p = preview["plan"]
    limits = ", ".join(f"{name} {value}" for name, value in (("max_requests", plan.policy.max_requests),
                                                              ("max_cost_usd", plan.policy.max_cost_usd))
                       if value is not None)
    print(f"plan: {p['teacher_requests']} teacher requests (journal hits not yet subtracted), about "
          f"${p['est_cost_usd']:.2f}; budget: {limits}")


@contextlib.contextmanager
def _full_disk_is_an_output_error(plan: RunPlan) -> Iterator[None]:
    try:
        yield
    except Exception as e:
        if chain_says_disk_full(e):
            raise OutputError(
                f"no space left on the device of {plan.output_dir} (or {plan.journal_dir}): free some space or "
                "choose another --output_dir, then rerun the same command. Shards are renamed into place only "
                "when complete, so none is truncated, and every paid answer is in the journal.") from e
        raise
