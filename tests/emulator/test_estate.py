"""The seeded estate: structure, determinism, record shapes, sharing, churn and the ground truth."""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from multidict import MultiDict

from crawler.emulator.estate import (
    PROVIDER_DISK,
    PROVIDER_SERVER,
    PROVIDER_TURBO,
    PROVIDER_VMWARE,
    DomainSpec,
    Estate,
    EstateSpec,
)
from crawler.emulator.query import BACKUP_STATUSES, parse_list_backups_query

Record = dict[str, Any]
HEX32 = re.compile(r"[0-9a-f]{32}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(\+00:00)?")
BACKUP_RESP_FIELDS = {
    "id", "checkpoint_id", "name", "description", "project_id", "vault_id", "resource_id", "resource_name",
    "resource_az", "resource_type", "resource_size", "image_type", "status", "created_at", "updated_at",
    "expired_at", "protected_at", "parent_id", "provider_id", "extend_info", "enterprise_project_id",
    "children", "incremental", "version",
}  # fmt: skip
EXTEND_INFO_FIELDS = {
    "auto_trigger", "bootable", "snapshot_id", "support_lld", "supported_restore_mode", "os_images_data",
    "contain_system_disk", "encrypted", "system_disk", "is_multi_az", "architecture", "progress",
    "app_consistency",
}  # fmt: skip
REPLICATION_FIELDS = {
    "id", "created_at", "destination_backup_id", "destination_checkpoint_id", "destination_project_id",
    "destination_region", "destination_vault_id", "source_backup_id", "source_checkpoint_id",
    "source_project_id", "source_region", "status", "vault_id", "extra_info",
}  # fmt: skip
PROVIDERS = {
    "OS::Nova::Server": PROVIDER_SERVER,
    "OS::Ironic::BareMetalServer": PROVIDER_SERVER,
    "OS::Workspace::DesktopV2": PROVIDER_SERVER,
    "OS::Cinder::Volume": PROVIDER_DISK,
    "OS::Sfs::Turbo": PROVIDER_TURBO,
    "OS::Native::Server": PROVIDER_VMWARE,
}
SPEC = EstateSpec(
    seed=11,
    regions=("cn-north-4", "ap-southeast-1", "eu-west-101"),
    domains=(
        DomainSpec("acme", subprojects=3, backups=3000, shared_fraction=0.2, empty_projects=2),
        DomainSpec("globex", subprojects=1, enterprise_projects=5, vaults_per_project=2, backups=1200),
    ),
)


@pytest.fixture(scope="module")
def estate() -> Estate:
    return Estate.generate(SPEC)


def all_records(estate: Estate) -> list[Record]:
    return [r for pid in estate.projects for r in estate.truth(pid)]


def default_page(estate: Estate, project_id: str, **params: str) -> Record:
    body: Record = orjson.loads(estate.list_backups(project_id, parse_list_backups_query(MultiDict(params))))
    return body


def test_same_spec_gives_byte_identical_data(estate: Estate) -> None:
    again = Estate.generate(SPEC)
    assert b"".join(again.export_truth()) == b"".join(estate.export_truth())
    assert list(again.projects) == list(estate.projects)
    assert again.enterprise_projects == estate.enterprise_projects
    other = Estate.generate(EstateSpec(seed=12, regions=SPEC.regions, domains=SPEC.domains))
    assert not set(other.projects) & set(estate.projects)


def test_projects_per_domain(estate: Estate) -> None:
    assert [d.name for d in estate.domains.values()] == ["acme", "globex"]
    for domain in estate.domains.values():
        assert HEX32.fullmatch(domain.id)
        assert estate.domain_by_name(domain.name) == domain
        mine = [p for p in estate.projects.values() if p.domain_id == domain.id]
        assert all(HEX32.fullmatch(p.id) and p.enabled for p in mine)
        mos = [p for p in mine if p.name == "MOS"]
        assert len(mos) == 1 and mos[0].parent_id == domain.id and not estate.truth_ids(mos[0].id)
        for region in SPEC.regions:
            default = [p for p in mine if p.name == region]
            assert len(default) == 1 and default[0].parent_id == domain.id and default[0].region == region
            subs = [p for p in mine if p.name.startswith(region + "_")]
            assert all(p.parent_id == default[0].id and p.region == region for p in subs)
        spec = next(d for d in SPEC.domains if d.name == domain.name)
        subs = [p for p in mine if "_" in p.name]
        assert len(subs) == len(SPEC.regions) * spec.subprojects + spec.empty_projects
        assert len({p.name for p in mine}) == len(mine)
        empty = [p for p in subs if not estate.truth_ids(p.id) and not estate.truth_ids(p.id, "shared")]
        assert len(empty) >= spec.empty_projects
        assert estate.domain_by_name("nobody") is None


