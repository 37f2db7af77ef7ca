"""Walking one scope (crawler.pipeline.paging) without a network: a scripted fetch serves the pages.

The page decoder and the line encoder (byte-exact records, provenance spliced, bad pages refused),
and the walk's end: drift found, the marker pass run by the walk itself, the status it decides.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from crawler.errors import ApiError, BadResponseError
from crawler.pipeline.dedupe import RECENT_PAGES, compact_id
from crawler.pipeline.listbackups import Page, parse_page
from crawler.pipeline.paging import RECONCILE_SORT, ScopeWalk
from crawler.pipeline.passes import PassOutput
from crawler.pipeline.records import PROVENANCE_KEY
from crawler.pipeline.scope import Scope

SCOPE = Scope("acme", "cn-north-4", "p" * 32, "cn-north-4", "0", "private")


class _Memory:
    rewritable = False

    def __init__(self) -> None:
        self.data = b""

    async def write(self, data: bytes, records: int) -> None:
        self.data += data

    def commit(self, complete: bool) -> Any:
        raise AssertionError("the walk never commits: the engine does")

    async def discard(self) -> None:
        return None

    def ids(self) -> list[str]:
        return [orjson.loads(line)["id"] for line in self.data.splitlines()]


def _own(output: Any) -> PassOutput:
    """The walk's output for a scope fetched by its own query: its one ScopeOutput."""
    return PassOutput(SCOPE, {SCOPE.key: output})


class _Rewritable(_Memory):
    rewritable = True

    async def discard(self) -> None:
        self.data = b""


def _page(ids: list[str], count: int) -> Page:
    return parse_page(orjson.dumps({"count": count, "backups": [{"id": i} for i in ids]}), None)


class _Pages:
    """A fetch: offset pages as scripted (offset -> ids), marker pages over ``marker_ids`` in order.

    Records every query; ``marker_error`` makes every marker-pass request fail with it.
    """

    def __init__(
        self,
        offsets: dict[int, list[str]],
        count: int,
        marker_ids: list[str] | None = None,
        marker_error: Exception | None = None,
    ) -> None:
        self.offsets = offsets
        self.count = count
        self.marker_ids = marker_ids or []
        self.marker_error = marker_error
        self.queries: list[dict[str, str]] = []

    async def __call__(self, query: list[tuple[str, str]]) -> Page:
        q = dict(query)
        self.queries.append(q)
        limit = int(q["limit"])
        if "offset" in q:
            return _page(self.offsets[int(q["offset"])], self.count)
        assert q["sort"] == RECONCILE_SORT
        if self.marker_error is not None:
            raise self.marker_error
        start = self.marker_ids.index(q["marker"]) + 1 if "marker" in q else 0
        return _page(self.marker_ids[start : start + limit], len(self.marker_ids))


async def _walk_offsets(walk: ScopeWalk) -> None:
    """Fetch every offset the walk gives out, in order, as one worker would."""
    while (offset := walk.take_offset()) is not None:
        await walk.fetch(offset)
    assert walk.finished


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

    async def fetch(query: list[tuple[str, str]]) -> Page:
        return page

    out = _Memory()
    walk = ScopeWalk(SCOPE, _own(out), fetch, run_id="r1", page_size=1000, window=2)
    await _walk_offsets(walk)
    first, second = out.data.splitlines()
    assert first.startswith(raw[:-1] + b',"_crawl":{'), "the API's bytes are kept as sent"
    record: dict[str, Any] = orjson.loads(first)
    assert record[PROVENANCE_KEY]["run_id"] == "r1"
    assert record[PROVENANCE_KEY]["enterprise_project_id"] == "0"
    assert orjson.loads(second)["id"] == "b2"
    result = await walk.finish()
    assert result.duplicates == 1 and result.records_written == 2, "the repeated id is dropped"
    assert result.status == "complete"


async def test_a_record_already_carrying_the_provenance_key_stays_valid_json() -> None:
    async def fetch(query: list[tuple[str, str]]) -> Page:
        return parse_page(b'{"count": 1, "backups": [{"id": "x", "_crawl": "theirs"}]}', None)

    out = _Memory()
    walk = ScopeWalk(SCOPE, _own(out), fetch, run_id="r2", page_size=1000, window=2)
    await _walk_offsets(walk)
    line = out.data.strip()
    assert line.count(b'"_crawl"') == 1
    assert orjson.loads(line)[PROVENANCE_KEY]["run_id"] == "r2"


