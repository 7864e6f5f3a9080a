"""One teacher client per process: a background asyncio loop, bounded concurrency, rate limits, one retry
layer (tenacity; the openai client's own retries are off), re-asks for malformed output, a response journal
and usage/cost accounting. Callers on any thread `submit()` and get a concurrent.futures.Future that always
resolves to a TeacherResult (never an exception).

The rooms around it: config.py (settings, the API key), transport.py (the HTTP calls and their errors),
outputs.py (results, parsing, schema checks), protocol.py (the interface it shares with process.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from common.redact import redact
from pipeline.teacher.config import TeacherConfig
from pipeline.teacher.journal import JournalWriter
from pipeline.teacher.limits import RateLimiter, retry_after_s
from pipeline.teacher.outputs import TeacherResult, check_output, first_choice, parse_completion
from pipeline.teacher.prompting import ImageLoader, TeacherRequest
from pipeline.teacher.protocol import encode_images, resolved
from pipeline.teacher.transport import (
    CallError,
    Transport,
    check_transport,
    describe,
    error_code,
    response_headers,
    retryable,
    status_of,
)

log = logging.getLogger(__name__)

IMAGE_HINT = "the request carried images: is the teacher multimodal? (text-only servers refuse image parts)"


def _has_images(req: TeacherRequest) -> bool:
    return any(isinstance(m["content"], list) and any(p.get("type") == "image_url" for p in m["content"])
               for m in req.messages)


class _Call:
    """Per-request mutable state shared by the retry loop."""

    __slots__ = ("calls", "prompt_tokens", "completion_tokens", "model", "content", "finish")

    def __init__(self) -> None:
        self.calls = self.prompt_tokens = self.completion_tokens = 0
        self.model = self.content = self.finish = ""


class TeacherClient:
    """Thread-safe front of one asyncio loop that talks to an OpenAI-compatible server (a protocol.Teacher)."""

    def __init__(self, config: TeacherConfig):
        self.config = config
        connection = config.client_args()
        check_transport(config.transport)
        self._counts = dict.fromkeys(
            ("requests", "calls", "ok", "retries", "reasks", "failures", "prompt_tokens", "completion_tokens",
             "rate_limit_pauses", "deduped", "in_flight"), 0)
        self._cost = 0.0
        self._lock = threading.Lock()
        self._inflight: dict[str, concurrent.futures.Future] = {}
        self._pending = threading.BoundedSemaphore(config.max_pending) if config.max_pending else None
        self._closed = False
        self._journal = JournalWriter(config.journal_dir, config.flush_interval_s) if config.journal_dir else None
        self._t0 = self._last_log = time.monotonic()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="teacher-loop", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._setup(connection), self._loop).result()

    async def _setup(self, connection: dict[str, Any]) -> None:
        self._transport = Transport(self.config, connection)
        self._sem = asyncio.Semaphore(self.config.max_in_flight)
        self._limiter = RateLimiter(self.config.rpm, self.config.tpm)

    # ---- public, any thread -------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The client's event loop (its own thread), for callers that schedule `answer` on it themselves."""
        return self._loop

    async def answer(self, req: TeacherRequest) -> TeacherResult:
        """On `loop` only: one request to its result (what submit() schedules, without the cross-thread hand-off
        and in-flight bookkeeping; the caller waits for its own calls before close())."""
        return await self._run(req)

    def submit(self, request: TeacherRequest, image_loader: ImageLoader | None = None) -> concurrent.futures.Future:
        """Schedule one request; a request whose key is already in flight shares that call's future. With
        `image_loader`, its deferred images are encoded here first (an image that cannot be: the failed result,
        never sent).

        Blocks while `max_pending` requests are unfinished (back-pressure for large Beam bundles); never call
        it from the client's own loop thread (e.g. from a future's done-callback).
        """
        req = request
        if image_loader is not None:
            req = encode_images(request, image_loader)
            if isinstance(req, TeacherResult):
                return resolved(req)
        with self._lock:
            fut = self._inflight.get(req.key)
            if fut is not None:
                self._counts["deduped"] += 1
                return fut
        if self._pending is not None:
            self._pending.acquire()
        with self._lock:
            if self._closed:
                self._release_slot()
                raise RuntimeError("TeacherClient is closed")
            fut = self._inflight.get(req.key)
            if fut is not None:  # another thread submitted it meanwhile
                self._counts["deduped"] += 1
                self._release_slot()
                return fut
            fut = asyncio.run_coroutine_threadsafe(self._run(req), self._loop)
            self._inflight[req.key] = fut
        fut.add_done_callback(lambda _f, k=req.key: self._forget(k))
        return fut

    def run_many(self, requests: list[TeacherRequest]) -> list[TeacherResult]:
        """Submit all, wait for all, results in request order.

        Waiting once with concurrent.futures.wait avoids waking the calling thread per result, which costs
        the loop thread GIL hand-offs (measured in scripts/bench_teacher.py).
        """
        futures = [self.submit(r) for r in requests]
        concurrent.futures.wait(futures)
        return [f.result() for f in futures]

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._counts)
        out["cost_usd"] = round(self._cost, 6)
        out["journal_writes"] = self._journal.writes if self._journal else 0
        out["elapsed_s"] = round(time.monotonic() - self._t0, 3)
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    def flush(self) -> None:
        """Make every answer received so far durable in the journal now (end of a bundle)."""
        if self._journal:
            self._journal.flush()

    def close(self) -> None:
        """Wait for every submitted request, close the HTTP client and the loop, flush the journal."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = list(self._inflight.values())
        concurrent.futures.wait(pending)
        asyncio.run_coroutine_threadsafe(self._transport.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        if self._journal:
            self._journal.close()
        self._log_progress(force=True)

    def __enter__(self) -> TeacherClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forget(self, key: str) -> None:
        with self._lock:
            self._inflight.pop(key, None)
        self._release_slot()

    def _release_slot(self) -> None:
        if self._pending is not None:
            self._pending.release()

    # ---- on the loop ---------------------------------------------------------------------------------
    async def _run(self, req: TeacherRequest) -> TeacherResult:
        t0 = time.monotonic()
        self._counts["requests"] += 1
        async with self._sem:
            self._counts["in_flight"] += 1
            try:
                result = await self._answer(req)
            except Exception as e:  # noqa: BLE001 - a result, never an exception, reaches the caller
                log.exception("teacher request %s failed unexpectedly", req.key[:12])
                result = TeacherResult(key=req.key, ok=False, error="internal", detail=redact(repr(e))[:500],
                                       kind=req.kind)
            finally:
                self._counts["in_flight"] -= 1
        result.latency_s = time.monotonic() - t0
        self._account(req, result)
        return result

    async def _answer(self, req: TeacherRequest) -> TeacherResult:
        """Calls (each with its retries) until the output parses; at most `max_reasks` re-asks."""
        state = _Call()
        reasks = 0
        while True:
            try:
                completion = await self._call_with_retries(req, state, reasks)
            except CallError as e:
                return self._failed(req, state, error_code(e), describe(e))
            state.model = completion.get("model") or req.model
            # a 200 without a usable choice counts as malformed
            state.content, state.finish = first_choice(completion) or ("", "")
            parsed, why = check_output(req.kind, state.content, state.finish)
            if parsed is not None:
                return TeacherResult(key=req.key, ok=True, content=state.content, parsed=parsed,
                                     prompt_tokens=state.prompt_tokens, completion_tokens=state.completion_tokens,
                                     model=state.model, attempts=state.calls, kind=req.kind)
            if reasks >= self.config.max_reasks:
                return self._failed(req, state, "malformed_output", why or "malformed output")
            reasks += 1
            self._counts["reasks"] += 1

    def _failed(self, req: TeacherRequest, state: _Call, code: str, detail: str) -> TeacherResult:
        if code in ("server_error", "bad_request") and _has_images(req):
            detail = f"{IMAGE_HINT} {detail}"
        return TeacherResult(key=req.key, ok=False, content=state.content, model=state.model or req.model,
                             prompt_tokens=state.prompt_tokens, completion_tokens=state.completion_tokens,
                             attempts=state.calls, error=code, detail=redact(detail)[:500], kind=req.kind)

    async def _call_with_retries(self, req: TeacherRequest, state: _Call, reask: int):
        cfg = self.config
        retrying = AsyncRetrying(retry=retry_if_exception(retryable), wait=self._backoff,
                                 stop=stop_after_attempt(cfg.max_retries + 1), reraise=True)
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self._counts["retries"] += 1
                return await self._call_once(req, state, reask, attempt.retry_state.attempt_number)

    def _backoff(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if status_of(exc) == 429:
            return 0.0  # the shared pause gate already holds every request
        return self._backoff_s(retry_state.attempt_number)

    def _backoff_s(self, attempt: int) -> float:
        """Exponential backoff with full jitter on top."""
        base = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (attempt - 1))
        return base + random.uniform(0, base)

    async def _call_once(self, req: TeacherRequest, state: _Call, reask: int, attempt: int) -> dict:
        """One HTTP call (after the rate limiter lets it go) -> the completion as a plain dict."""
        body = {"model": req.model, "messages": req.messages, **req.params}
        if reask and isinstance(body.get("seed"), int):
            body["seed"] += reask  # same key, a different draw from a deterministic server
        max_out = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        await self._limiter.acquire(req.est_prompt_tokens + max_out)
        state.calls += 1
        self._counts["calls"] += 1
        try:
            headers, content = await self._transport.post(body)
        except CallError as e:
            refused_with = response_headers(e)
            if refused_with is not None:
                self._limiter.observe(refused_with)
            if status_of(e) == 429:
                self._counts["rate_limit_pauses"] += 1
                self._limiter.gate.pause(retry_after_s(refused_with) or self._backoff_s(attempt))
            raise
        self._limiter.observe(headers)
        completion = parse_completion(content)
        usage = completion.get("usage") or {}
        state.prompt_tokens += usage.get("prompt_tokens") or 0
        state.completion_tokens += usage.get("completion_tokens") or 0
        return completion

    # ---- accounting (on the loop) --------------------------------------------------------------------
    def _account(self, req: TeacherRequest, r: TeacherResult) -> None:
        c = self._counts
        c["ok" if r.ok else "failures"] += 1
        c["prompt_tokens"] += r.prompt_tokens
        c["completion_tokens"] += r.completion_tokens
        self._cost += self.config.prices.cost(req.model, r.prompt_tokens, r.completion_tokens,
                                              discount=self.config.price_discount)
        if r.ok and self._journal is not None:
            self._journal.append({
                "key": r.key, "kind": req.kind, "model": r.model, "request_model": req.model,
                "prompt_id": req.prompt_id, "prompt_sha": req.prompt_sha, "content": r.content,
                "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                "attempts": r.attempts, "t": round(time.time(), 3),
            })
        self._log_progress()

    def _log_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_log < self.config.progress_interval_s:
            return
        self._last_log = now
        s, dt = self.stats(), max(now - self._t0, 1e-9)
        log.info("teacher: %.1f results/s, %.1f calls/s, %d in flight, %d ok, %d failed, %d retries, "
                 "%d re-asks, %d+%d tokens, $%.4f", (s["ok"] + s["failures"]) / dt, s["calls"] / dt,
                 s["in_flight"], s["ok"], s["failures"], s["retries"], s["reasks"], s["prompt_tokens"],
                 s["completion_tokens"], s["cost_usd"])
