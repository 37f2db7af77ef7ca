r"""The backup ids a scope has written: exact de-duplication with memory bounded for big scopes.

Offset paging over a live set repeats a record when backups created meanwhile push it from one page
into the next, so every id is checked against the ids already written. Keeping them all in a set
costs ~100 bytes per id: 190 MB for a project of 1.9M backups, the one thing that grew a crawl's
memory with the estate. So a scope whose first page counts more than :data:`SPILL_AT` backups keeps
in memory only the ids of its last :data:`RECENT_PAGES` pages (where a repeat lands: next to where
it was first seen), and appends every id to an anonymous temporary file (a line per id, the id
itself with ``\``, line breaks and NUL escaped: 37 bytes per UUID, in ``$TMPDIR``;
``$CBR_CRAWLER_SPILL_AT`` moves the threshold). When the scope ends,
:meth:`ScopeIds.verify` proves the ids in that file distinct: ``sort -u`` counts them in a child
process, in bounded memory and off the GIL (without ``sort``, Python does it in a thread, in hash
buckets of bounded size).
A repeat that landed further away than the recent pages (a shift of thousands of backups during one
scope) is then found there: the caller re-reads the scope with a marker pass, as for any drift.
Either way the count of distinct ids is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import tempfile
import threading
import zlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import IO

from crawler.errors import CrawlerError

SPILL_AT = 32_768  # ids: a scope counting more keeps only its recent pages' ids in memory (~3 MB)
RECENT_PAGES = 16  # pages of ids kept in memory in spill mode (a repeat lands next to its first page)
BUCKET_IDS = 32_768  # ids per bucket when verifying (a set of that many: ~3 MB)
MAX_BUCKETS = 128  # temporary files open at once while verifying
_BUCKET_BATCH = 256  # ids gathered per bucket before they are written to its file
_SORT = shutil.which("sort")  # coreutils (or BSD) sort verifies spilled ids off the GIL; else Python

SPILL_AT_ENV = "CBR_CRAWLER_SPILL_AT"  # overrides SPILL_AT: memory against temporary disk

Key = str | bytes


def spill_threshold(environ: Mapping[str, str] = os.environ) -> int:
    """:data:`SPILL_AT`, or the whole number in ``$CBR_CRAWLER_SPILL_AT``."""
    text = environ.get(SPILL_AT_ENV)
    if text is None or not text.strip():
        return SPILL_AT
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise CrawlerError(
            f"{SPILL_AT_ENV}={text!r}: expected a whole number of backup ids (default {SPILL_AT})"
        )
    return value


def compact_id(backup_id: str) -> Key:
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


def _escape(backup_id: str) -> str:
    return backup_id.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\0", "\\0")


def _lines(page: list[str]) -> bytes:
    """A page's ids as spill-file lines, one per id: the id itself, escaped so that no id holds a
    line break (an injective mapping, so distinct ids are distinct lines). Nearly every page needs
    no escape, and is one join."""
    text = "\n".join(page)
    if text.count("\n") != len(page) - 1 or "\\" in text or "\r" in text or "\0" in text:
        text = "\n".join(map(_escape, page))
    return text.encode("utf-8", "surrogatepass") + b"\n"


class ScopeIds:
    """The ids written in one scope (use one per pass: a marker pass starts a fresh one)."""

    def __init__(self, expected: int, page_size: int, spill_at: int = SPILL_AT) -> None:
        self.spilled = expected > spill_at
        self.count = 0  # ids added (distinct, once verify() has said so in spill mode)
        # The ids themselves: a set of strings costs ~50% more than of 16-byte keys (compact_id),
        # but it holds at most SPILL_AT ids (or the recent pages') and skips a conversion per record
        # (a quarter of the crawler's main-thread CPU on a 1M-backup crawl).
        self._seen: set[str] = set()
        self._recent: deque[list[str]] = deque()
        self._recent_ids = 0
        self._recent_limit = RECENT_PAGES * max(1, page_size)
        self._page: list[str] = []
        self._file: IO[bytes] | None = None
        self._unwritten: list[bytes] = []
        # One appender at a time, and verify() waits for it: the file is whole when it is read.
        self._flushing = asyncio.Lock()
        # close() may come while an append runs in its thread (a scope given up): it then waits for
        # that one write, and later appends are dropped instead of hitting a closed file.
        self._file_lock = threading.Lock()
        self._closed = False

    def add(self, backup_id: str) -> bool:
        """True if ``backup_id`` is new (and now recorded), False if it was written already."""
        if backup_id in self._seen:
            return False
        self._seen.add(backup_id)
        self.count += 1
        if self.spilled:
            self._page.append(backup_id)
        return True

    def keep_new(self, ids: Sequence[str]) -> list[int]:
        """One page's ids: the indexes of those not written before (now recorded), in order."""
        seen = self._seen
        fresh = set(ids)
        if len(fresh) == len(ids) and seen.isdisjoint(fresh):
            # The common page: no id repeated, within it or before it; set operations only.
            seen |= fresh
            self.count += len(ids)
            if self.spilled:
                self._page.extend(ids)
            self.end_page()
            return list(range(len(ids)))
        keep = [index for index, backup_id in enumerate(ids) if self.add(backup_id)]
        self.end_page()
        return keep

    def end_page(self) -> None:
        """A page's ids are all added: in spill mode, queue them for the file, forget old pages."""
        if not self.spilled or not self._page:
            return
        page, self._page = self._page, []
        self._unwritten.append(_lines(page))
        self._recent.append(page)
        self._recent_ids += len(page)
        while self._recent_ids > self._recent_limit and len(self._recent) > 1:
            old = self._recent.popleft()
            self._recent_ids -= len(old)
            self._seen.difference_update(old)

    async def flush(self) -> None:
        """Append the queued ids to the spill file (in a thread: it is a file write)."""
        if not self.spilled:
            return
        async with self._flushing:  # also waits for an append another page started
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        if self._unwritten:
            data, self._unwritten = b"".join(self._unwritten), []
            await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        with self._file_lock:
            if not self._closed:
                self._append_locked(data)

    def _append_locked(self, data: bytes) -> None:
        try:
            if self._file is None:
                # Unbuffered: each append is a whole page of ids already, and close() (on the event
                # loop, when a scope is given up) then has nothing left to write.
                self._file = tempfile.TemporaryFile(prefix="cbr-crawler-ids-", buffering=0)  # noqa: SIM115 - closed in close()
            self._file.write(data)
        except OSError as exc:
            # Say which file: the scope's own output is fine, its spilled ids are not.
            raise OSError(
                exc.errno, f"the temporary file of its backup ids in {tempfile.gettempdir()}: {exc.strerror}"
            ) from exc

    async def verify(self) -> bool:
        """True if every id added was distinct (always, unless spilled and a repeat was missed)."""
        if not self.spilled:
            return True
        async with self._flushing:  # no append may run while the file is read back
            await self._flush_locked()
            if self._file is None:
                return True
            if _SORT is not None:
                return await _distinct_by_sort(_SORT, self._file, self.count)
            return await asyncio.to_thread(_distinct, self._file, self.count)

    def close(self) -> None:
        self._seen = set()
        self._recent.clear()
        self._unwritten = []
        with self._file_lock:
            self._closed = True
            file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):  # closing flushes; a full disk must not stop a discard
                file.close()


