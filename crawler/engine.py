"""The scheduler: a fixed pool of workers per tenant pulling page jobs, fairly and within limits.

Each tenant gets its own workers (its configured concurrency) and its own limiters, so a huge
tenant cannot starve the others: tenants run side by side, each at its own pace. Within a tenant,
workers prefer pages of scopes already open (oldest first) over opening new scopes, which keeps the
number of open files and buffered pages bounded; at most ``concurrency`` scopes are open at once.

Workers are not one task per item: their number is the sum of the tenants' concurrency. A finished
scope is concluded (its file committed, its checkpoint queued) in the background while its worker
goes on: a small scope by a callback on the sink's batch, a big one by a short task; at most
CONCLUDING_MAX at once. The scheduler also has each project's credential fetched a few scopes
ahead (Authenticator.prefetch), so that workers reaching a new project do not all wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from crawler.client import ApiClient, ApiRequest, Authenticator
from crawler.dedupe import SPILL_AT
from crawler.errors import ApiError, AuthFailedError, CrawlerError
from crawler.paging import Page, ScopeCrawl, parse_page
from crawler.ratelimit import QuotaLimiter
from crawler.scope import Scope, ScopeResult
from crawler.sink import FileRecord, ScopeOutput, Sink

log = logging.getLogger(__name__)


# Scopes concluding in the background at once (see Engine._conclude_soon).
CONCLUDING_MAX = 64
# How far ahead of the scopes being opened their credentials are fetched, per worker: a new
# project's token is then ready when its first scope starts (see _TenantScheduler).
PREFETCH_SCOPES_PER_WORKER = 4


class Checkpoints(Protocol):
    """Where completed scopes are recorded for a resumed run (crawler.state.RunState)."""

    def checkpoint(self, result: ScopeResult) -> object:
        """Queue a completed scope; never blocks, never raises for a write error."""
        ...

    async def flush(self) -> None:
        """Return once every queued scope is recorded (or its failure reported)."""
        ...


@dataclass(slots=True)
class RunStats:
    """Counters for progress lines and the final summary."""

    scopes_total: int = 0
    scopes_done: int = 0
    scopes_failed: int = 0
    records: int = 0
    pages: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"progress: {self.scopes_done}/{self.scopes_total} scopes, {self.records} backups, "
            f"{self.pages} pages, {self.records / elapsed:.0f} backups/s, {elapsed:.0f}s"
        )


@dataclass(slots=True)
class TenantPlan:
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
    credential_error: CrawlerError | None = None  # set when discovery already proved it broken


class _TenantScheduler:
    """Hands out (scope, offset) jobs: pages of open scopes first, then first pages of new ones."""

    def __init__(
        self,
        scopes: Iterable[Scope],
        open_scope: Callable[[Scope], ScopeCrawl],
        max_open: int,
        page_budget: int,
        prefetch: Callable[[Scope], None] | None = None,
    ):
        self._pending: deque[Scope] = deque(scopes)
        self._open_scope = open_scope
        self._max_open = max_open
        # Called with the scope PREFETCH_SCOPES_PER_WORKER x max_open places behind each one opened
        # (the last one, near the end): what it needs can be fetched while the scopes between run.
        self._prefetch = prefetch
        self._prefetch_ahead = PREFETCH_SCOPES_PER_WORKER * max_open
        # Pages in flight or waiting for a slower one, over all open scopes. Each scope's own
        # window bounds its reordering; this bounds the tenant's memory, which would otherwise
        # grow with how many big scopes happen to be open at once.
        self._page_budget = page_budget
        self.open: list[ScopeCrawl] = []
        self._waiters: list[asyncio.Future[None]] = []

    def _take(self) -> tuple[ScopeCrawl, int] | None:
        # No await in here: on one event loop, taking a job is atomic without a lock. A page held
        # back always waits for a lower one already in flight, so the budget cannot deadlock.
        if sum(crawl.held_pages for crawl in self.open) >= self._page_budget:
            return None
        for crawl in self.open:
            offset = crawl.take_offset()
            if offset is not None:
                return crawl, offset
        if len(self.open) < self._max_open and self._pending:
            if self._prefetch is not None:
                self._prefetch(self._pending[min(self._prefetch_ahead, len(self._pending) - 1)])
            crawl = self._open_scope(self._pending.popleft())
            self.open.append(crawl)
            offset = crawl.take_offset()
            assert offset == 0
            return crawl, offset
        return None

    async def next_job(self) -> tuple[ScopeCrawl, int] | None:
        while (job := self._take()) is None:
            if not self.open and not self._pending:
                return None
            # Nothing to do until a page or a scope finishes: wait for changed().
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        return job

    def changed(self) -> None:
        """A job finished: new offsets or scope slots may be free; every idle worker looks again."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def close(self, crawl: ScopeCrawl) -> bool:
        """Take a finished scope out of the open set; True for the one caller that must conclude it."""
        if crawl.closed or not crawl.finished:
            return False
        crawl.closed = True
        self.open.remove(crawl)
        return True

    def drain(self) -> list[Scope]:
        """Scopes never started (used when a tenant's credential is refused)."""
        scopes = list(self._pending)
        self._pending.clear()
        return scopes


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
        ``spill_at``: scopes counting more backups keep only recent ids in memory (crawler.dedupe)."""
        self.client = client
        self.sink = sink
        self.run_id = run_id
        self.stats = stats or RunStats()
        self.results: list[ScopeResult] = []
        self.done: Mapping[str, ScopeResult] = done or {}
        self._checkpoints = checkpoints
        self.spill_at = spill_at
        # Scopes being concluded (files committed) while their worker has moved on; bounded.
        self._concluding: set[asyncio.Future[Any]] = set()
        self._conclude_slots = asyncio.Semaphore(CONCLUDING_MAX)

    async def run(self, tenants: list[TenantPlan]) -> list[ScopeResult]:
        self.stats.scopes_total += sum(len(t.scopes) for t in tenants)
        if self.done:
            # Resumed run: scopes already complete are reported from the checkpoint, not refetched.
            for tenant in tenants:
                for scope in tenant.scopes:
                    if scope.key in self.done:
                        self.results.append(self.done[scope.key])
                        self.stats.scopes_done += 1
            tenants = [
                dataclasses.replace(t, scopes=[s for s in t.scopes if s.key not in self.done])
                for t in tenants
            ]
        try:
            async with asyncio.TaskGroup() as group:
                for tenant in tenants:
                    group.create_task(self._run_tenant(tenant), name=f"tenant:{tenant.name}")
        finally:
            # Even when interrupted: scopes being concluded end (their files are short to write),
            # and a scope whose file is final gets its checkpoint.
            while self._concluding:
                await asyncio.shield(asyncio.gather(*self._concluding, return_exceptions=True))
            if self._checkpoints is not None:
                await asyncio.shield(self._checkpoints.flush())
        return self.results

    async def _run_tenant(self, tenant: TenantPlan) -> None:
        if tenant.credential_error is not None:
            for scope in tenant.scopes:
                self._record_unstarted(scope, tenant.credential_error)
            return

        def open_scope(scope: Scope) -> ScopeCrawl:
            output = self.sink.open(scope.relpath(tenant.layout), tenant.compression)
            return ScopeCrawl(
                scope,
                output,
                run_id=self.run_id,
                page_size=tenant.page_size,
                # The window is sized in records (concurrency x 1000), not pages: with small pages a
                # page-count window would starve the workers on the last big scope.
                window=window,
                spill_at=self.spill_at,
            )

        def prefetch(scope: Scope) -> None:
            tenant.auth.prefetch(self._list_request(tenant, scope, []))

        window = max(tenant.concurrency, tenant.concurrency * 1000 // tenant.page_size)
        # Over all open scopes, twice one scope's window: sized in records too, for the same reason
        # (a page-count budget throttled 50-record pages behind one page sleeping in a retry).
        scheduler = _TenantScheduler(
            tenant.scopes, open_scope, max_open=tenant.concurrency, page_budget=2 * window, prefetch=prefetch
        )
        state = _TenantState()
        try:
            async with asyncio.TaskGroup() as group:
                for n in range(tenant.concurrency):
                    group.create_task(
                        self._worker(tenant, scheduler, state), name=f"worker:{tenant.name}:{n}"
                    )
        except asyncio.CancelledError:
            # Interrupted: scopes still open are dropped whole (their temporary files removed), so
            # the output holds only complete scopes; the next run fetches the others again.
            for crawl in list(scheduler.open):
                crawl.release()
                await asyncio.shield(crawl.output.discard())
            raise

    async def _worker(self, tenant: TenantPlan, scheduler: _TenantScheduler, state: _TenantState) -> None:
        while (job := await scheduler.next_job()) is not None:
            crawl, offset = job
            if state.credential_error is not None:
                crawl.fail(state.credential_error)
            else:
                await self._fetch(tenant, crawl, offset, state)
            if scheduler.close(crawl):
                await crawl.verify()
                if crawl.needs_reconciliation() and state.credential_error is None:
                    await self._reconcile(tenant, crawl)
                await self._conclude_soon(crawl)
                if state.credential_error is not None:
                    for scope in scheduler.drain():
                        self._record_unstarted(scope, state.credential_error)
            scheduler.changed()

    async def _fetch(self, tenant: TenantPlan, crawl: ScopeCrawl, offset: int, state: _TenantState) -> None:
        scope = crawl.scope
        try:
            page = await self._list_backups(tenant, crawl, crawl.page_query(offset))
        except AuthFailedError as exc:
            # The credential itself is refused (after one re-authentication): every other scope
            # of this tenant would fail the same way, so stop spending requests on them.
            error = CredentialRefused(tenant.name, tenant.auth.description, exc)
            if state.credential_error is None:
                state.credential_error = error
                log.error("%s", error)
            crawl.fail(error)
        except CrawlerError as exc:
            crawl.fail(exc)
        else:
            self.stats.pages += 1
            try:
                self.stats.records += await crawl.accept(offset, page)
            except OSError as exc:
                # A full disk or a vanished directory fails this scope, not the run: what is
                # already written stays, and the manifest says what happened.
                if crawl.error is None:
                    crawl.error = CrawlerError(f"cannot write the output of {scope.key}: {exc}")

    async def _list_backups(
        self, tenant: TenantPlan, crawl: ScopeCrawl, query: list[tuple[str, str]]
    ) -> Page:
        """One ListBackups request of a scope: its quota owner's limiter, its deadline, lazy decoding."""
        scope = crawl.scope
        response = await self.client.send(
            self._list_request(tenant, scope, query),
            tenant.auth,
            tenant.cbr_limiter(scope.region),
            parse=parse_page,
            deadline=crawl.started + tenant.scope_deadline,
        )
        page: Page = response.data
        return page

    @staticmethod
    def _list_request(tenant: TenantPlan, scope: Scope, query: list[tuple[str, str]]) -> ApiRequest:
        return ApiRequest(
            service="cbr",
            method="GET",
            base_url=tenant.cbr_endpoint(scope.region),
            path=f"/v3/{scope.project_id}/backups",
            query=query,
            project_id=scope.project_id,
        )

    async def _reconcile(self, tenant: TenantPlan, crawl: ScopeCrawl) -> None:
        """Re-read a drifting scope with a sequential marker pass in a stable order.

        If the marker itself was deleted meanwhile (400), the pass steps back to the previous id
        of the last page: re-reading a few records is harmless, they are de-duplicated.
        """
        scope = crawl.scope
        log.info(
            "scope %s drifted during paging (%s): reconciling with a marker pass",
            scope.key,
            crawl.result.notes[:2],
        )
        try:
            method = await crawl.begin_reconciliation()
        except OSError as exc:
            crawl.error = CrawlerError(f"cannot rewrite the output of {scope.key}: {exc}")
            return
        added = pages = 0
        previous_ids: list[str] = []
        marker: str | None = None
        while True:
            try:
                page = await self._list_backups(tenant, crawl, crawl.marker_query(marker))
            except ApiError as exc:
                if exc.status == 400 and marker is not None and previous_ids:
                    marker = previous_ids.pop()  # the marker vanished: step back one record
                    continue
                crawl.error = exc
                break
            except CrawlerError as exc:
                crawl.error = exc
                break
            pages += 1
            self.stats.pages += 1
            try:
                written = await crawl.accept_extra(page)
            except OSError as exc:
                crawl.error = CrawlerError(f"cannot write the output of {scope.key}: {exc}")
                break
            added += written
            self.stats.records += written
            if len(page.ids) < crawl.page_size:
                distinct = await crawl.verify()
                crawl.result.reconciliation = {
                    "method": method,
                    "pages": pages,
                    "added": added,
                    "count_at_end": page.count,
                    "complete": distinct,
                }
                if not distinct:
                    crawl.error = CrawlerError(f"{scope.key}: the marker pass returned a backup twice")
                return
            previous_ids = page.ids[:-1]
            marker = page.ids[-1]
        crawl.result.reconciliation = {
            "method": method,
            "pages": pages,
            "added": added,
            "complete": False,
        }

    async def _conclude_soon(self, crawl: ScopeCrawl) -> None:
        """Decide a finished scope's status now, commit its files in the background.

        Committing a small scope waits for the sink's next batch (crawler.sink.FileSink.write_whole);
        a worker waiting for that would leave its request slot idle, so it goes on to its next job.
        The scope's ids are freed here (conclude); a commit in the background holds only the
        scope's output (at most the sink's buffer). At most CONCLUDING_MAX commits wait so, after
        that the worker waits for a slot. A commit that is one future (a small scope's file, the
        common case by far) is finished by a callback on it, not by a task of its own.
        """
        result = crawl.conclude()
        complete = result.status == "complete"  # else the file is kept under its .partial name
        try:
            await self._conclude_slots.acquire()
        except asyncio.CancelledError:
            # Interrupted while waiting: dropped whole, like the scopes still open (_run_tenant).
            await asyncio.shield(crawl.output.discard())
            raise
        output = crawl.output
        committing: asyncio.Future[Any] | None = output.commit_soon(complete)
        if committing is None:
            committing = asyncio.get_running_loop().create_task(self._commit(output, result, complete))
            committing.add_done_callback(self._committed)
        else:
            committing.add_done_callback(functools.partial(self._committed_soon, result))
        self._concluding.add(committing)

    def _committed(self, task: asyncio.Future[Any]) -> None:
        self._concluding.discard(task)
        self._conclude_slots.release()
        if not task.cancelled() and task.exception() is not None:
            # _commit reports its own failures; this would be a bug in _finish, not to be lost.
            log.error("concluding a scope failed", exc_info=task.exception())

    def _committed_soon(self, result: ScopeResult, committing: asyncio.Future[list[FileRecord]]) -> None:
        self._concluding.discard(committing)
        self._conclude_slots.release()
        error = asyncio.CancelledError() if committing.cancelled() else committing.exception()
        files = [] if error is not None else committing.result()
        self._finish_commit(result, files, error)

    async def _commit(self, output: ScopeOutput, result: ScopeResult, complete: bool) -> None:
        try:
            files = await output.commit(complete)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await output.discard()
            self._finish_commit(result, [], exc)
        else:
            self._finish_commit(result, files, None)

    def _finish_commit(
        self, result: ScopeResult, files: list[FileRecord], error: BaseException | None
    ) -> None:
        if error is not None:
            # Whatever went wrong (a full disk, or a bug), the scope is reported failed, never lost:
            # a scope missing from the results could let the run pass for complete. (A small
            # scope's failed file leaves nothing behind: crawler.sink removes its .part.)
            if not isinstance(error, OSError):
                log.error("committing the output of %s failed", result.scope.key, exc_info=error)
            result.status = "failed"
            result.error = f"could not write {result.scope.key}: {error or type(error).__name__}"
        result.files = [f.as_dict() for f in files]
        self._finish(result)

    def _record_unstarted(self, scope: Scope, error: CrawlerError) -> None:
        result = ScopeResult(scope, status="failed", error=str(error))
        result.error_code = getattr(error, "code", None)
        result.request_id = getattr(error, "request_id", None)
        self._finish(result, quiet=True)

    def _finish(self, result: ScopeResult, quiet: bool = False) -> None:
        self.results.append(result)
        if result.status == "complete" and self._checkpoints is not None:
            # _finish runs after the scope's output is committed (renamed), so the checkpoint
            # never runs ahead of the data it vouches for.
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


@dataclass(slots=True)
class _TenantState:
    credential_error: CrawlerError | None = None


class CredentialRefused(CrawlerError):
    """A tenant's credential was refused: names the tenant, the source, the code and request id."""

    def __init__(self, tenant: str, source: str, cause: AuthFailedError) -> None:
        self.tenant = tenant
        self.code = cause.code
        self.request_id = cause.request_id
        super().__init__(f"tenant {tenant}: credential refused ({source}): {cause.describe()}")
