"""Paging one scope: first page -> count -> the remaining offsets -> ordered, de-duplicated lines.

The first page (offset 0) gives ``count``, the total number of matches. The remaining pages are
then fetched concurrently (offset fan-out), but never more than ``window`` pages ahead of the
lowest page not yet written: pages are written in offset order, so a slow page holds back at most
``window`` finished ones in memory.

Records are de-duplicated by id within the scope (offset paging over a live set repeats records
when new backups push older ones down; :mod:`crawler.dedupe` keeps the ids, in bounded memory for
big scopes). A scope is complete only when the unique ids received match ``count``, on the first
page and on the last.

Offset paging over a live set also *skips* records: a backup deleted (expired) in front of the
current offset shifts every later one up by one. When the offset pass shows drift (the count
changed, a page came back short, records repeated, or the unique ids differ from the count), the
scope is reconciled with a sequential marker pass in a stable order (``created_at:asc,id:asc``):
deletions cannot shift a marker, and new backups sort last, so every backup that exists for the
whole pass is seen. New ids are appended, already-written ones dropped (a scope whose ids spilled
out of memory is written afresh by the marker pass instead), so the output holds every backup that
existed for the whole crawl, once, and nothing that never existed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

import msgspec
import orjson

from crawler.dedupe import SPILL_AT, ScopeIds
from crawler.errors import BadResponseError, CrawlerError
from crawler.scope import Scope, ScopeResult
from crawler.sink import ScopeOutput

PROVENANCE_KEY = "_crawl"
RECONCILE_SORT = "created_at:asc,id:asc"


class _Page(msgspec.Struct):
    backups: list[msgspec.Raw]
    count: int


class _RecordHead(msgspec.Struct):
    """The only parts of a record the crawler reads; every other field is skipped, not parsed."""

    id: str
    provenance: msgspec.Raw | msgspec.UnsetType = msgspec.field(name=PROVENANCE_KEY, default=msgspec.UNSET)


_decode_page = msgspec.json.Decoder(_Page).decode
_decode_head = msgspec.json.Decoder(_RecordHead).decode


@dataclass(slots=True)
class Page:
    """A ListBackups page: each record's raw bytes exactly as the API sent them, and its id."""

    records: list[bytes]
    ids: list[str]
    count: int
    clashing: list[int]  # indexes of records that already carry a PROVENANCE_KEY field


