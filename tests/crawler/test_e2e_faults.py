"""The fault matrix: whatever the gateway throws, the output equals the ground truth.

Each case runs the real CLI against the emulator with seeded faults and compares every scope's ids
with the emulator's truth. No churn here: without churn the truth is exact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, scope_ids, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import (
    FaultSpec,
    FaultsSpec,
    IdentitySpec,
    Scenario,
    StormSpec,
    ThrottleSpec,
)
from crawler.emulator.server import EmulatorThread

pytestmark = pytest.mark.e2e  # against the emulator over real sockets (pytest -m "not e2e" skips)

CBR = "cbr.list_backups"
FIVE_XX = (
    FaultSpec(kind="status", status=503, probability=0.04, api=CBR),
    FaultSpec(kind="status", status=502, probability=0.03, api=CBR),
    FaultSpec(kind="status", status=500, probability=0.02, api=CBR),
    FaultSpec(kind="status", status=504, probability=0.01, api=CBR),
)
RESETS = (FaultSpec(kind="reset", probability=0.05, api=CBR),)
# (A single pass per project makes ~120 requests here: rates high enough that each kind fires.)
TRUNCATED = (
    FaultSpec(kind="truncate", probability=0.05, api=CBR),
    FaultSpec(kind="truncate", probability=0.04, api=CBR, honest_length=False),
)
MALFORMED = (FaultSpec(kind="malformed", probability=0.05, api=CBR),)
STORM = ThrottleSpec(storm=StormSpec(start_seconds=0, duration_seconds=2.0, fraction=0.4, api="cbr.*"))

CASES: dict[str, dict[str, Any]] = {
    "5xx": {"faults": FaultsSpec(faults=FIVE_XX)},
    "resets": {"faults": FaultsSpec(faults=RESETS)},
    "truncated": {"faults": FaultsSpec(faults=TRUNCATED)},
    "malformed": {"faults": FaultsSpec(faults=MALFORMED)},
    "429-storm": {"throttle": STORM},
    "tokens-expiring": {"identity": IdentitySpec(token_ttl_seconds=1.0)},
    "all-at-once": {
        "faults": FaultsSpec(faults=FIVE_XX + RESETS + TRUNCATED + MALFORMED),
        "throttle": STORM,
        "identity": IdentitySpec(token_ttl_seconds=1.0),
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_fault_matrix_output_equals_ground_truth(
    case: str, tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    scenario = Scenario(
        seed=31,
        estate=EstateSpec(seed=31, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=12_000),)),
        **CASES[case],
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
        rate_limit={"requests_per_second": 100, "concurrency": 8, "page_size": 100},
    )
    out = tmp_path / "out"

    proc = run_cli("run", "--config", str(config), "--output", str(out))

    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    for scope in manifest["scopes"]:
        truth = emu.call(
            lambda s=scope: emu.estate.truth_ids(s["project_id"], s["own_type"], s["enterprise_project_id"])
        )
        ids = scope_ids(out, scope)
        assert len(ids) == len(set(ids)) == len(truth)
        assert set(ids) == truth, scope["key"]
    faults_seen = sum(emu.stats.faults.values()) + sum(emu.stats.throttled.values())
    if case != "tokens-expiring":
        assert faults_seen > 0, "the case must actually inject something"
    cbr_owner = next(q for q in manifest["quota_owners"] if "-> cbr " in q["quota_owner"])
    # (Resets are not in this list: aiohttp itself re-sends an idempotent GET once after a reset,
    # so a single reset never reaches our retry loop; the emulator still counts them above.)
    if case in ("5xx", "truncated", "malformed", "all-at-once"):
        assert cbr_owner["retries"] > 0
    if case in ("429-storm", "all-at-once"):
        assert cbr_owner["throttled"] > 0