def test_enterprise_projects(estate: Estate) -> None:
    for domain_id, eps in estate.enterprise_projects.items():
        spec = next(d for d in SPEC.domains if d.name == estate.domains[domain_id].name)
        assert (eps[0].id, eps[0].name, eps[0].status) == ("0", "default", 1)
        assert len(eps) == spec.enterprise_projects + 1
        assert all(UUID.fullmatch(ep.id) for ep in eps[1:])
        assert [ep.status for ep in eps].count(2) == 1
        assert len({ep.name for ep in eps}) == len(eps)
        assert all(ep.domain_id == domain_id for ep in eps)


def test_backup_totals_and_skew(estate: Estate) -> None:
    assert estate.backup_count == sum(d.backups for d in SPEC.domains)
    for domain in estate.domains.values():
        spec = next(d for d in SPEC.domains if d.name == domain.name)
        sizes = [len(estate.truth_ids(p.id)) for p in estate.projects.values() if p.domain_id == domain.id]
        assert sum(sizes) == spec.backups
        holding = [s for s in sizes if s]
        assert max(holding) > 2 * sum(holding) / len(holding)  # a few big projects, many small


def test_record_shape(estate: Estate) -> None:
    records = all_records(estate)
    vaults = estate.vaults
    for r in records:
        assert set(r) >= BACKUP_RESP_FIELDS, r
        assert set(r) - BACKUP_RESP_FIELDS <= {"scheduled_operation_id", "replication_records"}
        assert (
            UUID.fullmatch(r["id"]) and UUID.fullmatch(r["checkpoint_id"]) and UUID.fullmatch(r["vault_id"])
        )
        assert r["project_id"] in estate.projects and r["parent_id"] is None
        assert r["provider_id"] == PROVIDERS[r["resource_type"]]
        assert r["enterprise_project_id"] == vaults[r["vault_id"]].enterprise_project_id
        assert vaults[r["vault_id"]].project_id == r["project_id"]
        assert r["resource_az"].startswith(estate.projects[r["project_id"]].region)
        assert set(r["extend_info"]) >= EXTEND_INFO_FIELDS
        assert ("scheduled_operation_id" in r) == r["extend_info"]["auto_trigger"]
        assert r["image_type"] in ("backup", "replication") and r["status"] in BACKUP_STATUSES
        assert isinstance(r["resource_size"], int) and isinstance(r["incremental"], bool)
        for key in ("created_at", "updated_at", "expired_at", "protected_at"):
            assert r[key] is None or TIMESTAMP.fullmatch(r[key]), r[key]
        assert r["updated_at"] >= r["created_at"]
        if r["status"] in ("protecting", "waiting_protect"):
            assert r["protected_at"] is None
    assert Counter(r["status"] for r in records).most_common(1)[0][0] == "available"
    assert len({r["status"] for r in records}) >= 5
    assert len({r["resource_type"] for r in records}) == 6
    assert any(r["description"] is None for r in records) and any(r["expired_at"] is None for r in records)
    assert any(r["created_at"].endswith("+00:00") for r in records)
    assert any(not r["created_at"].endswith("+00:00") for r in records)
    assert any(not r["name"].isascii() for r in records)
    assert any(v is None for r in records for v in r["extend_info"].values())
    assert any(r["name"].startswith("autobk_") for r in records)


