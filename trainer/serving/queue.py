"""The server's side of the engine's one loop: every request's inputs wait in one bounded queue (a Feed), and the
scheduler thread, the only thread that touches the model, runs the loop over it. So queries of all requests in
flight share prefill batches and one decode batch, and candidates and direct queries wait only for the decode
step in progress, never for a decode to end.

Prefill first (RequestQueue.take): pending inputs are prefilled at the next step, every full chunk of them at once
(at most CHUNKS_PER_STEP chunks a decode step, so decoding rows still advance every step), since an input's route,
and so whether it is answered by its prefill alone, is known only once it is prefilled. A part-full chunk waits
for more inputs only while the decoder has a full batch waiting behind the active one, and at most
--max_batch_wait_ms (RequestQueue._due). Prefilled rows that reason wait for a decode slot holding their KV cache:
the KV held is bounded by --max_queue (inputs accepted and not yet answered), however early they are prefilled.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from trainer.inference.engine import Job, QueryEngine
from trainer.modeling.interface import CandidateInput, QueryInput
from trainer.serving.protocol import ApiError, Result

log = logging.getLogger("trainer.serve")

CHUNKS_PER_STEP = 2  # prefill chunks a decode step at most while rows decode
MAX_WAIT = 0.05  # seconds a part-full chunk may wait to fill while the decoder is busy: --max_batch_wait_ms's default


class QueueFull(Exception):
    pass


class QueueClosed(Exception):
    pass


class Ticket:
    """One request's inputs on their way through the loop. `future`, of the event loop that made the ticket,
    resolves to their Results in input order, or to an ApiError. A ticket made without a loop (the model
    process's copy of a request, worker.py) has no future: its answer leaves by the queue's `answer` callable,
    under its `key`."""

    def __init__(self, inputs: Sequence[QueryInput | CandidateInput], mode: str, want_text: bool,
                 loop: asyncio.AbstractEventLoop | None = None, key: int | None = None):
        self.jobs = [Job(item, mode if isinstance(item, QueryInput) else "direct", (self, i))
                     for i, item in enumerate(inputs)]
        self.results: list[Result | None] = [None] * len(self.jobs)
        self.left, self.admitted, self.mode, self.want_text = len(self.jobs), 0, mode, want_text
        self.queued_at = 0.0
        self.loop, self.key = loop, key
        self.future: asyncio.Future | None = loop.create_future() if loop is not None else None

    def set(self, outcome: list[Result] | Exception) -> None:
        """On the ticket's event loop."""
        if self.future is None or self.future.done():
            return
        if isinstance(outcome, Exception):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)


Answers = list[tuple[Ticket, list[Result] | Exception]]


