"""The main job end to end: tenant YAML -> `cbr-crawler run` (a real process) -> files and manifest,
compared with the emulator's ground truth."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import crawler_env, read_ndjson, run_cli, scope_ids, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import Scenario
from crawler.emulator.server import EmulatorThread

pytestmark = pytest.mark.e2e  # against the emulator over real sockets (pytest -m "not e2e" skips)

BIG = Scenario(
    seed=11,
    estate=EstateSpec(
        seed=11,
        regions=("cn-north-4", "ap-southeast-1"),
        domains=(
            DomainSpec("acme", subprojects=2, enterprise_projects=3, backups=60_000, empty_projects=1),
            DomainSpec("globex", subprojects=1, enterprise_projects=2, backups=30_000),
            DomainSpec("initech", subprojects=1, enterprise_projects=1, backups=15_000, shared_fraction=0.1),
        ),
    ),
)


def test_three_tenants_100k_backups_equal_ground_truth(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(BIG)
    assert emu.estate.backup_count >= 100_000
    configs = tmp_path / "tenants"
    configs.mkdir()
    for domain in ("acme", "globex", "initech"):
        write_tenant(configs, emu.url, f"{domain}-prod", domain)
    out = tmp_path / "out"

    proc = run_cli("run", "--config", str(configs), "--output", str(out))

    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert (out / "_SUCCESS").exists()
    scopes = manifest["scopes"]
    assert {s["tenant"] for s in scopes} == {"acme-prod", "globex-prod", "initech-prod"}
    assert {s["own_type"] for s in scopes} == {"private", "shared", "all_granted"}
    assert {s["region"] for s in scopes} == {"cn-north-4", "ap-southeast-1"}
    assert len({s["enterprise_project_id"] for s in scopes}) > 3
    total = 0
    for scope in scopes:
        assert scope["status"] == "complete", scope
        ids = scope_ids(out, scope)
        assert len(ids) == len(set(ids)), f"duplicates in {scope['key']}"
        truth = emu.call(
            lambda s=scope: emu.estate.truth_ids(s["project_id"], s["own_type"], s["enterprise_project_id"])
        )
        assert set(ids) == truth, scope["key"]
        check = scope["single_pass"]
        if check is None:
            assert scope["count"] == len(truth) == scope["records_written"]
        else:  # a partition of a single pass: the pass is what was counted and checked
            assert scope["count"] is None and scope["records_written"] == len(truth)
            assert check["complete"] and check["count"] == check["unique_ids"] == check["last_count"]
        total += len(ids)
    # The example tenant's views and EPs come from one pass per project: every record of a pass is
    # in exactly one (private or shared) partition, and the pass's count is theirs summed.
    passes: dict[str, list[dict[str, Any]]] = {}
    for scope in scopes:
        passes.setdefault(scope["single_pass"]["pass"], []).append(scope)
    for members in passes.values():
        check = members[0]["single_pass"]
        split = sum(s["records_written"] for s in members if s["own_type"] in ("private", "shared"))
        assert split + check["records_outside_partitions"] == check["count"]
    assert len(passes) == len({(s["region"], s["project_id"]) for s in scopes})
    # One token per project, fetched ahead of its scopes (crawler.pipeline.auth prefetch), never twice; plus
    # discovery's domain token and its project list.
    for tenant in ("acme-prod", "globex-prod", "initech-prod"):
        [iam] = [
            q for q in manifest["quota_owners"] if q["quota_owner"].startswith(f"tenant:{tenant} -> iam ")
        ]
        projects = {s["project_id"] for s in scopes if s["tenant"] == tenant}
        assert iam["requests"] == len(projects) + 2, (tenant, iam, len(projects))
    private_total = sum(len(scope_ids(out, s)) for s in scopes if s["own_type"] == "private")
    assert private_total == emu.estate.backup_count
    assert total > 100_000
    assert "COMPLETE" in proc.stderr


def test_records_are_written_as_the_api_sent_them_plus_provenance(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    scenario = Scenario(seed=3, estate=EstateSpec(seed=3, domains=(DomainSpec("acme", backups=3000),)))
    emu = emulator_factory(scenario)
    config = write_tenant(tmp_path, emu.url, "acme-prod", "acme", output={"compression": "gzip"})
    out = tmp_path / "out"

    proc = run_cli("run", "--config", str(config), "--output", str(out), "--run-id", "run-42")

    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run_id"] == "run-42"
    scope = max(manifest["scopes"], key=lambda s: s["records_written"])
    assert scope["files"][0]["path"].endswith(".ndjson.gz")
    records = read_ndjson(out / scope["files"][0]["path"])
    truth = {
        r["id"]: r
        for r in emu.call(
            lambda: emu.estate.truth(scope["project_id"], scope["own_type"], scope["enterprise_project_id"])
        )
    }
    for record in records:
        provenance = record.pop("_crawl")
        assert provenance["run_id"] == "run-42"
        assert provenance["tenant"] == "acme-prod"
        assert provenance["project_id"] == scope["project_id"]
        assert provenance["own_type"] == scope["own_type"]
        assert provenance["enterprise_project_id"] == scope["enterprise_project_id"]
        assert provenance["fetched_at"].endswith("Z")
        assert record == truth[record["id"]], "every field exactly as the API sent it"


def test_broken_tenant_file_names_file_key_and_problem(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text(
        "tenant: acme\n"
        "auth:\n"
        "  mode: password\n"
        "  user: u\n"
        "  domain: d\n"
        "  password_env: PW\n"
        "regions: [cn-north-4]\n"
        "own_types: [private, everything]\n"
    )
    proc = run_cli("run", "--config", str(bad), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "broken.yaml:8" in proc.stderr
    assert "own_types" in proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()

    proc = run_cli("validate", str(bad))
    assert proc.returncode == 2
    assert "own_types" in proc.stderr


def test_wrong_password_fails_its_tenant_only_without_leaking_it(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    scenario = Scenario(
        seed=5,
        estate=EstateSpec(
            seed=5, domains=(DomainSpec("acme", backups=2000), DomainSpec("globex", backups=1000))
        ),
    )
    emu = emulator_factory(scenario)
    write_tenant(tmp_path, emu.url, "acme-prod", "acme")
    write_tenant(tmp_path, emu.url, "globex-prod", "globex")
    out = tmp_path / "out"
    wrong = "definitely-Wrong-passw0rd"

    proc = run_cli(
        "run", "--config", str(tmp_path), "--output", str(out), env=crawler_env(CBR_PW_GLOBEX=wrong)
    )

    assert proc.returncode == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "incomplete"
    assert not (out / "_SUCCESS").exists()
    [failure] = manifest["tenant_failures"]
    assert failure["tenant"] == "globex-prod"
    assert "CBR_PW_GLOBEX" in failure["error"], "names the credential source"
    assert failure["request_id"]
    assert {s["status"] for s in manifest["scopes"] if s["tenant"] == "acme-prod"} == {"complete"}
    assert wrong not in proc.stderr + proc.stdout + (out / "manifest.json").read_text()
    assert "Traceback" not in proc.stderr


def test_stdout_sink_streams_ndjson(tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]) -> None:
    scenario = Scenario(
        seed=9,
        estate=EstateSpec(seed=9, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=1500),)),
    )
    emu = emulator_factory(scenario)
    config = write_tenant(
        tmp_path,
        emu.url,
        "acme-prod",
        "acme",
        regions=["cn-north-4"],
        own_types=["private"],
        enterprise_projects={"mode": "none"},
    )
    proc = run_cli(
        "run", "--config", str(config), "--output", "-", "--manifest", str(tmp_path / "m" / "manifest.json")
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines: list[dict[str, Any]] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == emu.estate.backup_count
    assert len({r["id"] for r in lines}) == len(lines)
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["status"] == "complete"
