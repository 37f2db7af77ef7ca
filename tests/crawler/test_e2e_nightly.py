"""Nightly runs end to end: two runs with churn between them and the diff, the inventory report and the
Prometheus metrics (textfile and Pushgateway), all against the emulator's ground truth."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from conftest import crawler_env, run_cli, write_tenant
from prometheus_client.parser import text_string_to_metric_families

from crawler.emulator.estate import S_AVAILABLE, S_ERROR, DomainSpec, EstateSpec
from crawler.emulator.scenario import Scenario
from crawler.emulator.server import EmulatorThread

pytestmark = pytest.mark.e2e  # against the emulator over real sockets (pytest -m "not e2e" skips)

SCENARIO = Scenario(
    seed=21,
    estate=EstateSpec(
        seed=21,
        regions=("cn-north-4",),
        domains=(
            DomainSpec(
                "acme",
                subprojects=1,
                enterprise_projects=2,
                backups=2500,
                shared_fraction=0.1,
                empty_projects=1,
            ),
        ),
    ),
)


def _tenant(directory: Path, emu: EmulatorThread, compression: str, name: str = "acme-prod") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return write_tenant(
        directory, emu.url, name, "acme", regions=["cn-north-4"], output={"compression": compression}
    )


def _truth(emu: EmulatorThread, manifest: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per scope key: {id: record} as the emulator holds it now."""
    return {
        s["key"]: {
            r["id"]: r
            for r in emu.call(
                lambda s=s: emu.estate.truth(s["project_id"], s["own_type"], s["enterprise_project_id"])
            )
        }
        for s in manifest["scopes"]
    }


def _set_status(emu: EmulatorThread, count: int, status: int) -> None:
    """Flip ``count`` live available backups to ``status``: a change the churn model does not make
    (churn only creates and deletes), done on the estate's columns, with its page cache dropped."""
    estate = emu.estate

    def flip() -> None:
        flipped = 0
        for b in range(len(estate._res)):
            if b not in estate._died and estate._status[b] == S_AVAILABLE and b % 97 == 5:
                estate._status[b] = status
                flipped += 1
                if flipped == count:
                    break
        estate._pages.clear()
        estate._cache_used = 0
        estate.churn(0, 0)  # bumps the generation every derived cache is keyed on

    emu.call(flip)


def _read_changes(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line]


def _without_crawl(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "_crawl"}


