"""Rate limiters keyed by quota owner.

Huawei's API Gateway throttles per user, per source IP and per API. What one credential may spend
against one service in one region is therefore the unit we limit: the *quota owner*
(credential x service x region endpoint). Every request, retries included, waits for its owner's
limiter, so a retry storm cannot exceed the budget.

``AsyncLimiter(1, 1 / rate)`` from aiolimiter paces requests evenly with no start-up burst: a bucket
of capacity 1 only admits the next request once the previous one has leaked out. (``AsyncLimiter(rate,
1)`` would let ``rate`` requests through at once, which is exactly what trips a gateway's per-second
window on a cold start.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter


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
    """A smooth pacer for one quota owner (``rate`` None means unlimited)."""

    owner: QuotaOwner
    rate: float | None
    stats: QuotaStats = field(default_factory=QuotaStats)
    _limiter: AsyncLimiter | None = None

    def __post_init__(self) -> None:
        if self.rate is not None:
            self._limiter = AsyncLimiter(1, 1.0 / self.rate)

    async def acquire(self) -> None:
        if self._limiter is not None:
            await self._limiter.acquire()


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
        """Per quota owner: the rate used and what was spent."""
        return [
            {"quota_owner": str(owner), "rate_per_second": lim.rate, **lim.stats.as_dict()}
            for owner, lim in sorted(self._limiters.items(), key=lambda kv: str(kv[0]))
        ]
