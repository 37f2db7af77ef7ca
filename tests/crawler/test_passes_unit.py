"""The plan and the split of a single pass (crawler.pipeline.passes), as pure parts."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from crawler.errors import BadResponseError
from crawler.pipeline.listbackups import parse_owned_page, parse_page
from crawler.pipeline.passes import PassOutput, choose_plan, group_into_passes, in_partition
from crawler.pipeline.scope import Scope, ScopeResult
from crawler.pipeline.sink import FileRecord

P, Q = "p" * 32, "q" * 32  # the project listed, and another (an owner that shared to it)
EP_A, EP_B = "aaaa", "bbbb"


def _scope(own_type: str, ep: str | None, project: str = P) -> Scope:
    return Scope("t", "cn-north-4", project, "cn-north-4", ep, own_type)


def test_plans_and_their_reasons() -> None:
    both = ("private", "shared")
    assert choose_plan("auto", both, "discover", 5, ()).single_pass
    assert choose_plan("auto", both, "none", 1, ()).single_pass
    assert choose_plan("auto", ("private",), "ids", 3, ()).single_pass
    per_pass = choose_plan("per_pass", both, "discover", 5, ())
    assert not per_pass.single_pass and per_pass.reason == "plan: per_pass in the tenant file"
    one = choose_plan("auto", ("private",), "none", 1, ())
    assert not one.single_pass and "one partition per project" in one.reason
    member = choose_plan("auto", both, "discover", 5, (("member_status", "accepted"),))
    assert not member.single_pass and "member_status" in member.reason


def test_a_record_belongs_to_the_partitions_its_owner_and_ep_say() -> None:
    assert in_partition(_scope("private", EP_A), P, owner=P, ep=EP_A)
    assert not in_partition(_scope("private", EP_A), P, owner=Q, ep=EP_A)  # shared to P, not P's
    assert in_partition(_scope("shared", EP_A), P, owner=Q, ep=EP_A)
    assert not in_partition(_scope("shared", EP_B), P, owner=Q, ep=EP_A)
    assert in_partition(_scope("all_granted", EP_A), P, owner=Q, ep=EP_A)
    assert in_partition(_scope("private", None), P, owner=P, ep="0")  # no EP split: any EP
    assert in_partition(_scope("shared", "all_granted_eps"), P, owner=Q, ep=EP_B)


def test_passes_group_a_projects_scopes_in_their_order() -> None:
    scopes = [_scope(o, e, p) for p in (P, Q) for e in (EP_A, EP_B) for o in ("private", "shared")]
    passes = group_into_passes(scopes, "discover")
    assert [s.project_id for s in passes] == [P, Q]
    assert passes[0].query() == [("own_type", "all_granted"), ("enterprise_project_id", "all_granted_eps")]
    assert list(passes[0].partitions) == scopes[:4] and passes[0].members == passes[0].partitions
    assert passes[0].key == f"t/cn-north-4/{P}/single-pass" and passes[0].shard_key == scopes[0].shard_key
    assert group_into_passes(scopes[:2], "none")[0].query() == [("own_type", "all_granted")]


def _record(i: int, owner: str, ep: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {"id": f"id-{i}", "project_id": owner, "name": f"b{i}"}
    if ep is not None:
        record["enterprise_project_id"] = ep
    return record


def _page(records: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"backups": records, "count": len(records)})


def test_owned_pages_carry_owner_and_ep_and_absent_ep_means_the_default() -> None:
    page = parse_owned_page(_page([_record(1, P, EP_A), _record(2, Q, None)]), "rid")
    assert (page.owners, page.eps) == ([P, Q], [EP_A, "0"])
    assert parse_page(_page([_record(1, P, EP_A)]), "rid").owners is None  # plain pages skip them
    with pytest.raises(BadResponseError, match="no 'project_id'"):
        parse_owned_page(orjson.dumps({"backups": [{"id": "x"}], "count": 1}), "rid")


class _Output:
    """A ScopeOutput that keeps what it is given."""

    rewritable = True

    def __init__(self) -> None:
        self.data = b""
        self.records = 0

    async def write(self, data: bytes, records: int) -> None:
        self.data += data
        self.records += records

    def commit(self, complete: bool) -> asyncio.Future[list[FileRecord]]:
        raise NotImplementedError

    async def discard(self) -> None:
        self.data, self.records = b"", 0


async def test_a_single_pass_splits_each_record_into_its_one_partition() -> None:
    partitions = [_scope(o, e) for e in (EP_A, "0") for o in ("private", "shared")]
    single = group_into_passes(partitions, "discover")[0]
    done = partitions[3]  # shared, EP "0": written by an earlier attempt
    outputs = {p.key: _Output() for p in partitions if p is not done}
    split = PassOutput(single, outputs)  # type: ignore[arg-type]
    records = [
        _record(1, P, EP_A),  # private, EP_A
        _record(2, Q, EP_A),  # shared, EP_A
        _record(3, P, None),  # private, EP "0" (absent)
        _record(4, Q, "0"),  # shared, EP "0": done already
        _record(5, P, EP_B),  # EP_B: not asked
        _record(6, Q, EP_A),  # shared, EP_A
    ]
    page = parse_owned_page(_page(records), "rid")

    def provenance(scope: Scope) -> dict[str, Any]:
        return {"own_type": scope.own_type, "enterprise_project_id": scope.enterprise_project_id}

    chunks = split.encode(page, list(range(len(records))), provenance)
    await split.write(chunks)

    got = {key: [orjson.loads(line) for line in out.data.splitlines()] for key, out in outputs.items()}
    assert [r["id"] for r in got[partitions[0].key]] == ["id-1"]
    assert [r["id"] for r in got[partitions[1].key]] == ["id-2", "id-6"]
    assert [r["id"] for r in got[partitions[2].key]] == ["id-3"]
    assert got[partitions[1].key][0]["_crawl"] == {"own_type": "shared", "enterprise_project_id": EP_A}
    assert split.outside == 1  # id-5 only: id-4 belongs to a partition already written
    result = ScopeResult(single, status="complete", count=6, last_count=6, unique_ids=6, pages=1)
    entries = {r.scope.key: r for r in split.partition_results(result)}
    assert set(entries) == set(outputs)
    first = entries[partitions[1].key]
    assert (first.status, first.count, first.records_written, first.unique_ids) == ("complete", None, 2, 2)
    assert first.single_pass is not None and first.single_pass["records_outside_partitions"] == 1
    assert first.single_pass["count"] == 6 and first.single_pass["pass"] == single.key

    failed = ScopeResult(single, status="partial", error="boom")
    statuses = {r.scope.key: r.status for r in split.partition_results(failed)}
    assert statuses[partitions[0].key] == "partial" and statuses[partitions[1].key] == "partial"
    await split.discard()
    assert all(out.records == 0 for out in outputs.values()) and split.outside == 0
    empty = {r.scope.key: r.status for r in split.partition_results(failed)}
    assert set(empty.values()) == {"failed"}  # nothing written to any: failed, not partial