def test_children_are_disk_backups_of_their_server(estate: Estate) -> None:
    parents = [r for r in all_records(estate) if r["children"]]
    assert parents
    for parent in parents:
        assert parent["resource_type"] in ("OS::Nova::Server", "OS::Ironic::BareMetalServer")
        for child in parent["children"]:
            assert set(child) >= BACKUP_RESP_FIELDS
            assert child["parent_id"] == parent["id"] and child["id"] != parent["id"]
            assert child["resource_type"] == "OS::Cinder::Volume" and child["provider_id"] == PROVIDER_DISK
            assert child["checkpoint_id"] == parent["checkpoint_id"] and child["children"] == []
            assert child["project_id"] == parent["project_id"]


def test_replication_records(estate: Estate) -> None:
    records = [r for r in all_records(estate) if "replication_records" in r]
    kinds = {r["image_type"] for r in records}
    assert kinds == {"backup", "replication"}
    for r in records:
        (rec,) = r["replication_records"]
        assert set(rec) == REPLICATION_FIELDS
        assert set(rec["extra_info"]) == {
            "progress",
            "fail_code",
            "fail_reason",
            "auto_trigger",
            "destination_vault_id",
        }
        here = estate.projects[r["project_id"]].region
        if r["image_type"] == "replication":
            assert rec["destination_backup_id"] == r["id"] and rec["destination_region"] == here
            assert rec["source_region"] != here and rec["status"] == "success"
        else:
            assert rec["source_backup_id"] == r["id"] and rec["source_region"] == here
            assert rec["destination_region"] != here
    assert all(r["image_type"] == "backup" for r in all_records(estate) if "replication_records" not in r)


def test_sharing_views(estate: Estate) -> None:
    member = estate.getters(False)["member_status"]
    shared_total = 0
    statuses: Counter[str] = Counter()
    by_id = {r["id"]: r for r in all_records(estate)}
    for receiver in estate.projects.values():
        shared = estate.truth_ids(receiver.id, "shared")
        private = estate.truth_ids(receiver.id)
        assert not shared & private
        assert estate.truth_ids(receiver.id, "all_granted") == shared | private
        for backup_id in shared:
            owner = estate.projects[by_id[backup_id]["project_id"]]  # it is in its owner's private view
            assert by_id[backup_id]["resource_type"] == "OS::Nova::Server"
            assert owner.id != receiver.id and owner.domain_id == receiver.domain_id
            assert owner.region == receiver.region
            handle = estate.resolve_marker(receiver.id, backup_id, False)
            assert handle is not None
            statuses[member(handle)] += 1
        shared_total += len(shared)
        listed = default_page(estate, receiver.id, own_type="all_granted")
        assert listed["count"] == len(shared | private)
        assert {r["id"] for r in listed["backups"]} <= shared | private
    nova = sum(1 for r in by_id.values() if r["resource_type"] == "OS::Nova::Server" and r["project_id"])
    assert 0.05 * nova < shared_total < 0.3 * nova
    assert set(statuses) == {"pending", "accepted", "rejected"}


def test_ids_are_invertible_and_checked(estate: Estate) -> None:
    project_id = next(p for p in estate.projects if estate.truth_ids(p))
    backup_id = next(iter(estate.truth_ids(project_id)))
    assert estate.resolve_marker(project_id, backup_id, False) is not None
    assert estate.resolve_marker(project_id, backup_id, True) is None
    forged = backup_id[:-1] + ("0" if backup_id[-1] != "0" else "1")
    assert estate.resolve_marker(project_id, forged, False) is None
    assert estate.resolve_marker(project_id, backup_id.upper(), False) is None


def test_export_truth(estate: Estate) -> None:
    lines = list(estate.export_truth())
    assert all(line.endswith(b"\n") for line in lines)
    rows = [orjson.loads(line) for line in lines]
    assert {tuple(row) for row in rows} == {("project_id", "own_type", "enterprise_project_id", "backup")}
    private = [row for row in rows if row["own_type"] == "private"]
    assert len(private) == estate.backup_count
    shared = [row for row in rows if row["own_type"] == "shared"]
    assert len(shared) == sum(len(estate.truth_ids(p, "shared")) for p in estate.projects)
    for row in rows[:200]:
        assert row["enterprise_project_id"] == row["backup"]["enterprise_project_id"]
    ep_id = rows[0]["enterprise_project_id"]
    pid = rows[0]["project_id"]
    assert estate.truth_ids(pid, "private", ep_id) == {
        r["backup"]["id"] for r in private if r["project_id"] == pid and r["enterprise_project_id"] == ep_id
    }


