"""The HTTP face of the server (aiohttp). The event loop only parses, queues and answers; the model runs on the
scheduler's thread (queue.py), in this process (tests) or in a process of its own (remote.py, the command line).

    POST /v1/embeddings   OpenAI embeddings (protocol.py)
    GET  /v1/models       the one served model
    GET  /health          status, queue depth and counters (no API key needed)

Every answer other than 200 has an OpenAI-style error body. A client that disconnects cancels its inputs.
SIGTERM (or SIGINT) stops listening, answers the requests in flight, then stops the scheduler.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from trainer.serving import protocol
from trainer.serving.protocol import ApiError, Limits
from trainer.serving.queue import QueueClosed, QueueFull, Ticket

log = logging.getLogger("trainer.serve")


@dataclass(frozen=True)
class ServeConfig:
    model_name: str
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = field(default=None, repr=False)  # never printed
    retry_after: int = 1  # seconds, in a 429's Retry-After


class ModelOwner(Protocol):
    """What the app needs of the model's owner: queue.Scheduler (this process) or remote.ModelProcess (a child
    process). `queue` has submit(ticket) (QueueFull, QueueClosed), cancel(ticket), waiting, max_queue and
    snapshot() (an "error" key when the model is gone)."""

    queue: Any

    def stop(self, timeout: float | None = None) -> None: ...


CONFIG = web.AppKey("config", ServeConfig)
SCHEDULER = web.AppKey("scheduler", ModelOwner)
STARTED = web.AppKey("started", float)


def build_app(scheduler: ModelOwner, config: ServeConfig) -> web.Application:
    app = web.Application(client_max_size=config.limits.max_request_bytes, middlewares=[_errors, _auth])
    app[CONFIG], app[SCHEDULER], app[STARTED] = config, scheduler, time.time()
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    return app


def _error_response(err: ApiError) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=err.headers)


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as err:
        return _error_response(err)
    except web.HTTPException as err:  # the router's 404 and 405
        return _error_response(ApiError(err.status, f"{request.method} {request.path}: {err.reason}"))
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error_response(ApiError(500, "internal error; the server log has the details"))


@web.middleware
async def _auth(request: web.Request, handler) -> web.StreamResponse:
    key = request.app[CONFIG].api_key
    if key is not None and request.path != "/health":
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "incorrect or missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
    return await handler(request)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


async def _json(request: web.Request, limits: Limits):
    too_large = ApiError(413, f"the request body is over {limits.max_request_bytes} bytes (--max_request_bytes)",
                         code="request_too_large")
    if (request.content_length or 0) > limits.max_request_bytes:
        raise too_large
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as err:
        raise ApiError(400, f"the body is not valid JSON ({err})") from None


async def _embeddings(request: web.Request) -> web.Response:
    config, queue = request.app[CONFIG], request.app[SCHEDULER].queue
    body = await _json(request, config.limits)
    req = protocol.parse_request(body, config.limits, config.model_name)
    ticket = Ticket(req.inputs, req.mode, req.return_reasoning, asyncio.get_running_loop())
    try:
        queue.submit(ticket)
    except QueueFull:
        raise ApiError(429, f"the server is busy: {queue.waiting} inputs are waiting, at most {queue.max_queue} "
                       f"(--max_queue); retry after {config.retry_after} s", code="rate_limit_exceeded",
                       headers={"Retry-After": str(config.retry_after)}) from None
    except QueueClosed as err:
        raise ApiError(503, f"{err}; the server is shutting down" if str(err) else "the server is shutting down",
                       code="shutting_down") from None
    try:
        results = await ticket.future
    except asyncio.CancelledError:  # the client went away
        queue.cancel(ticket)
        raise
    return web.json_response(protocol.response(req, results, config.model_name))


async def _models(request: web.Request) -> web.Response:
    model = {"id": request.app[CONFIG].model_name, "object": "model", "created": int(request.app[STARTED]),
             "owned_by": "trace"}
    return web.json_response({"object": "list", "data": [model]})


async def _health(request: web.Request) -> web.Response:
    snapshot = request.app[SCHEDULER].queue.snapshot()
    error = snapshot.get("error")
    return web.json_response({"status": "error" if error else "ok", "model": request.app[CONFIG].model_name,
                              **snapshot}, status=503 if error else 200)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; OSError when the address cannot be had (in use, not this machine's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)


async def serve(app: web.Application, sock: socket.socket, *, shutdown_timeout: float = 60.0,
                on_ready: Callable[[str], None] | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve on `sock` until SIGTERM or SIGINT (main thread) or `stop` is set; then stop listening, answer the
    requests in flight (for at most shutdown_timeout seconds) and stop the scheduler."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    stop = stop or asyncio.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await web.SockSite(runner, sock).start()
        host, port = sock.getsockname()[:2]
        if on_ready:
            on_ready(f"http://{f'[{host}]' if ':' in host else host}:{port}")
        await stop.wait()
    finally:
        await runner.cleanup()
        await asyncio.to_thread(app[SCHEDULER].stop)
