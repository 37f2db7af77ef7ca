"""``cbr-crawler plan``: the scopes a run would crawl, and what to expect of each.

Discovery runs as in a real run; then one first-page request per scope (``limit=1``, so it is
cheap) gives the API's count, from which the pages, the requests and the time at the configured
rate follow. Nothing is written.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Sequence
from typing import TextIO

from crawler.client import ApiClient, ApiRequest
from crawler.config import TenantConfig
from crawler.engine import TenantPlan
from crawler.errors import CrawlerError
from crawler.paging import parse_page
from crawler.ratelimit import LimiterRegistry
from crawler.runner import EXIT_INCOMPLETE, EXIT_OK, make_session, plan_tenants
from crawler.scope import Scope


async def run_plan(tenants: Sequence[TenantConfig], out: TextIO | None = None) -> int:
    stream = out if out is not None else sys.stdout
    limiters = LimiterRegistry()
    failed = False
    async with make_session(tenants) as session:
        client = ApiClient(session)
        plans, failures = await plan_tenants(tenants, client, limiters)
        for failure in failures:
            print(f"tenant {failure.tenant}: cannot plan: {failure.error}", file=stream)
            failed = True
        for plan in plans:
            cfg = next(t for t in tenants if t.name == plan.name)
            semaphore = asyncio.Semaphore(plan.concurrency)
            counts = await asyncio.gather(*(_count_of(client, plan, s, semaphore) for s in plan.scopes))
            rate = cfg.rate_limit.rate
            total_backups = 0
            total_requests = 0
            print(f"tenant {plan.name}: {len(plan.scopes)} scopes", file=stream)
            for scope, count in zip(plan.scopes, counts, strict=True):
                if isinstance(count, str):
                    failed = True
                    print(f"  {scope.key}: {count}", file=stream)
                    continue
                requests = max(1, math.ceil(count / plan.page_size))
                total_backups += count
                total_requests += requests
                print(f"  {scope.key}: {count} backups, {requests} requests", file=stream)
            pace = (
                f"~{total_requests / rate:.1f}s at {rate:g} requests/s"
                if rate is not None
                else "no rate limit (bound by the gateway's answers)"
            )
            print(f"  total: {total_backups} backups, {total_requests} requests, {pace}", file=stream)
    return EXIT_INCOMPLETE if failed else EXIT_OK


async def _count_of(
    client: ApiClient, plan: TenantPlan, scope: Scope, semaphore: asyncio.Semaphore
) -> int | str:
    """The API's count for a scope from a one-record first page, or the error as text."""
    request = ApiRequest(
        service="cbr",
        method="GET",
        base_url=plan.cbr_endpoint(scope.region),
        path=f"/v3/{scope.project_id}/backups",
        query=[*scope.query(), ("limit", "1"), ("offset", "0")],
        project_id=scope.project_id,
    )
    async with semaphore:
        try:
            response = await client.send(request, plan.auth, plan.cbr_limiter(scope.region), parse=parse_page)
        except CrawlerError as exc:
            return f"error: {exc}"
    count: int = response.data.count
    return count
