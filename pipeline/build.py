"""The whole M-BEIR-CoT graph on one screen. Stages live in pipeline/stages/; this only wires them.

read ─ dedupe qids ─ join positives + instruction ─ check query images ─ route ─┬─ direct ──────────────┐
                                                   reasoning ─ teacher CoT ─ rules ─ verifier ─ dedupe ─┴─ rows ─ shards
Every stage's rejects, failures and events are collected; the driver (pipeline.run) turns the events into
stats.json and writes the manifest and the dataset card after the pipeline has finished.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline import shards
from pipeline.mbeir.images import ImageLoader
from pipeline.outputs import WORK
from pipeline.plan import RunPlan
from pipeline.rows import record_dict
from pipeline.stages.emit import ToRows, WriteShards
from pipeline.stages.join import JoinPositives
from pipeline.stages.read import CheckQueryImages, DropDuplicateQids, ReadPool, ReadQueries
from pipeline.stages.route import Route
from pipeline.stages.teacher import COMPLETION_ESTIMATES, AskTeacher, BuildRequests
from pipeline.stages.validate import ApplyRules, DropDuplicateAnswers, KeepVerified
from pipeline.stats import Event, merge
from pipeline.teacher.prompting import build_cot_request, build_judge_request, build_verifier_request

CARD_SAMPLE_ROWS = 2_000  # rows kept (deterministically) for the card's plots and examples


def _image_loader(opts, plan: RunPlan) -> ImageLoader | None:
    return ImageLoader(plan.root) if opts.image_mode == "data_url" else None


def _builder(fn, opts, plan: RunPlan):
    """Request builder; data-URL images stay references until the call (CallTeacher encodes them)."""
    model = plan.teacher.model if plan.teacher else (opts.teacher_model or "unspecified")
    return functools.partial(
        fn, model=model, params={"temperature": opts.temperature, "max_tokens": opts.max_tokens},
        image_loader=_image_loader(opts, plan), image_mode=opts.image_mode, max_side=opts.image_max_side,
        image_url_base=opts.image_url_base or "", defer_images=True, max_prompt_tokens=opts.max_prompt_tokens)


def _verifier_builder(example, build):
    reasoning, answer = example.extra["cot"].parsed
    return build(example, reasoning, answer)


def _plan_events(pair, kind: str):
    request, example = pair
    return [Event("plan_requests", code=request.model),
            Event("plan_prompt_tokens", code=request.model, n=request.est_prompt_tokens),
            Event("plan_completion_tokens", code=request.model, n=COMPLETION_ESTIMATES[kind])]


def _plan_reject_event(reject):
    """A request the full run would reject before sending it (prompt_too_long, an unreadable image)."""
    return Event("plan_rejected", reject.dataset, reject.reason)


def _strip_images(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("query_image", "pos_image")}


def _write_json(obj, path: str) -> None:
    shards.write_bytes(path, json.dumps(obj, sort_keys=True).encode("utf-8"))


@dataclass
class _Records:
    """What every stage adds to besides its main output: rejects, failures and events."""

    rejects: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    events: list = field(default_factory=list)


def build(p: beam.Pipeline, opts, plan: RunPlan) -> None:
    records = _Records()
    examples, pool_rejects = _read_and_join(p, opts, plan, records)
    direct, reasoning = _route(examples, opts, plan, records)
    if plan.dry_run:
        _plan_calls(examples, reasoning, opts, plan, records)
        files = []
    else:
        files = [_reason_and_write(direct, reasoning, opts, plan, records)]
    _write_records(p, plan.output_dir, files, pool_rejects, records)


def _read_and_join(p: beam.Pipeline, opts, plan: RunPlan, records: _Records):
    """(examples whose query image passed, pool rejects) from the query and pool files."""
    root, rejects, events = plan.root, records.rejects, records.events
    queries, r, e = p | "ReadQueries" >> ReadQueries(root, plan.query_files, opts.tasks, opts.limit,
                                                     plan.query_lines, opts.max_line_bytes)
    rejects.append(r), events.append(e)
    pool, pool_read_rejects, e = p | "ReadPool" >> ReadPool(root, plan.pool_files, opts.max_line_bytes)
    if plan.report_pool:
        events.append(e)
    queries, r = queries | "DropDuplicateQids" >> DropDuplicateQids()
    rejects.append(r)
    examples, r, duplicate_dids = (queries, pool) | "Join" >> JoinPositives(root, opts.check_images,
                                                                             opts.instruction_seed)
    rejects.append(r)
    examples, r = examples | "CheckQueryImages" >> CheckQueryImages(root, opts.check_images)
    rejects.append(r)
    if plan.report_pool:
        pool_rejects = (pool_read_rejects, duplicate_dids) | "PoolRejects" >> beam.Flatten()
        events.append(duplicate_dids | "DuplicateDidEvents" >> beam.Map(
            lambda x: Event("pool_rejected", code=x.reason)))
    else:
        pool_rejects = p | "NoPoolRejects" >> beam.Create([])
    return examples, pool_rejects


def _route(examples, opts, plan: RunPlan, records: _Records):
    """(direct, reasoning) examples."""
    judge = None
    if opts.routing == "judge" and not plan.dry_run:
        judge = AskTeacher(_builder(build_judge_request, opts, plan), "judge", plan.teacher, plan.journal_dir,
                           plan.policy, _image_loader(opts, plan))
    routing = "dataset" if opts.routing == "judge" and plan.dry_run else opts.routing  # dry run: no judge calls
    routed, r, f, e = examples | "Route" >> Route(routing, judge=judge, judge_min_confidence=opts.judge_min_confidence)
    records.rejects.append(r), records.failed.append(f), records.events.append(e)
    records.events.append(routed | "RoutedEvents" >> beam.Map(lambda x: Event("routed", x.query.dataset, x.route)))
    direct = routed | "Direct" >> beam.Filter(lambda x: x.route == "direct")
    reasoning = routed | "Reasoning" >> beam.Filter(lambda x: x.route == "reasoning")
    return direct, reasoning


def _plan_calls(examples, reasoning, opts, plan: RunPlan, records: _Records) -> None:
    """The dry run's plan events: the calls a full run would make, and the requests it would reject unsent."""
    events = records.events
    # A request that cannot be built is only planned here; a full run rejects it (it is already routed).
    requests, unsendable = reasoning | "PlanCot" >> BuildRequests(_builder(build_cot_request, opts, plan), "cot")
    events.append(requests | "PlanEvents" >> beam.FlatMap(_plan_events, "cot"))
    events.append(unsendable | "PlanRejectEvents" >> beam.Map(_plan_reject_event))
    if opts.verifier == "on":  # one verifier call per CoT that passes the rules (at most one per CoT)
        events.append(requests | "PlanVerifierEvents" >> beam.FlatMap(_plan_events, "verifier"))
    if opts.routing == "judge":
        judged, unsendable = examples | "PlanJudge" >> BuildRequests(_builder(build_judge_request, opts, plan),
                                                                     "judge")
        events.append(judged | "PlanJudgeEvents" >> beam.FlatMap(_plan_events, "judge"))
        events.append(unsendable | "PlanJudgeRejectEvents" >> beam.Map(_plan_reject_event))


