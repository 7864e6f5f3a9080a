"""The plan: the command line becomes a `RunPlan`, every configuration check done before any work or paid call.

A bad flag, selection, root, key or tokenizer is a ConfigError saying what to change; an unwritable output or
journal folder an OutputError. The graph (pipeline.build) and the driver (pipeline.run) read the plan.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions

from common.errors import ConfigError
from pipeline.mbeir import images, layout
from pipeline.mbeir.read import read_instructions
from pipeline.mbeir.source import resolve_root, selection_files
from pipeline.options import (
    DEFAULT_LOCAL_RUNNER,
    RULE_FLAGS,
    TEACHER_FLAGS,
    MbeirCotOptions,
    is_local,
    local_worker_count,
    take_dry_run,
)
from pipeline.outputs import PENDING_DIR, check_writable
from pipeline.stages.teacher import TeacherPolicy
from pipeline.teacher.config import TeacherConfig
from pipeline.teacher.cost import BATCH_DISCOUNT, PriceTable
from pipeline.teacher.transport import choose_transport
from validators.defaults import RuleConfig


@dataclass(frozen=True)
class RunPlan:
    """What the driver resolved from the options before building the graph."""

    root: str  # M-BEIR root as a Beam FileSystems path (local after an hf:// download)
    query_files: list[str]
    pool_files: list[str]
    output_dir: str
    journal_dir: str
    teacher: TeacherConfig | None
    rules: RuleConfig
    verifier_threshold: float
    dry_run: bool = False
    policy: TeacherPolicy = TeacherPolicy()
    query_lines: dict[str, Any] | None = None  # one partition of a local run: query file -> its line numbers
    report_pool: bool = True  # False in all but the first partition, so pool counts and rejects add up


def parse_options(argv: list[str]) -> tuple[MbeirCotOptions, bool]:
    """(options, dry run) of a command line; a run without --runner gets the local default."""
    beam_argv, dry_run = take_dry_run(argv)
    opts = MbeirCotOptions(beam_argv)
    if opts.view_as(StandardOptions).runner is None:
        opts.view_as(StandardOptions).runner = DEFAULT_LOCAL_RUNNER
    return opts, dry_run


def select_files(split: str, datasets: list[str] | None, tasks: list[int] | None) -> tuple[list[str], list[str]]:
    """(query files, pool files) of a selection, relative to the M-BEIR root; ConfigError for a bad selection."""
    files = selection_files(split, datasets, tasks)
    return ([f for f in files if f.startswith("query/")], [f for f in files if f.startswith("cand_pool/")])


def resolve_plan(opts, dry_run: bool = False) -> RunPlan:
    """Every configuration check, before any work or paid call. Raises ConfigError saying what to change."""
    if not opts.output_dir:
        raise ConfigError("--output_dir is required (a local folder or gs://bucket/path)")
    if not opts.mbeir_root:
        raise ConfigError("--mbeir_root is required (a folder, gs://..., or hf://TIGER-Lab/M-BEIR); "
                          "`python -m pipeline.sample --out DIR` writes the embedded sample")
    query_files, pool_files = select_files(opts.split, opts.datasets, opts.tasks)
    root = resolve_root(opts.mbeir_root, query_files + pool_files + [layout.INSTRUCTIONS],
                        images=opts.download_images, cache_dir=opts.hf_cache_dir)
    if not 0.0 <= opts.verifier_threshold <= 1.0:
        raise ConfigError(f"--verifier_threshold must be within [0, 1], got {opts.verifier_threshold}")
    journal_dir = opts.journal_dir or FileSystems.join(opts.output_dir, "journal")
    teacher = _teacher(opts, journal_dir, dry_run)
    if opts.routing == "judge" and teacher is None:
        raise ConfigError("--routing judge asks the teacher: set --teacher_base_url and --teacher_model")
    _check_limits(opts)
    local_worker_count(opts.local_workers)  # a bad --local_workers stops here
    _check_instructions(root)
    _check_image_dir(root)
    lookup = opts.journal_lookup
    if lookup == "auto":  # a local run's stages fuse around an in-process index; a distributed one joins
        lookup = "index" if is_local(opts) else "join"
    policy = TeacherPolicy(opts.teacher_mode, lookup, opts.max_requests, opts.max_cost_usd,
                           FileSystems.join(opts.output_dir, PENDING_DIR))
    if teacher is not None and policy.mode == "batch":
        teacher = dataclasses.replace(teacher, price_discount=BATCH_DISCOUNT)
    check_writable(opts.output_dir, journal_dir)
    return RunPlan(root=root, query_files=query_files, pool_files=pool_files, output_dir=opts.output_dir,
                   journal_dir=journal_dir, teacher=teacher, rules=_rules(opts),
                   verifier_threshold=opts.verifier_threshold, dry_run=dry_run, policy=policy)


def _price_table(spec: str | None) -> PriceTable:
    if not spec:
        return PriceTable()
    try:
        return PriceTable.from_json(spec) if spec.endswith(".json") else PriceTable.from_flag(spec)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--price_table {spec!r}: {e}") from e


def _teacher(opts, journal_dir: str, dry_run: bool) -> TeacherConfig | None:
    if not (opts.teacher_base_url and opts.teacher_model):
        if dry_run and opts.routing != "judge" and not (opts.teacher_base_url or opts.teacher_model):
            return None
        raise ConfigError("the teacher needs both --teacher_base_url (e.g. http://127.0.0.1:8000/v1) and "
                          "--teacher_model; for a plan without calls add --dry_run")
    config = TeacherConfig(
        base_url=opts.teacher_base_url, model=opts.teacher_model, journal_dir=journal_dir,
        prices=_price_table(opts.price_table), transport=choose_transport(opts.teacher_transport, opts.teacher_base_url),
        **{field: getattr(opts, flag) for flag, field in TEACHER_FLAGS.items()})
    if not dry_run:
        try:
            config.resolve_api_key()
        except ValueError as e:
            raise ConfigError(f"{e} (or choose another variable with --api_key_env)") from e
    return config


def _rules(opts) -> RuleConfig:
    given = {field: getattr(opts, flag) for flag, field in RULE_FLAGS.items() if getattr(opts, flag) is not None}
    config = RuleConfig(**given)
    try:
        config.tokenizer.count("check")  # load it now: a bad --tokenizer stops here, not on a worker
    except Exception as e:  # noqa: BLE001 - any loader error is a configuration error
        raise ConfigError(f"--tokenizer {opts.tokenizer!r} cannot be loaded: {e}") from e
    return config


def _check_limits(opts) -> None:
    for flag in ("max_cost_usd", "max_requests"):
        if getattr(opts, flag) is not None and getattr(opts, flag) < 0:
            raise ConfigError(f"--{flag} must not be negative")
    for flag in ("max_line_bytes", "max_prompt_tokens"):
        if getattr(opts, flag) < 1:
            raise ConfigError(f"--{flag} must be at least 1, got {getattr(opts, flag)}")


def _check_instructions(root: str) -> None:
    """The instructions TSV is read whole by every join worker: a bad row stops the run here, before any work."""
    try:
        read_instructions(root)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{e}; fix that row of the instructions file (columns: query modality, cand modality, "
                          "dataset name, dataset id, prompts) or restore the file from the M-BEIR release") from None


def _check_image_dir(root: str) -> None:
    """A local root whose image folder is a link out of the root would lose every image to unsafe_image_path."""
    if not images.is_local_root(root):
        return
    folder = os.path.join(root, layout.IMAGE_DIR)
    if os.path.isdir(folder) and images.local_image_path(root, layout.IMAGE_DIR) is None:
        raise ConfigError(f"{folder} leads out of --mbeir_root {root} (to {os.path.realpath(folder)}): images are "
                          "never read outside the root, so every image would be rejected as unsafe_image_path; "
                          "mount the images inside the root (e.g. a bind mount) or point --mbeir_root at a folder "
                          "that holds them")
