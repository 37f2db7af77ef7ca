"""Rate limiters keyed by quota owner, adaptive to the gateway's throttling.

Huawei's API Gateway throttles per user, per source IP and per API. What one credential may spend
against one service in one region is therefore the unit we limit: the *quota owner*
(credential x service x region endpoint). Every request, retries included, waits for its owner's
limiter, so a retry storm cannot exceed the budget.

Pacing is aiolimiter's leaky bucket, ``AsyncLimiter(2, 2 / rate)``: it leaks at ``rate`` and holds
two requests. Capacity 1 would pace perfectly on paper, but a waiter woken late (the event loop was
busy decoding a page for 10 ms) finds the bucket empty and its lateness is lost for good: at 50
requests/s that cost 16% of the wall time. Capacity 2 absorbs up to one interval of lateness, so the
long-run rate is the configured one. The very first request takes the whole bucket, so a cold start
sends one request, not two; in any window of ``w`` seconds at most ``rate * w + 2`` requests go
out. (``AsyncLimiter(rate, 1)`` would let ``rate`` requests through at once, which is exactly what
trips a gateway's per-second window on a cold start.)

Adaptation (AIMD): a 429 ``APIGW.0308`` states its policy's limit and window (``...limit:200,time:1
minute``); that rate, less a safety margin (10%, and at least room for the bucket's extra request:
:func:`safe_rate`), becomes the owner's ceiling at once. A throttle without a usable statement
halves the rate. Each success then adds back a small step, never above the configured rate or a
stated ceiling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

MIN_RATE = 0.2  # requests/s: never slow down to a standstill
STATED_MARGIN = 0.9  # run at 90% of a limit the gateway stated, to absorb clock and window skew

_STATED = re.compile(r"limit:\s*(\d+)\s*,\s*time:\s*(\d+)\s*(second|minute|hour|day)", re.IGNORECASE)
_UNIT_SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def stated_limit(message: str) -> tuple[int, float] | None:
    """(requests, window seconds) stated by an ``APIGW.0308`` message, or None."""
    match = _STATED.search(message)
    if match is None:
        return None
    limit, amount, unit = int(match.group(1)), int(match.group(2)), match.group(3).lower()
    window = amount * _UNIT_SECONDS[unit]
    return (limit, window) if window > 0 and limit > 0 else None


def stated_rate(message: str) -> float | None:
    """Requests/s allowed by an ``APIGW.0308`` message, or None when it states no limit."""
    stated = stated_limit(message)
    return None if stated is None else stated[0] / stated[1]


def safe_rate(limit: int, window: float) -> float:
    """The pace that keeps every window under a stated limit: 90% of it, and room for the bucket.

    The pacer may send ``rate * window + BUCKET`` requests in a window (see the module docstring);
    for small limits (5 per second) that matters more than the 10% margin.
    """
    room = (limit - BUCKET) / window if limit > 2 * BUCKET else limit / window / 2
    return min(STATED_MARGIN * limit / window, room)


BUCKET = 2  # requests the pacer's bucket holds: one in hand plus one interval of lateness absorbed


def _pacer(rate: float) -> AsyncLimiter:
    return AsyncLimiter(BUCKET, BUCKET / rate)


def _retune(limiter: AsyncLimiter, rate: float) -> None:
    """Change a live limiter's pace, keeping its bucket level and its waiters.

    A fresh ``AsyncLimiter`` would start with an empty bucket and let requests through at once,
    i.e. a burst on every adjustment. aiolimiter derives its leak rate from ``max_rate`` and
    ``time_period`` only in ``__init__``, so both are set here (pinned to aiolimiter 1.x).
    """
    limiter.time_period = BUCKET / rate
    limiter._rate_per_sec = rate  # the leak rate is the request rate


@dataclass(frozen=True, slots=True)
class QuotaOwner:
    """Who pays for a request in the gateway's eyes."""

    credential: str  # a stable, non-secret identity: "user:acme-admin@acme", "ak:EXAM...6789"
    service: str  # "cbr", "iam", "eps"
    endpoint: str  # the base URL the request goes to (one per region for regional services)

    def __str__(self) -> str:
        return f"{self.credential} -> {self.service} {self.endpoint}"


