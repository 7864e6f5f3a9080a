"""The route-then-batch engine: results do not depend on batching, only reasoning rows decode, finished rows
leave the decode batch and their slots are refilled."""

import math
from dataclasses import replace

import pytest
import torch
from PIL import Image

from tests.trainer.modeling.test_model import _manual_greedy
from trainer.inference.api import TraceEmbedder
from trainer.inference.collate import query_batches
from trainer.inference.engine import Job, ListFeed, QueryEngine
from trainer.modeling.interface import CandidateInput, QueryInput

MAX_NEW = 6


def _queries() -> list[QueryInput]:
    red, blue = Image.new("RGB", (80, 60), (200, 30, 30)), Image.new("RGB", (50, 90), (20, 40, 220))
    texts = ["Find a picture of a red circle.", "Make the square blue instead of red and add a small star.",
             "Which city is this building in?", "Show the same dress with long sleeves.", "A dog.",
             "Find the caption of this photo of a green triangle on a white background.",
             "What river is this?", "Replace the circle with a yellow hexagon.", "Two cats on a bed."]
    images = [None, red, blue.rotate(90), red, None, blue, red.rotate(45), blue, None]
    tasks = [("mscoco", 0), ("cirr", 7), ("infoseek", 6), ("fashioniq", 7), ("mscoco", 0), ("mscoco", 3),
             ("oven", 6), ("cirr", 7), ("visualnews", 0)]
    return [QueryInput(t, im, d, k) for t, im, (d, k) in zip(texts, images, tasks, strict=True)]


# Per query: 0 = route direct (<|emb|> first), k = reason and emit <|emb|> after k tokens (MAX_NEW: never).
PLAN = [0, 2, 0, 4, 0, MAX_NEW, 0, 3, 1]


def _states(emb: TraceEmbedder, q: QueryInput) -> torch.Tensor:
    """Last-position hidden states of every forward while decoding q with <|emb|> out of reach (MAX_NEW + 1)."""
    states = []

    def ban(module, args, logits):
        logits[..., emb.emb_id] = float("-inf")

    text_model = emb.base.model.language_model  # prefill and decode steps both end here
    hooks = [text_model.register_forward_hook(lambda m, a, out: states.append(out.last_hidden_state[0, -1])),
             emb.lm_head.register_forward_hook(ban)]
    try:
        emb.encode_queries([q], mode="adaptive", max_new_tokens=MAX_NEW, batch_size=1)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(states)


def planned_model(tiny_base) -> TraceEmbedder:
    """The tiny model made to follow PLAN: mixed routes and chains of different lengths. Its head is untied
    from the input embeddings and its <|emb|> row solved by least squares, so the <|emb|> logit beats (or
    trails) the best other logit by a margin of 2 at exactly the planned steps. The row changes no hidden
    state: <|emb|> is never fed back."""
    torch.manual_seed(0)
    emb = TraceEmbedder.from_base(str(tiny_base), device="cpu", lora_r=0).eval()
    head = emb.lm_head
    head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    rows, targets = [], []
    with torch.no_grad():
        for q, stop in zip(_queries(), PLAN, strict=True):
            h = _states(emb, q)
            logits = head(h)
            logits[:, emb.emb_id] = float("-inf")
            best = logits.max(-1).values
            for t in range(min(stop, MAX_NEW - 1) + 1):
                rows.append(h[t])
                targets.append(best[t] + (2.0 if t == stop else -2.0))
        w = torch.linalg.lstsq(torch.stack(rows), torch.stack(targets)[:, None]).solution[:, 0]
        head.weight.data[emb.emb_id] = w
    res = emb.encode_queries(_queries(), mode="adaptive", max_new_tokens=MAX_NEW, batch_size=1)
    assert res.generated_tokens == PLAN
    return emb


@pytest.fixture(scope="module")
def mixed(tiny_base) -> TraceEmbedder:
    return planned_model(tiny_base)


class ForwardLog:
    """Batch sizes of the language model's forwards: (rows, prefill?) per call."""

    def __init__(self, emb: TraceEmbedder):
        self.calls: list[tuple[int, bool]] = []
        self._handle = emb.base.model.language_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        tokens = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        self.calls.append((tokens.shape[0], kwargs.get("cache") is None))

    def close(self):
        self._handle.remove()

    def decode_sizes(self) -> list[int]:
        return [n for n, prefill in self.calls if not prefill]


