"""One teacher client per process: a background asyncio loop, bounded concurrency, rate limits, one retry
layer (tenacity; the openai client's own retries are off), re-asks for malformed output, a response journal
and usage/cost accounting. Callers on any thread `submit()` and get a concurrent.futures.Future that always
resolves to a TeacherResult (never an exception).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import os
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx2
import openai
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

import schemas
from pipeline.teacher.config import (  # noqa: F401
    AUTO_TRANSPORT,
    DUMMY_LOCAL_KEY,
    TRANSPORTS,
    TeacherConfig,
    is_loopback,
    read_secret,
)
from pipeline.teacher.journal import JournalWriter
from pipeline.teacher.limits import RateLimiter, retry_after_s
from pipeline.teacher.prompting import TeacherRequest
from validators.cot_format import format_problems, split_cot

log = logging.getLogger(__name__)

_OUTPUT_SCHEMAS = {"judge": "judge_output", "verifier": "verifier_output"}


def choose_transport(setting: str, base_url: str) -> str:
    """--teacher_transport: 'auto' is "direct" for a teacher on this machine (a local vLLM or SGLang server, or
    the reference teacher: thousands of requests a second, where the client's CPU per call is what limits a
    run) and the openai client on aiohttp for any other (an API whose rate limits, not the client, set the pace,
    and whose organization, project and Azure settings are the openai client's to handle)."""
    if setting != AUTO_TRANSPORT:
        return setting
    return "direct" if is_loopback(base_url) else "aiohttp"


@dataclass
class TeacherResult:
    key: str
    ok: bool
    content: str = ""
    parsed: Any = None  # (reasoning, answer) for "cot", a dict for "judge"/"verifier"
    prompt_tokens: int = 0  # summed over every call made for this request (what it cost)
    completion_tokens: int = 0
    model: str = ""
    attempts: int = 0  # HTTP calls made, retries and re-asks included
    error: str = ""  # rate_limited | server_error | timeout | connection | malformed_output | bad_request | internal
    detail: str = ""
    from_journal: bool = False
    latency_s: float = 0.0
    kind: str = ""


_FENCE = re.compile(r"^\s*```(?:json)?\s*(?P<body>.*?)\s*```\s*$", re.DOTALL | re.IGNORECASE)


@cache
def _validator(schema: str):
    return schemas.validator(schema)


def parse_output(kind: str, content: str) -> tuple[Any, str]:
    """(parsed, "") for a usable output, (None, why) otherwise."""
    if kind == "cot":
        parsed = split_cot(content)
        return (parsed, "") if parsed else (None, ",".join(format_problems(content)))
    m = _FENCE.match(content)
    body = m.group("body") if m else content
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        return None, "no JSON object"
    try:
        obj = json.loads(body[start:end + 1])
    except ValueError as e:
        return None, f"bad JSON: {e}"
    errors = sorted(_validator(_OUTPUT_SCHEMAS[kind]).iter_errors(obj), key=str)
    if errors:
        return None, f"schema: {errors[0].message}"
    return obj, ""


def result_from_record(record: dict[str, Any]) -> TeacherResult:
    """A journaled answer as a TeacherResult (from_journal=True, costs nothing now)."""
    kind = record.get("kind", "cot")
    parsed, _ = parse_output(kind, record["content"])
    return TeacherResult(key=record["key"], ok=True, content=record["content"], parsed=parsed,
                         prompt_tokens=record.get("prompt_tokens", 0),
                         completion_tokens=record.get("completion_tokens", 0), model=record["model"],
                         attempts=record.get("attempts", 0), from_journal=True, kind=kind)


IMAGE_HINT = "the request carried images: is the teacher multimodal? (text-only servers refuse image parts)"


def _has_images(req: TeacherRequest) -> bool:
    return any(isinstance(m["content"], list) and any(p.get("type") == "image_url" for p in m["content"])
               for m in req.messages)


class _Malformed(Exception):
    pass


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None) if isinstance(exc, openai.APIStatusError) else None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    status = _status(exc)
    return status is not None and (status in (408, 409, 429) or status >= 500)


