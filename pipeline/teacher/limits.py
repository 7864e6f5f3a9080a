"""Client-side rate limiting on the teacher's event loop: token buckets (rpm, tpm) and a shared pause gate."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping

BURST_S = 1.0  # a bucket holds at most this many seconds of its rate (providers enforce sub-minute windows)


class TokenBucket:
    """`rate_per_min` tokens refilled continuously; `acquire(n)` waits until n are available."""

    def __init__(self, rate_per_min: float, burst_s: float = BURST_S):
        self.rate_s = rate_per_min / 60.0
        self.capacity = max(1.0, self.rate_s * burst_s)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate_s)
        self.stamp = now

    async def acquire(self, n: float = 1.0) -> None:
        n = min(n, self.capacity)  # a request larger than the burst waits for a full bucket, not forever
        while True:
            self._refill()
            if self.tokens >= n:
                self.tokens -= n
                return
            await asyncio.sleep((n - self.tokens) / self.rate_s)

    def observe_remaining(self, remaining: float) -> None:
        """The server says only `remaining` are left in its window: never hold more than that."""
        self._refill()
        self.tokens = min(self.tokens, max(0.0, remaining))


class PauseGate:
    """After a 429 every request of the process waits here until the pause ends."""

    def __init__(self) -> None:
        self.resume_at = 0.0
        self.pauses = 0

    def pause(self, seconds: float) -> None:
        until = time.monotonic() + max(0.0, seconds)
        if until > self.resume_at:
            self.resume_at = until
            self.pauses += 1

    async def wait(self) -> None:
        while (delay := self.resume_at - time.monotonic()) > 0:
            await asyncio.sleep(delay)


_DURATION = re.compile(r"(?P<num>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds from "20ms", "1.5s", "6m0s", or a bare number of seconds; None when unreadable."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, then retry-after), if it said."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    return parse_duration(headers.get("retry-after"))


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class RateLimiter:
    """rpm/tpm buckets (None = unlimited) that adapt to the x-ratelimit-* headers of each response."""

    def __init__(self, rpm: float | None, tpm: float | None):
        self.requests = TokenBucket(rpm) if rpm else None
        self.tokens = TokenBucket(tpm) if tpm else None
        self.gate = PauseGate()

    async def acquire(self, est_tokens: int) -> None:
        await self.gate.wait()
        if self.requests:
            await self.requests.acquire(1)
        if self.tokens:
            await self.tokens.acquire(est_tokens)

    def observe(self, headers: Mapping[str, str]) -> None:
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            remaining = _float(headers.get(f"x-ratelimit-remaining-{kind}"))
            if remaining is None:
                continue
            if bucket is not None:
                bucket.observe_remaining(remaining)
            if remaining <= 0:
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
                if reset:
                    self.gate.pause(reset)