def test_compact_id_is_exact() -> None:
    uuid = "0daac4c5-6707-4851-97ba-169e36266b66"
    assert compact_id(uuid) == bytes.fromhex(uuid.replace("-", ""))
    assert compact_id(uuid.upper()) == uuid.upper(), "not lower-case: kept as the string"
    assert compact_id("not-a-uuid") == "not-a-uuid"
    assert compact_id("zzzzzzzz-6707-4851-97ba-169e36266b66") == "zzzzzzzz-6707-4851-97ba-169e36266b66"


def _far_repeat_pages() -> tuple[dict[int, list[str]], list[str]]:
    """A spilled scope of 2-record pages whose last page repeats its very first id and so misses one:
    a shift far beyond the pages kept in memory, where the counts still agree."""
    pages = RECENT_PAGES + 3
    ids = [f"id-{n:04d}" for n in range(2 * pages)]
    offsets = {at: ids[at : at + 2] for at in range(0, 2 * pages, 2)}
    offsets[2 * pages - 2] = [ids[0], ids[-1]]
    return offsets, ids


async def test_a_far_repeat_in_a_spilled_scope_is_rewritten_whole_by_the_marker_pass() -> None:
    offsets, ids = _far_repeat_pages()
    fetch = _Pages(offsets, len(ids), marker_ids=ids)
    out = _Rewritable()
    walk = ScopeWalk(SCOPE, _own(out), fetch, run_id="r3", page_size=2, window=len(offsets), spill_at=0)
    await _walk_offsets(walk)
    assert walk.result.duplicates == 0 and len(out.ids()) == len(ids), "nothing in memory saw the repeat"

    result = await walk.finish()

    assert result.status == "complete"
    assert out.ids() == ids, "every backup once, in the marker pass's order"
    assert result.records_written == len(ids)
    assert result.reconciliation is not None
    assert result.reconciliation["complete"] is True
    assert result.reconciliation["method"].endswith("scope rewritten")
    markers = [q.get("marker") for q in fetch.queries if "offset" not in q]
    assert markers == [None, *ids[1::2]], "the pass moves by the last id of each page"
    assert any("repeated beyond the recent pages" in note for note in result.notes)


async def test_a_far_repeat_whose_marker_pass_fails_is_never_complete() -> None:
    offsets, ids = _far_repeat_pages()
    refused = ApiError(403, "BackupService.8600", "forbidden", request_id="rid-9")
    fetch = _Pages(offsets, len(ids), marker_error=refused)
    out = _Rewritable()
    walk = ScopeWalk(SCOPE, _own(out), fetch, run_id="r4", page_size=2, window=len(offsets), spill_at=0)
    await _walk_offsets(walk)

    result = await walk.finish()

    assert result.status == "failed", "the rewrite had begun: nothing of the offset pass is kept"
    assert result.request_id == "rid-9" and result.error_code == "BackupService.8600"
    assert result.reconciliation == {
        "method": "marker pass, sort created_at:asc,id:asc, scope rewritten",
        "pages": 0,
        "added": 0,
        "complete": False,
    }


async def test_drift_in_memory_is_appended_to_by_the_marker_pass_and_a_vanished_marker_steps_back() -> None:
    # Offset pass: a backup is deleted between pages 0 and 1, so "c" shifts onto page 0's last
    # place and page 1 starts at "d": "c" is skipped and the page comes back short.
    fetch = _Pages({0: ["a", "b"], 2: ["d"]}, count=4, marker_ids=["a", "b", "c", "d"])
    out = _Memory()
    walk = ScopeWalk(SCOPE, _own(out), fetch, run_id="r5", page_size=2, window=4)
    await _walk_offsets(walk)
    assert out.ids() == ["a", "b", "d"]

    async def vanishing(query: list[tuple[str, str]]) -> Page:
        if dict(query).get("marker") == "b" and not vanished:
            vanished.append(True)
            raise ApiError(400, "BackupService.9900", "marker not found")
        return await fetch(query)

    vanished: list[bool] = []
    walk._fetch = vanishing
    result = await walk.finish()

    assert result.status == "complete"
    assert out.ids() == ["a", "b", "d", "c"], "only the missing backup is appended"
    assert result.reconciliation is not None and result.reconciliation["complete"] is True
    assert result.reconciliation["added"] == 1
    assert vanished, "the vanished marker was met and stepped back from"


async def test_a_failed_request_ends_the_walk_with_its_error_and_request_id() -> None:
    async def fetch(query: list[tuple[str, str]]) -> Page:
        raise ApiError(404, "BackupService.6302", "no such project", request_id="rid-4")

    walk = ScopeWalk(SCOPE, _own(_Memory()), fetch, run_id="r6", page_size=10, window=2)
    await _walk_offsets(walk)
    result = await walk.finish()
    assert result.status == "failed" and result.request_id == "rid-4"
    assert "no such project" in (result.error or "")
