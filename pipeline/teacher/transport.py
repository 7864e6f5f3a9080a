"""How a chat completion travels: the only client code on the openai client's internals and aiohttp.

`choose_transport` resolves --teacher_transport; `Transport` posts one request body and returns the raw reply
(headers, bytes), raising the openai client's error types whatever the transport, so the client's retries and
error codes are the same for all three; `retryable`, `error_code` and `describe` classify those errors.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

import httpx2
import openai

from common.redact import redact
from pipeline.teacher.config import AUTO_TRANSPORT, TRANSPORTS, TeacherConfig, is_loopback

CallError = openai.OpenAIError  # what a failed call raises (after the transport's own mapping)
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def choose_transport(setting: str, base_url: str) -> str:
    """--teacher_transport: 'auto' is "direct" for a teacher on this machine (a local vLLM or SGLang server, or
    the reference teacher: thousands of requests a second, where the client's CPU per call is what limits a
    run) and the openai client on aiohttp for any other (an API whose rate limits, not the client, set the pace,
    and whose organization, project and Azure settings are the openai client's to handle)."""
    if setting != AUTO_TRANSPORT:
        return setting
    return "direct" if is_loopback(base_url) else "aiohttp"


def check_transport(name: str) -> None:
    """ValueError unless `name` is one of TRANSPORTS."""
    if name not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {name!r}")


class Transport:
    """The HTTP side of one client: a connection pool on the client's event loop (create and use it there)."""

    def __init__(self, config: TeacherConfig, connection: Mapping[str, Any]):
        """`connection`: config.client_args() (resolved once by the caller)."""
        limits = httpx2.Limits(max_connections=config.max_in_flight + 8,
                               max_keepalive_connections=config.max_in_flight)
        if config.transport == "aiohttp":
            http = openai.DefaultAioHttpClient(limits=limits)
        else:
            http = openai.DefaultAsyncHttpxClient(limits=limits)
        self._api = openai.AsyncOpenAI(**connection, max_retries=0, timeout=config.timeout_s, http_client=http)
        # openai draws a uuid4 for every POST's Idempotency-Key (an os.urandom call, a tenth of its CPU per request
        # here); a per-client counter is as unique for the server and costs nothing.
        keys = itertools.count()
        prefix = f"mbeir-cot-{uuid.uuid4().hex}"
        self._api._idempotency_key = lambda: f"{prefix}-{next(keys)}"  # noqa: SLF001
        self._session = self._direct_session(config, connection["api_key"]) if config.transport == "direct" else None
        self._url = str(self._api.base_url).rstrip("/") + "/chat/completions"

    def _direct_session(self, config: TeacherConfig, api_key: str):
        import aiohttp

        # trust_env looks up proxies (and reads ~/.netrc) on a thread for every request: only when one is set
        proxied = any(os.environ.get(v) for v in _PROXY_VARIABLES)
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=config.max_in_flight + 8), trust_env=proxied,
            timeout=aiohttp.ClientTimeout(total=config.timeout_s),
            headers={"Authorization": f"Bearer {api_key}",  # unless the URL's credentials replace it
                     **{k: v for k, v in self._api.default_headers.items() if isinstance(v, str)}})

    async def post(self, body: dict) -> tuple[Mapping[str, str], bytes]:
        """One chat completion call -> (response headers, response body); failures raise CallError subclasses.

        Goes through the openai client's low-level `post` (auth, base URL, timeouts, status -> exception
        mapping) but skips its request-param transform and response-model construction: they cost ~40% of
        the client's CPU per request (scripts/bench_teacher.py) and plain chat messages do not need them.
        """
        if self._session is not None:
            return await self._post_direct(body)
        raw = await self._api.post("/chat/completions", body=body, cast_to=httpx2.Response)
        return raw.headers, raw.content

    async def _post_direct(self, body: dict) -> tuple[Mapping[str, str], bytes]:
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

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self._api.close()


# ---- what went wrong -------------------------------------------------------------------------------------
def status_of(exc: BaseException | None) -> int | None:
    """The HTTP status of a failed call; None when no response came back (or `exc` is not a call error)."""
    return getattr(exc, "status_code", None) if isinstance(exc, openai.APIStatusError) else None


def response_headers(exc: BaseException) -> Mapping[str, str] | None:
    """The headers of the error response behind `exc`; None when no response came back."""
    return exc.response.headers if isinstance(exc, openai.APIStatusError) else None


def retryable(exc: BaseException) -> bool:
    """Worth another try: no response (connection, timeout), or 408 / 409 / 429 / 5xx."""
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    status = status_of(exc)
    return status is not None and (status in (408, 409, 429) or status >= 500)


def _caused_by_refused_or_reset(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ConnectionError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def error_code(exc: BaseException) -> str:
    """The TeacherResult.error code of a failed call."""
    if isinstance(exc, openai.APITimeoutError):
        # openai's aiohttp transport reports a refused connection as ConnectTimeout
        return "connection" if _caused_by_refused_or_reset(exc) else "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    status = status_of(exc)
    if status == 429:
        return "rate_limited"
    if status == 408:
        return "timeout"
    if status is not None and (status >= 500 or status == 409):
        return "server_error"
    if status is not None:
        return "bad_request"
    return "internal"


def describe(exc: BaseException) -> str:
    """One line for TeacherResult.detail, redacted (a server may echo the key in its error body)."""
    status = status_of(exc)
    text = f"{type(exc).__name__}: {exc}"
    return redact(f"HTTP {status} {text}" if status else text)

