"""The driver: check the configuration (before any paid call), run the graph, then write stats.json,
manifest.json and the dataset card, and print the summary."""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import shlex
import sys
import uuid
from collections import Counter

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions, WorkerOptions

from common.errors import ConfigError, OutputError
from pipeline import shards
from pipeline.build import CARD_SAMPLE_ROWS, WORK, RunPlan, build, sample_rank
from pipeline.card.card import write_card
from pipeline.mbeir import images, layout
from pipeline.mbeir.read import read_instructions
from pipeline.mbeir.source import resolve_root, selection_files
from pipeline.options import (
    AUTO_WORKERS_MIN_QUERIES,
    DEFAULT_LOCAL_RUNNER,
    LOCAL_RUNNERS,
    MbeirCotOptions,
    take_dry_run,
)
from pipeline.partition import PARTS, merge_partitions, plan_partitions
from pipeline.stages.teacher import TeacherPolicy, close_clients
from pipeline.stats import check_identity, summary, to_stats
from pipeline.teacher.batch import BatchJobs
from pipeline.teacher.budget import Budget
from pipeline.teacher.client import TeacherConfig, choose_transport
from pipeline.teacher.cost import BATCH_DISCOUNT, PriceTable
from pipeline.teacher.preflight import preflight
from validators.defaults import VERIFIER_MIN_CONFIDENCE, RuleConfig

log = logging.getLogger("pipeline")
REFERENCE_OWNER = "offline-reference"  # pipeline/teacher/reference_server.py's /v1/models owner
PENDING_DIR, BATCH_STATE_DIR = "batches/pending", "batches/state"
# Rewritten by every run; the journal and the batch state are kept.
OUTPUT_FOLDERS = ("data", "rejects", "failed", WORK, PARTS, PENDING_DIR)


def select_files(split: str, datasets: list[str] | None, tasks: list[int] | None) -> tuple[list[str], list[str]]:
    """(query files, pool files) of a selection, relative to the M-BEIR root; ConfigError for a bad selection."""
    files = selection_files(split, datasets, tasks)
    return ([f for f in files if f.startswith("query/")], [f for f in files if f.startswith("cand_pool/")])


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
        base_url=opts.teacher_base_url, model=opts.teacher_model, api_key_env=opts.api_key_env,
        api_key_secret=opts.api_key_secret,
        max_in_flight=opts.max_in_flight, rpm=opts.rpm, tpm=opts.tpm, timeout_s=opts.teacher_timeout_s,
        max_retries=opts.max_retries, max_reasks=opts.max_reasks, journal_dir=journal_dir,
        flush_interval_s=opts.flush_interval_s, prices=_price_table(opts.price_table),
        transport=choose_transport(opts.teacher_transport, opts.teacher_base_url))
    if not dry_run:
        try:
            config.resolve_api_key()
        except ValueError as e:
            raise ConfigError(f"{e} (or choose another variable with --api_key_env)") from e
    return config


def _rules(opts) -> RuleConfig:
    kwargs = {}
    if opts.reasoning_tokens:
        kwargs["reasoning_tokens"] = opts.reasoning_tokens
    if opts.answer_tokens:
        kwargs["answer_tokens"] = opts.answer_tokens
    config = RuleConfig(tokenizer_spec=opts.tokenizer, **kwargs)
    try:
        config.tokenizer.count("check")  # load it now: a bad --tokenizer stops here, not on a worker
    except Exception as e:  # noqa: BLE001 - any loader error is a configuration error
        raise ConfigError(f"--tokenizer {opts.tokenizer!r} cannot be loaded: {e}") from e
    return config


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
    threshold = VERIFIER_MIN_CONFIDENCE if opts.verifier_threshold is None else opts.verifier_threshold
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--verifier_threshold must be within [0, 1], got {threshold}")
    journal_dir = opts.journal_dir or FileSystems.join(opts.output_dir, "journal")
    teacher = _teacher(opts, journal_dir, dry_run)
    if opts.routing == "judge" and teacher is None:
        raise ConfigError("--routing judge asks the teacher: set --teacher_base_url and --teacher_model")
    for flag in ("max_cost_usd", "max_requests"):
        if getattr(opts, flag) is not None and getattr(opts, flag) < 0:
            raise ConfigError(f"--{flag} must not be negative")
    for flag in ("max_line_bytes", "max_prompt_tokens"):
        if getattr(opts, flag) < 1:
            raise ConfigError(f"--{flag} must be at least 1, got {getattr(opts, flag)}")
    local_workers(opts.local_workers, None, cores=1)  # a bad --local_workers stops here
    _check_instructions(root)
    _check_image_dir(root)
    lookup = opts.journal_lookup
    if lookup == "auto":  # a local run's stages fuse around an in-process index; a distributed one joins
        lookup = "index" if _is_local(opts) else "join"
    policy = TeacherPolicy(opts.teacher_mode, lookup, opts.max_requests, opts.max_cost_usd,
                           FileSystems.join(opts.output_dir, PENDING_DIR))
    if teacher is not None and policy.mode == "batch":
        teacher = dataclasses.replace(teacher, price_discount=BATCH_DISCOUNT)
    _check_writable(opts.output_dir, journal_dir)
    return RunPlan(root=root, query_files=query_files, pool_files=pool_files, output_dir=opts.output_dir,
                   journal_dir=journal_dir, teacher=teacher, rules=_rules(opts), verifier_threshold=threshold,
                   dry_run=dry_run, policy=policy)


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


