"""The reference teacher's server: /v1/chat/completions and /v1/models, with faults injected on demand: 429 with
Retry-After, 500, hangs past the client timeout, and malformed outputs (bad tags, empty content, finish_reason
"length"). Fault draws are random per call but reproducible: they depend on (seed, request body hash, how many
times that body was seen). The Files and Batch API (/v1/files, /v1/batches) are mounted from batches.py; more
routes plug in through `setup_app(app, state)`.

    python -m pipeline.teacher.reference.server --port 0 --latency_ms 100 --p429 0.01

In-process (tests): `with ReferenceServer(p500=0.1) as srv: srv.base_url; srv.stats()`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from pipeline.teacher.reference.answers import answer_for, chat_completion, malformed
from pipeline.teacher.reference.batches import add_batch_routes
from pipeline.teacher.reference.state import (
    DEFAULT_MODEL,
    NOT_A_MODEL,
    OWNER,
    ServerConfig,
    ServerState,
    error_response,
)

SetupApp = Callable[[web.Application, ServerState], None]


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


def _authorization(cfg: ServerConfig) -> str | None:
    """The one Authorization header the server accepts; None when it takes any."""
    if cfg.basic_auth is not None:
        return "Basic " + base64.b64encode(cfg.basic_auth.encode()).decode("ascii")
    return None if cfg.api_key is None else f"Bearer {cfg.api_key}"


class _Routes:
    """/v1/chat/completions and /v1/models of one server."""

    def __init__(self, state: ServerState):
        self.state, self.cfg = state, state.config
        self.authorization = _authorization(state.config)

    def refusal(self, request: web.Request, model: str | None = None) -> web.Response | None:
        """401 for a wrong key, 404 for a model not served; None when the request may go on."""
        cfg = self.cfg
        offered = request.headers.get("Authorization", "")
        if self.authorization is not None and offered != self.authorization:
            echo = f": {offered}" if cfg.echo_key else ""
            return error_response(401, "invalid_api_key", f"reference server: incorrect API key provided{echo}")
        if model is not None and cfg.models is not None and model not in cfg.models:
            return error_response(404, "model_not_found", f"reference server: the model `{model}` does not exist")
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.authorization is not None or self.cfg.models is not None:
            refused = self.refusal(request, _model_of(body) if self.cfg.models is not None else None)
            if refused is not None:
                return refused
        outcome, rng, headers, over_for = self._arrive(body)
        if self.cfg.latency_ms:
            await asyncio.sleep(self.cfg.latency_ms / 1000.0)
        fault = self._fault(outcome, headers, over_for)
        if fault is not None:
            return fault
        if outcome == "hang":
            await asyncio.sleep(self.cfg.hang_s)
        return self._answer(body, outcome, rng, headers)

    def _arrive(self, body: bytes) -> tuple[str, random.Random | None, dict[str, str], float | None]:
        """Count the call and draw its outcome: (outcome, its rng, rate-limit headers, seconds the rate-limit
        window still holds when this call is over it)."""
        state = self.state
        state.calls += 1
        outcome, rng = _draw(state, body)
        headers, over_for = _rate_headers(state)
        if over_for is not None and outcome == "ok":
            outcome = "429"
        state.outcomes[outcome] += 1
        state.arrivals.append((time.monotonic(), outcome))
        return outcome, rng, headers, over_for

    def _fault(self, outcome: str, headers: dict[str, str], over_for: float | None) -> web.Response | None:
        """The error response an injected fault answers with; None for the outcomes that answer."""
        if outcome == "429":
            wait = self.cfg.retry_after_s if over_for is None else over_for
            headers |= {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(int(wait * 1000))}
            return error_response(429, "rate_limit_exceeded", "reference server: rate limited", headers)
        if outcome == "500":
            return error_response(500, "server_error", "reference server: injected internal error")
        if outcome == "400":
            return error_response(400, "invalid_request_error", "reference server: injected bad request")
        return None

    def _answer(self, body: bytes, outcome: str, rng: random.Random | None, headers: dict[str, str]
                ) -> web.Response:
        try:
            req = json.loads(body)
            messages = req["messages"]
            model = req["model"]
        except (ValueError, KeyError, TypeError) as e:
            return error_response(400, "invalid_request_error", f"bad request body: {e}")
        content, kind, prompt_tokens = answer_for(messages)
        finish = "stop"
        if outcome == "malformed":
            content, finish = malformed(kind, content, rng)
        return web.json_response(chat_completion(f"chatcmpl-ref-{self.state.calls}", model, content, finish,
                                                 prompt_tokens), headers=headers)

    async def models(self, request: web.Request) -> web.Response:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        return web.json_response({"object": "list", "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": OWNER,
             "description": NOT_A_MODEL} for model in (self.cfg.models or (DEFAULT_MODEL,))]})


def build_app(state: ServerState, setup_app: SetupApp | None = None) -> web.Application:
    routes = _Routes(state)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", routes.chat)
    app.router.add_get("/v1/models", routes.models)
    add_batch_routes(app, state)
    if setup_app is not None:
        setup_app(app, state)
    return app


class ReferenceServer:
    """The reference server on a free loopback port, in a background thread of this process."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, setup_app: SetupApp | None = None, **config: Any):
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
    p.add_argument("--basic_auth", default=None, help="USER:PASSWORD: accept only HTTP Basic with these")
    p.add_argument("--echo_key", action="store_true", help="a 401 quotes the Authorization header it refused")
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
