import asyncio
import time

import pytest

from pipeline.teacher.limits import PauseGate, RateLimiter, TokenBucket, parse_duration, retry_after_s


@pytest.mark.parametrize("text,seconds", [("1", 1.0), ("0.5", 0.5), ("20ms", 0.02), ("1.5s", 1.5),
                                          ("6m0s", 360.0), ("1h2m3s", 3723.0), ("soon", None), ("", None)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_prefers_milliseconds():
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "3"}) == pytest.approx(0.25)
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({}) is None


def test_bucket_and_gate_wait():
    async def run():
        bucket = TokenBucket(rate_per_min=600, burst_s=1.0)  # 10/s, burst 10
        t0 = time.monotonic()
        for _ in range(15):
            await bucket.acquire()
        spent = time.monotonic() - t0
        gate = PauseGate()
        gate.pause(0.2)
        t1 = time.monotonic()
        await gate.wait()
        return spent, time.monotonic() - t1

    spent, paused = asyncio.run(run())
    assert 0.4 <= spent < 2.0 and paused >= 0.19


def test_limiter_pauses_when_the_server_says_nothing_is_left():
    limiter = RateLimiter(rpm=6000, tpm=None)
    limiter.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "300ms"})
    assert limiter.requests.tokens == 0
    assert 0 < limiter.gate.resume_at - time.monotonic() <= 0.3 and limiter.gate.pauses == 1