def _caused_by_refused_or_reset(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ConnectionError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def error_code(exc: BaseException) -> str:
    if isinstance(exc, openai.APITimeoutError):
        # openai's aiohttp transport reports a refused connection as ConnectTimeout
        return "connection" if _caused_by_refused_or_reset(exc) else "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    status = _status(exc)
    if status == 429:
        return "rate_limited"
    if status == 408:
        return "timeout"
    if status is not None and (status >= 500 or status == 409):
        return "server_error"
    if status is not None:
        return "bad_request"
    return "internal"


class _Call:
    """Per-request mutable state shared by the retry loop."""

    __slots__ = ("calls", "prompt_tokens", "completion_tokens", "model", "content", "finish")

    def __init__(self) -> None:
        self.calls = self.prompt_tokens = self.completion_tokens = 0
        self.model = self.content = self.finish = ""


class TeacherClient:
    """Thread-safe front of one asyncio loop that talks to an OpenAI-compatible server."""

    def __init__(self, config: TeacherConfig):
        self.config = config
        api_key = config.resolve_api_key()
        if config.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {config.transport!r}")
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
        asyncio.run_coroutine_threadsafe(self._setup(api_key), self._loop).result()

    async def _setup(self, api_key: str) -> None:
        cfg = self.config
        limits = httpx2.Limits(max_connections=cfg.max_in_flight + 8, max_keepalive_connections=cfg.max_in_flight)
        if cfg.transport == "aiohttp":
            http = openai.DefaultAioHttpClient(limits=limits)
        else:
            http = openai.DefaultAsyncHttpxClient(limits=limits)
        self._api = openai.AsyncOpenAI(api_key=api_key, base_url=cfg.base_url, max_retries=0,
                                       timeout=cfg.timeout_s, http_client=http)
        # openai draws a uuid4 for every POST's Idempotency-Key (an os.urandom call, a tenth of its CPU per request
        # here); a per-client counter is as unique for the server and costs nothing.
        keys = itertools.count()
        prefix = f"mbeir-cot-{uuid.uuid4().hex}"
        self._api._idempotency_key = lambda: f"{prefix}-{next(keys)}"  # noqa: SLF001
        self._session = None
        if cfg.transport == "direct":
            import aiohttp

            # trust_env looks up proxies (and reads ~/.netrc) on a thread for every request: only when one is set
            proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                                      "ALL_PROXY", "all_proxy"))
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=cfg.max_in_flight + 8), trust_env=proxied,
                timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
                headers={**{k: v for k, v in self._api.default_headers.items() if isinstance(v, str)},
                         "Authorization": f"Bearer {api_key}"})
            self._url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._sem = asyncio.Semaphore(cfg.max_in_flight)
        self._limiter = RateLimiter(cfg.rpm, cfg.tpm)

    # ---- public, any thread -------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The client's event loop (its own thread), for callers that schedule `answer` on it themselves."""
        return self._loop

    async def answer(self, req: TeacherRequest) -> TeacherResult:
        """On `loop` only: one request to its result (what submit() schedules, without the cross-thread hand-off
        and in-flight bookkeeping; the caller waits for its own calls before close())."""
        return await self._run(req)

    def submit(self, req: TeacherRequest) -> concurrent.futures.Future:
        """Schedule one request; a request whose key is already in flight shares that call's future.

        Blocks while `max_pending` requests are unfinished (back-pressure for large Beam bundles); never call
        it from the client's own loop thread (e.g. from a future's done-callback).
        """
        with self._lock:
            fut = self._inflight.get(req.key)
            if fut is not None:
                self._counts["deduped"] += 1
                return fut
        if self._pending is not None:
            self._pending.acquire()
        with self._lock:
            if self._closed:
                if self._pending is not None:
                    self._pending.release()
                raise RuntimeError("TeacherClient is closed")
            fut = self._inflight.get(req.key)
            if fut is not None:  # another thread submitted it meanwhile
                self._counts["deduped"] += 1
                if self._pending is not None:
                    self._pending.release()
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
        asyncio.run_coroutine_threadsafe(self._close_http(), self._loop).result()
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
                result = TeacherResult(key=req.key, ok=False, error="internal", detail=repr(e)[:500],
                                       kind=req.kind)
            finally:
                self._counts["in_flight"] -= 1
        result.latency_s = time.monotonic() - t0
        self._account(req, result)
        return result

    async def _answer(self, req: TeacherRequest) -> TeacherResult:
        state = _Call()
        reasks = 0
        while True:
            try:
                completion = await self._call_with_retries(req, state, reasks)
            except openai.OpenAIError as e:
                return self._failed(req, state, error_code(e), _describe(e))
            state.model = completion.get("model") or req.model
            try:
                choice = completion["choices"][0]
                state.content = choice["message"]["content"] or ""
                state.finish = choice.get("finish_reason") or ""
            except (KeyError, IndexError, TypeError):  # a 200 without a usable choice: treat as malformed
                state.content, state.finish = "", ""
            if state.finish == "length":
                parsed, why = None, "finish_reason=length (output cut off)"
            else:
                parsed, why = parse_output(req.kind, state.content)
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
                             attempts=state.calls, error=code, detail=detail[:500], kind=req.kind)

    async def _call_with_retries(self, req: TeacherRequest, state: _Call, reask: int):
        cfg = self.config
        retrying = AsyncRetrying(retry=retry_if_exception(_retryable), wait=self._backoff,
                                 stop=stop_after_attempt(cfg.max_retries + 1), reraise=True)
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self._counts["retries"] += 1
                return await self._call_once(req, state, reask, attempt.retry_state.attempt_number)

    def _backoff(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if _status(exc) == 429:
            return 0.0  # the shared pause gate already holds every request
        return self._backoff_s(retry_state.attempt_number)

    def _backoff_s(self, attempt: int) -> float:
        """Exponential backoff with full jitter on top."""
        base = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (attempt - 1))
        return base + random.uniform(0, base)

    async def _call_once(self, req: TeacherRequest, state: _Call, reask: int, attempt: int) -> dict:
        """One HTTP call -> the completion as a plain dict.

        Goes through the openai client's low-level `post` (auth, base URL, timeouts, status -> exception
        mapping) but skips its request-param transform and response-model construction: they cost ~40% of
        the client's CPU per request (scripts/bench_teacher.py) and plain chat messages do not need them.
        """
        body = {"model": req.model, "messages": req.messages, **req.params}
        if reask and isinstance(body.get("seed"), int):
            body["seed"] += reask  # same key, a different draw from a deterministic server
        max_out = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        await self._limiter.acquire(req.est_prompt_tokens + max_out)
        state.calls += 1
        self._counts["calls"] += 1
        try:
            headers, content = await (self._post_direct(body) if self._session is not None else self._post(body))
        except openai.APIStatusError as e:
            self._limiter.observe(e.response.headers)
            if e.status_code == 429:
                self._counts["rate_limit_pauses"] += 1
                self._limiter.gate.pause(retry_after_s(e.response.headers) or self._backoff_s(attempt))
            raise
        self._limiter.observe(headers)
        try:
            completion = json.loads(content)
        except ValueError:
            completion = {}
        if not isinstance(completion, dict):
            completion = {}
        usage = completion.get("usage") or {}
        state.prompt_tokens += usage.get("prompt_tokens") or 0
        state.completion_tokens += usage.get("completion_tokens") or 0
        return completion

    async def _post(self, body: dict) -> tuple[Any, bytes]:
        raw = await self._api.post("/chat/completions", body=body, cast_to=httpx2.Response)
        return raw.headers, raw.content

    async def _post_direct(self, body: dict) -> tuple[Any, bytes]:
        """One POST on the aiohttp session; failures raise the openai errors the openai client would raise, so
        retries and error codes are the same whatever the transport."""
        import aiohttp

        try:
            async with self._session.post(self._url, data=json.dumps(body, ensure_ascii=False).encode()) as r:
                content = await r.read()
                if r.status >= 400:
                    request = httpx2.Request("POST", self._url)
                    response = httpx2.Response(r.status, headers=list(r.headers.items()), content=content,
                                               request=request)
                    raise self._api._make_status_error_from_response(response)  # noqa: SLF001
                return r.headers, content
        except asyncio.TimeoutError as e:
            raise openai.APITimeoutError(request=httpx2.Request("POST", self._url)) from e
        except aiohttp.ClientError as e:
            raise openai.APIConnectionError(request=httpx2.Request("POST", self._url)) from e

    async def _close_http(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._api.close()

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


def _describe(exc: BaseException) -> str:
    status = _status(exc)
    text = f"{type(exc).__name__}: {exc}"
    return f"HTTP {status} {text}" if status else text