def _records(file: IO[bytes]) -> Iterator[bytes]:
    """The lines of ``file`` from its start (each ends with b"\n"), read through a buffer."""
    file.flush()
    file.seek(0)
    with open(file.fileno(), "rb", closefd=False) as lines:
        yield from lines


async def _distinct_by_sort(sort: str, file: IO[bytes], count: int) -> bool:
    """Are the ids distinct? ``sort -u`` counts the distinct lines in a child process.

    The check is CPU-heavy (a second per few million ids) and would hold the GIL for that long in
    a thread, delaying the event loop and so the rate-limited requests of every other scope; in
    ``sort`` it runs beside the crawler, in bounded memory (``-S``, temporary runs in ``$TMPDIR``).
    """
    file.seek(0)  # unbuffered (see ScopeIds._append_locked): nothing to flush
    process = await asyncio.create_subprocess_exec(
        sort, "-u", "-S", "32M", "-T", tempfile.gettempdir(),
        stdin=file, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LC_ALL": "C"},
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    try:
        distinct = 0
        while chunk := await process.stdout.read(1 << 16):
            distinct += chunk.count(b"\n")
        error = await process.stderr.read()
        code = await process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if code != 0:
        text = error.decode(errors="replace").strip()[-300:]
        raise OSError(errno.EIO, f"sort of the spilled backup ids exited with {code}: {text}")
    return distinct == count


def _distinct(file: IO[bytes], count: int) -> bool:
    """(Blocking) Are the ids in ``file`` distinct? Hash-partitioned into buckets of bounded size."""
    # At most MAX_BUCKETS files open at once; past that, buckets hold more than BUCKET_IDS ids.
    buckets = min(MAX_BUCKETS, max(1, -(-count // BUCKET_IDS)))
    if buckets == 1:
        seen: set[bytes] = set()
        for key in _records(file):
            if key in seen:
                return False
            seen.add(key)
        return True
    with contextlib.ExitStack() as files:
        parts = [
            files.enter_context(tempfile.TemporaryFile(prefix="cbr-crawler-ids-")) for _ in range(buckets)
        ]
        pending: list[list[bytes]] = [[] for _ in range(buckets)]
        for key in _records(file):
            index = zlib.crc32(key) % buckets
            bucket = pending[index]
            bucket.append(key)
            if len(bucket) >= _BUCKET_BATCH:
                parts[index].write(b"".join(bucket))
                bucket.clear()
        for part, bucket in zip(parts, pending, strict=True):
            part.write(b"".join(bucket))
        for part in parts:
            seen = set()
            for key in _records(part):
                if key in seen:
                    return False
                seen.add(key)
        return True