def _metrics(path: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            out[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_diff_of_two_runs_lists_exactly_the_emulators_changes(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(SCENARIO)
    out1, out2 = tmp_path / "2026-11-26", tmp_path / "2026-11-27"
    metrics = tmp_path / "metrics" / "cbr.prom"

    proc = run_cli(
        "run", "--config", str(_tenant(tmp_path / "gz", emu, "gzip")), "--output", str(out1),
        "--metrics-file", str(metrics),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest1 = json.loads((out1 / "manifest.json").read_text())
    before = _truth(emu, manifest1)
    first_metrics = _metrics(metrics)
    last_success = first_metrics["cbr_crawler_last_success_timestamp_seconds"][()]
    finished = dt.datetime.fromisoformat(manifest1["finished_at"]).timestamp()
    assert last_success == finished

    emu.call(lambda: emu.estate.churn(60, 45))
    _set_status(emu, 7, S_ERROR)

    # The second night: zstd this time, diffed against the newest complete sibling run.
    proc = run_cli(
        "run", "--config", str(_tenant(tmp_path / "zst", emu, "zstd")), "--output", str(out2),
        "--diff-against", "auto", "--metrics-file", str(metrics),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest2 = json.loads((out2 / "manifest.json").read_text())
    assert manifest2["scopes"][0]["files"][0]["path"].endswith(".zst")
    after = _truth(emu, manifest2)
    assert before.keys() == after.keys()

    expected: dict[tuple[str, str, str], tuple[dict[str, Any], dict[str, Any] | None]] = {}
    for key in before:
        old, new = before[key], after[key]
        for i in new.keys() - old.keys():
            expected[("added", key, i)] = (new[i], None)
        for i in old.keys() - new.keys():
            expected[("removed", key, i)] = (old[i], None)
        for i in old.keys() & new.keys():
            if old[i] != new[i]:
                expected[("changed", key, i)] = (new[i], old[i])
    kinds = {k[0] for k in expected}
    assert kinds == {"added", "removed", "changed"}, "the churn must produce every kind of change"

    changes = _read_changes((out2 / "diff" / "changes.ndjson").read_bytes())
    got = {(c["change"], c["scope"], c["id"]): c for c in changes}
    assert len(got) == len(changes), "each change listed once"
    assert got.keys() == expected.keys()
    for key, change in got.items():
        backup, previous = expected[key]
        assert _without_crawl(change["backup"]) == backup
        if key[0] == "changed":
            assert _without_crawl(change["before"]) == previous
            assert change["backup"]["_crawl"]["run_id"] == manifest2["run_id"]
            assert change["before"]["_crawl"]["run_id"] == manifest1["run_id"]
        else:
            assert "before" not in change

    summary = json.loads((out2 / "diff" / "diff.json").read_text())
    counts = {kind: sum(1 for k in expected if k[0] == kind) for kind in ("added", "removed", "changed")}
    assert {k: summary["totals"][k] for k in counts} == counts
    assert summary["skipped"] == []
    assert summary["old"]["run_id"] == manifest1["run_id"]
    line = f"{counts['added']} added, {counts['removed']} removed, {counts['changed']} changed"
    assert line in proc.stderr

    # The command gives the same changes on stdout, whatever the runs' compressions.
    proc = run_cli("diff", str(out1), str(out2))
    assert proc.returncode == 0, proc.stderr
    assert {(c["change"], c["scope"], c["id"]) for c in _read_changes(proc.stdout.encode())} == got.keys()
    assert line in proc.stderr

    # Metrics of the second (complete) run: its own finish as the last success (manifest times have
    # one-second resolution, so both nights may share a second), and the manifest's numbers.
    values = _metrics(metrics)
    second_finished = dt.datetime.fromisoformat(manifest2["finished_at"]).timestamp()
    assert values["cbr_crawler_last_success_timestamp_seconds"][()] == second_finished >= last_success
    for q in manifest2["quota_owners"]:
        label = (("quota_owner", q["quota_owner"]),)
        assert values["cbr_crawler_run_requests"][label] == q["requests"]
        assert values["cbr_crawler_run_throttles"][label] == q["throttled"]
        assert values["cbr_crawler_run_retries"][label] == q["retries"]
    assert (
        values["cbr_crawler_run_records"][(("tenant", "acme-prod"),)]
        == manifest2["totals"]["records_written"]
    )
    assert values["cbr_crawler_run_scopes"][(("status", "complete"), ("tenant", "acme-prod"))] == len(
        manifest2["scopes"]
    )
    assert values["cbr_crawler_run_status"][(("status", "complete"),)] == 1


def test_diff_says_removed_only_for_scopes_complete_in_both_runs(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(SCENARIO)
    config = _tenant(tmp_path / "t", emu, "none")
    out1, out2 = tmp_path / "one", tmp_path / "two"
    assert run_cli("run", "--config", str(config), "--output", str(out1)).returncode == 0
    emu.call(lambda: emu.estate.churn(0, 300))  # deletions only: every scope loses backups
    assert run_cli("run", "--config", str(config), "--output", str(out2)).returncode == 0

    # The old run's biggest scope becomes partial, and a file of the new run goes missing.
    manifest1 = json.loads((out1 / "manifest.json").read_text())
    partial = max(manifest1["scopes"], key=lambda s: s["records_written"])
    partial["status"] = "partial"
    (out1 / "manifest.json").write_text(json.dumps(manifest1))
    manifest2 = json.loads((out2 / "manifest.json").read_text())
    lost = next(s for s in manifest2["scopes"] if s["records_written"] and s["key"] != partial["key"])
    (out2 / lost["files"][0]["path"]).unlink()

    proc = run_cli("diff", str(out1), str(out2), "--output", str(tmp_path / "d"))

    assert proc.returncode == 1, proc.stderr  # written, but not every scope compared
    summary = json.loads((tmp_path / "d" / "diff.json").read_text())
    skipped = {s["scope"]: s["reason"] for s in summary["skipped"]}
    assert skipped.keys() == {partial["key"], lost["key"]}
    assert "partial in the old run" in skipped[partial["key"]]
    assert "missing" in skipped[lost["key"]]
    changes = _read_changes((tmp_path / "d" / "changes.ndjson").read_bytes())
    assert changes and {c["change"] for c in changes} == {"removed"}
    assert not {c["scope"] for c in changes} & skipped.keys()
    assert "2 scope(s) skipped" in proc.stderr


def test_report_counts_the_inventory_like_the_ground_truth(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(SCENARIO)
    _set_status(emu, 5, S_ERROR)
    out = tmp_path / "out"
    proc = run_cli("run", "--config", str(_tenant(tmp_path / "t", emu, "gzip")), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "inventory:" in proc.stderr
    assert json.loads((out / "report.json").read_text())["totals"]["backups"] == emu.estate.backup_count

    # The estate's history ends on 2025-06-01: look 30 days ahead from mid-May of that year.
    as_of = dt.datetime(2025, 5, 15, tzinfo=dt.UTC)
    proc = run_cli("report", str(out), "--expiring-days", "30", "--as-of", "2025-05-15T00:00:00Z")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())

    manifest = json.loads((out / "manifest.json").read_text())
    projects = {(s["project_id"], s["project_name"]) for s in manifest["scopes"]}
    by: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    expiring: set[str] = set()
    errors: set[str] = set()
    empty: set[str] = set()
    for project_id, name in projects:
        records = emu.call(lambda p=project_id: emu.estate.truth(p, "private"))
        if not records:
            empty.add(name)
        for r in records:
            for dimension, value in (
                ("by_status", r["status"]),
                ("by_resource_type", r["resource_type"]),
                ("by_tenant", "acme-prod"),
                ("by_region", "cn-north-4"),
            ):
                by[dimension][value][0] += 1
                by[dimension][value][1] += r["resource_size"]
            if r["status"] == "error":
                errors.add(r["id"])
            if r["expired_at"] is not None:
                expires = dt.datetime.fromisoformat(r["expired_at"]).replace(tzinfo=dt.UTC)
                if as_of <= expires < as_of + dt.timedelta(days=30):
                    expiring.add(r["id"])
    for dimension, groups in by.items():
        assert report[dimension] == {k: {"backups": v[0], "gb": v[1]} for k, v in groups.items()}, dimension
    assert report["totals"]["backups"] == emu.estate.backup_count
    assert expiring and len(expiring) < emu.estate.backup_count
    assert report["expiring"]["backups"] == len(expiring)
    assert {b["id"] for b in report["expiring"]["soonest"]} <= expiring
    soonest = [b["expired_at"] for b in report["expiring"]["soonest"]]
    assert soonest == sorted(soonest)
    assert len(errors) >= 5
    assert report["errors"]["backups"] == len(errors)
    assert {b["id"] for b in report["errors"]["items"]} == errors
    assert empty
    assert {p["project_name"] for p in report["projects_without_backups"]} == empty
    assert all(p["certain"] for p in report["projects_without_backups"])
    assert report["coverage"]["complete"] is True


async def test_metrics_keep_last_success_on_a_failed_run_and_push_to_a_pushgateway(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    received: list[tuple[str, str, str]] = []

    async def accept(request: web.Request) -> web.Response:
        received.append((request.method, request.path, await request.text()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", accept)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        emu = emulator_factory(SCENARIO)
        config = _tenant(tmp_path / "t", emu, "none")
        metrics = tmp_path / "cbr.prom"
        out = tmp_path / "out"
        proc = await asyncio.to_thread(
            run_cli, "run", "--config", str(config), "--output", str(out), "--metrics-file", str(metrics)
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        last_success = _metrics(metrics)["cbr_crawler_last_success_timestamp_seconds"][()]

        # A run that fails (wrong password): incomplete, and the last success is kept as it was.
        gateway = f"http://127.0.0.1:{port}"
        proc = await asyncio.to_thread(
            run_cli,
            "run", "--config", str(config), "--output", str(tmp_path / "bad"), "--metrics-file", str(metrics),
            "--pushgateway", gateway, "--pushgateway-job", "nightly",
            env=crawler_env(CBR_PW_ACME="not-the-password"),
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr[-3000:]
        values = _metrics(metrics)
        assert values["cbr_crawler_last_success_timestamp_seconds"][()] == last_success
        assert values["cbr_crawler_run_status"][(("status", "incomplete"),)] == 1
        assert values["cbr_crawler_run_status"][(("status", "complete"),)] == 0
        assert values["cbr_crawler_run_tenant_failures"][(("tenant", "acme-prod"),)] == 1
        assert values["cbr_crawler_run_exit_code"][()] == 1

        [(method, path, body)] = received
        assert method == "POST", "POST replaces only the names pushed: the gateway keeps the last success"
        assert path.startswith("/metrics/job/nightly/instance/")
        pushed = {f.name: f for f in text_string_to_metric_families(body)}
        assert "cbr_crawler_run_status" in pushed
        assert "cbr_crawler_last_success_timestamp_seconds" not in pushed
        assert "not-the-password" not in body + proc.stderr + metrics.read_text()
    finally:
        await runner.cleanup()


def test_metrics_written_on_interruption(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    # An interrupted run keeps the last success from the existing file and says "interrupted".
    emu = emulator_factory(SCENARIO)
    metrics = tmp_path / "cbr.prom"
    metrics.write_text(
        "# HELP cbr_crawler_last_success_timestamp_seconds x\n"
        "# TYPE cbr_crawler_last_success_timestamp_seconds gauge\n"
        "cbr_crawler_last_success_timestamp_seconds 1.7e+09\n"
    )
    config = write_tenant(
        tmp_path, emu.url, "acme-prod", "acme", regions=["cn-north-4"],
        rate_limit={"requests_per_second": 2, "concurrency": 1, "page_size": 10},
    )  # fmt: skip
    out = tmp_path / "out"
    with subprocess.Popen(
        [sys.executable, "-m", "crawler", "run", "--config", str(config), "--output", str(out),
         "--metrics-file", str(metrics)],
        env=crawler_env(), stderr=subprocess.PIPE, text=True,
    ) as process:  # fmt: skip
        assert process.stderr is not None
        for line in process.stderr:  # wait until the crawl is under way
            if "scopes to crawl" in line:
                break
        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        code = process.wait(timeout=60)
    assert code == 130, rest[-2000:]
    values = _metrics(metrics)
    assert values["cbr_crawler_run_status"][(("status", "interrupted"),)] == 1
    assert values["cbr_crawler_last_success_timestamp_seconds"][()] == 1.7e9
    assert not (out / "report.json").exists(), "no report of an interrupted run"
