"""Secrets never leave the process: one redaction for every text that is written or shown (failed/ rows, logs,
stats, cards, exception messages), and URLs shown without their `user:password@`.

    register_secret(key)                   # once, where the key is resolved
    redact(str(error))                     # -> the text with every registered secret and bearer token
                                           #    replaced by REDACTED, URLs without user:password@
    display_url("https://u:p@host/v1")     # -> "https://host/v1"
    split_credentials("https://u:p@host/v1")  # -> ("https://host/v1", "u", "p"): connect with them, show without

The first registered secret also protects what the process prints without asking: every log record (message,
traceback, stack) and every uncaught exception's traceback on stderr pass through `redact`.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "***"
_MIN_SECRET = 4  # shorter values (a dummy key such as "x") would blank ordinary words

_BEARER = re.compile(r"(?i)(\bbearer\s+)[^\s\"',;]+")
# OpenAI-style (sk-..., sk-proj-...) and Hub (hf_ + 34 letters) tokens; not a folder named hf_cache_...
_KEY_LIKE = re.compile(r"\b(?:sk-[A-Za-z0-9_\-]{32,}|hf_[A-Za-z0-9]{30,})\b")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#\s\"'<>]*@")  # up to the authority's last @
# `Authorization: Basic dXNlcjpw` / `authorization=Bearer x`: the scheme stays, the credentials go
_AUTH_HEADER = re.compile(r"(?i)(\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?(?:[a-z]+\s+)?)"
                          r"[^\s\"',;}&]+")
# `api_key=...`, `hf_token: ...`, `x-api-key: ...`, `?password=...`; not `max_tokens=` nor `api_key_env=`
_KEY_FIELD = re.compile(r"(?i)(\b(?:[a-z0-9]+[_-])*(?:api[_-]?key|token|password|passwd|secret)\b[\"']?\s*[:=]"
                        r"\s*[\"']?)[^\s\"',;}&]+")

_secrets: set[str] = set()
_lock = threading.Lock()
_protected = False


def register_secret(value: str | None) -> None:
    """Remember a secret (an API key, a token, a password) so that `redact` removes it wherever it appears; from
    then on log records and uncaught exceptions of this process are redacted too."""
    if value and len(value.strip()) >= _MIN_SECRET:
        with _lock:
            _secrets.add(value.strip())
        _protect_process()


def redact(text: str, extra: tuple[str, ...] = ()) -> str:
    """`text` with registered secrets, `extra` secrets, bearer tokens, key-like tokens, `key=value` secrets and
    Authorization header values replaced by REDACTED, and URLs without `user:password@`. Idempotent."""
    if not text:
        return text
    with _lock:
        known = sorted(_secrets | {s for s in extra if s and len(s) >= _MIN_SECRET}, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, REDACTED)
    text = _URL_CREDENTIALS.sub(lambda m: m.group(1), text)  # shown as display_url shows a URL
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _KEY_FIELD.sub(lambda m: m.group(1) + REDACTED, text)
    return _KEY_LIKE.sub(REDACTED, text)


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(url without `user:password@`, user, password), both percent-decoded; (url, None, None) without them."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None, None
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, unquote(user), (unquote(password) if password else None)


def display_url(url: str | None) -> str | None:
    """The URL without `user:password@` (and without a query string's secrets), for cards, logs and messages."""
    if not url:
        return url
    bare, _, _ = split_credentials(url)
    return redact(bare)


# ---- what the process prints without asking: log records and uncaught exceptions ----------------------------
def _protect_process() -> None:
    global _protected
    with _lock:
        if _protected:
            return
        _protected = True
    previous = logging.getLogRecordFactory()

    def redacting_factory(*args, **kwargs) -> logging.LogRecord:
        return redact_record(previous(*args, **kwargs))

    logging.setLogRecordFactory(redacting_factory)
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _print_exception
    if threading.excepthook is threading.__excepthook__:
        threading.excepthook = _print_thread_exception


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """The record with its message, traceback and stack redacted (a message whose arguments do not fit its
    format is left for the handler to report as usual)."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        return record
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def _print_exception(exc_type, exc, tb) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))


def _print_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    sys.stderr.write(f"Exception in thread {name}:\n")
    _print_exception(args.exc_type, args.exc_value, args.exc_traceback)