def test_small_cache_budget_serves_the_same_bytes(estate: Estate) -> None:
    tiny = Estate.generate(SPEC, cache_bytes=50_000)
    for project_id in list(estate.projects)[:4]:
        for offset in ("0", "100"):
            assert tiny.list_backups(
                project_id, parse_list_backups_query(MultiDict(offset=offset))
            ) == estate.list_backups(project_id, parse_list_backups_query(MultiDict(offset=offset)))
    assert 0 < tiny.prewarm() < tiny.backup_count


def test_churn_creates_at_the_front_and_deletes_anywhere() -> None:
    estate = Estate.generate(SPEC)
    before = {pid: estate.truth_ids(pid) for pid in estate.projects}
    shared_before = {pid: estate.truth_ids(pid, "shared") for pid in estate.projects}
    pages_before = {pid: default_page(estate, pid, limit="50") for pid in estate.projects}
    errors_before = {pid: default_page(estate, pid, status="error")["count"] for pid in estate.projects}
    t0 = time.monotonic()
    estate.churn(creates=300, deletes=200)
    t1 = time.monotonic()
    assert estate.backup_count == sum(len(ids) for ids in before.values()) + 100

    created_total = deleted_total = 0
    for pid in estate.projects:
        after = estate.truth_ids(pid)
        created, deleted = after - before[pid], before[pid] - after
        created_total += len(created)
        deleted_total += len(deleted)
        body = default_page(estate, pid, limit="1000")
        assert body["count"] == len(after)
        listed = [r["id"] for r in body["backups"]]
        # New backups are the newest: they come first, and push the old first page down.
        assert set(listed[: len(created)]) == created
        old_first = [i for i in (r["id"] for r in pages_before[pid]["backups"]) if i in after]
        assert listed[len(created) : len(created) + len(old_first)] == old_first
        assert not deleted & set(listed)
        for r in estate.truth(pid)[: len(created)]:
            assert r["extend_info"]["auto_trigger"] is True and r["status"] == "available"
        # Filtered (cached) queries see the churn too.
        assert default_page(estate, pid, status="error")["count"] <= errors_before[pid]
        assert estate.truth_ids(pid, "shared") <= shared_before[pid] | {
            i for p in estate.projects for i in estate.truth_ids(p) - before[p]
        }
    assert (created_total, deleted_total) == (300, 200)

    existed = estate.existed_throughout(t0, t1)
    survivors = {i for (pid, own, _), ids in existed.items() if own == "private" for i in ids}
    assert survivors == {i for ids in before.values() for i in ids} - {
        i for pid in estate.projects for i in before[pid] - estate.truth_ids(pid)
    }
    # Everything that exists now existed throughout a later interval.
    later = time.monotonic()
    existing = estate.existed_throughout(later, later)
    now_private = {i for (_, own, _), ids in existing.items() if own == "private" for i in ids}
    assert now_private == {i for pid in estate.projects for i in estate.truth_ids(pid)}
    shared_now = {
        (pid, i)
        for (pid, own, _), ids in estate.existed_throughout(later, later).items()
        if own == "shared"
        for i in ids
    }
    assert shared_now == {(pid, i) for pid in estate.projects for i in estate.truth_ids(pid, "shared")}


def test_churn_is_deterministic() -> None:
    one, two = Estate.generate(SPEC), Estate.generate(SPEC)
    one.churn(50, 50)
    two.churn(50, 50)
    assert b"".join(one.export_truth()) == b"".join(two.export_truth())


