"""Walking one scope to its end: offset fan-out, de-duplication, completeness, marker reconciliation.

:class:`ScopeWalk` is the one entry point. The engine opens a walk per scope with a *fetch*
function (a ListBackups query -> a decoded page: the engine's client, limiter, credential and the
scope's deadline behind it) and an output (:mod:`crawler.pipeline.sink`); it then hands the walk
the offsets the walk gives out (:meth:`ScopeWalk.take_offset`, :meth:`ScopeWalk.fetch`) from any of
the tenant's workers, and calls :meth:`ScopeWalk.finish` once, which returns the scope's result.
Control goes one way: the walk calls fetch and writes its output, and never calls the engine back.

The offset pass. The first page (offset 0) gives ``count``, the total number of matches. The
remaining pages are then fetched concurrently, but never more than ``window`` pages ahead of the
lowest page not yet written: pages are written in offset order, so a slow page holds back at most
``window`` finished ones in memory.

Records are de-duplicated by id within the scope (offset paging over a live set repeats records
when new backups push older ones down; :mod:`crawler.pipeline.dedupe` keeps the ids, in bounded
memory for big scopes). A scope is complete only when the unique ids received match ``count``, on
the first page and on the last.

The marker pass. Offset paging over a live set also *skips* records: a backup deleted (expired) in
front of the current offset shifts every later one up by one. When the offset pass shows drift (the
count changed, a page came back short, records repeated, or the unique ids differ from the count),
the scope is reconciled with a sequential marker pass in a stable order (``created_at:asc,id:asc``):
deletions cannot shift a marker, and new backups sort last, so every backup that exists for the
whole pass is seen. New ids are appended, already-written ones dropped (a scope whose ids spilled
out of memory is written afresh by the marker pass instead), so the output holds every backup that
existed for the whole crawl, once, and nothing that never existed. The pass ends at a short page;
if its marker was deleted meanwhile (400), it steps back to the previous id of the last page.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from crawler.errors import ApiError, CrawlerError
from crawler.pipeline.dedupe import SPILL_AT, ScopeIds
from crawler.pipeline.listbackups import Page
from crawler.pipeline.passes import PassOutput
from crawler.pipeline.scope import Scope, ScopeResult
from crawler.support.clock import utc_now_iso
from crawler.support.progress import RunStats

log = logging.getLogger(__name__)

RECONCILE_SORT = "created_at:asc,id:asc"

# A ListBackups query of the scope (its own parameters plus paging) -> the decoded page.
Fetch = Callable[[list[tuple[str, str]]], Awaitable[Page]]
# A page's lines ready to write: (scope key, NDJSON lines, records) per scope they belong to.
Encoded = list[tuple[str, bytes, int]]


class ScopeWalk:
    """One scope while its pages are fetched, then reconciled, then concluded."""

    def __init__(
        self,
        scope: Scope,
        output: PassOutput,
        fetch: Fetch,
        *,
        run_id: str,
        page_size: int,
        window: int,
        spill_at: int = SPILL_AT,
        stats: RunStats | None = None,
    ) -> None:
        self.scope = scope
        self.output = output
        self._fetch = fetch
        self.page_size = page_size
        self.window = max(1, window)
        self.result = ScopeResult(scope, started_at=utc_now_iso())
        self.stats = stats if stats is not None else RunStats()
        self._run_id = run_id
        # Decided at the first page, from its count (crawler.pipeline.dedupe). Only an output that
        # can be rewritten may spill: reconciling a spilled scope rewrites it (_begin_reconciliation).
        self._ids: ScopeIds | None = None
        self._spill_at = spill_at if output.rewritable else sys.maxsize
        self._far_repeat = False
        self.total: int | None = None  # count from the first page
        self._next_offset = 0  # next offset to hand out
        self._flush_offset = 0  # next offset to write
        self._buffered: dict[int, tuple[Encoded, int]] = {}  # offset -> encoded lines, count
        self._in_flight = 0
        self._flush_lock = asyncio.Lock()
        self.error: BaseException | None = None
        self.closed = False  # set by the one caller that will finish() the walk

    # -- scheduling (no await: the engine's scheduler calls these) -----------------------------

    def take_offset(self) -> int | None:
        """The next offset to fetch, or None if none may be fetched now."""
        if self.error is not None or self.closed:
            return None
        if self.total is None:
            # Only the first page may go before its count is known, and only once.
            if self._next_offset != 0:
                return None
            self._next_offset = -1
            self._in_flight += 1
            return 0
        too_far_ahead = self._next_offset - self._flush_offset >= self.window * self.page_size
        if self._next_offset >= self.total or too_far_ahead:
            return None
        offset = self._next_offset
        self._next_offset += self.page_size
        self._in_flight += 1
        return offset

    @property
    def held_pages(self) -> int:
        """Pages this scope holds in memory or has in flight (the scheduler's budget counts them)."""
        return self._in_flight + len(self._buffered)

    @property
    def finished(self) -> bool:
        """The offset pass is over: nothing in flight, and either failed or every page written."""
        if self._in_flight:
            return False
        if self.error is not None:
            return True
        return self.total is not None and self._flush_offset >= self.total and not self._buffered

    # -- the offset pass ------------------------------------------------------------------------

    async def fetch(self, offset: int) -> None:
        """Fetch the page at ``offset`` (one :meth:`take_offset` gave) and write what is in order.

        An error ends the walk: a request that failed (after the client's retries) is the scope's
        error; a write that failed (a full disk) fails this scope, not the run.
        """
        try:
            page = await self._fetch(self._page_query(offset))
        except CrawlerError as exc:
            self._in_flight -= 1
            if self.error is None:
                self.error = exc
            return
        except Exception as exc:  # a bug met on some answer: this scope fails, the run goes on
            log.error(
                "scope %s: unexpected error on the page at offset %d", self.scope.key, offset, exc_info=True
            )
            self._in_flight -= 1
            if self.error is None:
                self.error = CrawlerError(
                    f"internal error on the page at offset {offset}: {type(exc).__name__}: {exc}"
                )
            return
        self.stats.pages += 1
        try:
            self.stats.records += await self._accept(offset, page)
        except OSError as exc:
            if self.error is None:
                self.error = CrawlerError(f"cannot write the output of {self.scope.key}: {exc}")

    def _page_query(self, offset: int) -> list[tuple[str, str]]:
        return [*self.scope.query(), ("limit", str(self.page_size)), ("offset", str(offset))]

    async def _accept(self, offset: int, page: Page) -> int:
        """A page arrived: encode it, then write every page now in order. Returns lines written."""
        self._in_flight -= 1
        count = page.count
        self.result.pages += 1
        self.result.last_count = count
        if offset == 0:
            self.total = count
            self.result.count = count
            self._next_offset = self.page_size
            self._ids = ScopeIds(count, self.page_size, self._spill_at)
            # An empty scope, or one answered in a single page, is done after this page.
        if count != self.total:
            self._note(f"count changed from {self.total} to {count} at offset {offset}")
        expected = min(self.page_size, max(0, (self.total or 0) - offset))
        if len(page.records) < expected:
            self._note(f"short page at offset {offset}: {len(page.records)} of {expected} records")
        # Encoded at once so that only bytes wait here for a slower page.
        self._buffered[offset] = self._encode(page)
        assert self._ids is not None
        await self._ids.flush()
        return await self._flush()

    async def _flush(self) -> int:
        # One flusher at a time keeps lines in offset order; the others just leave their page in
        # the buffer for it.
        flushed = 0
        async with self._flush_lock:
            while self._flush_offset in self._buffered:
                data, written = self._buffered.pop(self._flush_offset)
                if written:
                    await self._write(data, written)
                    self.result.records_written += written
                    flushed += written
                self._flush_offset += self.page_size
                if self.total is not None and self._flush_offset >= self.total:
                    break
        return flushed

    def _encode(self, page: Page) -> tuple[Encoded, int]:
        """NDJSON lines for the records not seen before in this scope, and how many."""
        if not page.records:
            return [], 0  # most scopes of a big estate are empty: nothing to stamp
        ids = self._ids
        assert ids is not None
        keep = ids.keep_new(page.ids)
        self.result.duplicates += len(page.ids) - len(keep)
        chunks = self.output.encode(page, keep, self._provenance)
        return chunks, sum(records for _, _, records in chunks)

    async def _write(self, data: Encoded, records: int) -> None:
        await self.output.write(data)

    def _provenance(self, scope: Scope) -> dict[str, Any]:
        """The ``_crawl`` object of the lines of ``scope`` (the walk's, or one of its partitions)."""
        return {
            "tenant": scope.tenant,
            "region": scope.region,
            "project_id": scope.project_id,
            "project_name": scope.project_name,
            "enterprise_project_id": scope.enterprise_project_id,
            "own_type": scope.own_type,
            "run_id": self._run_id,
            "fetched_at": utc_now_iso(),
        }

    # -- the end: proof of distinct ids, reconciliation, the status ----------------------------

    async def finish(self) -> ScopeResult:
        """After the offset pass: prove the ids distinct, reconcile a drifting scope, decide its status.

        Call once, when :attr:`finished`. The output is left for the caller to commit (as complete
        when the result's status is ``complete``, else under its ``.partial`` name).
        """
        await self._verify()
        if self._needs_reconciliation():
            await self._reconcile()
        return self._conclude()

    def _needs_reconciliation(self) -> bool:
        """Did the offset pass see the set move under it?"""
        if self.error is not None or self.total is None or self.result.reconciliation is not None:
            return False
        result = self.result
        return bool(
            result.last_count != self.total
            or self._ids is None
            or self._ids.count != self.total
            or self._far_repeat
            or result.duplicates
            or any(note.startswith(("short page", "count changed")) for note in result.notes)
        )

    async def _verify(self) -> bool:
        """At the end of a pass: prove the ids written distinct (a spilled scope reads its ids back).

        False when a backup was repeated beyond the pages kept in memory: the offset pass then
        needs reconciliation like any drift.
        """
        if self._ids is None or self.error is not None:
            return True
        try:
            if await self._ids.verify():
                return True
        except OSError as exc:
            # The scope's ids cannot be proven distinct: it is not complete, whatever its counts.
            self.error = CrawlerError(f"cannot check the backup ids of {self.scope.key}: {exc}")
            return True
        self._far_repeat = True
        self._note("a backup repeated beyond the recent pages (a large shift during paging)")
        return False

    async def _reconcile(self) -> None:
        """Re-read the scope with a sequential marker pass in a stable order (module docstring)."""
        scope = self.scope
        notes = self.result.notes[:2]
        log.info("scope %s drifted during paging (%s): reconciling with a marker pass", scope.key, notes)
        try:
            method = await self._begin_reconciliation()
        except OSError as exc:
            self.error = CrawlerError(f"cannot rewrite the output of {scope.key}: {exc}")
            return
        added = pages = 0
        previous_ids: list[str] = []
        marker: str | None = None
        while True:
            try:
                page = await self._fetch(self._marker_query(marker))
            except ApiError as exc:
                if exc.status == 400 and marker is not None and previous_ids:
                    marker = previous_ids.pop()  # the marker vanished: step back one record
                    continue
                self.error = exc
                break
            except CrawlerError as exc:
                self.error = exc
                break
            pages += 1
            self.stats.pages += 1
            try:
                written = await self._accept_extra(page)
            except OSError as exc:
                self.error = CrawlerError(f"cannot write the output of {scope.key}: {exc}")
                break
            added += written
            self.stats.records += written
            if len(page.ids) < self.page_size:
                distinct = await self._verify()
                self.result.reconciliation = {
                    "method": method,
                    "pages": pages,
                    "added": added,
                    "count_at_end": page.count,
                    "complete": distinct,
                }
                if not distinct:
                    self.error = CrawlerError(f"{scope.key}: the marker pass returned a backup twice")
                return
            previous_ids = page.ids[:-1]
            marker = page.ids[-1]
        self.result.reconciliation = {"method": method, "pages": pages, "added": added, "complete": False}

    async def _begin_reconciliation(self) -> str:
        """Before the marker pass; returns how the pass combines with what is written.

        A scope whose ids are all in memory keeps its lines and appends the ids it has not written
        yet. A spilled scope cannot tell every written id from a new one, so its output is
        discarded and the marker pass writes the whole scope again, from fresh ids.
        """
        if self._ids is None or not self._ids.spilled:
            return "marker pass, sort created_at:asc,id:asc"
        self._ids.close()
        self._ids = ScopeIds(self.total or 0, self.page_size, self._spill_at)
        await self.output.discard()
        self.result.records_written = 0
        return "marker pass, sort created_at:asc,id:asc, scope rewritten"

    def _marker_query(self, marker: str | None) -> list[tuple[str, str]]:
        query = [*self.scope.query(), ("limit", str(self.page_size)), ("sort", RECONCILE_SORT)]
        if marker is not None:
            query.append(("marker", marker))
        return query

    async def _accept_extra(self, page: Page) -> int:
        """A page of the marker pass: write the ids not written yet; return how many."""
        self.result.pages += 1
        self.result.last_count = page.count
        before_dupes = self.result.duplicates
        data, written = self._encode(page)
        assert self._ids is not None
        await self._ids.flush()
        # Repeats are the point of this pass, not a symptom: don't count them as duplicates.
        self.result.duplicates = before_dupes
        if written:
            await self._write(data, written)
            self.result.records_written += written
        return written

    def _note(self, note: str) -> None:
        if len(self.result.notes) < 20:
            self.result.notes.append(note)

    def _conclude(self) -> ScopeResult:
        """Decide the scope's status."""
        result = self.result
        result.unique_ids = self._ids.count if self._ids is not None else 0
        result.finished_at = utc_now_iso()
        if self.error is not None:
            result.status = "partial" if result.records_written else "failed"
            result.error = str(self.error)
            result.error_code = getattr(self.error, "code", None)
            result.request_id = getattr(self.error, "request_id", None)
        elif result.reconciliation is not None and result.reconciliation.get("complete"):
            # The marker pass saw every backup that existed while it ran; all of them are written.
            result.status = "complete"
        elif self._far_repeat:
            # Spilled ids proved a backup written twice and no marker pass re-read the scope: its
            # line count says nothing about how many distinct backups it holds.
            result.status = "partial"
            result.error = (
                "a backup was written twice (a large shift during paging) and the scope was not re-read"
            )
        elif result.unique_ids == result.count and result.last_count == result.count:
            result.status = "complete"
        else:
            result.status = "partial"
            result.error = (
                f"received {result.unique_ids} unique backups, the API counted {result.count} "
                f"(last page said {result.last_count})"
            )
        self._release()  # memory (and the spill file) freed as soon as the scope is done
        return result

    def _release(self) -> None:
        if self._ids is not None:
            self._ids.close()

    async def abandon(self) -> None:
        """Give the scope up without a result (the run is interrupted): its ids and output dropped."""
        self._release()
        await self.output.discard()
