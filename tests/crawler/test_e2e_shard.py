"""Sharding end to end: 4 shards as parallel processes against one emulator, then `merge`, give
exactly the inventory of an unsharded run; `merge` refuses a set that is not one whole run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import crawler_env, run_cli, scope_ids, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import Scenario
from crawler.emulator.server import EmulatorThread
from crawler.pipeline.shard import SPLIT_RULE, entry_shard_key, shard_of

pytestmark = pytest.mark.e2e  # against the emulator over real sockets (pytest -m "not e2e" skips)

SHARDS = 4
RATE = 200.0

# Shards split by project (a single pass and its partitions stay together): enough projects for four.
ESTATE = Scenario(
    seed=21,
    estate=EstateSpec(
        seed=21,
        regions=("cn-north-4", "ap-southeast-1"),
        domains=(
            DomainSpec("acme", subprojects=4, enterprise_projects=2, backups=4000, empty_projects=1),
            DomainSpec("globex", subprojects=3, enterprise_projects=1, backups=2000),
        ),
    ),
)


def _configs(directory: Path, url: str) -> Path:
    directory.mkdir()
    for domain in ("acme", "globex"):
        write_tenant(
            directory,
            url,
            f"{domain}-prod",
            domain,
            rate_limit={"requests_per_second": RATE, "concurrency": 4, "page_size": 200},
        )
    return directory


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "crawler", *args],
        env=crawler_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, stderr = proc.communicate(timeout=240)
    return proc.returncode, stderr


def _inventory(root: Path, manifest: dict[str, Any]) -> dict[str, tuple[str, frozenset[str]]]:
    return {s["key"]: (s["status"], frozenset(scope_ids(root, s))) for s in manifest["scopes"]}


def test_four_parallel_shards_merged_equal_the_unsharded_run(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(ESTATE)
    configs = _configs(tmp_path / "tenants", emu.url)
    full, sharded = tmp_path / "full", tmp_path / "sharded"

    # The unsharded reference and the four shards, all at once, as a scheduler would start them.
    reference = _start("run", "--config", str(configs), "--output", str(full))
    shards = [
        _start(
            "run",
            "--config",
            str(configs),
            "--output",
            str(sharded),
            "--shard",
            f"{k}/{SHARDS}",
            "--run-id",
            "nightly-1",
        )
        for k in range(SHARDS)
    ]
    outcomes = [_finish(p) for p in [reference, *shards]]
    for code, stderr in outcomes:
        assert code == 0, stderr[-3000:]

    full_manifest = json.loads((full / "manifest.json").read_text())
    per_shard_keys: list[set[str]] = []
    for k in range(SHARDS):
        root = sharded / f"shard-{k}-of-{SHARDS}"
        manifest = json.loads((root / "manifest.json").read_text())
        assert (root / "_SUCCESS").exists()
        block = manifest["shard"]
        assert (block["index"], block["count"], block["rule"]) == (k, SHARDS, SPLIT_RULE)
        assert block["scopes_discovered"] == len(full_manifest["scopes"])
        keys = {s["key"] for s in manifest["scopes"]}
        assert keys, f"shard {k} got no scopes: the split is badly skewed"
        assert all(shard_of(entry_shard_key(s), SHARDS) == k for s in manifest["scopes"])
        per_shard_keys.append(keys)
        # Each shard spends a quarter of every quota owner's CBR budget.
        cbr = [q for q in manifest["quota_owners"] if " -> cbr " in q["quota_owner"]]
        assert cbr
        assert {q["configured_rate_per_second"] for q in cbr} == {RATE / SHARDS}
    assert sum(len(keys) for keys in per_shard_keys) == len(set().union(*per_shard_keys))

    proc = run_cli("merge", str(sharded))

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "COMPLETE" in proc.stderr
    merged = json.loads((sharded / "manifest.json").read_text())
    assert (sharded / "_SUCCESS").exists()
    assert merged["status"] == "complete"
    assert merged["run_id"] == "nightly-1"
    assert merged["config_digest"] == full_manifest["config_digest"]
    assert merged["problems"] == []
    assert [m["index"] for m in merged["shards"]["members"]] == list(range(SHARDS))
    # Exactly the unsharded inventory: the same scopes, statuses and ids, scope by scope.
    assert _inventory(sharded, merged) == _inventory(full, full_manifest)
    assert merged["totals"]["records_written"] == full_manifest["totals"]["records_written"]
    assert merged["totals"]["scopes"] == full_manifest["totals"]["scopes"]
    for scope in merged["scopes"]:
        truth = emu.call(
            lambda s=scope: emu.estate.truth_ids(s["project_id"], s["own_type"], s["enterprise_project_id"])
        )
        assert set(scope_ids(sharded, scope)) == truth, scope["key"]
    # The quota owners' budgets add up again over the shards.
    cbr_merged = [q for q in merged["quota_owners"] if " -> cbr " in q["quota_owner"]]
    assert {q["configured_rate_per_second"] for q in cbr_merged} == {RATE}
    # Merging again (a retried merge step) finds the same shards next to the merged manifest.
    proc = run_cli("merge", str(sharded))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _inventory(sharded, json.loads((sharded / "manifest.json").read_text())) == _inventory(
        full, full_manifest
    )

    # A set with a shard missing is refused, and no marker vouches for it.
    partial = tmp_path / "partial"
    for k in range(SHARDS - 1):
        shutil.copytree(sharded / f"shard-{k}-of-{SHARDS}", partial / f"shard-{k}-of-{SHARDS}")
    proc = run_cli("merge", str(partial))
    assert proc.returncode == 2
    assert f"shard {SHARDS - 1} of {SHARDS} is missing" in proc.stderr
    assert not (partial / "manifest.json").exists()
    assert not (partial / "_SUCCESS").exists()

    # A shard of another run (another run id) next to this run's shards is refused too.
    other = _start(
        "run",
        "--config",
        str(configs),
        "--output",
        str(partial),
        "--shard",
        f"{SHARDS - 1}/{SHARDS}",
        "--run-id",
        "nightly-2",
    )
    code, stderr = _finish(other)
    assert code == 0, stderr[-3000:]
    proc = run_cli("merge", str(partial))
    assert proc.returncode == 2
    assert "different runs" in proc.stderr
    assert "nightly-2" in proc.stderr
    assert not (partial / "_SUCCESS").exists()


def test_shard_from_job_completion_index_and_usage_errors(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    scenario = Scenario(
        seed=4,
        estate=EstateSpec(seed=4, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=800),)),
    )
    emu = emulator_factory(scenario)
    config = write_tenant(tmp_path, emu.url, "acme-prod", "acme", regions=["cn-north-4"])
    out = tmp_path / "out"

    # As in a Kubernetes Indexed Job: the index from JOB_COMPLETION_INDEX, the rest from env.
    env = crawler_env(JOB_COMPLETION_INDEX="1", CBR_CRAWLER_SHARDS="2", CBR_CRAWLER_RUN_ID="job-abc")
    proc = run_cli("run", "--config", str(config), "--output", str(out), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "shard-1-of-2" / "manifest.json").read_text())
    assert manifest["run_id"] == "job-abc"
    assert (manifest["shard"]["index"], manifest["shard"]["count"]) == (1, 2)

    # Shard 0 is missing: refused; then shard 0 runs and the merge completes.
    proc = run_cli("merge", str(out), env=env)
    assert proc.returncode == 2
    assert "shard 0 of 2 is missing" in proc.stderr
    env0 = crawler_env(JOB_COMPLETION_INDEX="0", CBR_CRAWLER_SHARDS="2", CBR_CRAWLER_RUN_ID="job-abc")
    assert run_cli("run", "--config", str(config), "--output", str(out), env=env0).returncode == 0
    proc = run_cli("merge", str(out), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "_SUCCESS").exists()

    bad = [
        (crawler_env(JOB_COMPLETION_INDEX="1"), [], "no shard count"),
        (crawler_env(), ["--shard", "4/4", "--run-id", "r"], "0..3"),
        (crawler_env(), ["--shard", "1/4"], "needs a run id"),
        (crawler_env(CBR_CRAWLER_SHARDS="3"), ["--shard", "1/4", "--run-id", "r"], "contradicts"),
    ]
    for env_bad, extra, message in bad:
        proc = run_cli("run", "--config", str(config), "--output", str(tmp_path / "x"), *extra, env=env_bad)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert message in proc.stderr, (extra, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()
