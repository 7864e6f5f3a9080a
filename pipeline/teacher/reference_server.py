"""Offline reference teacher: an OpenAI-compatible HTTP server that is an OFFLINE STAND-IN, NOT A MODEL.

It answers /v1/chat/completions with well-formed output assembled from the labelled lines of our prompt
templates (pipeline/teacher/prompting.py documents the labels), so the whole pipeline can run and be tested
without a real teacher. It also injects faults on demand: 429 with Retry-After, 500, hangs past the client
timeout, and malformed outputs (bad tags, empty content, finish_reason "length"). Fault draws are random per
call but reproducible: they depend on (seed, request body hash, how many times that body was seen).

    python -m pipeline.teacher.reference_server --port 0 --latency_ms 100 --p429 0.01

In-process (tests): `with ReferenceServer(p500=0.1) as srv: srv.base_url; srv.stats()`.
The Files and Batch API (/v1/files, /v1/batches) are mounted from reference_batches.py; more routes plug in
through `setup_app(app, state)`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pipeline.teacher.prompting import CIR_DATASETS, IMAGE_TOKENS, KNOWLEDGE_DATASETS, TASK_TYPES

NOT_A_MODEL = "offline reference stand-in, NOT A MODEL: answers are assembled from the prompt's labelled fields"
OUTCOMES = ("ok", "429", "500", "hang", "malformed", "400")  # "400" only when forced
DEFAULT_MODEL = "reference-teacher"  # what /v1/models lists unless `models` says otherwise
_FAMILY = {v: k for k, v in TASK_TYPES.items()}
_LABEL = re.compile(r"^(Task type|Dataset|Instruction|Query text|Query modality|Candidate modality|Target|Answer):"
                    r"[ \t]*(.*)$", re.MULTILINE)
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")
STOP_WORDS = frozenset(
    "a an the and or of to in on at for with by from as is are was were be been this that these those it its "
    "into than then there their them they he she his her which who whom what when where why how not no but so "
    "if about over under more most less very can could should would will just also same image images picture "
    "photo find show shows showing retrieve query target none one two".split())


@dataclass
class ServerConfig:
    latency_ms: float = 0.0
    p429: float = 0.0
    p500: float = 0.0
    phang: float = 0.0
    pmalformed: float = 0.0
    seed: int = 0
    rpm: int | None = None  # enforce a requests-per-minute window (429 + x-ratelimit-* headers)
    retry_after_s: float = 1.0
    hang_s: float = 30.0
    forced: Sequence[str] = ()  # outcomes for the first calls, in arrival order (tests); then random draws
    models: Sequence[str] | None = None  # served model ids: others get 404 model_not_found (None: answer any)
    api_key: str | None = None  # when set, any other bearer token gets 401 (as a real API answers a wrong key)
    # Files/Batch API knobs (pipeline/teacher/reference_batches.py documents them)
    batch_speed: float = 0.0
    batch_pfail: float = 0.0
    batch_pexpire: float = 0.0
    batch_forced: Sequence[str] = ()


@dataclass
class ServerState:
    config: ServerConfig
    calls: int = 0
    outcomes: Counter = field(default_factory=Counter)
    arrivals: list = field(default_factory=list)  # (time.monotonic(), outcome) per call
    seen: Counter = field(default_factory=Counter)  # body digest -> times seen
    window_start: float = 0.0
    window_count: int = 0
    batches: Any = None  # reference_batches.BatchStore, set when its routes are mounted

    @property
    def faulty(self) -> bool:
        c = self.config
        return bool(c.p429 or c.p500 or c.phang or c.pmalformed)

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, **{k: self.outcomes.get(k, 0) for k in OUTCOMES}}


def _words(text: str, n: int) -> str:
    words = text.split()
    return " ".join(words[:n]) + ("..." if len(words) > n else "")


def keywords(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 2 and w.lower() not in STOP_WORDS}


def _known(value: str) -> str:
    return "" if value in ("", "(none)") else value


def _cot(family: str, f: dict[str, str]) -> tuple[str, str]:
    query, target = _words(_known(f.get("Query text", "")), 30), _words(_known(f.get("Target", "")), 30)
    instruction = _words(_known(f.get("Instruction", "")), 20)
    if family == "cot_cir":
        edit = query or "an unspecified change"
        answer = target or f"The reference item changed so that it {edit}"
        reasoning = (f"The source is the reference image shown with the query. The requested edit is: {edit}. "
                     "Everything the edit does not mention stays unchanged: the main subject, its category, "
                     f"setting and overall composition. Applying the edit to the source gives the target: {answer}")
    elif family == "cot_knowledge":
        title, _, summary = (target or query or "the pictured entity").partition(". ")
        answer = f"{title}: {summary}" if summary else title
        reasoning = (f"The question asks: {query or instruction}. The query image shows the subject it refers to. "
                     "Step one, identify the visible subject; step two, relate it to the question; step three, "
                     f"pick the encyclopedic entity that matches every clue. The clues point to {title}"
                     + (f", described as {_words(summary, 20)}." if summary else "."))
    elif family == "cot_visual":
        answer = target or query or "A photograph of the described scene"
        reasoning = (f"Fine-grained details first: {query or instruction or 'the visible scene'}. "
                     f"Objects, attributes, colours and layout all follow from this. "
                     f"In summary the target shows {answer}")
    else:
        answer = target or query or "A passage answering the question"
        reasoning = (f"The information need is: {query or instruction}. The key terms are "
                     f"{', '.join(sorted(keywords(query))[:6]) or 'those of the query'}. "
                     f"A relevant passage must state {answer}")
    return reasoning, _words(answer, 40)


def _judge(f: dict[str, str]) -> dict[str, Any]:
    complex_ = f.get("Dataset", "") in CIR_DATASETS | KNOWLEDGE_DATASETS
    return {"label": "complex" if complex_ else "simple", "confidence": 0.9 if complex_ else 0.85,
            "rationale": "reference stand-in: complex for CIR and knowledge datasets"}


def _verify(f: dict[str, str]) -> dict[str, Any]:
    reference = _known(f.get("Target", "")) or _known(f.get("Query text", ""))
    shared = keywords(f.get("Answer", "")) & keywords(reference)
    if shared:
        return {"decision": "consistent", "confidence": 0.9, "rationale": f"shares {sorted(shared)[:3]}"}
    return {"decision": "inconsistent", "confidence": 0.8, "rationale": "no keyword in common with the target"}


def _prompt_parts(messages: list[dict]) -> tuple[str, int]:
    texts, images = [], 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or ():
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                images += 1
    return "\n".join(texts), images


def answer_for(messages: list[dict]) -> tuple[str, str, int]:
    """(content, kind, prompt_tokens) of a well-formed answer to a prompt built from our templates."""
    text, images = _prompt_parts(messages)
    fields = dict(_LABEL.findall(text))
    family = _FAMILY.get(fields.get("Task type", ""), "cot_visual")
    prompt_tokens = len(text) // 4 + images * IMAGE_TOKENS
    if family == "judge":
        return json.dumps(_judge(fields)), "judge", prompt_tokens
    if family.startswith("verifier"):
        return json.dumps(_verify(fields)), "verifier", prompt_tokens
    reasoning, answer = _cot(family, fields)
    return f"<reasoning>{reasoning}</reasoning><answer>{answer}</answer>", "cot", prompt_tokens


def _malformed(kind: str, content: str, rng: random.Random) -> tuple[str, str]:
    """(content, finish_reason) of one broken variant."""
    variant = rng.choice(("tags", "empty", "length"))
    if variant == "empty":
        return "", "stop"
    if variant == "length":
        return content[: max(1, len(content) // 2)], "length"
    if kind == "cot":
        return content.replace("</reasoning>", "").replace("<answer>", "<answer><answer>"), "stop"
    return "Sure! Here is my verdict: " + content[: len(content) // 2], "stop"


def _error(status: int, kind: str, message: str, headers: dict | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": kind, "param": None}}
    return web.json_response(body, status=status, headers=headers)


def _draw(state: ServerState, body: bytes) -> tuple[str, random.Random | None]:
    cfg = state.config
    n = state.calls - 1
    if not state.faulty and n >= len(cfg.forced):
        return "ok", None  # fast path: no draws to make
    digest = hashlib.blake2b(body, digest_size=8).hexdigest()
    nth = state.seen[digest]
    state.seen[digest] = nth + 1
    rng = random.Random(f"{cfg.seed}:{digest}:{nth}")
    if n < len(cfg.forced):
        return cfg.forced[n], rng
    r = rng.random()
    for outcome, p in (("429", cfg.p429), ("500", cfg.p500), ("hang", cfg.phang), ("malformed", cfg.pmalformed)):
        if r < p:
            return outcome, rng
        r -= p
    return "ok", rng


def _model_of(body: bytes) -> str | None:
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return None
    return model if isinstance(model, str) else None


def _rate_headers(state: ServerState) -> tuple[dict[str, str], float | None]:
    """x-ratelimit-* headers for a fixed 60 s window, and the seconds to its reset when this call is over."""
    rpm = state.config.rpm
    if not rpm:
        return {}, None
    now = time.monotonic()
    if now - state.window_start >= 60.0:
        state.window_start, state.window_count = now, 0
    over = state.window_count >= rpm
    if not over:
        state.window_count += 1
    reset = max(0.0, 60.0 - (now - state.window_start))
    return {"x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": str(rpm - state.window_count),
            "x-ratelimit-reset-requests": f"{reset:.3f}s"}, (reset if over else None)


def build_app(state: ServerState, setup_app: Callable[[web.Application, ServerState], None] | None = None
              ) -> web.Application:
    cfg = state.config

    def refusal(request: web.Request, model: str | None = None) -> web.Response | None:
        """401 for a wrong key, 404 for a model not served; None when the request may go on."""
        if cfg.api_key is not None and request.headers.get("Authorization") != f"Bearer {cfg.api_key}":
            return _error(401, "invalid_api_key", "reference server: incorrect API key provided")
        if model is not None and cfg.models is not None and model not in cfg.models:
            return _error(404, "model_not_found", f"reference server: the model `{model}` does not exist")
        return None

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if cfg.api_key is not None or cfg.models is not None:
            refused = refusal(request, _model_of(body) if cfg.models is not None else None)
            if refused is not None:
                return refused
        state.calls += 1
        outcome, rng = _draw(state, body)
        headers, over_for = _rate_headers(state)
        if over_for is not None and outcome == "ok":
            outcome = "429"
        state.outcomes[outcome] += 1
        state.arrivals.append((time.monotonic(), outcome))
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000.0)
        if outcome == "429":
            wait = cfg.retry_after_s if over_for is None else over_for
            headers |= {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(int(wait * 1000))}
            return _error(429, "rate_limit_exceeded", "reference server: rate limited", headers)
        if outcome == "500":
            return _error(500, "server_error", "reference server: injected internal error")
        if outcome == "400":
            return _error(400, "invalid_request_error", "reference server: injected bad request")
        if outcome == "hang":
            await asyncio.sleep(cfg.hang_s)
        try:
            req = json.loads(body)
            messages = req["messages"]
            model = req["model"]
        except (ValueError, KeyError, TypeError) as e:
            return _error(400, "invalid_request_error", f"bad request body: {e}")
        content, kind, prompt_tokens = answer_for(messages)
        finish = "stop"
        if outcome == "malformed":
            content, finish = _malformed(kind, content, rng)
        completion_tokens = len(content) // 4 + 1
        return web.json_response({
            "id": f"chatcmpl-ref-{state.calls}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "reference-stand-in",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens, "note": NOT_A_MODEL},
        }, headers=headers)

    async def models(request: web.Request) -> web.Response:
        refused = refusal(request)
        if refused is not None:
            return refused
        return web.json_response({"object": "list", "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": "offline-reference",
             "description": NOT_A_MODEL} for model in (cfg.models or (DEFAULT_MODEL,))]})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    from pipeline.teacher.reference_batches import add_batch_routes  # imports this module

    add_batch_routes(app, state)
    if setup_app is not None:
        setup_app(app, state)
    return app


class ReferenceServer:
    """The reference server on a free loopback port, in a background thread of this process."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 setup_app: Callable[[web.Application, ServerState], None] | None = None, **config: Any):
        self.state = ServerState(ServerConfig(**config))
        self.host, self.port, self._setup_app = host, port, setup_app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    @property
    def arrivals(self) -> list[tuple[float, str]]:
        return list(self.state.arrivals)

    def start(self) -> ReferenceServer:
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        async def boot() -> None:
            self._runner = web.AppRunner(build_app(self.state, self._setup_app), access_log=None,
                                         shutdown_timeout=0.2)  # hung handlers are cancelled on stop
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
            await site.start()
            self.port = self._runner.addresses[0][1]

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(boot())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="reference-server", daemon=True)
        self._thread.start()
        started.wait()
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        async def shutdown() -> None:
            await self._runner.cleanup()
            hung = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in hung:
                t.cancel()
            await asyncio.gather(*hung, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._loop = None

    def __enter__(self) -> ReferenceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Offline OpenAI-compatible reference teacher (NOT A MODEL).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on start)")
    for name in ("latency_ms", "p429", "p500", "phang", "pmalformed"):
        p.add_argument(f"--{name}", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rpm", type=int, default=None)
    p.add_argument("--retry_after_s", type=float, default=1.0)
    p.add_argument("--hang_s", type=float, default=30.0)
    p.add_argument("--models", type=lambda v: [m for m in v.split(",") if m], default=None,
                   help="comma-separated model ids served; others get 404 (default: answer any model)")
    p.add_argument("--api_key", default=None, help="accept only this bearer token (others get 401)")
    for name in ("batch_speed", "batch_pfail", "batch_pexpire"):
        p.add_argument(f"--{name}", type=float, default=0.0)
    a = p.parse_args(argv)
    config = {k: v for k, v in vars(a).items() if k not in ("host", "port")}
    state = ServerState(ServerConfig(**config))

    async def serve() -> None:
        runner = web.AppRunner(build_app(state), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, a.host, a.port, backlog=1024).start()
        host, port = runner.addresses[0][:2]
        print(f"reference teacher ({NOT_A_MODEL}) listening on http://{host}:{port}/v1", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
