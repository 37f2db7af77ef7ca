"""``cbr-crawler plan``: the scopes a run would crawl, and what to expect of each.

Discovery runs as in a real run; then one first-page request per scope (``limit=1``, so it is
cheap) gives the API's count, from which the pages, the requests and the time at the configured
rate follow. Nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Sequence
from typing import TextIO

from crawler.config import TenantConfig, load_tenants
from crawler.errors import CrawlerError
from crawler.pipeline.client import ApiClient
from crawler.pipeline.discovery import discover_tenants
from crawler.pipeline.engine import TenantCrawl
from crawler.pipeline.listbackups import list_backups_request, parse_page
from crawler.pipeline.ratelimit import LimiterRegistry
from crawler.pipeline.runner import EXIT_INCOMPLETE, EXIT_OK
from crawler.pipeline.scope import Scope
from crawler.pipeline.tenant import open_session
from crawler.support.aio import run_async
from crawler.support.logs import setup_logging


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = sub.add_parser(
        "plan", help="list the scopes a run would crawl, with expected backups, requests and time"
    )
    plan.add_argument("--config", "-c", nargs="+", required=True)
    plan.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    plan.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    tenants = load_tenants(args.config)
    return run_async(lambda: run_plan(tenants))


async def run_plan(tenants: Sequence[TenantConfig], out: TextIO | None = None) -> int:
    stream = out if out is not None else sys.stdout
    limiters = LimiterRegistry()
    failed = False
    async with open_session(tenants) as session:
        client = ApiClient(session)
        crawls, failures = await discover_tenants(tenants, client, limiters)
        for failure in failures:
            print(f"tenant {failure.tenant}: cannot plan: {failure.error}", file=stream)
            failed = True
        for crawl in crawls:
            cfg = next(t for t in tenants if t.name == crawl.name)
            semaphore = asyncio.Semaphore(crawl.concurrency)
            counts = await asyncio.gather(*(_count_of(client, crawl, s, semaphore) for s in crawl.scopes))
            rate = cfg.rate_limit.rate
            total_backups = 0
            total_requests = 0
            print(f"tenant {crawl.name}: {len(crawl.scopes)} scopes", file=stream)
            for scope, count in zip(crawl.scopes, counts, strict=True):
                if isinstance(count, str):
                    failed = True
                    print(f"  {scope.key}: {count}", file=stream)
                    continue
                requests = max(1, math.ceil(count / crawl.page_size))
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
    client: ApiClient, crawl: TenantCrawl, scope: Scope, semaphore: asyncio.Semaphore
) -> int | str:
    """The API's count for a scope from a one-record first page, or the error as text."""
    query = [*scope.query(), ("limit", "1"), ("offset", "0")]
    request = list_backups_request(crawl.cbr_endpoint(scope.region), scope.project_id, query)
    async with semaphore:
        try:
            response = await client.send(
                request, crawl.auth, crawl.cbr_limiter(scope.region), parse=parse_page
            )
        except CrawlerError as exc:
            return f"error: {exc}"
    count: int = response.data.count
    return count