def resolve(answers: Answers) -> None:
    """Hand answers to their event loops from any thread, one wake-up per loop (not per request); nothing for a
    loop that is gone (the server stopped)."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for ticket, outcome in answers:
        by_loop.setdefault(ticket.loop, []).append((ticket, outcome))
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, batch)
        except RuntimeError:
            pass


def _set_all(batch: Answers) -> None:
    for ticket, outcome in batch:
        ticket.set(outcome)


class RequestQueue:
    """The Feed the scheduler's loop drains: FIFO, at most batch_size jobs a chunk, blocking while idle.
    Finished requests go to `answer` (called on the scheduler's thread, outside the queue's lock, with every
    request a step finished): by default `resolve`, to the tickets' event loops."""

    def __init__(self, batch_size: int, max_queue: int, tokenizer, max_wait: float = MAX_WAIT,
                 answer: Callable[[Answers], None] = resolve, chunks_per_step: int = CHUNKS_PER_STEP):
        self.batch_size, self.max_queue, self.tokenizer = batch_size, max_queue, tokenizer
        self.max_wait = max_wait  # seconds an input may wait for its prefill chunk to fill (see _due)
        self.chunks_per_step = chunks_per_step
        self.answer = answer
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._tickets: set[Ticket] = set()  # submitted, not yet answered
        self.waiting = 0  # inputs accepted and not yet answered: what --max_queue bounds
        self.closed = False
        self._step, self._given = -1, 0  # the decode step count at the last chunk given, and chunks given since
        self.stats: Counter = Counter()

    # ---- the event loop's side ------------------------------------------------------------------------------
    def submit(self, ticket: Ticket) -> None:
        """Queue a request's inputs; QueueFull past max_queue waiting inputs, QueueClosed once draining."""
        n = len(ticket.jobs)
        with self._cond:
            if self.closed:
                raise QueueClosed
            if self.waiting + n > self.max_queue:
                self.stats["rejected_requests"] += 1
                raise QueueFull
            ticket.queued_at = time.monotonic()
            self._pending.extend(ticket.jobs)
            self._tickets.add(ticket)
            self.waiting += n
            self.stats["requests"] += 1
            self.stats["inputs"] += n
            self._cond.notify()

    def cancel(self, ticket: Ticket) -> None:
        """The client went away: its inputs leave the queue (and the decode batch, at the next step)."""
        with self._cond:
            if ticket in self._tickets:
                self.stats["cancelled_inputs"] += ticket.left
                self._drop(ticket)

    def close(self) -> None:
        """No more requests; the loop ends when what was accepted is answered."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def snapshot(self) -> dict:
        with self._cond:
            return {"waiting": self.waiting, "max_queue": self.max_queue, "in_queue": len(self._pending),
                    **self.stats}

    # ---- the scheduler's side (engine.Feed) ---------------------------------------------------------------
    def take(self, in_decode: int, steps: int) -> list[Job] | None:
        """The next chunk (oldest inputs first, at most batch_size): while rows decode, at most chunks_per_step
        chunks a decode step (the loop asks until []), so a stream of requests never starves them; a part-full
        chunk only once due (_due)."""
        with self._cond:
            while not self._pending and in_decode == 0 and not self.closed:
                self._cond.wait()
            if steps != self._step:
                self._step, self._given = steps, 0
            if in_decode and self._given >= self.chunks_per_step or self._pending and not self._due(in_decode):
                return []
            chunk = self._pop_chunk()
            if not chunk and self.closed and not self._pending:
                return None
            if chunk:
                self._given += 1
                self.stats["prefill_chunks"] += 1
                self.stats["prefilled_inputs"] += len(chunk)
            return chunk

    def _pop_chunk(self) -> list[Job]:
        chunk: list[Job] = []
        while self._pending and len(chunk) < self.batch_size:
            job = self._pending.popleft()
            if not job.cancelled:
                job.ref[0].admitted += 1
                chunk.append(job)
        return chunk

    def _due(self, in_decode: int) -> bool:
        """Prefill the pending inputs now, or let their chunk fill? Now when the decoder has less than a full
        batch waiting behind the active one (what is prefilled now decodes soon; nothing may decode at all), when
        a full chunk is pending, or when the oldest input has waited max_wait. Otherwise a part-full chunk would
        pay a prefill's fixed cost for fewer rows, only for its reasoning rows to wait for a slot anyway."""
        return (self.closed or in_decode < 2 * self.batch_size or len(self._pending) >= self.batch_size
                or time.monotonic() - self._pending[0].ref[0].queued_at >= self.max_wait)

    def finish(self, jobs: list[Job], h: torch.Tensor) -> None:
        vectors = F.normalize(h.float(), dim=-1).cpu().numpy()
        texts = self._texts(jobs)
        answered = []
        with self._cond:
            for job, vector, text in zip(jobs, vectors, texts, strict=True):
                ticket, i = job.ref
                if job.cancelled or ticket.results[i] is not None:
                    continue
                ticket.results[i] = Result(vector, len(job.tokens), job.prompt_tokens, text)
                ticket.left -= 1
                self.waiting -= 1
                if not ticket.left:
                    self._tickets.discard(ticket)
                    answered.append((ticket, ticket.results))
        if answered:
            self.answer(answered)

    def fail(self, job: Job, error: Exception) -> None:
        ticket, i = job.ref
        log.warning("input %d of a request could not be encoded: %r", i, error)
        self._fail(ticket, ApiError(400, f"input[{i}] could not be encoded: {error}", f"input[{i}]"))

    def fail_admitted(self, error: Exception) -> None:
        """The loop stopped with rows in it: the requests that had inputs taken fail, the others stay queued."""
        with self._cond:
            tickets = [t for t in self._tickets if t.admitted]
        for ticket in tickets:
            self._fail(ticket, ApiError(500, f"the model failed on this batch ({type(error).__name__}); retry"))

    def _fail(self, ticket: Ticket, error: ApiError) -> None:
        with self._cond:
            if ticket not in self._tickets:
                return
            self._drop(ticket)
        self.answer([(ticket, error)])

    def _drop(self, ticket: Ticket) -> None:
        for job in ticket.jobs:
            job.cancelled = True
        self.waiting -= ticket.left
        ticket.left = 0
        self._tickets.discard(ticket)

    def _texts(self, jobs: list[Job]) -> list[str | None]:
        """The reasoning text of the jobs whose request asked for it (decoded here: the tokenizer is not shared
        across threads)."""
        wanted = [k for k, job in enumerate(jobs) if job.ref[0].want_text]
        texts: list[str | None] = [None] * len(jobs)
        if wanted:
            decoded = self.tokenizer.batch_decode([jobs[k].tokens for k in wanted], skip_special_tokens=False)
            for k, text in zip(wanted, decoded, strict=True):
                texts[k] = text
        return texts


class Scheduler:
    """Owns the model: one thread runs the engine's loop over the request queue until the queue is closed and
    empty (`start`; or `run` on the caller's thread). If the loop itself fails (a decode step), the requests with
    rows in it fail and the loop restarts. `queue`: the RequestQueue to run over (its batch_size is the engine's),
    by default one of batch_size, max_queue and max_wait."""

    def __init__(self, embedder, batch_size: int, max_new_tokens: int, max_queue: int, max_wait: float = MAX_WAIT,
                 queue: RequestQueue | None = None):
        self.queue = queue or RequestQueue(batch_size, max_queue, embedder.processor.tokenizer, max_wait)
        self.engine = QueryEngine(embedder, "adaptive", max_new_tokens, self.queue.batch_size)
        self._thread = threading.Thread(target=self.run, name="trace-scheduler", daemon=True)

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Close the queue and wait for the loop to answer what it holds."""
        self.queue.close()
        self._thread.join(timeout)

    def run(self) -> None:
        while True:
            try:
                self.engine.loop(self.queue)
                return
            except Exception as error:
                log.exception("the engine loop failed; failing the requests it held")
                self.queue.fail_admitted(error)
