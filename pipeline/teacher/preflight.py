"""One cheap check of the teacher before the first paid call, so a wrong URL, key or model is a configuration
error within seconds instead of a run of retries that ends with every request in failed/.

First GET {base_url}/models (free). The model listed there: done. Otherwise (not listed, or the list refused or
absent) the smallest request the API allows settles it: one chat completion of one output token. Unreachable,
401/403 and 404 are ConfigErrors naming the URL and what to change; anything else (429, 5xx, a 400 about a
parameter) is left to the run, whose retries and failed/ handle transient trouble as before.
"""

from __future__ import annotations

import logging
import time

import openai

from common.errors import ConfigError
from common.redact import display_url, redact
from pipeline.teacher.config import TeacherConfig

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0  # per preflight call; a refused connection fails at once
CONNECT_ATTEMPTS = 3  # a server still starting up gets about a second and a half
CONNECT_PAUSE_S = 0.5
PROBE = {"messages": [{"role": "user", "content": "Reply with OK."}], "max_tokens": 1}


def _reachable(call, config: TeacherConfig):
    """call() with a few quick tries on connection errors; ConfigError when nothing answers."""
    for attempt in range(1, CONNECT_ATTEMPTS):
        try:
            return call()
        except openai.APIConnectionError:
            time.sleep(CONNECT_PAUSE_S * attempt)
    try:
        return call()
    except openai.APIConnectionError as e:
        cause = e.__cause__ or e
        raise ConfigError(
            f"nothing answers at --teacher_base_url {display_url(config.base_url)} "
            f"({redact(f'{type(cause).__name__}: {cause}')}); "
            "start the teacher server or fix the URL (OpenAI-compatible, usually ending in /v1)") from None


def _refused(config: TeacherConfig, status: int) -> ConfigError:
    what = "the API key" if status == 401 else "the API key or its permissions for this model"
    return ConfigError(
        f"the teacher at {display_url(config.base_url)} refused {what} (HTTP {status}): put a valid key in the environment "
        f"variable {config.api_key_env} (or name another with --api_key_env / --api_key_secret)")


def _listed_models(client: openai.OpenAI, config: TeacherConfig) -> list[str] | None:
    """Model ids the server lists; None when it does not list them (no route, no permission, an error)."""
    try:
        return [m.id for m in _reachable(lambda: list(client.models.list()), config)]
    except openai.AuthenticationError as e:
        raise _refused(config, e.status_code) from None
    except openai.APIStatusError as e:
        log.info("teacher preflight: GET %s/models answered HTTP %s; trying one minimal request",
                 display_url(config.base_url), e.status_code)
        return None


def preflight(config: TeacherConfig) -> str:
    """Check that the teacher answers, accepts the key and knows the model. Returns how that was established;
    raises ConfigError (exit status 2) for an unreachable server, a refused key or an unknown model."""
    client = openai.OpenAI(**config.client_args(), max_retries=0, timeout=TIMEOUT_S)
    try:
        listed = _listed_models(client, config)
        if listed is not None and config.model in listed:
            return "model listed"
        try:
            _reachable(lambda: client.chat.completions.create(model=config.model, **PROBE), config)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise _refused(config, e.status_code) from None
        except openai.NotFoundError:
            known = f"; it lists: {', '.join(sorted(listed)[:10])}" if listed else ""
            where = "" if listed else " (or no chat completions there: does --teacher_base_url end in /v1?)"
            raise ConfigError(f"the teacher at {display_url(config.base_url)} has no model {config.model!r} (HTTP 404){where}"
                              f"{known}; fix --teacher_model") from None
        except openai.APIStatusError as e:  # 400, 429, 5xx: not a wrong configuration; the run handles these
            log.warning("teacher preflight inconclusive: a minimal request answered HTTP %s; going on",
                        e.status_code)
            return f"inconclusive (HTTP {e.status_code})"
        return "model answered a one-token request"
    finally:
        client.close()
