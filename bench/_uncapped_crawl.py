"""``python -m bench._uncapped_crawl ARGS``: ``cbr-crawler ARGS`` with the CBR rate limit lifted.

A tenant file cannot ask for more than 200 requests/s (``crawler.config.GATEWAY_CEILING_RPS``) nor
for no limit at all. To show what that ceiling costs a crawl of many small scopes, this wrapper
hands every CBR quota owner an unlimited limiter (``rate=None``, which
:class:`crawler.ratelimit.QuotaLimiter` already supports) and runs the CLI unchanged otherwise.
Benchmark only: it is not a way users run the crawler.
"""

from __future__ import annotations

import sys

from crawler.cli import main as crawler_main
from crawler.ratelimit import LimiterRegistry, QuotaLimiter, QuotaOwner


def lift_cbr_limit() -> None:
    """Make every CBR quota owner's limiter unlimited (IAM and EPS keep theirs)."""
    get = LimiterRegistry.get

    def unlimited_cbr(self: LimiterRegistry, owner: QuotaOwner, rate: float | None) -> QuotaLimiter:
        return get(self, owner, None if owner.service == "cbr" else rate)

    LimiterRegistry.get = unlimited_cbr  # type: ignore[method-assign]


if __name__ == "__main__":
    lift_cbr_limit()
    sys.exit(crawler_main(sys.argv[1:]))