def _delete_tree(folder: str) -> None:
    """Delete a folder and everything under it (object stores have no folders: match the files under it)."""
    paths = [m.path for m in FileSystems.match([FileSystems.join(folder, "**")])[0].metadata_list]
    if paths:
        FileSystems.delete(paths)
    if FileSystems.get_filesystem(folder).has_dirs() and FileSystems.exists(folder):
        FileSystems.delete([folder])


def _disk_full(error: BaseException) -> bool:
    """True when a write failed for lack of space; runners may re-raise a worker's error as text."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error) or f"[Errno {errno.ENOSPC}]" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _clear_outputs(output_dir: str) -> None:
    """Delete what the previous run wrote."""
    for folder in OUTPUT_FOLDERS:
        _delete_tree(FileSystems.join(output_dir, folder))


def _check_writable(*folders: str) -> None:
    """Write and delete a probe file in each output folder, so an unwritable one stops the run before work
    (an output error: exit status 3)."""
    for folder in folders:
        probe = FileSystems.join(folder, f".write-probe-{uuid.uuid4().hex}")
        try:
            shards.write_bytes(probe, b"")
            FileSystems.delete([probe])
        except Exception as e:  # noqa: BLE001 - any filesystem error means the same thing here
            raise OutputError(f"cannot write to {folder}: {e}; choose another --output_dir/--journal_dir "
                              "or fix its permissions") from e


def is_reference_teacher(config: TeacherConfig) -> bool:
    """True when the server says it is the bundled offline stand-in (its /models list is owned by
    'offline-reference'), so the card can warn that the text is not from a model."""
    import openai

    try:
        client = openai.OpenAI(api_key=config.resolve_api_key(), base_url=config.base_url, max_retries=0, timeout=5)
        return any(getattr(m, "owned_by", "") == REFERENCE_OWNER for m in client.models.list())
    except Exception:  # noqa: BLE001 - a server without /models is simply not the reference teacher
        return False


def _run_info(opts, plan: RunPlan, argv: list[str]) -> dict:
    import prompts

    teacher = plan.teacher
    rules = plan.rules
    return {
        "teacher_model": teacher.model if teacher else "none (dry run)",
        "teacher_is_reference": bool(teacher and is_reference_teacher(teacher)),
        "prompts": {pid: prompts.load(pid).sha for pid in prompts.available()},
        "generation_params": {"temperature": opts.temperature, "max_tokens": opts.max_tokens,
                              "image_max_side": opts.image_max_side},
        "filters": {"reasoning_tokens": list(rules.reasoning_tokens), "answer_tokens": list(rules.answer_tokens),
                    "repetition_max_share": rules.repetition_max_share, "english_min_prob": rules.english_min_prob,
                    "tokenizer": rules.tokenizer_spec or "approximate offline counter",
                    "verifier": opts.verifier, "verifier_threshold": plan.verifier_threshold},
        "routing_mode": opts.routing,
        "pipeline_version": shards.package_version(),
        "command": "python -m pipeline " + shlex.join(argv),
        "embed_images": opts.embed_images,
    }


def finalize(opts, plan: RunPlan, argv: list[str], partitions: int = 1) -> dict:
    """stats.json, manifest.json and the card from the graph's scratch outputs; then drop the scratch."""
    out = plan.output_dir
    work = FileSystems.join(out, WORK)
    counter = Counter({(c, d, k): n for c, d, k, n in shards.read_json(FileSystems.join(work, "events.json"))})
    prices = plan.teacher.prices if plan.teacher else None
    cost = (lambda m, pt, ct: prices.cost(m, pt, ct)) if prices else None
    stats = to_stats(counter, dry_run=plan.dry_run, cost_fn=cost)
    shards.write_json(FileSystems.join(out, "stats.json"), stats)
    files = shards.read_json(FileSystems.join(work, "files.json"))
    if not plan.dry_run and not any(shards.relative_path(out, f["path"]).startswith("data/") for f in files):
        empty = FileSystems.join(out, shards.shard_name(0, 1))
        files.append(shards.write_shard([], empty, shards.row_arrow_schema(opts.embed_images)))
    shards.write_manifest(out, files, {"stats": "stats.json", "dry_run": plan.dry_run, "partitions": partitions})
    if not plan.dry_run:
        sample_path = FileSystems.join(work, "card_rows.json")
        examples = shards.read_json(sample_path) if FileSystems.exists(sample_path) else []
        examples = sorted(examples, key=lambda r: r["id"])
        write_card(out, stats, _run_info(opts, plan, argv), examples)
    FileSystems.delete([work])
    return stats