def test_generate_100k_smoke() -> None:
    spec = EstateSpec(domains=(DomainSpec("big", subprojects=4, backups=100_000),))
    estate = Estate.generate(spec)
    assert estate.backup_count == 100_000
    biggest = max(estate.projects, key=lambda pid: len(estate.view(pid, "private")))
    first = default_page(estate, biggest)
    assert len(first["backups"]) == 1000 and first["count"] > 1000
    last = default_page(estate, biggest, offset=str(first["count"] - 1))
    assert len(last["backups"]) == 1
    assert last["backups"][0]["created_at"] < first["backups"][-1]["created_at"]


def test_cached_results_are_patched_correctly_across_churn() -> None:
    """Warm caches patched through several churn steps answer exactly like a cold estate."""
    warm = Estate.generate(SPEC)
    queries: list[dict[str, str]] = [
        {"own_type": "all_granted"},
        {"own_type": "shared"},
        {"status": "available"},
    ]
    for domain_id, eps in warm.enterprise_projects.items():
        queries += [{"enterprise_project_id": ep.id, "sort": "created_at:asc"} for ep in eps if domain_id]
        queries.append({"enterprise_project_id": eps[1].id, "own_type": "all_granted", "incremental": "true"})

    def answers(estate: Estate) -> list[bytes]:
        return [
            estate.list_backups(pid, parse_list_backups_query(MultiDict(q)))
            for pid in estate.projects
            for q in queries
        ]

    answers(warm)  # fills the query and view caches
    history: list[tuple[int, int]] = []
    for step in ((40, 10), (0, 60), (25, 0), (80, 80)):
        warm.churn(*step)
        history.append(step)
        cold = Estate.generate(SPEC)  # replays the same (deterministic) churn with empty caches
        for earlier in history:
            cold.churn(*earlier)
        assert answers(warm) == answers(cold)
    assert warm.generation == len(history)


def _reference_page(estate: Estate, project_id: str, own_type: str, show_replication: bool) -> bytes:
    records = estate.truth(project_id, own_type)
    if not show_replication:
        for record in records:
            record.pop("replication_records", None)
    return b",".join(orjson.dumps(record) for record in records)


@pytest.mark.parametrize("show_replication", [True, False])
def test_served_bytes_equal_the_reference_records(estate: Estate, show_replication: bool) -> None:
    """The template writer that serves pages writes exactly what orjson makes of the record dicts."""
    for project_id in estate.projects:
        for own_type in ("private", "shared"):
            handles = list(estate.view(project_id, own_type))
            handles.reverse()
            served = estate.serialized_page(handles, show_replication)
            assert served == _reference_page(estate, project_id, own_type, show_replication)
            if handles:
                one = estate.serialized(handles[-1], show_replication)
                assert served == one or served.endswith(b"," + one)


def test_served_bytes_equal_the_reference_after_churn() -> None:
    estate = Estate.generate(SPEC)
    estate.churn(creates=400, deletes=100)
    for project_id in estate.projects:
        handles = list(estate.view(project_id, "private"))
        handles.reverse()
        assert estate.serialized_page(handles[:500]) == b",".join(
            orjson.dumps(record) for record in estate.truth(project_id)[:500]
        )


def test_pages_are_cached_within_the_budget() -> None:
    estate = Estate.generate(SPEC, cache_bytes=200_000)
    project_id = max(estate.projects, key=lambda pid: len(estate.view(pid, "private")))
    first = estate.list_backups(project_id, parse_list_backups_query(MultiDict(limit="50")))
    assert estate.list_backups(project_id, parse_list_backups_query(MultiDict(limit="50"))) == first
    for offset in range(0, 2000, 50):  # far more than the budget holds: older pages are dropped
        estate.list_backups(project_id, parse_list_backups_query(MultiDict(limit="50", offset=str(offset))))
    assert 0 < estate.prewarm(limit=50) < estate.backup_count
    again = estate.list_backups(project_id, parse_list_backups_query(MultiDict(limit="50")))
    assert again == first


def test_strings_that_look_like_ids_but_were_not_made_here_are_rejected(estate: Estate) -> None:
    project_id = next(p for p in estate.projects if estate.truth_ids(p))
    for forged in ("00000000-0000-4000-8000-000000000000", "ffffffff-ffff-4fff-bfff-ffffffffffff"):
        assert estate.resolve_marker(project_id, forged, False) is None
