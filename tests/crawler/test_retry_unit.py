"""Backoff: exponential with full jitter, except for retries the rate limiter already paces."""

from __future__ import annotations

import random

from crawler.errors import RetryableApiError, TransportError
from crawler.pipeline.client import RetryPolicy, is_paced
from crawler.pipeline.ratelimit import QuotaLimiter, QuotaOwner

OWNER = QuotaOwner("user:u@d", "cbr", "http://127.0.0.1")
STATED = "The throttling threshold has been reached: policy user over ratelimit,limit:200,time:1 second"


def test_unpaced_backoff_doubles_with_full_jitter_and_a_cap() -> None:
    policy = RetryPolicy()
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.25), (2, 0.5), (3, 1.0), (10, 30.0)]:
        delays = [policy.delay(attempt, None, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8, "full jitter spans the whole range"


def test_retry_after_is_honoured() -> None:
    assert RetryPolicy().delay(1, 7.0, random.Random(1)) >= 7.0


async def test_paced_retries_sleep_briefly_whatever_the_attempt() -> None:
    policy = RetryPolicy()
    rng = random.Random(2)
    assert all(policy.delay(12, None, rng, paced=True) <= policy.paced_delay for _ in range(200))


async def test_what_counts_as_paced() -> None:
    limited = QuotaLimiter(OWNER, 50.0)
    unlimited = QuotaLimiter(OWNER, None)
    assert is_paced(RetryableApiError(503, "APIGW.0201", "backend unavailable"), limited)
    assert is_paced(RetryableApiError(429, "APIGW.0308", STATED), limited)
    assert not is_paced(RetryableApiError(429, "APIGW.0308", "throttled"), limited), "no stated limit"
    assert not is_paced(RetryableApiError(503, "APIGW.0201", "x"), unlimited)
    assert not is_paced(RetryableApiError(503, "APIGW.0201", "x"), None)
    assert not is_paced(TransportError("connection reset"), limited)
