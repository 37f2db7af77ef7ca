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
