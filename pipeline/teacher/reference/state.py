"""What every route of the reference teacher shares: its configuration (fault rates, limits, served models,
the Batch API's knobs), the counters of one server and the OpenAI-shaped error response."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

NOT_A_MODEL = "offline reference stand-in, NOT A MODEL: answers are assembled from the prompt's labelled fields"
OUTCOMES = ("ok", "429", "500", "hang", "malformed", "400")  # "400" only when forced
DEFAULT_MODEL = "reference-teacher"  # what /v1/models lists unless `models` says otherwise
OWNER = "offline-reference"  # its /v1/models owned_by: how a run knows its teacher is this stand-in


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
    basic_auth: str | None = None  # "user:password": only HTTP Basic with these is accepted (a proxy's login)
    echo_key: bool = False  # the 401 quotes the Authorization header it refused (as careless servers do)
    # Files/Batch API knobs (pipeline/teacher/reference/batches.py documents them)
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
    batches: Any = None  # batches.BatchStore, set when its routes are mounted

    @property
    def faulty(self) -> bool:
        c = self.config
        return bool(c.p429 or c.p500 or c.phang or c.pmalformed)

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, **{k: self.outcomes.get(k, 0) for k in OUTCOMES}}


def error_response(status: int, kind: str, message: str, headers: dict | None = None) -> web.Response:
    """An error as the OpenAI API answers it."""
    body = {"error": {"message": message, "type": kind, "code": kind, "param": None}}
    return web.json_response(body, status=status, headers=headers)
