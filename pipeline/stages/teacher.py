"""Call the teacher exactly once per distinct request.

AskTeacher: Example -> Example with the answer in extra[stage] (main), Reject, Failure, Event (tagged).
CallTeacher: (TeacherRequest, payload) -> (payload, TeacherResult) (main), Event (tag "events").
A rerun pays only for keys the journal lacks, found one of two ways (TeacherPolicy.journal_lookup):
"join" reads the journal as a PCollection and joins it to the requests by key (CoGroupByKey), so no worker
ever holds the whole journal (distributed runners); "index" looks each key up in a JournalIndex of the
process as the request arrives, so a local run's stages fuse and the CoT, rules and verifier calls overlap
instead of waiting for each other at the join. Either way requests with the same key are called once and the
answer fans out. Calls go through the worker process's one client for the config (pipeline/teacher/registry.py),
in this process or in a child of its own (protocol.Teacher either way), which owns concurrency, rate limits,
retries, re-asks and journal writes (pipeline/teacher/client.py).
"""

from __future__ import annotations

import dataclasses
import queue
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from pipeline.mbeir import images, reasons
from pipeline.mbeir.images import ImageLoader
from pipeline.mbeir.records import Example, Failure, Reject
from pipeline.shards import write_bytes
from pipeline.stats import Event
from pipeline.teacher.config import TEACHER_MODES, TeacherConfig
from pipeline.teacher.journal import journal_glob, parse_journal_line
from pipeline.teacher.outputs import TeacherResult, result_from_record
from pipeline.teacher.pending import pending_line
from pipeline.teacher.prompting import PromptTooLong, TeacherRequest
from pipeline.teacher.protocol import encode_images
from pipeline.teacher.registry import shared_budget, shared_client, shared_index

EVENTS, REJECTS, FAILED = "events", "rejects", "failed"
# Results that are neither answers nor failures: the item waits for a later run (stats "pending").
PENDING_BUDGET, PENDING_BATCH = "pending_budget", "pending_batch"
PENDING = {PENDING_BUDGET: "budget", PENDING_BATCH: "batch"}

def usage_events(result: TeacherResult) -> list[Event]:
    """What one answered call cost (journal hits are counted where they are found, in _SplitHits)."""
    model = result.model or ""
    events = [Event("teacher_requests", code=model, n=result.attempts),
              Event("teacher_retries", code=model, n=max(result.attempts - 1, 0))]
    if result.prompt_tokens or result.completion_tokens:
        events += [Event("teacher_prompt_tokens", code=model, n=result.prompt_tokens),
                   Event("teacher_completion_tokens", code=model, n=result.completion_tokens)]
    return events