def _reason_and_write(direct, reasoning, opts, plan: RunPlan, records: _Records):
    """Teacher CoT, rules, verifier and answer dedupe, then the data shards and the card sample; the shards'
    file entries."""
    rejects, failed, events = records.rejects, records.failed, records.events
    cot, r, f, e = reasoning | "Teacher" >> AskTeacher(_builder(build_cot_request, opts, plan), "cot",
                                                       plan.teacher, plan.journal_dir, plan.policy,
                                                       _image_loader(opts, plan))
    rejects.append(r), failed.append(f), events.append(e)
    kept, r, e = cot | "Rules" >> ApplyRules(plan.rules)
    rejects.append(r), events.append(e)
    if opts.verifier == "on":
        verify = functools.partial(_verifier_builder, build=_builder(build_verifier_request, opts, plan))
        kept, r, f, e = kept | "Verifier" >> AskTeacher(verify, "verifier", plan.teacher, plan.journal_dir,
                                                        plan.policy, _image_loader(opts, plan))
        rejects.append(r), failed.append(f), events.append(e)
        kept, r = kept | "KeepVerified" >> KeepVerified(plan.verifier_threshold)
        rejects.append(r)
    kept, r = kept | "DedupAnswers" >> DropDuplicateAnswers()
    rejects.append(r)
    accepted = (direct, kept) | "Accepted" >> beam.Flatten()
    rows, r = accepted | "ToRows" >> ToRows(plan.root if opts.embed_images else None)
    rejects.append(r)
    events.append(rows | "AcceptedEvents" >> beam.Map(lambda row: Event("accepted", row["dataset"], row["route"])))
    return _write_rows(rows, opts, plan)


