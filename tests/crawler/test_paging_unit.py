"""The page decoder and the line encoder: byte-exact records, provenance spliced, bad pages refused."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from crawler.errors import BadResponseError
from crawler.paging import PROVENANCE_KEY, ScopeCrawl, compact_id, parse_page
from crawler.scope import Scope
from crawler.sink import FileRecord

SCOPE = Scope("acme", "cn-north-4", "p" * 32, "cn-north-4", "0", "private")


class _Memory:
    rewritable = False

    def __init__(self) -> None:
        self.data = b""

    async def write(self, data: bytes, records: int) -> None:
        self.data += data

    async def commit(self, complete: bool) -> list[FileRecord]:
        return []

    async def discard(self) -> None:
        return None


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"backups": [{"id": "a"}]',  # truncated
        b'{"count": 1}',
        b'{"backups": {}, "count": 1}',
        b'{"backups": [], "count": "1"}',
        b'{"backups": [], "count": -1}',
        b'{"backups": [1], "count": 1}',
        b'{"backups": [{"name": "no id"}], "count": 1}',
        b'{"backups": [{"id": ""}], "count": 1}',
        b'{"backups": [{"id": 7}], "count": 1}',
    ],
)
def test_a_body_that_is_not_a_page_is_refused_with_the_request_id(body: bytes) -> None:
    with pytest.raises(BadResponseError, match="rid-1"):
        parse_page(body, "rid-1")


async def test_records_are_written_byte_for_byte_with_provenance_spliced_in() -> None:
    raw = b'{"id":"b1","size":1.50,"name":"caf\\u00e9","extra":{"k":null}}'
    body = b'{"count": 2, "backups": [' + raw + b', {"id": "b2"}, {"id": "b1"}]}'
    page = parse_page(body, None)
    assert page.records[0] == raw
    out = _Memory()
    crawl = ScopeCrawl(SCOPE, out, run_id="r1", page_size=1000, window=2)
    assert crawl.take_offset() == 0
    written = await crawl.accept(0, page)
    assert written == 2, "the repeated id is dropped"
    first, second = out.data.splitlines()
    assert first.startswith(raw[:-1] + b',"_crawl":{'), "the API's bytes are kept as sent"
    record: dict[str, Any] = orjson.loads(first)
    assert record[PROVENANCE_KEY]["run_id"] == "r1"
    assert record[PROVENANCE_KEY]["enterprise_project_id"] == "0"
    assert orjson.loads(second)["id"] == "b2"
    assert crawl.result.duplicates == 1


async def test_a_record_already_carrying_the_provenance_key_stays_valid_json() -> None:
    page = parse_page(b'{"count": 1, "backups": [{"id": "x", "_crawl": "theirs"}]}', None)
    out = _Memory()
    crawl = ScopeCrawl(SCOPE, out, run_id="r2", page_size=1000, window=2)
    crawl.take_offset()
    await crawl.accept(0, page)
    line = out.data.strip()
    assert line.count(b'"_crawl"') == 1
    assert orjson.loads(line)[PROVENANCE_KEY]["run_id"] == "r2"


def test_compact_id_is_exact() -> None:
    uuid = "0daac4c5-6707-4851-97ba-169e36266b66"
    assert compact_id(uuid) == bytes.fromhex(uuid.replace("-", ""))
    assert compact_id(uuid.upper()) == uuid.upper(), "not lower-case: kept as the string"
    assert compact_id("not-a-uuid") == "not-a-uuid"
    assert compact_id("zzzzzzzz-6707-4851-97ba-169e36266b66") == "zzzzzzzz-6707-4851-97ba-169e36266b66"


class _Rewritable(_Memory):
    rewritable = True

    async def discard(self) -> None:
        self.data = b""


def _page(ids: list[str], count: int) -> Any:
    return parse_page(orjson.dumps({"count": count, "backups": [{"id": i} for i in ids]}), None)


async def _far_repeat(out: _Rewritable) -> tuple[ScopeCrawl, list[str]]:
    """A spilled scope whose last page repeats its very first id and so misses one."""
    from crawler.dedupe import RECENT_PAGES

    pages = RECENT_PAGES + 3
    ids = [f"id-{n:04d}" for n in range(2 * pages)]
    crawl = ScopeCrawl(SCOPE, out, run_id="r3", page_size=2, window=pages, spill_at=0)
    offsets = [crawl.take_offset()]
    await crawl.accept(0, _page(ids[:2], len(ids)))
    offsets += [crawl.take_offset() for _ in range(pages - 1)]
    assert offsets == list(range(0, 2 * pages, 2))
    for offset in offsets[1:-1]:
        await crawl.accept(offset, _page(ids[offset : offset + 2], len(ids)))
    # A shift far beyond the pages kept in memory: the counts still agree, only the spilled ids tell.
    await crawl.accept(offsets[-1], _page([ids[0], ids[-1]], len(ids)))
    assert crawl.finished and crawl.result.duplicates == 0
    return crawl, ids


async def test_a_far_repeat_never_reads_complete_even_when_no_marker_pass_follows() -> None:
    crawl, ids = await _far_repeat(_Rewritable())
    assert not await crawl.verify()
    result = crawl.conclude()
    assert result.unique_ids == len(ids), "lines written: the counts agree..."
    assert result.status == "partial" and "written twice" in (result.error or "")


async def test_a_far_repeat_in_a_spilled_scope_sends_it_to_a_rewriting_marker_pass() -> None:
    out = _Rewritable()
    crawl, ids = await _far_repeat(out)
    assert not await crawl.verify()
    assert crawl.needs_reconciliation()
    assert (await crawl.begin_reconciliation()).endswith("scope rewritten")
    assert out.data == b"" and crawl.result.records_written == 0
    for at in range(0, len(ids), 2):
        await crawl.accept_extra(_page(ids[at : at + 2], len(ids)))
    assert await crawl.verify()
    assert [orjson.loads(line)["id"] for line in out.data.splitlines()] == ids
    crawl.result.reconciliation = {"complete": True}
    assert crawl.conclude().status == "complete"
