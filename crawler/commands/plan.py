"""``cbr-crawler plan``: the scopes a run would crawl, and what to expect of each.

Discovery runs as in a real run (and chooses the plan: one query per scope, or a single pass per
project split into them, :mod:`crawler.pipeline.passes`); then one first-page request per query
(``limit=1``, so it is cheap) gives the API's count, from which the pages, the requests and the
time at the configured rate follow. Each project's single-pass count also gives the minimum: one
pass per project in 1000-record pages, plus discovery. Nothing is written.
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
from crawler.pipeline.passes import group_into_passes
from crawler.pipeline.ratelimit import LimiterRegistry
from crawler.pipeline.runner import EXIT_INCOMPLETE, EXIT_OK
from crawler.pipeline.scope import Scope
from crawler.pipeline.tenant import open_session
from crawler.support.aio import run_async
from crawler.support.logs import setup_logging

MAX_PAGE = 1000  # the API's largest page (limit 1-1000)


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
            failed |= await _plan_tenant(client, crawl, cfg, stream)
    return EXIT_INCOMPLETE if failed else EXIT_OK


async def _plan_tenant(client: ApiClient, crawl: TenantCrawl, cfg: TenantConfig, stream: TextIO) -> bool:
    """Print one tenant's plan; True if some count could not be had."""
    semaphore = asyncio.Semaphore(crawl.concurrency)
    plan = crawl.plan
    partitions = sum(len(s.members) for s in crawl.scopes)
    print(
        f"tenant {crawl.name}: {partitions} scopes in {len(crawl.scopes)} queries"
        + (f" ({plan.name}: {plan.reason})" if plan is not None else ""),
        file=stream,
    )
    skipped = f" (skipped, no CBR: {', '.join(crawl.regions_skipped)})" if crawl.regions_skipped else ""
    print(f"  regions: {', '.join(crawl.regions) or '-'}{skipped}", file=stream)
    # Every project's single-pass count: what the minimum is made of (and, under a single-pass plan,
    # the queries themselves).
    passes = crawl.scopes if plan is not None and plan.single_pass else group_into_passes(
        crawl.scopes, cfg.enterprise_projects.mode
    )  # fmt: skip
    pass_counts = await asyncio.gather(*(_count_of(client, crawl, s, semaphore) for s in passes))
    if plan is not None and plan.single_pass:
        queries, counts = list(passes), list(pass_counts)
    else:
        queries = list(crawl.scopes)
        counts = list(await asyncio.gather(*(_count_of(client, crawl, s, semaphore) for s in queries)))
    failed = False
    requests = 0
    for scope, count in zip(queries, counts, strict=True):
        if isinstance(count, str):
            failed = True
            print(f"  {scope.key}: {count}", file=stream)
            continue
        pages = max(1, math.ceil(count / crawl.page_size))
        requests += pages
        into = f" -> {len(scope.partitions)} scopes" if scope.partitions else ""
        print(f"  {scope.key}: {count} backups, {pages} requests{into}", file=stream)
    backups = sum(c for c in counts if isinstance(c, int))  # what the chosen queries return
    # Per project, the cheaper of its single pass and its own queries (one view, no EP split: the
    # view's own query is cheaper than the union of both views).
    cheapest = {
        s.shard_key: max(1, math.ceil(c / MAX_PAGE))
        for s, c in zip(passes, pass_counts, strict=True)
        if isinstance(c, int)
    }
    if plan is None or not plan.single_pass:
        per_scope: dict[str, int] = {}
        for scope, count in zip(queries, counts, strict=True):
            if isinstance(count, int):
                per_scope[scope.shard_key] = per_scope.get(scope.shard_key, 0) + max(
                    1, math.ceil(count / MAX_PAGE)
                )
        cheapest = {k: min(v, per_scope.get(k, v)) for k, v in cheapest.items()}
    minimum = sum(cheapest.values())
    discovery = crawl.discovery_requests
    rate = cfg.rate_limit.rate
    pace = (
        f"~{(requests + discovery) / rate:.1f}s at {rate:g} requests/s"
        if rate is not None
        else "no rate limit (bound by the gateway's answers)"
    )
    print(
        f"  total: {backups} backups, {requests} requests under this plan (page size {crawl.page_size}) "
        f"+ {discovery} for discovery; minimum {minimum + discovery} (one pass per project in "
        f"{MAX_PAGE}-record pages, discovery included); {pace}",
        file=stream,
    )
    return failed


async def _count_of(
    client: ApiClient, crawl: TenantCrawl, scope: Scope, semaphore: asyncio.Semaphore
) -> int | str:
    """The API's count for a scope from a one-record first page, or the error as text."""
    query = [*scope.query(), ("limit", "1"), ("offset", "0")]
    request = list_backups_request(crawl.cbr_endpoint(scope.region), scope.project_id, query)
    async with semaphore:
        try:
            response = await (crawl.client or client).send(
                request, crawl.auth, crawl.cbr_limiter(scope.region), parse=parse_page
            )
        except CrawlerError as exc:
            return f"error: {exc}"
    count: int = response.data.count
    return count