def _run_graph(opts, plan: RunPlan) -> None:
    with beam.Pipeline(options=opts) as p:
        build(p, opts, plan)


def _is_local(opts) -> bool:
    runner = opts.view_as(StandardOptions).runner
    return (runner if isinstance(runner, str) else type(runner).__name__) in LOCAL_RUNNERS


def _partitions(opts, plan: RunPlan) -> list[dict] | None:
    """The query partitions of a local run (one when the input fits in one); None when not partitioned."""
    if not _is_local(opts) or opts.partition_queries <= 0:
        return None
    return plan_partitions(plan.root, plan.query_files, opts.tasks, opts.limit, opts.partition_queries,
                           opts.max_line_bytes)


def idle_cores() -> int:
    """Cores not busy with other work now (cores minus the 1-minute load average, at least 1)."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # not every platform has a load average
        load = 0.0
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def _large(query_lines: int | None) -> bool:
    """Worth a second process: at least AUTO_WORKERS_MIN_QUERIES query lines (None: unknown, counted as large)."""
    return query_lines is None or query_lines >= AUTO_WORKERS_MIN_QUERIES


def teacher_process(setting: str, calls: bool, query_lines: int | None, cores: int | None = None) -> bool:
    """--teacher_process: whether a local run's teacher client gets a process of its own. 'auto': for a large
    run that calls the teacher, once 2 cores are idle (idle_cores, or `cores`)."""
    if setting != "auto":
        return setting == "on"
    return calls and _large(query_lines) and (cores or idle_cores()) >= 2


def local_workers(setting: str, query_lines: int | None, cores: int | None = None, teacher_core: bool = False) -> int:
    """Graph worker processes of a local run: --local_workers N, or for 'auto' one per idle core (idle_cores, or
    `cores`; one fewer with `teacher_core`: a teacher process has it) for large runs (_large), else 1.
    On a machine busy with other work a second process only adds its own cost (measured: README)."""
    if setting != "auto":
        try:
            workers = int(setting)
        except ValueError:
            workers = 0
        if workers < 1:
            raise ConfigError(f"--local_workers must be 'auto' or a whole number of at least 1, got {setting!r}")
        return workers
    if not _large(query_lines):
        return 1
    return max(1, (cores or idle_cores()) - teacher_core)


def _use_teacher_process(opts, plan: RunPlan, query_lines: int | None) -> RunPlan:
    """The plan with the teacher client in its own process when --teacher_process says so (local runs only)."""
    calls = plan.teacher is not None and not plan.dry_run and plan.policy.mode == "online"
    if not (calls and _is_local(opts) and teacher_process(opts.teacher_process, calls, query_lines)):
        return plan
    return dataclasses.replace(plan, teacher=dataclasses.replace(plan.teacher, own_process=True))


def _use_workers(opts, argv: list[str], query_lines: int | None, teacher_core: bool = False) -> int:
    """Sets Beam's direct options for --local_workers (unless they were given explicitly); the workers used."""
    direct = opts.view_as(DirectOptions)
    if not _is_local(opts) or any(a.split("=")[0] in ("--direct_num_workers", "--direct_running_mode")
                                  for a in argv):
        return direct.direct_num_workers if direct.direct_running_mode != "in_memory" else 1
    workers = local_workers(opts.local_workers, query_lines, teacher_core=teacher_core)
    direct.direct_num_workers = workers
    direct.direct_running_mode = "multi_processing" if workers > 1 else "in_memory"
    worker = opts.view_as(WorkerOptions)
    if workers > 1 and not any(a.startswith("--default_sdk_harness_log_level") for a in argv):
        worker.default_sdk_harness_log_level = "WARNING"  # else each worker logs its gRPC set-up at INFO
    return workers


