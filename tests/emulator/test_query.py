"""ListBackups semantics: parameter validation, every filter, sorting, paging, and the behaviour switches."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import orjson
import pytest
from multidict import MultiDict

from crawler.emulator.estate import DomainSpec, Estate, EstateSpec
from crawler.emulator.query import (
    QUERY_PARAMETERS,
    Behaviour,
    ListBackupsQuery,
    QueryError,
    order_key,
    parse_list_backups_query,
    parse_sort,
)

Record = dict[str, Any]


@pytest.fixture(scope="module")
def estate() -> Estate:
    spec = EstateSpec(
        seed=7,
        domains=(
            DomainSpec("acme", subprojects=2, backups=2400, shared_fraction=0.3, enterprise_projects=3),
        ),
    )
    return Estate.generate(spec)


@pytest.fixture(scope="module")
def big(estate: Estate) -> str:
    """The project with the most backups."""
    return max(estate.projects, key=lambda pid: len(estate.truth_ids(pid)))


def call(estate: Estate, project_id: str, behaviour: Behaviour | None = None, /, **params: Any) -> Record:
    multi: MultiDict[str] = MultiDict()
    for name, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            multi.add(name, item)
    query = parse_list_backups_query(multi)
    body: Record = orjson.loads(estate.list_backups(project_id, query, behaviour=behaviour))
    return body


def all_pages(estate: Estate, project_id: str, page_size: int = 1000, /, **params: Any) -> list[Record]:
    out: list[Record] = []
    while True:
        page = call(estate, project_id, limit=str(page_size), offset=str(len(out)), **params)["backups"]
        if not page:
            return out
        out.extend(page)


def ids(records: Iterable[Record]) -> list[str]:
    return [r["id"] for r in records]


def instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.removesuffix("+00:00"))


# ---- parsing ----------------------------------------------------------------------------------------


def test_the_23_parameters_of_the_reference_page() -> None:
    assert len(QUERY_PARAMETERS) == 23
    assert {
        "checkpoint_id",
        "dec",
        "used_percent",
        "vault_id",
        "show_replication",
        "member_status",
    } <= QUERY_PARAMETERS


def test_defaults_and_unknown_parameters_ignored() -> None:
    query = parse_list_backups_query(MultiDict({"foo": "bar", "page": "3"}))
    assert query == ListBackupsQuery()
    assert query.own_type == "private"
    assert query.offset == 0
    assert query.show_replication is True
    assert query.effective_limit(Behaviour()) == 1000


def test_every_parameter_parsed() -> None:
    params = MultiDict(
        [
            ("checkpoint_id", "c"),
            ("dec", "false"),
            ("end_time", "2024-01-31T23:59:59Z"),
            ("enterprise_project_id", "all_granted_eps"),
            ("image_type", "replication"),
            ("incremental", "true"),
            ("limit", "10"),
            ("marker", "m"),
            ("member_status", "accept"),
            ("name", "db backup"),
            ("offset", "5"),
            ("own_type", "all_granted"),
            ("parent_id", "p"),
            ("resource_az", "cn-north-4a"),
            ("resource_id", "r"),
            ("resource_name", "ecs-1"),
            ("resource_type", "OS::Nova::Server"),
            ("show_replication", "false"),
            ("sort", "name:asc,created_at"),
            ("start_time", "2024-01-01T00:00:00Z"),
            ("status", "available"),
            ("status", "error"),
            ("used_percent", "80"),
            ("vault_id", "v"),
        ]
    )
    q = parse_list_backups_query(params)
    assert q.checkpoint_id == "c" and q.dec is False and q.incremental is True
    assert q.end_time == 1_706_745_599_000_000 and q.start_time == 1_704_067_200_000_000
    assert q.enterprise_project_id == "all_granted_eps" and q.image_type == "replication"
    assert q.limit == 10 and q.offset == 5 and q.marker == "m"
    assert q.member_status == "accepted"  # the old spelling is normalised
    assert q.name == "db backup" and q.own_type == "all_granted" and q.parent_id == "p"
    assert (q.resource_az, q.resource_id, q.resource_name) == ("cn-north-4a", "r", "ecs-1")
    assert q.resource_type == "OS::Nova::Server" and q.show_replication is False
    assert q.sort == (("name", False), ("created_at", True))
    assert q.status == frozenset({"available", "error"}) and q.used_percent == 80 and q.vault_id == "v"
    assert parse_list_backups_query(MultiDict(member_status="reject")).member_status == "rejected"


def test_empty_value_means_absent() -> None:
    assert parse_list_backups_query(MultiDict(name="", limit="", status="")) == ListBackupsQuery()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("dec", "yes"),
        ("incremental", "True"),
        ("show_replication", "1"),
        ("limit", "0"),
        ("limit", "-5"),
        ("limit", "ten"),
        ("limit", "1.5"),
        ("offset", "-1"),
        ("offset", "x"),
        ("own_type", "public"),
        ("member_status", "done"),
        ("status", "gone"),
        ("image_type", "snapshot"),
        ("resource_type", "OS::Nova::Flavor"),
        ("start_time", "2024-01-01"),
        ("end_time", "2024-01-01T00:00:00"),
        ("end_time", "2024-13-01T00:00:00Z"),
        ("sort", "size:asc"),
        ("sort", "name:up"),
        ("sort", "name,name:asc"),
        ("sort", "name,"),
        ("sort", ",".join(["created_at:desc"] * 20)),
        ("used_percent", "0"),
        ("used_percent", "101"),
        ("used_percent", "50.5"),
        ("used_percent", "080"),
        ("name", "n" * 256),
        ("resource_name", "r" * 256),
    ],
)
def test_invalid_values_rejected(name: str, value: str) -> None:
    with pytest.raises(QueryError, match=f"^Invalid parameter {name}"):
        parse_list_backups_query(MultiDict({name: value}))


def test_one_bad_status_among_good_ones_is_rejected() -> None:
    with pytest.raises(QueryError, match="status"):
        parse_list_backups_query(MultiDict([("status", "available"), ("status", "broken")]))


def test_limit_over_max_clamp_or_reject(estate: Estate, big: str) -> None:
    query = parse_list_backups_query(MultiDict(limit="5000"))
    assert query.effective_limit(Behaviour()) == 1000
    assert len(orjson.loads(estate.list_backups(big, query))["backups"]) == 1000
    reject = Behaviour(limit_over_max="reject")
    with pytest.raises(QueryError, match="limit"):
        estate.list_backups(big, query, behaviour=reject)
    with pytest.raises(QueryError, match="limit"):
        parse_list_backups_query(MultiDict(limit="1001"), behaviour=reject)
    assert parse_list_backups_query(MultiDict(limit="1000"), behaviour=reject).limit == 1000


def test_sort_parsing() -> None:
    assert parse_sort("created_at") == (("created_at", True),)
    assert parse_sort("name:asc,id:desc,status") == (("name", False), ("id", True), ("status", True))
    assert len(parse_sort(",".join(f"{k}:asc" for k in ("created_at", "updated_at", "name", "status")))) == 4


def test_order_key_descending_text_and_nulls() -> None:
    names = ["ab", "abc", "b", "", "a", "数据", "été"]
    stamps: list[int | None] = [None, 5, 3, None, 9, 1, 2]
    get: dict[str, Callable[[int], Any]] = {"name": names.__getitem__, "protected_at": stamps.__getitem__}
    handles = range(len(names))
    desc = sorted(handles, key=order_key((("name", True),), get))
    assert [names[h] for h in desc] == sorted(names, reverse=True)
    asc = sorted(handles, key=order_key((("protected_at", False), ("name", False)), get))
    assert [stamps[h] for h in asc] == [None, None, 1, 2, 3, 5, 9]
    assert [names[h] for h in asc[:2]] == ["", "ab"]
    desc_nulls_last = sorted(handles, key=order_key((("protected_at", True),), get))
    assert [stamps[h] for h in desc_nulls_last][-2:] == [None, None]


def test_behaviour_validates_its_default_sort() -> None:
    with pytest.raises(ValueError, match="default_sort"):
        Behaviour(default_sort="size")
    with pytest.raises(ValueError, match="limit_over_max"):
        Behaviour(limit_over_max="drop")  # type: ignore[arg-type]


# ---- filters ----------------------------------------------------------------------------------------


def check_filter(
    estate: Estate, project_id: str, keep: Callable[[Record], bool], /, **params: Any
) -> list[Record]:
    """The filtered listing equals the truth filtered in Python, in the same (default) order."""
    own_type = params.get("own_type", "private")
    expected = [r for r in estate.truth(project_id, own_type) if keep(r)]
    got = all_pages(estate, project_id, **params)
    assert ids(got) == ids(expected)
    assert call(estate, project_id, limit="1", **params)["count"] == len(expected)
    return got


def same_as(sample: Record, field: str) -> Callable[[Record], bool]:
    return lambda r: bool(r[field] == sample[field])


def test_each_filter(estate: Estate, big: str) -> None:
    truth = estate.truth(big)
    sample = truth[len(truth) // 3]
    assert check_filter(estate, big, lambda r: r["name"] == sample["name"], name=sample["name"])
    assert check_filter(estate, big, lambda r: r["id"] == sample["id"], checkpoint_id=sample["checkpoint_id"])
    for field in ("resource_id", "resource_name", "resource_az", "resource_type", "vault_id", "image_type"):
        got = check_filter(estate, big, same_as(sample, field), **{field: sample[field]})
        assert got and all(r[field] == sample[field] for r in got)
    check_filter(estate, big, lambda r: r["image_type"] == "replication", image_type="replication")
    check_filter(estate, big, lambda r: r["incremental"] is False, incremental="false")
    check_filter(
        estate, big, lambda r: r["status"] in ("error", "protecting"), status=["error", "protecting"]
    )
    ep = sample["enterprise_project_id"]
    check_filter(estate, big, lambda r: r["enterprise_project_id"] == ep, enterprise_project_id=ep)
    check_filter(estate, big, lambda r: False, name="no-such-backup")


def test_time_window_is_inclusive_on_created_at(estate: Estate, big: str) -> None:
    truth = estate.truth(big)
    low, high = instant(truth[-len(truth) // 4]["created_at"]), instant(truth[len(truth) // 4]["created_at"])
    assert low is not None and high is not None
    start, end = low.strftime("%Y-%m-%dT%H:%M:%SZ"), high.strftime("%Y-%m-%dT%H:%M:%SZ")
    start_at, end_at = datetime.fromisoformat(start[:-1]), datetime.fromisoformat(end[:-1])

    def inside(r: Record) -> bool:
        created = instant(r["created_at"])
        assert created is not None
        return start_at <= created <= end_at

    got = check_filter(estate, big, inside, start_time=start, end_time=end)
    assert 0 < len(got) < len(truth)
    check_filter(estate, big, lambda r: start_at <= instant(r["created_at"]), start_time=start)  # type: ignore[operator]


def test_used_percent_compares_vault_usage(estate: Estate, big: str) -> None:
    def full(r: Record) -> bool:
        return estate.vaults[r["vault_id"]].used_percent >= 50

    got = check_filter(estate, big, full, used_percent="50")
    assert len(got) != len(estate.truth(big))
    check_filter(estate, big, lambda r: True, used_percent="1")


def test_all_granted_eps_uses_the_granted_set(estate: Estate, big: str) -> None:
    truth = estate.truth(big)
    eps = sorted({r["enterprise_project_id"] for r in truth})
    assert len(eps) > 1
    everything = call(estate, big, enterprise_project_id="all_granted_eps")["count"]
    assert everything == len(truth)
    query = parse_list_backups_query(MultiDict(enterprise_project_id="all_granted_eps"))
    granted = frozenset(eps[:1])
    body = orjson.loads(estate.list_backups(big, query, granted_eps=granted))
    assert body["count"] == sum(1 for r in truth if r["enterprise_project_id"] in granted)
    assert {r["enterprise_project_id"] for r in body["backups"]} == set(granted)
    # Without all_granted_eps the granted set does not filter.
    plain = parse_list_backups_query(MultiDict())
    assert orjson.loads(estate.list_backups(big, plain, granted_eps=granted))["count"] == len(truth)


def test_member_status_partitions_the_shares(estate: Estate) -> None:
    member = estate.getters(False)["member_status"]
    for project_id in estate.projects:
        shared = estate.truth_ids(project_id, "shared")
        if not shared:
            continue
        parts = {}
        for status in ("pending", "accepted", "rejected"):
            got = all_pages(estate, project_id, own_type="shared", member_status=status)
            parts[status] = set(ids(got))
            assert all(
                member(h) == status
                for h in (estate.resolve_marker(project_id, i, False) for i in parts[status])
                if h is not None
            )
        assert set().union(*parts.values()) == shared
        # In the owner's view the filter keeps the owner's backups shared with that status.
        owned_pending = all_pages(estate, project_id, member_status="pending")
        assert not set(ids(owned_pending)) & shared


def test_dec_is_accepted_and_ignored(estate: Estate, big: str) -> None:
    assert call(estate, big, dec="true", limit="50") == call(estate, big, limit="50")


def test_show_replication(estate: Estate, big: str) -> None:
    with_records = [r for r in estate.truth(big) if "replication_records" in r]
    assert with_records
    target = with_records[0]
    shown = call(estate, big, checkpoint_id=target["checkpoint_id"])["backups"][0]
    hidden = call(estate, big, checkpoint_id=target["checkpoint_id"], show_replication="false")["backups"][0]
    assert shown == target
    assert "replication_records" not in hidden
    assert {k: v for k, v in shown.items() if k != "replication_records"} == hidden


def test_parent_id_lists_the_children(estate: Estate, big: str) -> None:
    parent = next(r for r in estate.truth(big) if r["children"])
    body = call(estate, big, parent_id=parent["id"])
    assert body["count"] == len(parent["children"])
    assert sorted(ids(body["backups"])) == sorted(ids(parent["children"]))
    assert all(c["parent_id"] == parent["id"] for c in body["backups"])
    # Children are not list entries of their own.
    child_ids = set(ids(parent["children"]))
    assert not child_ids & estate.truth_ids(big)
    # A marker inside the children, and filters applied to them.
    first = body["backups"][0]
    after = call(estate, big, parent_id=parent["id"], marker=first["id"])
    assert ids(after["backups"]) == ids(body["backups"][1:])
    assert call(estate, big, parent_id=parent["id"], resource_type="OS::Nova::Server")["count"] == 0
    childless = next(r for r in estate.truth(big) if not r["children"])
    assert call(estate, big, parent_id=childless["id"])["count"] == 0


# ---- sorting and paging -------------------------------------------------------------------------


def expected_order(records: list[Record], spec: list[tuple[str, bool]]) -> list[str]:
    """Reference implementation: stable sorts from the last key to the first, id tie-break first."""
    out = sorted(records, key=lambda r: r["id"], reverse=spec[-1][1])
    for key, descending in reversed(spec):
        if key.endswith("_at"):
            present = [r for r in out if r[key] is not None]
            missing = [r for r in out if r[key] is None]
            present.sort(key=lambda r: instant(r[key]) or datetime.min, reverse=descending)
            out = present + missing if descending else missing + present
        else:
            out.sort(key=lambda r: r[key], reverse=descending)
    return ids(out)


@pytest.mark.parametrize(
    "sort",
    [
        "created_at:asc",
        "created_at",
        "name:asc,created_at:desc",
        "status,updated_at:asc",
        "protected_at:asc",
        "protected_at:desc,name",
        "id:asc",
        "name:desc,id:asc",
    ],
)
def test_sort_orders(estate: Estate, big: str, sort: str) -> None:
    spec = [(k, d) for k, d in parse_sort(sort)]
    assert ids(all_pages(estate, big, sort=sort)) == expected_order(estate.truth(big), spec)


def test_default_sort_behaviour_switch(estate: Estate, big: str) -> None:
    default = call(estate, big)["backups"]
    created = [instant(r["created_at"]) for r in default]
    assert created == sorted(created, reverse=True)  # type: ignore[type-var]
    by_name = call(estate, big, Behaviour(default_sort="name:asc"))["backups"]
    assert ids(by_name) == expected_order(estate.truth(big), [("name", False)])[: len(by_name)]
    # An explicit sort wins over the default.
    explicit = call(estate, big, Behaviour(default_sort="name:asc"), sort="created_at:desc")
    assert ids(explicit["backups"]) == ids(default)


def test_paging_with_limit_and_offset(estate: Estate, big: str) -> None:
    full = ids(all_pages(estate, big))
    assert full == ids(estate.truth(big))
    assert ids(all_pages(estate, big, 7)) == full
    page = call(estate, big, limit="10", offset="25")
    assert page["count"] == len(full)
    assert ids(page["backups"]) == full[25:35]
    assert "offset" not in page and "limit" not in page
    past = call(estate, big, offset=str(len(full) + 5))
    assert past == {"backups": [], "count": len(full)}
    tail = call(estate, big, offset=str(len(full) - 3))
    assert ids(tail["backups"]) == full[-3:]


def test_echo_offset_limit(estate: Estate, big: str) -> None:
    body = call(estate, big, Behaviour(echo_offset_limit=True), limit="5000", offset="3")
    assert body["offset"] == 3 and body["limit"] == 1000
    assert len(body["backups"]) == 1000


@pytest.mark.parametrize("sort", [None, "created_at:asc", "name:asc,status"])
def test_marker_paging(estate: Estate, big: str, sort: str | None) -> None:
    extra = {"sort": sort} if sort else {}
    full = ids(all_pages(estate, big, **extra))
    got: list[str] = []
    marker: dict[str, str] = {}
    for _ in range(len(full) // 333 + 2):  # bounded: a marker that does not advance must fail, not hang
        page = call(estate, big, limit="333", **marker, **extra)
        assert page["count"] == len(full)
        if not page["backups"]:
            break
        got.extend(ids(page["backups"]))
        marker = {"marker": page["backups"][-1]["id"]}
    else:
        pytest.fail("marker paging did not reach an empty page")
    assert got == full
    # offset counts from just after the marker
    after = call(estate, big, marker=full[10], offset="5", limit="3", **extra)
    assert ids(after["backups"]) == full[16:19]


def test_marker_keeps_its_place_when_it_does_not_match_the_filter(estate: Estate, big: str) -> None:
    truth = estate.truth(big)
    errors = [r for r in truth if r["status"] != "available"]
    outsider = next(r for r in truth[len(truth) // 2 :] if r["status"] == "available")
    after = call(estate, big, status=["error", "protecting", "waiting_protect"], marker=outsider["id"])
    outsider_at = instant(outsider["created_at"])
    assert outsider_at is not None
    expected = [
        r["id"]
        for r in errors
        if r["status"] in ("error", "protecting", "waiting_protect")
        and instant(r["created_at"]) < outsider_at  # type: ignore[operator]
    ]
    assert ids(after["backups"]) == expected


def test_bad_markers_are_400(estate: Estate, big: str) -> None:
    other = next(p for p in estate.projects if p != big and estate.truth_ids(p))
    foreign = next(iter(estate.truth_ids(other)))
    for marker in ("not-a-uuid", "00000000-0000-4000-8000-000000000000", foreign):
        with pytest.raises(QueryError, match="marker"):
            call(estate, big, marker=marker)


def test_unknown_project_has_no_backups(estate: Estate) -> None:
    assert call(estate, "0" * 32) == {"backups": [], "count": 0}


def test_the_fields_a_single_pass_splits_by_are_those_the_per_view_queries_match(estate: Estate) -> None:
    """What the crawler's single pass relies on (README, "Plans"): in an own_type=all_granted,
    enterprise_project_id=all_granted_eps page, a record's project_id is its owner's project (so
    private = listed project, shared = another) and its enterprise_project_id is the EP a per-EP
    query matches it on."""
    eps = [ep.id for ep in next(iter(estate.enterprise_projects.values()))]
    shared_seen = 0
    for project_id in estate.projects:
        every = all_pages(estate, project_id, own_type="all_granted", enterprise_project_id="all_granted_eps")
        split: dict[tuple[str, str], set[str]] = {}
        for record in every:
            view = "private" if record["project_id"] == project_id else "shared"
            split.setdefault((view, record.get("enterprise_project_id", "0")), set()).add(record["id"])
        shared_seen += sum(len(v) for (view, _), v in split.items() if view == "shared")
        for view in ("private", "shared"):
            for ep in eps:
                asked = all_pages(estate, project_id, own_type=view, enterprise_project_id=ep)
                assert set(ids(asked)) == split.get((view, ep), set()), (project_id, view, ep)
    assert shared_seen, "the estate must share backups for this to mean anything"
