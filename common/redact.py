"""Secrets never leave the process: one redaction for every text that is written or shown (failed/ rows, logs,
stats, cards, exception messages), and URLs shown without their `user:password@`.

    register_secret(key)                   # once, where the key is resolved
    redact(str(error))                     # -> the text with every registered secret, bearer token and URL
                                           #    credential replaced by REDACTED
    display_url("https://u:p@host/v1")     # -> "https://host/v1"
"""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"
_MIN_SECRET = 4  # shorter values (a dummy key such as "x") would blank ordinary words

_BEARER = re.compile(r"(?i)(\bbearer\s+)[^\s\"',;]+")
_KEY_LIKE = re.compile(r"\b(sk|hf|rk|pk)[-_][A-Za-z0-9_\-]{16,}")  # OpenAI-, Hub- and Stripe-style tokens
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s:@\"']+(?::[^/\s@\"']*)?@")
_KEY_FIELD = re.compile(r"(?i)(\b(?:api[_-]?key|token|password|secret|authorization)\b[\"']?\s*[:=]\s*[\"']?)"
                        r"[^\s\"',;}]+")

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret (an API key, a token) so that `redact` removes it wherever it appears."""
    if value and len(value.strip()) >= _MIN_SECRET:
        with _lock:
            _secrets.add(value.strip())


def redact(text: str, extra: tuple[str, ...] = ()) -> str:
    """`text` with registered secrets, `extra` secrets, bearer tokens, key-like tokens, `key=value` secrets and
    URL credentials replaced by REDACTED. Idempotent."""
    if not text:
        return text
    with _lock:
        known = sorted(_secrets | {s for s in extra if s and len(s) >= _MIN_SECRET}, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, REDACTED)
    text = _URL_CREDENTIALS.sub(lambda m: m.group(1) + REDACTED + "@", text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _KEY_FIELD.sub(lambda m: m.group(1) + REDACTED, text)
    return _KEY_LIKE.sub(REDACTED, text)


def display_url(url: str | None) -> str | None:
    """The URL without `user:password@` (and without a query string's secrets), for cards, logs and messages."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if not parts.netloc:
        return redact(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return redact(urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)))