@pytest.mark.parametrize("mode", ["adaptive", "direct", "always"])
def test_batched_results_equal_one_at_a_time(mixed, mode):
    qs = _queries()
    together = mixed.encode_queries(qs, mode=mode, max_new_tokens=MAX_NEW, batch_size=3)
    alone = [mixed.encode_queries([q], mode=mode, max_new_tokens=MAX_NEW, batch_size=1) for q in qs]
    assert together.texts == [a.texts[0] for a in alone]
    assert together.generated_tokens == [a.generated_tokens[0] for a in alone]
    assert together.reasoned == [a.reasoned[0] for a in alone]
    cos = (together.embeddings * torch.cat([a.embeddings for a in alone])).sum(-1)
    assert float(cos.min()) >= 0.9999
    if mode == "adaptive":
        assert 0 < sum(together.reasoned) < len(qs)  # mixed routes inside each batch of three
    for i in (1, 4):  # and one at a time is plain greedy decoding (full forwards, no cache)
        ids, manual = _manual_greedy(mixed, qs[i], mode, MAX_NEW)
        assert together.generated_tokens[i] == len(ids)
        assert float(together.embeddings[i] @ manual.detach()) >= 0.9999


def test_only_reasoning_rows_decode_and_finished_rows_leave(mixed):
    qs = _queries() * 2
    log = ForwardLog(mixed)
    try:
        res = mixed.encode_queries(qs, mode="adaptive", max_new_tokens=MAX_NEW, batch_size=3)
        direct_calls = len(log.calls)
        mixed.encode_queries(qs, mode="direct", batch_size=3)
    finally:
        log.close()
    decode = [n for n, prefill in log.calls[:direct_calls] if not prefill]
    assert sum(n for n, prefill in log.calls[:direct_calls] if prefill) == len(qs)  # one prefill per query
    assert sum(decode) == sum(res.generated_tokens)  # a row is in a decode step only while it generates
    assert max(decode) <= 3
    lengths = sorted(res.generated_tokens, reverse=True)
    assert len(decode) <= math.ceil(sum(lengths) / 3) + lengths[0]  # full batches, but for the tail
    assert log.calls[direct_calls:] == [(3, True)] * 6  # direct: pure prefill


def test_candidates_batch_by_length_and_return_in_input_order(mixed):
    cands = [CandidateInput("a red circle on a white background with a small blue star", None, "text"),
             CandidateInput(None, Image.new("RGB", (64, 64), (9, 200, 9)), "image"),
             CandidateInput("dog", None, "text"),
             CandidateInput("a blue square", Image.new("RGB", (70, 50), (0, 0, 255)), "image,text"),
             CandidateInput("two", None, "text")]
    batched = mixed.encode_candidates(cands, batch_size=2)
    alone = torch.cat([mixed.encode_candidates([c]) for c in cands])
    assert float((batched * alone).sum(-1).min()) >= 0.9999
    assert mixed.encode_candidates([]).shape == (0, batched.shape[1])


class ScriptFeed:
    """Feeds fixed chunks whenever asked, whatever is decoding (as a server's queue may), and keeps what the loop
    reports. `cancel_after`: {job: n} cancels a job once n chunks were given."""

    def __init__(self, chunks: list[list[Job]], cancel_after: dict | None = None):
        self.chunks, self.given = list(chunks), 0
        self.cancel_after = cancel_after or {}
        self.done: dict[Job, torch.Tensor] = {}
        self.failed: dict[Job, Exception] = {}

    def take(self, in_decode: int, steps: int) -> list[Job] | None:
        for job, after in self.cancel_after.items():
            job.cancelled = job.cancelled or self.given >= after
        if not self.chunks:
            return None
        self.given += 1
        return self.chunks.pop(0)

    def finish(self, jobs: list[Job], h: torch.Tensor) -> None:
        for job, row in zip(jobs, h, strict=True):
            self.done[job] = torch.nn.functional.normalize(row.float(), dim=-1)

    def fail(self, job: Job, error: Exception) -> None:
        self.failed[job] = error


def _candidates() -> list[CandidateInput]:
    return [CandidateInput("a red circle on a white background", None, "text"),
            CandidateInput(None, Image.new("RGB", (64, 64), (9, 200, 9)), "image"),
            CandidateInput("a blue square", Image.new("RGB", (70, 50), (0, 0, 255)), "image,text")]


def _alone(emb: TraceEmbedder, job: Job) -> tuple[torch.Tensor, int]:
    if isinstance(job.item, CandidateInput):
        return emb.encode_candidates([job.item])[0], 0
    res = emb.encode_queries([job.item], mode=job.mode, max_new_tokens=MAX_NEW, batch_size=1)
    return res.embeddings[0], res.generated_tokens[0]


