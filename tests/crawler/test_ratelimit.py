"""Adaptive pacing per quota owner: stated limits believed at once, AIMD otherwise."""

from __future__ import annotations

import asyncio

import pytest

from crawler.pipeline.ratelimit import STATED_MARGIN, QuotaLimiter, QuotaOwner, safe_rate, stated_rate

OWNER = QuotaOwner("user:u@d", "cbr", "https://cbr.cn-north-4.myhuaweicloud.com")
STATED = "The throttling threshold has been reached: policy user over ratelimit,limit:{limit},time:{time}"


@pytest.mark.parametrize(
    ("time", "limit", "rate"),
    [("1 second", 200, 200.0), ("5 second", 50, 10.0), ("1 minute", 600, 10.0), ("5 minute", 300, 1.0)],
)
def test_stated_rate_reads_the_gateway_message(time: str, limit: int, rate: float) -> None:
    assert stated_rate(STATED.format(limit=limit, time=time)) == pytest.approx(rate)


def test_stated_rate_is_none_without_a_statement() -> None:
    assert stated_rate("Too many requests") is None


async def test_a_stated_limit_becomes_the_ceiling_at_once() -> None:
    limiter = QuotaLimiter(OWNER, 50.0)
    limiter.on_throttled(STATED.format(limit=600, time="1 minute"))
    assert limiter.rate == pytest.approx(10.0 * STATED_MARGIN)
    for _ in range(1000):
        limiter.on_success()
    assert limiter.rate == pytest.approx(10.0 * STATED_MARGIN), "never above what the gateway stated"
    report = limiter.report()
    assert report["configured_rate_per_second"] == 50.0
    assert report["stated_ceiling_per_second"] == pytest.approx(9.0)


async def test_unstated_throttle_halves_then_recovers_additively() -> None:
    limiter = QuotaLimiter(OWNER, 40.0)
    limiter.on_throttled("throttled")
    assert limiter.rate == pytest.approx(20.0)
    limiter.on_throttled("throttled")
    assert limiter.rate == pytest.approx(10.0)
    limiter.on_success()
    assert 10.0 < (limiter.rate or 0) < 11.0, "recovery is additive, not a jump"
    for _ in range(10_000):
        limiter.on_success()
    assert limiter.rate == pytest.approx(40.0), "back to the configured rate, not beyond"
    assert limiter.lowest_rate == pytest.approx(10.0)


async def test_retuning_keeps_one_bucket_so_there_is_no_burst() -> None:
    limiter = QuotaLimiter(OWNER, 100.0)
    inner = limiter._limiter
    await limiter.acquire()
    limiter.on_throttled("throttled")
    assert limiter._limiter is inner
    assert inner is not None and not inner.has_capacity(), "the request just made still counts"


async def test_pacing_absorbs_one_interval_of_lateness_and_never_bursts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a frozen clock (in intervals of 1/rate): a late request does not push back the ones after it,
    and no instant ever admits more than the bucket holds."""
    clock = [0.0]
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "time", lambda: clock[0] / 10.0)
    limiter = QuotaLimiter(OWNER, 10.0)
    inner = limiter._limiter
    assert inner is not None

    def admits_now() -> bool:
        return inner.has_capacity()

    await limiter.acquire()  # t=0: the cold start takes the whole bucket
    assert not admits_now(), "no burst on a cold start"
    clock[0] = 1.5  # the second request comes half an interval late...
    assert admits_now()
    await limiter.acquire()
    assert not admits_now(), "...and is alone"
    clock[0] = 2.0  # ...yet the third keeps its slot: the lateness was absorbed, not lost
    assert admits_now()
    await limiter.acquire()
    clock[0] = 2.9
    assert not admits_now()
    clock[0] = 3.0
    await limiter.acquire()
    clock[0] = 100.0  # after a long idle spell the bucket holds two, never more
    await limiter.acquire()
    await limiter.acquire()
    assert not admits_now()


@pytest.mark.parametrize(
    ("limit", "window", "rate"),
    [(600, 60.0, 9.0), (200, 1.0, 180.0), (10, 1.0, 8.0), (5, 1.0, 3.0), (4, 1.0, 2.0)],
)
def test_a_stated_limit_leaves_room_for_the_bucket_even_when_small(
    limit: int, window: float, rate: float
) -> None:
    """At most rate * window + 2 requests go out in a window: that must stay under the stated limit."""
    assert safe_rate(limit, window) == pytest.approx(rate)
    assert safe_rate(limit, window) * window + 2 <= limit
