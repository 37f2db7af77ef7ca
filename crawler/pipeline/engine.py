"""The engine: every tenant's scopes walked by a fixed pool of workers, one result per scope.

Each tenant gets its own workers (its configured concurrency) and its own limiters, so a huge
tenant cannot starve the others: tenants run side by side, each at its own pace. Workers are not
one task per item: their number is the sum of the tenants' concurrency. Which page a worker
fetches next is the scheduler's choice (crawler.pipeline.scheduler); walking a scope is paging's
(crawler.pipeline.paging), through the fetch function the engine gives each walk: the tenant's
client, credential, limiter and the scope's deadline.

A finished scope's output is committed in the background while its worker goes on: the commit is
one future of the sink (crawler.pipeline.sink), finished by a callback that records the result
and queues its checkpoint; at most CONCLUDING_MAX commits wait at once. A credential refused
(after one re-authentication) stops its tenant: no further request is spent on its scopes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from crawler.errors import AuthFailedError, CrawlerError, CredentialRefused
from crawler.pipeline.client import ApiClient, Authenticator
from crawler.pipeline.dedupe import SPILL_AT
from crawler.pipeline.listbackups import Page, list_backups_request, parse_owned_page, parse_page
from crawler.pipeline.paging import ScopeWalk
from crawler.pipeline.passes import PassOutput, PlanChoice
from crawler.pipeline.ratelimit import QuotaLimiter
from crawler.pipeline.scheduler import TenantScheduler
from crawler.pipeline.scope import Scope, ScopeResult
from crawler.pipeline.sink import FileRecord, ScopeOutput, Sink
from crawler.support.progress import RunStats

log = logging.getLogger(__name__)

# Scope outputs being committed in the background at once (see Engine._commit).
CONCLUDING_MAX = 64


class Checkpoints(Protocol):
    """Where completed scopes are recorded for a resumed run (crawler.pipeline.state.RunState)."""

    def checkpoint(self, result: ScopeResult) -> object:
        """Queue a completed scope; never blocks, never raises for a write error."""
        ...

    async def flush(self) -> None:
        """Return once every queued scope is recorded (or its failure reported)."""
        ...


@dataclass(slots=True)
class TenantCrawl:
    """What the engine needs to crawl one tenant's scopes."""

    name: str
    auth: Authenticator
    scopes: list[Scope]
    cbr_endpoint: Callable[[str], str]  # region -> base URL
    cbr_limiter: Callable[[str], QuotaLimiter]  # region -> limiter of this quota owner
    concurrency: int
    page_size: int
    layout: str
    scope_deadline: float = 3600.0  # seconds per scope, retries included
    compression: str = "none"
    refused: CredentialRefused | None = None  # set once the tenant's credential is refused
    plan: PlanChoice | None = None  # how the scopes are fetched (crawler.pipeline.passes)
    regions: tuple[str, ...] = ()  # the regions crawled (discovered for `regions: all` or globs)
    regions_skipped: tuple[str, ...] = ()  # regions a glob matched that have no CBR
    discovery_requests: int = 0  # requests discovery made (IAM, EPS, probes)
    client: ApiClient | None = None  # the tenant's view of the run's client (its TLS and proxy)

    def plan_entry(self) -> dict[str, object]:
        """The manifest's record of how this tenant was crawled."""
        plan = self.plan.as_dict() if self.plan is not None else {}
        return {
            **plan,
            "queries": len(self.scopes),
            "scopes": sum(len(s.members) for s in self.scopes),
            "regions": list(self.regions),
            "regions_skipped_without_cbr": list(self.regions_skipped),
            "discovery_requests": self.discovery_requests,
        }