def _write_rows(rows, opts, plan: RunPlan):
    out = plan.output_dir
    files = rows | "WriteData" >> WriteShards(
        out, "data", "train", functools.partial(shards.row_arrow_schema, opts.embed_images), _row_sort_key,
        num_shards=opts.num_shards,
        target_rows=shards.TARGET_ROWS_WITH_IMAGES if opts.embed_images else shards.TARGET_ROWS)
    (rows
     | "CardSample" >> beam.combiners.Top.Of(CARD_SAMPLE_ROWS, key=sample_rank, reverse=True)
     | "NoImageBytes" >> beam.Map(lambda rs: [_strip_images(x) for x in rs])
     | "WriteCardSample" >> beam.Map(_write_json, FileSystems.join(out, WORK, "card_rows.json")))
    return files


def _write_records(p: beam.Pipeline, out: str, files: list, pool_rejects, records: _Records) -> None:
    """The reject and failed shards, then the file list and the merged events into _work/ for the driver."""
    events = records.events
    query_rejects = flatten(p, records.rejects, "QueryRejects")
    events.append(query_rejects | "RejectEvents" >> beam.Map(lambda x: Event("rejected", x.dataset, x.reason)))
    failures = flatten(p, records.failed, "Failures")
    events.append(failures | "FailedEvents" >> beam.Map(lambda x: Event("failed", x.dataset, x.error)))
    all_rejects = (query_rejects, pool_rejects) | "AllRejects" >> beam.Flatten()
    files = files + [
        all_rejects | "RejectRows" >> beam.Map(record_dict) | "WriteRejects" >> WriteShards(
            out, "rejects", "rejects", shards.reject_arrow_schema, _record_sort_key),
        failures | "FailedRows" >> beam.Map(record_dict) | "WriteFailed" >> WriteShards(
            out, "failed", "failed", shards.failed_arrow_schema, _record_sort_key),
    ]
    (flatten(p, files, "Files")
     | "ListFiles" >> beam.combiners.ToList()
     | "WriteFileList" >> beam.Map(_write_json, FileSystems.join(out, WORK, "files.json")))
    (flatten(p, events, "Events")
     | "MergeEvents" >> beam.CombineGlobally(_MergeEvents())
     | "WriteEvents" >> beam.Map(_write_json, FileSystems.join(out, WORK, "events.json")))


def flatten(p, pcolls: list, label: str):
    return tuple(pcolls) | label >> beam.Flatten(pipeline=p)


def _row_sort_key(row: dict) -> str:
    return row["id"]


def _record_sort_key(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


def sample_rank(row: dict) -> str:
    return hashlib.sha1(row["id"].encode("utf-8")).hexdigest()


class _MergeEvents(beam.CombineFn):
    """Events -> [[category, dataset, code, n], ...] (JSON-ready, sorted)."""

    def create_accumulator(self):
        return merge([])

    def add_input(self, acc, event: Event):
        acc[(event.category, event.dataset, event.code)] += event.n
        return acc

    def merge_accumulators(self, accs):
        total = merge([])
        for acc in accs:
            total.update(acc)
        return total

    def extract_output(self, acc):
        return sorted([*k, n] for k, n in acc.items())

