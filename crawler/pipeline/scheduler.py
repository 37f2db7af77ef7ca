"""Which page a tenant's idle worker fetches next: pages of open scopes first, then a new scope.

Workers prefer pages of scopes already open (oldest first) over opening new scopes, which keeps
the number of open files and buffered pages bounded: at most ``max_open`` scopes are open at
once, and at most ``page_budget`` pages are in flight or held back for a slower one over all of
them. Opening a scope also has the credential of a scope further down the list fetched ahead
(``prefetch``), so that workers reaching a new project do not all wait for its token.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

from crawler.pipeline.paging import ScopeWalk
from crawler.pipeline.scope import Scope

# How far ahead of the scopes being opened their credentials are fetched, per open scope: a new
# project's token is then ready when its first scope starts.
PREFETCH_SCOPES_PER_WORKER = 4


class TenantScheduler:
    """Hands out (walk, offset) jobs to one tenant's workers."""

    def __init__(
        self,
        scopes: Iterable[Scope],
        open_scope: Callable[[Scope], ScopeWalk],
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
        self.open: list[ScopeWalk] = []
        self._waiters: list[asyncio.Future[None]] = []

    def _take(self) -> tuple[ScopeWalk, int] | None:
        # No await in here: on one event loop, taking a job is atomic without a lock. A page held
        # back always waits for a lower one already in flight, so the budget cannot deadlock.
        if sum(walk.held_pages for walk in self.open) >= self._page_budget:
            return None
        for walk in self.open:
            offset = walk.take_offset()
            if offset is not None:
                return walk, offset
        if len(self.open) < self._max_open and self._pending:
            if self._prefetch is not None:
                self._prefetch(self._pending[min(self._prefetch_ahead, len(self._pending) - 1)])
            walk = self._open_scope(self._pending.popleft())
            self.open.append(walk)
            offset = walk.take_offset()
            assert offset == 0
            return walk, offset
        return None

    async def next_job(self) -> tuple[ScopeWalk, int] | None:
        """The next (walk, offset) to fetch; waits while there is none; None when all is done."""
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

    def close(self, walk: ScopeWalk) -> bool:
        """Take a walk whose offset pass is over out of the open set; True for the one caller that
        must finish it (its slot is free for a new scope meanwhile)."""
        if walk.closed or not walk.finished:
            return False
        walk.closed = True
        self.open.remove(walk)
        return True

    def drain(self) -> list[Scope]:
        """Scopes never started (used when a tenant's credential is refused)."""
        scopes = list(self._pending)
        self._pending.clear()
        return scopes