def _run_partitioned(opts, plan: RunPlan, parts: list[dict]) -> None:
    part_dirs = []
    for i, lines in enumerate(parts):
        part_dir = FileSystems.join(plan.output_dir, PARTS, f"p{i:04d}")
        print(f"partition {i + 1}/{len(parts)}: {sum(len(v) for v in lines.values())} query lines", flush=True)
        _run_graph(opts, dataclasses.replace(plan, output_dir=part_dir, query_lines=lines, report_pool=i == 0))
        part_dirs.append(part_dir)
    merge_partitions(plan.output_dir, part_dirs, FileSystems.join(plan.output_dir, WORK), CARD_SAMPLE_ROWS,
                     sample_rank)
    _delete_tree(FileSystems.join(plan.output_dir, PARTS))


def execute(opts, plan: RunPlan, argv: list[str]) -> dict:
    """Run the graph (once, or once per partition on a local runner) and write stats.json, manifest.json and
    the card."""
    _clear_outputs(plan.output_dir)
    try:
        parts = _partitions(opts, plan)
        lines = sum(len(v) for p in parts for v in p.values()) if parts else None
        plan = _use_teacher_process(opts, plan, lines)
        own = plan.teacher is not None and plan.teacher.own_process
        workers = _use_workers(opts, argv, lines, teacher_core=own)
        if workers > 1 or own:
            print(f"local run on {workers} graph worker process{'es' if workers > 1 else ''} (--local_workers)"
                  f"{', each with a teacher process (--teacher_process)' if own else ''}", flush=True)
        if parts is None or len(parts) == 1:
            _run_graph(opts, plan)
        else:
            _run_partitioned(opts, plan, parts)
    finally:
        close_clients()  # in-process runners: make the journal durable before the driver moves on
    return finalize(opts, plan, argv, partitions=len(parts) if parts else 1)


def _preview_spend(opts, plan: RunPlan, argv: list[str]) -> None:
    """With a budget, print the dry-run plan (requests, estimated cost) before any call."""
    scratch = FileSystems.join(plan.output_dir, "_plan")
    preview = execute(opts, dataclasses.replace(plan, dry_run=True, output_dir=scratch), argv)
    FileSystems.delete([scratch])
    p = preview["plan"]
    limits = ", ".join(f"{name} {value}" for name, value in (("max_requests", plan.policy.max_requests),
                                                              ("max_cost_usd", plan.policy.max_cost_usd)) if value is not None)
    print(f"plan: {p['teacher_requests']} teacher requests (journal hits not yet subtracted), about "
          f"${p['est_cost_usd']:.2f}; budget: {limits}")


def run(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    beam_argv, dry_run = take_dry_run(argv)
    opts = MbeirCotOptions(beam_argv)
    if opts.view_as(StandardOptions).runner is None:
        opts.view_as(StandardOptions).runner = DEFAULT_LOCAL_RUNNER
    plan = resolve_plan(opts, dry_run)
    if plan.teacher is not None and not plan.dry_run and not opts.skip_preflight:
        log.info("teacher preflight at %s: %s", plan.teacher.base_url, preflight(plan.teacher))
    batch = plan.policy.mode == "batch" and not plan.dry_run
    if batch:
        jobs = BatchJobs(plan.teacher, FileSystems.join(plan.output_dir, BATCH_STATE_DIR))
        collected = jobs.collect()
        print(f"batch: {collected['collected']} answers collected into the journal, "
              f"{collected['in_progress_batches']} batches still in progress")
    if plan.policy.budgeted and not plan.dry_run:
        _preview_spend(opts, plan, argv)
    try:
        stats = execute(opts, plan, argv)
    except Exception as e:
        if _disk_full(e):
            raise OutputError(
                f"no space left on the device of {plan.output_dir} (or {plan.journal_dir}): free some space or "
                "choose another --output_dir, then rerun the same command. Shards are renamed into place only "
                "when complete, so none is truncated, and every paid answer is in the journal.") from e
        raise
    print(summary(stats, dry_run=plan.dry_run))
    problem = check_identity(stats, dry_run=plan.dry_run)
    if problem:
        raise RuntimeError(problem)
    if batch:
        budget = (Budget(plan.policy.max_requests, plan.policy.max_cost_usd, plan.teacher.prices, plan.teacher.model,
                         discount=BATCH_DISCOUNT) if plan.policy.budgeted else None)
        submitted = jobs.submit_pending(FileSystems.join(plan.policy.pending_dir, "*.jsonl"), budget)
        waiting = jobs.in_progress()
        if waiting:
            print(f"batch: {submitted['submitted_requests']} requests submitted in {submitted['batches']} new "
                  f"batches; {waiting} requests in progress. Rerun the same command to collect them and continue.")
        stats["batch"] = {"submitted": submitted, "in_progress": waiting}
    return stats