class _ReadJournal(beam.DoFn):
    def process(self, readable: fileio.ReadableFile) -> Iterator[tuple[str, dict]]:
        with readable.open(compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = f.read()
        for raw in data.split(b"\n"):
            record = parse_journal_line(raw) if raw.strip() else None
            if record is not None:
                yield record["key"], record


class _SplitHits(beam.DoFn):
    """Journal hits answer at once; the rest go to the client, one request per key."""

    def process(self, keyed):
        key, grouped = keyed
        pairs = list(grouped["requests"])
        if not pairs:
            return
        payloads = [payload for _, payload in pairs]
        records = list(grouped["journal"])
        if records:
            result = result_from_record(records[-1])
            yield beam.pvalue.TaggedOutput(EVENTS, Event("teacher_journal_hits", code=result.model or ""))
            for payload in payloads:
                yield payload, result
        else:
            yield beam.pvalue.TaggedOutput("todo", (pairs[0][0], payloads))


@dataclass(frozen=True)
class TeacherPolicy:
    """How a stage asks: online calls, or deferred to the OpenAI Batch API; and the spend budget."""

    mode: str = TEACHER_MODES[0]
    journal_lookup: str = "join"  # "join" | "index" (online mode only): see the module docstring
    max_requests: int | None = None
    max_cost_usd: float | None = None
    pending_dir: str = ""  # batch mode: where the requests to submit are written

    @property
    def budgeted(self) -> bool:
        return self.max_requests is not None or self.max_cost_usd is not None


# Completion tokens a request is expected to use: the budget reserves them before a call, the dry-run plan
# counts them. A CoT is bounded by PAPER.md §2 Phase 3 at 256 + 64 tokens; most are far shorter.
COMPLETION_ESTIMATES = {"cot": 200, "judge": 40, "verifier": 40}


_IN_FLIGHT = object()  # _Call._look_up: the key's call is under way


def _unanswered(request: TeacherRequest, error: str, detail: str) -> TeacherResult:
    return TeacherResult(key=request.key, ok=False, error=error, detail=detail, model=request.model,
                         kind=request.kind)


class _Call(beam.DoFn):
    """Submits as elements arrive and yields answers as they complete, so the pipe stays full across a bundle.

    Elements are (request, payloads), one per key, after the journal join; with `journal_dir` (journal_lookup
    "index") they are (request, payload) pairs, looked up here in the process's JournalIndex, and a key already
    asked in this bundle shares that answer. Deferred images are encoded just before the call, by the client
    (`image_loader` goes with the request); a request whose image cannot be encoded is answered with the
    failure and never sent."""

    def __init__(self, config: TeacherConfig, policy: TeacherPolicy, image_loader: ImageLoader | None = None,
                 journal_dir: str | None = None):
        self.config, self.policy, self.image_loader, self.journal_dir = config, policy, image_loader, journal_dir
        self.backlog = max(4 * config.max_in_flight, 64)

    def setup(self):
        self.client = shared_client(self.config)
        self.budget = shared_budget(self.config, self.policy) if self.policy.budgeted else None
        self.journal = shared_index(self.journal_dir) if self.journal_dir else None

    def start_bundle(self):
        self.pending: dict = {}
        self.finished: queue.SimpleQueue = queue.SimpleQueue()  # futures in completion order
        self.asked: dict[str, list | TeacherResult] = {}  # index lookups: key -> payloads waiting, or its answer
        self.usage: Counter = Counter()  # what the calls and hits of the bundle cost, one event per kind at the end

    def process(self, element):
        request, payloads = element
        if self.journal is not None:
            payloads = [payloads]
            known = self._look_up(request.key, payloads)
            if known is not None:
                if known is not _IN_FLIGHT:
                    yield from self._answer(request.key, payloads, known)
                return
        reserved = None
        if self.budget is not None:
            reserved = (request.est_prompt_tokens, COMPLETION_ESTIMATES.get(request.kind, 0))
            if not self.budget.try_reserve(*reserved):
                result = _unanswered(request, PENDING_BUDGET, "the spend budget is reached; rerun with a higher one")
                yield from self._answer(request.key, payloads, result)
                return
        future = self.client.submit(request, self.image_loader)
        self.pending[future] = (request.key, payloads, reserved)
        future.add_done_callback(self.finished.put)
        yield from self._completed(block=len(self.pending) >= self.backlog)

    def _look_up(self, key: str, payloads: list) -> TeacherResult | object | None:
        """Index lookup: the answer already known for `key` (asked in this bundle, or in the journal);
        _IN_FLIGHT when its call is under way (the payloads wait for its answer too); None: ask it now."""
        seen = self.asked.get(key)
        if isinstance(seen, list):
            seen.extend(payloads)
            return _IN_FLIGHT
        if seen is None:
            record = self.journal.get(key)
            if record is not None:
                seen = result_from_record(record)
                self.usage[Event("teacher_journal_hits", code=seen.model or "")] += 1
        if seen is None:
            self.asked[key] = payloads
        return seen

    def _answer(self, key: str, payloads: list, result: TeacherResult):
        if self.journal is not None:
            self.asked[key] = result
        for payload in payloads:
            yield payload, result

    def finish_bundle(self):
        while self.pending:
            for pair in self._completed(block=True):
                yield WindowedValue(pair, MIN_TIMESTAMP, [GlobalWindow()])
        for event, n in sorted(self.usage.items()):
            yield beam.pvalue.TaggedOutput(EVENTS, WindowedValue(event._replace(n=n), MIN_TIMESTAMP,
                                                                 [GlobalWindow()]))
        self.client.flush()

    def _completed(self, block: bool):
        """(payload, result) for every payload of every finished call."""
        if not self.pending:
            return
        done = [self.finished.get()] if block else []
        while True:
            try:
                done.append(self.finished.get_nowait())
            except queue.Empty:
                break
        for future in done:
            key, payloads, reserved = self.pending.pop(future)
            result = future.result()
            if reserved is not None:  # a request never sent settles with nothing used: the reservation comes back
                self.budget.settle(reserved, result.prompt_tokens, result.completion_tokens, result.attempts)
            if result.attempts:  # else never sent (an image that could not be encoded): it cost nothing
                for event in usage_events(result):
                    self.usage[event._replace(n=1)] += event.n
            yield from self._answer(key, payloads, result)

    def teardown(self):
        client = getattr(self, "client", None)
        if client is not None:
            client.flush()


class _Defer(beam.DoFn):
    """Batch mode: write each request as an OpenAI batch input line (images encoded); the driver submits the
    files."""

    def __init__(self, pending_dir: str, encode_loader: ImageLoader | None = None):
        self.pending_dir, self.encode_loader = pending_dir, encode_loader

    def start_bundle(self):
        self.lines: list[str] = []

    def process(self, element):
        request, payloads = element
        sent = encode_images(request, self.encode_loader) if self.encode_loader is not None else request
        if isinstance(sent, TeacherResult):
            result = sent
        else:
            self.lines.append(pending_line(sent))
            result = _unanswered(request, PENDING_BATCH, "waiting for the OpenAI Batch API")
        for payload in payloads:
            yield payload, result

    def finish_bundle(self):
        if self.lines:
            path = FileSystems.join(self.pending_dir, f"pending-{uuid.uuid4().hex}.jsonl")
            write_bytes(path, ("\n".join(self.lines) + "\n").encode("utf-8"))
            self.lines = []


class CallTeacher(beam.PTransform):
    """(TeacherRequest, payload) -> (payload, TeacherResult): journal hits at once, the rest through the client
    (or into batch files). Deferred images are encoded only for requests that are really sent."""

    def __init__(self, config: TeacherConfig, journal_dir: str, policy: TeacherPolicy = TeacherPolicy(),
                 image_loader: ImageLoader | None = None):
        super().__init__()
        self.config, self.journal_dir, self.policy = config, journal_dir, policy
        self.image_loader = image_loader

    def expand(self, pairs):
        online = self.policy.mode != "batch"
        if online and self.policy.journal_lookup == "index":
            called = pairs | "Call" >> beam.ParDo(_Call(self.config, self.policy, self.image_loader,
                                                        self.journal_dir)).with_outputs(EVENTS, main="answers")
            return self._detached(called.answers), called[EVENTS]
        keyed = pairs | "KeyByRequest" >> beam.Map(lambda rp: (rp[0].key, rp))
        asked = keyed | "AskedKeys" >> beam.Map(lambda kv: (kv[0], True))
        # Only the journal records this run asks for enter the shuffle: the journal grows with every run and
        # every local partition, the requests of one run do not.
        journal = (pairs.pipeline
                   | "MatchJournal" >> fileio.MatchFiles(journal_glob(self.journal_dir),
                                                         empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
                   | "OpenJournal" >> fileio.ReadMatches()
                   | "ReadJournal" >> beam.ParDo(_ReadJournal())
                   | "KeepAsked" >> beam.Filter(lambda kv, keys: kv[0] in keys, keys=beam.pvalue.AsDict(asked)))
        split = ({"requests": keyed, "journal": journal}
                 | "JoinJournal" >> beam.CoGroupByKey()
                 | "SplitHits" >> beam.ParDo(_SplitHits()).with_outputs("todo", EVENTS, main="hits"))
        caller = (_Call(self.config, self.policy, self.image_loader) if online
                  else _Defer(self.policy.pending_dir, self.image_loader))
        called = split.todo | "Call" >> beam.ParDo(caller).with_outputs(EVENTS, main="answers")
        results = (split.hits, called.answers) | "AllAnswers" >> beam.Flatten()
        events = (split[EVENTS], called[EVENTS]) | "TeacherEvents" >> beam.Flatten()
        return self._detached(results), events

    def _detached(self, results):
        if self.config.own_process:
            return results  # the calls are another process's: the rules run here while they are in flight
        # Keeps the rule filter and the next requests off the thread that submits calls.
        return results | "DetachFromCalls" >> beam.Reshuffle()


def _build_reason(error: Exception) -> str:
    if isinstance(error, PromptTooLong):
        return reasons.PROMPT_TOO_LONG
    if isinstance(error, images.ImageRejected):  # unsafe_image_path, or the image gate's code
        return error.reason
    return reasons.UNREADABLE_IMAGE


class _Build(beam.DoFn):
    def __init__(self, builder: Callable[..., TeacherRequest], stage: str):
        self.builder, self.stage = builder, stage

    def process(self, example: Example):
        try:
            request = self.builder(example)
        except (ValueError, OSError) as e:  # over the prompt budget, or an image that cannot be read or re-encoded
            q = example.query
            yield beam.pvalue.TaggedOutput(REJECTS, Reject(
                _build_reason(e), f"building the {self.stage} request: {e}", q.source_file, q.line_number,
                q.qid, q.dataset, stage=self.stage))
            return
        info = {"key": request.key, "prompt_id": request.prompt_id, "prompt_sha": request.prompt_sha,
                "params": request.params, "model": request.model}
        yield request, dataclasses.replace(example, extra={**example.extra, f"{self.stage}_request": info})


class BuildRequests(beam.PTransform):
    """Example -> (TeacherRequest, Example) (main), Reject (tag "rejects") when the request cannot be built:
    prompt_too_long over the prompt budget (nothing is sent), unsafe_image_path, unreadable_image."""

    def __init__(self, builder: Callable[..., TeacherRequest], stage: str):
        super().__init__()
        self.builder, self.stage = builder, stage

    def expand(self, examples):
        out = examples | "Build" >> beam.ParDo(_Build(self.builder, self.stage)).with_outputs(REJECTS, main="requests")
        return out.requests, out[REJECTS]


def _split_answer(pair, stage: str):
    example, result = pair
    if result.ok:
        yield dataclasses.replace(example, extra={**example.extra, stage: result})
    elif result.error in PENDING:
        yield beam.pvalue.TaggedOutput(EVENTS, Event("pending", example.query.dataset, PENDING[result.error]))
    else:
        q = example.query
        yield beam.pvalue.TaggedOutput(FAILED, Failure(
            result.error or "unknown", result.detail or "", q.qid, q.dataset, q.source_file, result.key,
            result.attempts))


class AskTeacher(beam.PTransform):
    """Example -> Example with extra[stage] = TeacherResult (main); Reject (tag "rejects"); Failure ("failed");
    Event ("events"). The one way any stage (judge, cot, verifier) asks the teacher."""

    def __init__(self, builder: Callable[..., TeacherRequest], stage: str, config: TeacherConfig, journal_dir: str,
                 policy: TeacherPolicy = TeacherPolicy(), image_loader: ImageLoader | None = None):
        super().__init__()
        self.builder, self.stage, self.config, self.journal_dir = builder, stage, config, journal_dir
        self.policy, self.image_loader = policy, image_loader

    def expand(self, examples):
        requests, rejects = examples | "Requests" >> BuildRequests(self.builder, self.stage)
        answers, events = requests | "Call" >> CallTeacher(self.config, self.journal_dir, self.policy,
                                                           self.image_loader)
        out = answers | "SplitAnswers" >> beam.FlatMap(_split_answer, self.stage).with_outputs(
            FAILED, EVENTS, main="ok")
        all_events = (events, out[EVENTS]) | "Events" >> beam.Flatten()
        return out.ok, rejects, out[FAILED], all_events
