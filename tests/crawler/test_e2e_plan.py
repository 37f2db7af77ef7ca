"""`cbr-crawler plan`: the scopes a run would crawl and the backups, requests and time to expect."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import run_cli, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import Scenario
from crawler.emulator.server import EmulatorThread

pytestmark = pytest.mark.e2e  # against the emulator over real sockets (pytest -m "not e2e" skips)


def test_plan_lists_every_scope_with_the_api_count(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    scenario = Scenario(seed=8, estate=EstateSpec(seed=8, domains=(DomainSpec("acme", backups=5000),)))
    emu = emulator_factory(scenario)
    config = write_tenant(
        tmp_path,
        emu.url,
        "acme-prod",
        "acme",
        own_types=["private"],
        enterprise_projects={"mode": "none"},
        rate_limit={"requests_per_second": 5, "concurrency": 4, "page_size": 1000},
    )
    proc = run_cli("plan", "--config", str(config))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = re.findall(
        r"^  acme-prod/(\S+?)/(\w+)/ep=-/private: (\d+) backups, (\d+) requests$", proc.stdout, re.M
    )
    projects = {p.id for p in emu.estate.projects.values() if p.name != "MOS"}
    assert {row[1] for row in rows} == projects
    for _region, project_id, backups, requests in rows:
        truth = len(emu.call(lambda p=project_id: emu.estate.truth_ids(p, "private", None)))
        assert int(backups) == truth
        assert int(requests) == max(1, math.ceil(truth / 1000))
    total_requests = sum(int(r[3]) for r in rows)
    assert (
        f"total: {emu.estate.backup_count} backups, {total_requests} requests under this plan" in proc.stdout
    )
    # One view, no enterprise project split: one query per project is already the minimum.
    assert "one pass per scope: one partition per project" in proc.stdout
    assert f"+ 1 for discovery; minimum {total_requests + 1} " in proc.stdout
    assert f"~{(total_requests + 1) / 5:.1f}s at 5 requests/s" in proc.stdout
    assert not (tmp_path / "out").exists(), "plan writes nothing"