def test_one_loop_serves_every_mode_and_candidates_joining_a_running_decode(mixed):
    """Jobs of all three modes and candidates, in chunks that arrive while earlier rows decode, get what each
    gets alone."""
    modes = ("adaptive", "always", "direct")
    jobs = [Job(q, modes[i % 3]) for i, q in enumerate(_queries())] + [Job(c) for c in _candidates()]
    order = [jobs[i] for i in (0, 9, 1, 4, 10, 7, 2, 11, 3, 5, 8, 6)]
    feed = ScriptFeed([order[k:k + 3] for k in range(0, len(order), 3)])
    log = ForwardLog(mixed)
    try:
        QueryEngine(mixed, max_new_tokens=MAX_NEW, batch_size=3).loop(feed)
    finally:
        log.close()
    assert set(feed.done) == set(jobs) and not feed.failed
    for job in jobs:
        embedding, tokens = _alone(mixed, job)
        assert len(job.tokens) == tokens
        assert float(feed.done[job] @ embedding) >= 0.9999
    assert max(log.decode_sizes()) == 3  # reasoning rows of different chunks shared decode steps


def test_a_job_that_cannot_be_prefilled_fails_alone(mixed):
    good = [Job(q, "adaptive") for q in _queries()[:2]]
    bad = Job(QueryInput("fine text", "not an image", "cirr", 7), "adaptive")
    feed = ScriptFeed([[good[0], bad, good[1]]])
    QueryEngine(mixed, max_new_tokens=MAX_NEW, batch_size=3).loop(feed)
    assert list(feed.failed) == [bad] and set(feed.done) == set(good)
    for job in good:
        assert float(feed.done[job] @ _alone(mixed, job)[0]) >= 0.9999


def test_a_cancelled_job_leaves_the_decode_batch_unfinished(mixed):
    """Query 5 reasons for MAX_NEW tokens; cancelled once the second chunk was given, it is never finished and
    its batch mates are unchanged."""
    qs = _queries()
    jobs = [Job(qs[i], "adaptive") for i in (5, 1, 3, 0)]
    feed = ScriptFeed([jobs[:2], jobs[2:]], cancel_after={jobs[0]: 2})
    QueryEngine(mixed, max_new_tokens=MAX_NEW, batch_size=3).loop(feed)
    assert set(feed.done) == set(jobs[1:]) and len(jobs[0].tokens) < MAX_NEW
    for job in jobs[1:]:
        assert float(feed.done[job] @ _alone(mixed, job)[0]) >= 0.9999



def _same(a, b) -> None:
    assert torch.equal(a.embeddings, b.embeddings)
    assert (a.generated_tokens, a.reasoned, a.texts) == (b.generated_tokens, b.reasoned, b.texts)


class CountingProcessor:
    """The embedder's processor, counting its calls."""

    def __init__(self, processor):
        self.processor, self.calls = processor, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.processor(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


@pytest.mark.parametrize("mode", ["adaptive", "direct", "always"])
def test_prepared_batches_give_the_bits_of_the_loops_own(mixed, mode, monkeypatch):
    """Chunks collated elsewhere (collate.query_batches, as prefetch workers make them) and handed to run: the
    same embeddings, routes and tokens, bit for bit, though the queries the loop sees have no images left, and
    the loop never calls the processor."""
    qs = _queries()  # 9 queries, 6 with an image: chunks of 4, 4 and 1
    want = QueryEngine(mixed, mode, MAX_NEW, batch_size=4).run(qs)
    light, prepared = [replace(q, image=None) for q in qs], list(query_batches(mixed, qs, 4))
    monkeypatch.setattr(mixed, "processor", CountingProcessor(mixed.processor))
    _same(QueryEngine(mixed, mode, MAX_NEW, batch_size=4).run(light, prepared), want)
    assert mixed.processor.calls == 0
    if mode == "adaptive":
        assert 0 < sum(want.reasoned) < len(qs)


def test_a_failed_prepared_chunk_is_retried_from_its_rows(mixed):
    """A chunk whose prefill fails is retried job by job; with prepared batches each job's row is cut out of its
    chunk's batch (no image left to collate from): the bits of the loop collating each job alone."""

    def no_batched_prefill(module, args, kwargs):
        if kwargs.get("cache") is None and kwargs["inputs_embeds"].shape[0] > 1:
            raise RuntimeError("out of memory (simulated)")

    qs = _queries()
    handle = mixed.base.model.language_model.register_forward_pre_hook(no_batched_prefill, with_kwargs=True)
    try:
        want = QueryEngine(mixed, "adaptive", MAX_NEW, batch_size=3).run(qs)
        got = QueryEngine(mixed, "adaptive", MAX_NEW, batch_size=3).run([replace(q, image=None) for q in qs],
                                                                         list(query_batches(mixed, qs, 3)))
    finally:
        handle.remove()
    _same(got, want)
    alone = mixed.encode_queries(qs, mode="adaptive", max_new_tokens=MAX_NEW, batch_size=3)
    assert got.generated_tokens == alone.generated_tokens


def test_prepared_batches_must_match_the_chunks(mixed):
    qs = _queries()
    with pytest.raises(ValueError, match="do not match the chunks of 9 queries by 4"):
        ListFeed(qs, "direct", 4, 8, prepared=list(query_batches(mixed, qs, 3)))