def parse_page(body: bytes, request_id: str | None) -> Page:
    """Decode a ListBackups answer lazily; reject what is not a page, so that the client retries it.

    Records are not parsed into objects: msgspec hands back each one's raw bytes, and only its
    ``id`` is decoded. Writing those bytes keeps every field exactly as sent (unknown keys, number
    formats, escapes) and costs a third of a full parse.
    """
    try:
        page = _decode_page(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadResponseError(
            f"not a ListBackups page ({len(body)} bytes): {exc}", request_id=request_id
        ) from exc
    if page.count < 0:
        raise BadResponseError(f"ListBackups answer has a bad 'count': {page.count}", request_id=request_id)
    records: list[bytes] = []
    ids: list[str] = []
    clashing: list[int] = []
    for index, raw in enumerate(page.backups):
        try:
            head = _decode_head(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadResponseError(f"backup #{index} of the page: {exc}", request_id=request_id) from exc
        if not head.id:
            raise BadResponseError(f"backup #{index} of the page has an empty 'id'", request_id=request_id)
        if head.provenance is not msgspec.UNSET:
            clashing.append(index)
        records.append(bytes(raw))
        ids.append(head.id)
    return Page(records, ids, page.count, clashing)


def compact_id(backup_id: str) -> str | bytes:
    """The key a backup id is de-duplicated by: 16 bytes for a lower-case UUID, else the string.

    A set of a million id strings costs about 120 MB; as 16-byte keys it costs less than half. The
    mapping is exact (lower-case hex only, so two distinct strings never share a key), and any id
    that is not a canonical UUID is kept as it is.
    """
    if len(backup_id) == 36 and backup_id[8] == "-" and backup_id.islower():
        try:
            return bytes.fromhex(backup_id.replace("-", ""))
        except ValueError:
            return backup_id
    return backup_id


_second_text: tuple[int, str] = (-1, "")  # the last whole second formatted, reused within it


def utc_now_iso() -> str:
    """Now in UTC as ``2026-11-27T21:05:39.123Z`` (called a few times per scope: kept cheap)."""
    global _second_text
    now = time.time()
    second = int(now)
    if second != _second_text[0]:
        _second_text = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second_text[1]}.{int((now - second) * 1000):03d}Z"


class ScopeCrawl:
    """The state of one scope while its pages are fetched."""

    def __init__(
        self,
        scope: Scope,
        output: ScopeOutput,
        *,
        run_id: str,
        page_size: int,
        window: int,
        spill_at: int = SPILL_AT,
    ) -> None:
        self.scope = scope
        self.output = output
        self.page_size = page_size
        self.window = max(1, window)
        self.result = ScopeResult(scope, started_at=utc_now_iso())
        self.started = asyncio.get_running_loop().time()  # the scope's deadline counts from here
        self._run_id = run_id
        # Decided at the first page, from its count (crawler.dedupe). Only an output that can be
        # rewritten may spill: reconciling a spilled scope rewrites it (see begin_reconciliation).
        self._ids: ScopeIds | None = None
        self._spill_at = spill_at if output.rewritable else sys.maxsize
        self._far_repeat = False
        self.total: int | None = None  # count from the first page
        self._next_offset = 0  # next offset to hand out
        self._flush_offset = 0  # next offset to write
        self._buffered: dict[int, tuple[bytes, int]] = {}  # offset -> encoded lines, count
        self._in_flight = 0
        self._flush_lock = asyncio.Lock()
        self.error: BaseException | None = None
        self.closed = False

    # -- scheduling ---------------------------------------------------------------------------

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

    def page_query(self, offset: int) -> list[tuple[str, str]]:
        return [*self.scope.query(), ("limit", str(self.page_size)), ("offset", str(offset))]

    @property
    def finished(self) -> bool:
        """Nothing in flight, and either failed or every page written."""
        if self._in_flight:
            return False
        if self.error is not None:
            return True
        return self.total is not None and self._flush_offset >= self.total and not self._buffered

    # -- results ------------------------------------------------------------------------------

    def fail(self, error: BaseException) -> None:
        self._in_flight -= 1
        if self.error is None:
            self.error = error

    async def accept(self, offset: int, page: Page) -> int:
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
                    await self.output.write(data, written)
                    self.result.records_written += written
                    flushed += written
                self._flush_offset += self.page_size
                if self.total is not None and self._flush_offset >= self.total:
                    break
        return flushed

    def _encode(self, page: Page) -> tuple[bytes, int]:
        """NDJSON lines for the records not seen before in this scope, and how many."""
        if not page.records:
            return b"", 0  # most scopes of a big estate are empty: nothing to stamp
        scope = self.scope
        provenance = {
            "tenant": scope.tenant,
            "region": scope.region,
            "project_id": scope.project_id,
            "project_name": scope.project_name,
            "enterprise_project_id": scope.enterprise_project_id,
            "own_type": scope.own_type,
            "run_id": self._run_id,
            "fetched_at": utc_now_iso(),
        }
        # The record is written byte for byte as the API sent it; provenance goes under one added
        # key, spliced in before the record's closing brace (serialised once per page).
        tail = b',"' + PROVENANCE_KEY.encode() + b'":' + orjson.dumps(provenance) + b"}\n"
        clashing = set(page.clashing)
        ids = self._ids
        assert ids is not None
        lines = []
        for index, (raw, backup_id) in enumerate(zip(page.records, page.ids, strict=True)):
            if not ids.add(compact_id(backup_id)):
                self.result.duplicates += 1
                continue
            if index in clashing:
                # Never seen from the API, but the output must stay valid JSON with one such key.
                record = orjson.loads(raw)
                record[PROVENANCE_KEY] = provenance
                lines.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            else:
                lines.append(raw[:-1] + tail)
        ids.end_page()
        return b"".join(lines), len(lines)

    # -- reconciliation -----------------------------------------------------------------------

    def needs_reconciliation(self) -> bool:
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

    async def verify(self) -> bool:
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

    async def begin_reconciliation(self) -> str:
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

    def marker_query(self, marker: str | None) -> list[tuple[str, str]]:
        query = [*self.scope.query(), ("limit", str(self.page_size)), ("sort", RECONCILE_SORT)]
        if marker is not None:
            query.append(("marker", marker))
        return query

    async def accept_extra(self, page: Page) -> int:
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
            await self.output.write(data, written)
            self.result.records_written += written
        return written

    def _note(self, note: str) -> None:
        if len(self.result.notes) < 20:
            self.result.notes.append(note)

    def release(self) -> None:
        """Free the ids (and their spill file) of a scope given up without a result."""
        if self._ids is not None:
            self._ids.close()

    def conclude(self) -> ScopeResult:
        """Decide the scope's status (call once, when finished)."""
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
        self.release()  # memory (and the spill file) freed as soon as the scope is done
        return result
