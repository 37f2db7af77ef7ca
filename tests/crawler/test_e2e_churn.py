"""Churn during the crawl: backups created (nightly) and deleted (expiries) while pages are fetched.

The output must hold every backup that existed for the whole crawl, once, and nothing that never
existed; each drifting scope's manifest entry says how it was reconciled.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import crawler_env, run_cli, scope_ids, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import (
    ChurnSpec,
    FaultSpec,
    FaultsSpec,
    IdentitySpec,
    LatencySpec,
    Scenario,
    StormSpec,
    ThrottleSpec,
)
from crawler.emulator.server import EmulatorThread

pytestmark = pytest.mark.e2e  # against the emulator over real sockets (pytest -m "not e2e" skips)


def _view(sets: dict[tuple[str, str, str], set[str]], project_id: str, own_type: str) -> set[str]:
    views = ("private", "shared") if own_type == "all_granted" else (own_type,)
    out: set[str] = set()
    for (pid, view, _ep), ids in sets.items():
        if pid == project_id and view in views:
            out |= ids
    return out


ALL_FAULTS = (
    FaultSpec(kind="status", status=503, probability=0.05, api="cbr.list_backups"),
    FaultSpec(kind="status", status=502, probability=0.05, api="cbr.list_backups"),
    FaultSpec(kind="reset", probability=0.05, api="cbr.list_backups"),
    FaultSpec(kind="truncate", probability=0.05, api="cbr.list_backups"),
)


@pytest.mark.parametrize(
    ("with_faults", "spilled"),
    [(False, False), (True, False), (False, True)],
    ids=["churn", "churn-and-every-fault", "churn-ids-spilled"],
)
def test_churn_output_holds_every_backup_that_existed_throughout_once(
    with_faults: bool, spilled: bool, tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    """``spilled``: every scope keeps only its recent pages' ids in memory (crawler.pipeline.dedupe), so a
    drifting scope is rewritten by its marker pass instead of appended to."""
    faults = ALL_FAULTS if with_faults else ()
    scenario = Scenario(
        seed=41,
        estate=EstateSpec(
            seed=41,
            regions=("cn-north-4",),
            domains=(DomainSpec("acme", backups=8000, subprojects=1, shared_fraction=0.1),),
        ),
        churn=ChurnSpec(creates_per_second=40, deletes_per_second=40, tick_seconds=0.1),
        faults=FaultsSpec(latency=(LatencySpec(api="cbr.list_backups", ms=20),), faults=faults),
        throttle=ThrottleSpec(storm=StormSpec(start_seconds=1, duration_seconds=1.5, fraction=0.4))
        if with_faults
        else ThrottleSpec(),
        identity=IdentitySpec(token_ttl_seconds=1.5 if with_faults else 86400.0),
    )
    emu = emulator_factory(scenario)
    config = write_tenant(
        tmp_path,
        emu.url,
        "acme-prod",
        "acme",
        regions=["cn-north-4"],
        own_types=["private", "all_granted"],
        enterprise_projects={"mode": "none"},
        rate_limit={"requests_per_second": 60, "concurrency": 4, "page_size": 50},
    )
    out = tmp_path / "out"

    t0 = time.monotonic()
    env = dict(crawler_env(), CBR_CRAWLER_SPILL_AT="0") if spilled else None
    proc = run_cli("run", "--config", str(config), "--output", str(out), env=env)
    t1 = time.monotonic()

    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    throughout = emu.call(lambda: emu.estate.existed_throughout(t0, t1))
    ever = emu.call(lambda: emu.estate.existed_throughout(math.inf, -math.inf))
    reconciled = 0
    for scope in manifest["scopes"]:
        ids = scope_ids(out, scope)
        assert len(ids) == len(set(ids)), f"a backup written twice in {scope['key']}"
        must = _view(throughout, scope["project_id"], scope["own_type"])
        may = _view(ever, scope["project_id"], scope["own_type"])
        missing = must - set(ids)
        assert not missing, f"{scope['key']}: {len(missing)} backups that existed all along are missing"
        assert set(ids) <= may, f"{scope['key']}: backups that never existed"
        if scope["reconciliation"] is not None:
            reconciled += 1
            assert scope["reconciliation"]["complete"] is True
            assert scope["reconciliation"]["method"].endswith("scope rewritten") == spilled
            assert scope["records_written"] == len(ids)
    assert reconciled > 0, "churn at this rate must make some scope drift"
    assert "reconciling with a marker pass" in proc.stderr
