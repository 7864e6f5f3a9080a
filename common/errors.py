"""Errors raised to the user for bad configuration (never for bad records: those become Rejects)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A flag or input location is wrong; the message says what to change."""


class OutputError(RuntimeError):
    """Writing the outputs failed in a way the user must fix (a full disk); the message says what to do."""


# (module, class) of the transport errors of the HTTP clients huggingface_hub may use (httpx2, httpx, requests).
_NETWORK_ERRORS = (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError"),
                   ("requests", "Timeout"))


def network_errors() -> tuple[type[BaseException], ...]:
    """Connection-level error classes of the HTTP clients already imported, plus ConnectionError and
    TimeoutError; for `except network_errors():` around Hub calls."""
    import sys

    found = [getattr(sys.modules[m], name) for m, name in _NETWORK_ERRORS if hasattr(sys.modules.get(m), name)]
    return (ConnectionError, TimeoutError, *found)
