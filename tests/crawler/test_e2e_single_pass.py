"""The cheap plan: one own_type=all_granted pass per project, split into the partitions asked.

Against the per-pass crawl of the same churning estate: the same files, every record in exactly one
partition, the same backups up to those created or deleted while the crawls ran, and far fewer
requests. And `regions: all` / globs: regions discovered from the account's projects.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, scope_ids, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import ChurnSpec, FaultsSpec, LatencySpec, Scenario
from crawler.emulator.server import EmulatorThread

pytestmark = pytest.mark.e2e  # against the emulator over real sockets (pytest -m "not e2e" skips)

CHURNING = Scenario(
    seed=51,
    estate=EstateSpec(
        seed=51,
        regions=("cn-north-4",),
        domains=(
            DomainSpec("acme", backups=6000, subprojects=2, enterprise_projects=3, shared_fraction=0.15),
        ),
    ),
    churn=ChurnSpec(creates_per_second=30, deletes_per_second=30, tick_seconds=0.1),
    faults=FaultsSpec(latency=(LatencySpec(api="cbr.list_backups", ms=10),)),
)


def _crawl(
    tmp_path: Path, emu: EmulatorThread, name: str, **settings: Any
) -> tuple[dict[str, Any], Path, float, float, int]:
    config = write_tenant(
        tmp_path / name,
        emu.url,
        "acme-prod",
        "acme",
        regions=["cn-north-4"],
        own_types=["private", "shared"],
        enterprise_projects={"mode": "discover"},
        rate_limit={"requests_per_second": 200, "concurrency": 4, "page_size": 200},
        **settings,
    )
    out = tmp_path / name / "out"
    before = emu.call(lambda: emu.stats.total("cbr.list_backups"))
    t0 = time.monotonic()
    proc = run_cli("run", "--config", str(config), "--output", str(out), "--no-report")
    t1 = time.monotonic()
    assert proc.returncode == 0, proc.stderr[-3000:]
    requests = emu.call(lambda: emu.stats.total("cbr.list_backups")) - before
    return json.loads((out / "manifest.json").read_text()), out, t0, t1, requests


def test_a_single_pass_writes_the_per_pass_files_each_record_once_with_fewer_requests(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(CHURNING)
    (tmp_path / "single").mkdir()
    (tmp_path / "per-pass").mkdir()
    single, out1, t0, t1, requests1 = _crawl(tmp_path, emu, "single")
    per_pass, out2, _t2, t3, requests2 = _crawl(tmp_path, emu, "per-pass", plan="per_pass")

    assert single["status"] == per_pass["status"] == "complete"
    plan1, plan2 = single["plans"]["acme-prod"], per_pass["plans"]["acme-prod"]
    assert plan1["plan"] == "single pass per project" and "enterprise_project_id" in plan1["reason"]
    assert plan2["plan"] == "one pass per scope" and plan2["reason"] == "plan: per_pass in the tenant file"
    # The same partitions, files and names.
    assert [s["key"] for s in single["scopes"]] == [s["key"] for s in per_pass["scopes"]]
    assert [[f["path"] for f in s["files"]] for s in single["scopes"]] == [
        [f["path"] for f in s["files"]] for s in per_pass["scopes"]
    ]
    # Each project's pages once (plus one probe per EP). (A marker that vanished under churn costs a
    # request that is no page: hence >=. Under churn a drifting pass re-reads its whole project,
    # where one query per scope re-reads only the drifting scopes: no fewer-requests claim here.)
    pages = {s["single_pass"]["pass"]: s["pages"] for s in single["scopes"]}
    assert requests1 >= sum(pages.values()) + plan1["probe_requests"]
    assert plan1["queries"] == len(pages) == len({s["project_id"] for s in single["scopes"]})
    assert requests2 >= len(per_pass["scopes"])

    throughout1 = emu.call(lambda: emu.estate.existed_throughout(t0, t1))
    throughout_both = emu.call(lambda: emu.estate.existed_throughout(t0, t3))
    ever = emu.call(lambda: emu.estate.existed_throughout(math.inf, -math.inf))
    by_key2 = {s["key"]: s for s in per_pass["scopes"]}
    seen_in_project: dict[str, dict[str, str]] = {}
    drifted = 0
    for scope in single["scopes"]:
        check = scope["single_pass"]
        assert check["complete"] and scope["count"] is None
        drifted += check["count"] != check["last_count"] or scope["reconciliation"] is not None
        ids = scope_ids(out1, scope)
        assert len(ids) == len(set(ids)) == scope["records_written"]
        where = (scope["project_id"], scope["own_type"], scope["enterprise_project_id"])
        assert throughout1.get(where, set()) <= set(ids) <= ever.get(where, set()), scope["key"]
        # Every record in exactly one partition of its project.
        mine = seen_in_project.setdefault(scope["project_id"], {})
        for i in ids:
            assert i not in mine, f"{i} in {mine.get(i)} and {scope['key']}"
            mine[i] = scope["key"]
        # The per-pass crawl of the same partition: the same backups, up to the churned ones.
        other = set(scope_ids(out2, by_key2[scope["key"]]))
        churned = ever.get(where, set()) - throughout_both.get(where, set())
        assert set(ids) ^ other <= churned, scope["key"]
    assert drifted, "churn at this rate must make some single pass drift"
    # Nothing of a pass outside the partitions asked: every EP discovered, both views.
    assert all(s["single_pass"]["records_outside_partitions"] == 0 for s in single["scopes"])


def test_without_churn_a_single_pass_costs_its_pages_and_one_probe_per_enterprise_project(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(
        Scenario(
            seed=53,
            estate=EstateSpec(
                seed=53,
                regions=("cn-north-4", "ap-southeast-1"),
                domains=(DomainSpec("acme", backups=3000, subprojects=4, enterprise_projects=4),),
            ),
        )
    )
    (tmp_path / "single").mkdir()
    (tmp_path / "per-pass").mkdir()
    single, out1, *_, requests1 = _crawl(tmp_path, emu, "single")
    per_pass, out2, *_, requests2 = _crawl(tmp_path, emu, "per-pass", plan="per_pass")

    pages = {s["single_pass"]["pass"]: s["pages"] for s in single["scopes"]}
    assert requests1 == sum(pages.values()) + single["plans"]["acme-prod"]["probe_requests"]
    assert single["plans"]["acme-prod"]["probe_requests"] == 5  # the default EP and four others
    # One query per project, enterprise project and view costs at least one request each.
    assert requests2 >= len(per_pass["scopes"]) == 5 * 5 * 2  # cn-north-4's 5 projects, 5 EPs, 2 views
    assert requests1 * 3 < requests2
    for a, b in zip(single["scopes"], per_pass["scopes"], strict=True):
        assert set(scope_ids(out1, a)) == set(scope_ids(out2, b)), a["key"]

    # `plan` says the same beforehand: the plan and why, each pass's count and requests, the
    # requests under the plan (pages of 200 here) and the minimum (1000-record pages).
    plan = run_cli("plan", "--config", str(tmp_path / "single" / "acme-prod.yaml"))
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "tenant acme-prod: 50 scopes in 5 queries (single pass per project: " in plan.stdout
    rows = re.findall(
        r"^  acme-prod/\S+/single-pass: (\d+) backups, (\d+) requests -> 10 scopes$", plan.stdout, re.M
    )
    assert len(rows) == 5
    counts = {s["single_pass"]["pass"]: s["single_pass"]["count"] for s in single["scopes"]}
    assert sorted(int(b) for b, _ in rows) == sorted(counts.values())
    under_plan = sum(int(r) for _, r in rows)
    assert under_plan == sum(max(1, math.ceil(c / 200)) for c in counts.values())
    minimum = sum(max(1, math.ceil(c / 1000)) for c in counts.values())
    discovery = single["plans"]["acme-prod"]["discovery_requests"]
    assert (
        f"{under_plan} requests under this plan (page size 200) + {discovery} for discovery; " in plan.stdout
    )
    assert f"minimum {minimum + discovery} (one pass per project in 1000-record pages" in plan.stdout


REGIONS = Scenario(
    seed=52,
    estate=EstateSpec(
        seed=52,
        regions=("cn-north-4", "ap-southeast-1", "eu-north-9"),  # eu-north-9: no CBR there
        domains=(DomainSpec("acme", backups=1500, subprojects=1, enterprise_projects=1),),
    ),
)


@pytest.mark.parametrize(
    ("regions", "expected"),
    [("all", ["ap-southeast-1", "cn-north-4"]), (["ap-*"], ["ap-southeast-1"])],
    ids=["all", "glob"],
)
def test_regions_all_and_globs_come_from_the_accounts_projects_without_cbr_less_regions(
    regions: Any, expected: list[str], tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(REGIONS)
    config = write_tenant(
        tmp_path, emu.url, "acme-prod", "acme", regions=regions, own_types=["private"],
        enterprise_projects={"mode": "none"},
    )  # fmt: skip

    plan = run_cli("plan", "--config", str(config))
    proc = run_cli("run", "--config", str(config), "--output", str(tmp_path / "out"), "--no-report")

    assert plan.returncode == 0, plan.stderr[-2000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    entry = manifest["plans"]["acme-prod"]
    assert sorted(entry["regions"]) == expected
    skipped = ["eu-north-9"] if regions == "all" else []
    assert entry["regions_skipped_without_cbr"] == skipped
    assert f"  regions: {', '.join(entry['regions'])}" in plan.stdout
    if skipped:
        assert "(skipped, no CBR: eu-north-9)" in plan.stdout
    # Every project of the kept regions crawled, and its backups all there.
    projects = {p.id for p in emu.estate.projects.values() if p.name != "MOS" and p.region in expected}
    assert {s["project_id"] for s in manifest["scopes"]} == projects
    for scope in manifest["scopes"]:
        truth = emu.call(lambda s=scope: emu.estate.truth_ids(s["project_id"], "private", None))
        assert set(scope_ids(tmp_path / "out", scope)) == truth