class Engine:
    """Runs every tenant's scopes and collects one :class:`ScopeResult` per scope."""

    def __init__(
        self,
        client: ApiClient,
        sink: Sink,
        *,
        run_id: str,
        stats: RunStats | None = None,
        done: Mapping[str, ScopeResult] | None = None,
        checkpoints: Checkpoints | None = None,
        spill_at: int = SPILL_AT,
    ) -> None:
        """``done``: scopes an earlier attempt of this run completed (by key), reported, not fetched.
        ``checkpoints``: told of each scope that completes, once its files are committed.
        ``spill_at``: scopes counting more backups keep only recent ids in memory."""
        self.client = client
        self.sink = sink
        self.run_id = run_id
        self.stats = stats or RunStats()
        self.results: list[ScopeResult] = []
        self.done: Mapping[str, ScopeResult] = done or {}
        self._checkpoints = checkpoints
        self.spill_at = spill_at
        # Commits in the background while their workers have moved on; bounded.
        self._committing: set[asyncio.Future[list[FileRecord]]] = set()
        self._commit_slots = asyncio.Semaphore(CONCLUDING_MAX)

    async def run(self, tenants: list[TenantCrawl]) -> list[ScopeResult]:
        """One result per scope of the manifest (a single pass's partitions, each)."""
        self.stats.scopes_total += sum(len(s.members) for t in tenants for s in t.scopes)
        if self.done:
            # Resumed run: scopes already complete are reported from the checkpoint, not refetched
            # (a single pass is fetched again if any of its partitions is not done; the records
            # of those that are go nowhere).
            for tenant in tenants:
                for scope in tenant.scopes:
                    for member in scope.members:
                        if member.key in self.done:
                            self.results.append(self.done[member.key])
                            self.stats.scopes_done += 1
            tenants = [
                dataclasses.replace(
                    t, scopes=[s for s in t.scopes if any(m.key not in self.done for m in s.members)]
                )
                for t in tenants
            ]
        try:
            async with asyncio.TaskGroup() as group:
                for tenant in tenants:
                    group.create_task(self._run_tenant(tenant), name=f"tenant:{tenant.name}")
        finally:
            # Even when interrupted: commits under way end (their files are short to write), and a
            # scope whose file is final gets its checkpoint.
            while self._committing:
                await asyncio.shield(asyncio.gather(*self._committing, return_exceptions=True))
            if self._checkpoints is not None:
                await asyncio.shield(self._checkpoints.flush())
        return self.results

    async def _run_tenant(self, tenant: TenantCrawl) -> None:
        if tenant.refused is not None:
            for scope in tenant.scopes:
                self._record_unstarted(scope, tenant.refused)
            return
        # The window is sized in records (concurrency x 1000), not pages: with small pages a
        # page-count window would starve the workers on the last big scope.
        window = max(tenant.concurrency, tenant.concurrency * 1000 // tenant.page_size)
        loop = asyncio.get_running_loop()

        def open_scope(scope: Scope) -> ScopeWalk:
            deadline = loop.time() + tenant.scope_deadline
            output = PassOutput(
                scope,
                {
                    m.key: self.sink.open(m.relpath(tenant.layout), tenant.compression)
                    for m in scope.members
                    if m.key not in self.done
                },
            )
            return ScopeWalk(
                scope,
                output,
                functools.partial(self._list_backups, tenant, scope, deadline),
                run_id=self.run_id,
                page_size=tenant.page_size,
                window=window,
                spill_at=self.spill_at,
                stats=self.stats,
            )

        def prefetch(scope: Scope) -> None:
            tenant.auth.prefetch(
                list_backups_request(tenant.cbr_endpoint(scope.region), scope.project_id, ())
            )

        # Over all open scopes, twice one scope's window: sized in records too, for the same reason
        # (a page-count budget throttled 50-record pages behind one page sleeping in a retry).
        scheduler = TenantScheduler(
            tenant.scopes, open_scope, max_open=tenant.concurrency, page_budget=2 * window, prefetch=prefetch
        )
        try:
            async with asyncio.TaskGroup() as group:
                for n in range(tenant.concurrency):
                    group.create_task(self._worker(tenant, scheduler), name=f"worker:{tenant.name}:{n}")
        except asyncio.CancelledError:
            # Interrupted: scopes still open are dropped whole (their temporary files removed), so
            # the output holds only complete scopes; the next run fetches the others again.
            for walk in list(scheduler.open):
                await asyncio.shield(walk.abandon())
            raise

    async def _worker(self, tenant: TenantCrawl, scheduler: TenantScheduler) -> None:
        while (job := await scheduler.next_job()) is not None:
            walk, offset = job
            await walk.fetch(offset)
            if scheduler.close(walk):  # this worker ends the scope; its slot is free meanwhile
                await self._commit(walk, await walk.finish())
                if tenant.refused is not None:
                    for scope in scheduler.drain():
                        self._record_unstarted(scope, tenant.refused)
            scheduler.changed()

    async def _list_backups(
        self, tenant: TenantCrawl, scope: Scope, deadline: float, query: list[tuple[str, str]]
    ) -> Page:
        """A walk's fetch: one ListBackups request through the tenant's credential and limiter."""
        if tenant.refused is not None:
            raise tenant.refused  # every other scope of the tenant would be refused the same way
        request = list_backups_request(tenant.cbr_endpoint(scope.region), scope.project_id, query)
        try:
            response = await (tenant.client or self.client).send(
                request,
                tenant.auth,
                tenant.cbr_limiter(scope.region),
                parse=parse_owned_page if scope.partitions else parse_page,
                deadline=deadline,
            )
        except AuthFailedError as exc:
            # The credential itself is refused (after one re-authentication): stop spending
            # requests on this tenant's scopes.
            if tenant.refused is None:
                tenant.refused = CredentialRefused(tenant.name, tenant.auth.description, exc)
                log.error("%s", tenant.refused)
            raise tenant.refused from exc
        page: Page = response.data
        return page

    async def _commit(self, walk: ScopeWalk, result: ScopeResult) -> None:
        """Commit a finished walk's output: its scope's, or each partition's of a single pass."""
        output = walk.output
        for index, scope_result in enumerate(output.partition_results(result)):
            try:
                await self._commit_output(output.outputs[scope_result.scope.key], scope_result)
            except asyncio.CancelledError:
                for later in output.targets[index + 1 :]:
                    await asyncio.shield(output.outputs[later.key].discard())
                raise

    async def _commit_output(self, output: ScopeOutput, result: ScopeResult) -> None:
        """Commit one scope's output in the background (complete, or under its .partial name).

        A worker waiting for the sink's next batch would leave its request slot idle, so it goes
        on; at most CONCLUDING_MAX commits wait so, after that the worker waits for a slot.
        """
        try:
            await self._commit_slots.acquire()
        except asyncio.CancelledError:
            # Interrupted while waiting: dropped whole, like the scopes still open (_run_tenant).
            await asyncio.shield(output.discard())
            raise
        try:
            committing = output.commit(result.status == "complete")
        except Exception as exc:  # a bug in a sink: the scope is failed below, like any commit's
            committing = asyncio.get_running_loop().create_future()
            committing.set_exception(exc)
        self._committing.add(committing)
        committing.add_done_callback(functools.partial(self._committed, result))

    def _committed(self, result: ScopeResult, committing: asyncio.Future[list[FileRecord]]) -> None:
        self._committing.discard(committing)
        self._commit_slots.release()
        error = asyncio.CancelledError() if committing.cancelled() else committing.exception()
        if error is not None:
            # Whatever went wrong (a full disk, or a bug), the scope is reported failed, never lost:
            # a scope missing from the results could let the run pass for complete. (A failed
            # commit leaves nothing behind: crawler.pipeline.sink removes its .part.)
            if not isinstance(error, OSError):
                log.error("committing the output of %s failed", result.scope.key, exc_info=error)
            result.status = "failed"
            result.error = f"could not write {result.scope.key}: {error or type(error).__name__}"
        else:
            result.files = [f.as_dict() for f in committing.result()]
        self._finish(result)

    def _record_unstarted(self, scope: Scope, error: CrawlerError) -> None:
        for member in scope.members:
            if member.key in self.done:
                continue
            result = ScopeResult(member, status="failed", error=str(error))
            result.error_code = getattr(error, "code", None)
            result.request_id = getattr(error, "request_id", None)
            self._finish(result, quiet=True)

    def _finish(self, result: ScopeResult, quiet: bool = False) -> None:
        self.results.append(result)
        if result.status == "complete" and self._checkpoints is not None:
            # Called once the scope's output is committed (renamed), so the checkpoint never runs
            # ahead of the data it vouches for.
            self._checkpoints.checkpoint(result)
        self.stats.scopes_done += 1
        if result.status == "complete":
            # Debug only: an estate has tens of thousands of scopes, the progress lines and the
            # manifest tell about them; what needs a look (below) stands out.
            log.debug(
                "scope complete %s: %d backups in %d pages",
                result.scope.key,
                result.records_written,
                result.pages,
            )
        else:
            self.stats.scopes_failed += 1
            if not quiet:
                log.warning(
                    "scope %s %s: %s (%d backups written)",
                    result.status,
                    result.scope.key,
                    result.error,
                    result.records_written,
                )