@dataclass(slots=True)
class QuotaStats:
    """What one quota owner spent; reported in the manifest."""

    requests: int = 0
    throttled: int = 0
    retries: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "throttled": self.throttled,
            "retries": self.retries,
            "errors": self.errors,
        }


@dataclass(slots=True)
class QuotaLimiter:
    """A smooth, adaptive pacer for one quota owner (``rate`` None means unlimited)."""

    owner: QuotaOwner
    rate: float | None
    stats: QuotaStats = field(default_factory=QuotaStats)
    configured_rate: float | None = None
    ceiling: float | None = None  # lowest rate a gateway stated, if any
    lowest_rate: float | None = None
    _limiter: AsyncLimiter | None = None
    _started: bool = False

    def __post_init__(self) -> None:
        self.configured_rate = self.rate
        self.lowest_rate = self.rate
        if self.rate is not None:
            self._limiter = _pacer(self.rate)

    async def acquire(self) -> None:
        if self._limiter is None:
            return
        if not self._started:
            # The first request fills the bucket: the next one waits a full interval (no cold burst).
            self._started = True
            await self._limiter.acquire(BUCKET)
        else:
            await self._limiter.acquire()

    def _set_rate(self, rate: float) -> None:
        rate = max(MIN_RATE, rate)
        if self.rate is not None and abs(rate - self.rate) < 1e-9:
            return
        self.rate = rate
        if self.lowest_rate is None or rate < self.lowest_rate:
            self.lowest_rate = rate
        if self._limiter is None:
            self._limiter = _pacer(rate)
            self._started = False
        else:
            _retune(self._limiter, rate)

    def on_throttled(self, message: str) -> None:
        """A 429: believe a stated limit at once, else halve the rate (multiplicative decrease)."""
        stated = stated_limit(message)
        if stated is not None:
            target = safe_rate(*stated)
            self.ceiling = target if self.ceiling is None else min(self.ceiling, target)
            if self.rate is None or target < self.rate:
                self._set_rate(target)
            return
        current = self.rate if self.rate is not None else 50.0
        self._set_rate(current / 2)

    def on_success(self) -> None:
        """Additive increase after a throttle, back towards the configured rate or stated ceiling."""
        if (
            self.rate is None
            or self.lowest_rate is None
            or self.rate == self.lowest_rate == self.configured_rate
        ):
            return
        cap = self.configured_rate if self.configured_rate is not None else self.rate * 2
        if self.ceiling is not None:
            cap = min(cap, self.ceiling)
        if self.rate < cap:
            step = max(0.05, cap / 100)
            self._set_rate(min(cap, self.rate + step))

    def report(self) -> dict[str, object]:
        return {
            "quota_owner": str(self.owner),
            "configured_rate_per_second": self.configured_rate,
            "final_rate_per_second": None if self.rate is None else round(self.rate, 3),
            "lowest_rate_per_second": None if self.lowest_rate is None else round(self.lowest_rate, 3),
            "stated_ceiling_per_second": None if self.ceiling is None else round(self.ceiling, 3),
            **self.stats.as_dict(),
        }


class LimiterRegistry:
    """One limiter per quota owner for the whole run, created on first use.

    Two tenants sharing a credential share its limiter: the gateway counts them together.
    """

    def __init__(self) -> None:
        self._limiters: dict[QuotaOwner, QuotaLimiter] = {}

    def get(self, owner: QuotaOwner, rate: float | None) -> QuotaLimiter:
        limiter = self._limiters.get(owner)
        if limiter is None:
            limiter = self._limiters[owner] = QuotaLimiter(owner, rate)
        return limiter

    def report(self) -> list[dict[str, object]]:
        """Per quota owner: the rates used and what was spent."""
        return [lim.report() for _, lim in sorted(self._limiters.items(), key=lambda kv: str(kv[0]))]
