"""crawler.engine's scheduler without a network."""

from __future__ import annotations

from crawler.engine import PREFETCH_SCOPES_PER_WORKER, _TenantScheduler
from crawler.scope import Scope


class _OnePage:
    """Stands for a ScopeCrawl of one page."""

    held_pages = 0

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.taken = False

    def take_offset(self) -> int | None:
        if self.taken:
            return None
        self.taken = True
        return 0


def test_each_scope_opened_prefetches_for_the_one_a_few_workers_ahead() -> None:
    scopes = [Scope("t", "r", f"p{i // 5}", f"project {i // 5}", None, "private") for i in range(40)]
    prefetched: list[Scope] = []
    scheduler = _TenantScheduler(
        scopes,
        _OnePage,  # type: ignore[arg-type]
        max_open=2,
        page_budget=100,
        prefetch=prefetched.append,
    )
    opened = []
    while (job := scheduler._take()) is not None:
        crawl, offset = job
        assert offset == 0
        opened.append(crawl.scope)
        scheduler.open.remove(crawl)  # done at once
    ahead = PREFETCH_SCOPES_PER_WORKER * 2
    assert opened == scopes
    # Every project's first scope is prefetched `ahead` scopes before it opens (near the end: the last).
    assert prefetched == [scopes[min(i + ahead, len(scopes) - 1)] for i in range(len(scopes))]
