"""Exact de-duplication of a scope's ids, with memory bounded once a scope spills.

(crawler.pipeline.dedupe)
"""

from __future__ import annotations

import uuid

import pytest

from crawler.errors import CrawlerError
from crawler.pipeline import dedupe
from crawler.pipeline.dedupe import RECENT_PAGES, ScopeIds, compact_id, spill_threshold

PAGE = 10


def _keys(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1, version=4)) for i in range(n)]


def _add_pages(ids: ScopeIds, keys: list[str]) -> list[bool]:
    added = []
    for at in range(0, len(keys), PAGE):
        added += [ids.add(k) for k in keys[at : at + PAGE]]
        ids.end_page()
    return added


async def test_below_the_threshold_every_id_stays_in_memory_and_repeats_are_caught() -> None:
    keys = _keys(100)
    ids = ScopeIds(expected=100, page_size=PAGE, spill_at=100)
    assert not ids.spilled
    assert all(_add_pages(ids, keys))
    assert not any(_add_pages(ids, keys[:5]))
    assert ids.count == 100 and await ids.verify()
    ids.close()


async def test_a_spilled_scope_keeps_recent_pages_in_memory_and_proves_the_rest_distinct() -> None:
    keys = _keys(RECENT_PAGES * PAGE * 5)
    ids = ScopeIds(expected=len(keys), page_size=PAGE, spill_at=0)
    assert ids.spilled
    assert all(_add_pages(ids, keys))
    await ids.flush()
    assert len(ids._seen) <= RECENT_PAGES * PAGE, "memory holds the recent pages only"
    assert not ids.add(keys[-1]), "a repeat next to its first page is caught at once"
    assert await ids.verify()
    assert ids.count == len(keys)
    ids.close()


@pytest.mark.parametrize(
    ("sort", "bucket_ids"),
    [(True, 0), (False, 1_000_000), (False, 7)],
    ids=["sort", "python-one-bucket", "python-many-buckets"],
)
async def test_a_repeat_far_beyond_the_recent_pages_is_found_by_verify(
    sort: bool, bucket_ids: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if sort:
        assert dedupe._SORT is not None, "the test machines have sort(1)"
    else:
        monkeypatch.setattr(dedupe, "_SORT", None)
        monkeypatch.setattr(dedupe, "BUCKET_IDS", bucket_ids)
    keys = _keys(RECENT_PAGES * PAGE * 3)
    keys.append("not-a-uuid-id")  # ids that are not UUIDs spill too
    ids = ScopeIds(expected=len(keys), page_size=PAGE, spill_at=0)
    assert all(_add_pages(ids, keys))
    assert await ids.verify()
    assert ids.add(keys[0]), "too far back to be in memory..."
    ids.end_page()
    assert not await ids.verify(), "...but the spilled ids prove it a repeat"
    ids.close()


def test_the_spill_threshold_comes_from_the_environment_or_the_default() -> None:
    assert spill_threshold({}) == dedupe.SPILL_AT
    assert spill_threshold({"CBR_CRAWLER_SPILL_AT": "0"}) == 0
    with pytest.raises(CrawlerError, match="CBR_CRAWLER_SPILL_AT='lots': expected a whole number"):
        spill_threshold({"CBR_CRAWLER_SPILL_AT": "lots"})


async def test_a_failing_sort_is_an_error_not_a_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedupe, "_SORT", "false")  # exits 1 without a word
    ids = ScopeIds(expected=100, page_size=PAGE, spill_at=0)
    _add_pages(ids, _keys(100))
    with pytest.raises(OSError, match="sort of the spilled backup ids exited with 1"):
        await ids.verify()
    ids.close()


async def test_ids_that_differ_only_by_escapes_are_distinct_spilled_lines() -> None:
    """The spill file holds the ids themselves, escaped: line breaks, backslashes and NUL never make
    two distinct ids one line, nor one id two lines."""
    tricky = ["a\nb", "a\\nb", "a\\\nb", "a\rb", "a\\rb", "a\x00b", "a\\0b", "plain"]
    assert len(set(tricky)) == len(tricky)
    for repeat in (False, True):
        ids = ScopeIds(expected=100, page_size=PAGE, spill_at=0)
        assert ids.keep_new(tricky) == list(range(len(tricky)))
        for n in range(RECENT_PAGES + 1):  # push them out of memory: only the file can tell
            ids.keep_new([f"{k}-{n}" for k in _keys(PAGE)])
        if repeat:
            ids.add("a\\nb")
            ids.end_page()
        assert await ids.verify() is not repeat
        ids.close()


def test_keep_new_takes_a_page_at_once_and_catches_repeats_within_it() -> None:
    ids = ScopeIds(expected=10, page_size=PAGE)
    assert ids.keep_new(["a", "b", "a", "c"]) == [0, 1, 3]
    assert ids.keep_new(["c", "d"]) == [1]
    assert ids.count == 4
    assert compact_id("0e4fd2f8-6e4c-4a55-9b34-4b3bb3b5c1a2") == bytes.fromhex(
        "0e4fd2f86e4c4a559b344b3bb3b5c1a2"
    )
