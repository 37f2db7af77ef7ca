"""Crash-safe resume, as an operator meets it: a run stopped or killed at any point is continued by
running the same command again, and ends with the output an uninterrupted run would have written."""

from __future__ import annotations

import functools
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from conftest import crawler_env, read_ndjson, run_cli, scope_ids, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import FaultsSpec, LatencySpec, Scenario
from crawler.emulator.server import EmulatorThread
from crawler.pipeline.state import state_path

pytestmark = pytest.mark.e2e  # against the emulator over real sockets (pytest -m "not e2e" skips)

CONCURRENCY = 2

# About 70 pages of 100 at 50 ms each over 2 workers: a crawl of a couple of seconds, long enough
# for a signal to land in the middle of it, with scopes of one page and scopes of many.
SLOW = Scenario(
    seed=7,
    estate=EstateSpec(
        seed=7,
        regions=("cn-north-4",),
        domains=(DomainSpec("acme", backups=5000, subprojects=2, enterprise_projects=2),),
    ),
    faults=FaultsSpec(latency=(LatencySpec(api="cbr.list_backups", ms=50),)),
)

QUICK = Scenario(
    seed=8,
    estate=EstateSpec(
        seed=8, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=1500, enterprise_projects=1),)
    ),
)


def _tenant(directory: Path, url: str, **overrides: Any) -> Path:
    settings: dict[str, Any] = {
        "regions": ["cn-north-4"],
        "own_types": ["private", "shared"],
        "rate_limit": {"requests_per_second": 200, "concurrency": CONCURRENCY, "page_size": 100},
    }
    settings.update(overrides)
    return write_tenant(directory, url, "acme-prod", "acme", **settings)


def _start(config: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "crawler", "run", "--config", str(config), "--output", str(out), *extra],
        env=crawler_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_final_files(proc: subprocess.Popen[str], out: Path, n: int) -> None:
    deadline = time.monotonic() + 60
    while len(list(out.rglob("*.ndjson"))) < n:
        if proc.poll() is not None:  # say why: its stderr
            stderr = proc.communicate()[1]
            raise AssertionError("the crawl ended before it could be interrupted:\n" + stderr[-3000:])
        assert time.monotonic() < deadline, "no scope completed in time"
        time.sleep(0.02)


def _manifest(out: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return manifest


def _comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest minus what differs between any two runs: ids, times, quota statistics, sha256
    (each record carries its run id and fetch time), and the resume bookkeeping."""
    dropped = {"run_id", "started_at", "finished_at", "duration_seconds", "quota_owners", "resume"}
    scopes = [
        {
            **{k: v for k, v in scope.items() if k not in {"started_at", "finished_at"}},
            "files": [{k: v for k, v in f.items() if k != "sha256"} for f in scope["files"]],
        }
        for scope in manifest["scopes"]
    ]
    return {**{k: v for k, v in manifest.items() if k not in dropped}, "scopes": scopes}


def _ids_per_file(out: Path, manifest: dict[str, Any]) -> dict[str, list[str]]:
    return {
        f["path"]: [r["id"] for r in read_ndjson(out / f["path"])]
        for s in manifest["scopes"]
        for f in s["files"]
    }


def _assert_same_output_as(baseline_out: Path, out: Path) -> dict[str, Any]:
    """``out`` holds what the uninterrupted run in ``baseline_out`` wrote, under one run id."""
    baseline, manifest = _manifest(baseline_out), _manifest(out)
    assert manifest["status"] == "complete"
    assert _comparable(manifest) == _comparable(baseline)
    assert _ids_per_file(out, manifest) == _ids_per_file(baseline_out, baseline)
    for scope in manifest["scopes"]:
        for file in scope["files"]:
            assert {r["_crawl"]["run_id"] for r in read_ndjson(out / file["path"])} <= {manifest["run_id"]}
    assert (out / "_SUCCESS").exists()
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.partial"))
    return manifest


def _recorded_run_id(out: Path) -> str:
    db = sqlite3.connect(f"file:{state_path(out)}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT run_id FROM run").fetchone()
    finally:
        db.close()
    assert row is not None
    return str(row[0])


def _truth(emu: EmulatorThread, scope: dict[str, Any]) -> set[str]:
    return emu.estate.truth_ids(scope["project_id"], scope["own_type"], scope["enterprise_project_id"])


def _query_pages(scopes: Iterable[dict[str, Any]]) -> int:
    """The pages the scopes cost: a single pass's pages once for all its partitions."""
    pages = {(s["single_pass"] or {}).get("pass", s["key"]): s["pages"] for s in scopes}
    return sum(pages.values())


def _cbr_requests(emu: EmulatorThread) -> int:
    return emu.call(lambda: emu.stats.total(route="cbr.list_backups"))


def test_sigterm_then_rerun_completes_without_refetching_complete_scopes(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(SLOW)
    config = _tenant(tmp_path, emu.url)
    out = tmp_path / "out"

    proc = _start(config, out)
    try:
        _wait_for_final_files(proc, out, 4)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    first = _manifest(out)
    assert first["status"] == "interrupted"
    kept = {s["key"]: s for s in first["scopes"] if s["status"] == "complete"}
    assert len(kept) > CONCURRENCY
    requests_before = _cbr_requests(emu)

    again = run_cli("run", "--config", str(config), "--output", str(out), "--log-json")

    assert again.returncode == 0, again.stderr[-3000:]
    logs = [json.loads(line) for line in again.stderr.splitlines() if line.startswith("{")]
    assert any(f"resuming run {first['run_id']}" in entry["msg"] for entry in logs)
    # Log lines of the resumed process carry the run's id, not the one it was started with.
    assert {entry["run_id"] for entry in logs[1:]} == {first["run_id"]}
    manifest = _manifest(out)
    assert manifest["run_id"] == first["run_id"]
    assert manifest["started_at"] == first["started_at"]
    assert manifest["resume"] == {"attempt": 2, "scopes_from_checkpoint": len(kept)}
    assert manifest["status"] == "complete" and (out / "_SUCCESS").exists()
    by_key = {s["key"]: s for s in manifest["scopes"]}
    assert set(kept) < set(by_key)
    # Scopes complete before the signal are reported as they were, files untouched (same sha256,
    # though every record carries its fetch time): they were not fetched again...
    for key, scope in kept.items():
        assert by_key[key] == scope
    # ...and the requests of the second run are exactly the pages of the other scopes (the bound
    # allows for requests of the first run the emulator finished answering after it stopped).
    new_pages = _query_pages(s for key, s in by_key.items() if key not in kept)
    # (The plan's probes of enterprise project grants are discovery, made by every run.)
    spent = _cbr_requests(emu) - requests_before - manifest["plans"]["acme-prod"]["probe_requests"]
    assert new_pages <= spent <= new_pages + CONCURRENCY
    cbr_requests = sum(q["requests"] for q in manifest["quota_owners"] if "cbr" in q["quota_owner"])
    assert cbr_requests == new_pages + manifest["plans"]["acme-prod"]["probe_requests"]
    for scope in manifest["scopes"]:
        truth = emu.call(functools.partial(_truth, emu, scope))
        ids = scope_ids(out, scope)
        assert len(ids) == len(set(ids)) and set(ids) == truth, scope["key"]
        for record in read_ndjson(out / scope["files"][0]["path"]):
            assert record["_crawl"]["run_id"] == first["run_id"]


@pytest.mark.parametrize(
    ("seed", "spilled"), [(1, False), (2, False), (3, False), (4, True)], ids=["1", "2", "3", "4-ids-spilled"]
)
def test_sigkill_at_random_moments_then_rerun_equals_an_uninterrupted_run(
    seed: int,
    spilled: bool,
    tmp_path: Path,
    emulator_factory: Callable[..., EmulatorThread],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if spilled:  # every scope with backups keeps its ids in a temporary file (crawler.pipeline.dedupe)
        monkeypatch.setenv("CBR_CRAWLER_SPILL_AT", "0")
    emu = emulator_factory(SLOW)
    config = _tenant(tmp_path, emu.url)
    baseline_out = tmp_path / "baseline"
    baseline = run_cli("run", "--config", str(config), "--output", str(baseline_out))
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    total_scopes = len(_manifest(baseline_out)["scopes"])

    rng = random.Random(seed)
    out = tmp_path / "out"
    kills = 2 if seed == 3 else 1  # one seed is killed twice: its third process finishes the run
    run_ids = set()
    for _ in range(kills):
        # A random moment: after a random number of scopes reached their final name (the kill may
        # fall between a file's rename and its checkpoint), plus a random part of a page's time.
        # The first kill waits for one scope at least, so that there is a run to resume; a second
        # one may land anywhere, even while the resuming process is still starting.
        already = len(list(out.rglob("*.ndjson")))
        proc = _start(config, out)
        try:
            _wait_for_final_files(proc, out, already + rng.randint(int(already == 0), total_scopes // 4))
            time.sleep(rng.uniform(0, 0.12))
            assert proc.poll() is None, "the crawl ended before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL
        assert not (out / "_SUCCESS").exists()
        run_ids.add(_recorded_run_id(out))
    assert len(run_ids) == 1, "a resumed run keeps its run id"

    again = run_cli("run", "--config", str(config), "--output", str(out))

    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming run" in again.stderr
    manifest = _assert_same_output_as(baseline_out, out)
    assert manifest["run_id"] == run_ids.pop()
    assert manifest["resume"]["attempt"] == kills + 1
    assert manifest["totals"]["records_written"] == emu.estate.backup_count + sum(
        s["records_written"] for s in manifest["scopes"] if s["own_type"] == "shared"
    )


def _unfinish(out: Path) -> None:
    """Make the finished run in ``out`` look like one killed after its last checkpoint."""
    db = sqlite3.connect(state_path(out))
    try:
        db.execute("UPDATE run SET finished_at = NULL, status = NULL")
        db.commit()
    finally:
        db.close()


def test_when_a_run_resumes_and_when_it_starts_afresh(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(QUICK)
    config = _tenant(tmp_path, emu.url)
    out = tmp_path / "out"

    def run(*extra: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        proc = run_cli("run", "--config", str(config), "--output", str(out), *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc, _manifest(out)

    _, first = run()
    assert first["resume"] == {"attempt": 1, "scopes_from_checkpoint": 0}

    # A finished run is never continued: the same command starts a new run.
    proc, second = run()
    assert second["run_id"] != first["run_id"]
    assert f"the previous run {first['run_id']} finished (complete)" in proc.stderr
    proc, third = run("--resume")
    assert third["run_id"] != second["run_id"]
    assert "--resume: nothing to resume" in proc.stderr

    # Killed after its last checkpoint: a lost file is fetched again, a stray .part is removed.
    _unfinish(out)
    scopes = third["scopes"]
    lost = max(scopes, key=lambda s: s["pages"])
    (out / lost["files"][0]["path"]).unlink()
    stray = out / (scopes[0]["files"][0]["path"] + ".part")
    stray.write_bytes(b'{"id": "half')
    before = _cbr_requests(emu)
    proc, resumed = run()
    assert resumed["run_id"] == third["run_id"]
    assert "is missing: fetching it again" in proc.stderr
    assert resumed["resume"] == {"attempt": 2, "scopes_from_checkpoint": len(scopes) - 1}
    probes = resumed["plans"]["acme-prod"]["probe_requests"]
    assert _cbr_requests(emu) - before == lost["pages"] + probes
    assert _comparable(resumed) == _comparable(third)
    assert not stray.exists()

    # The configuration changed: the recorded scopes answered another question.
    _unfinish(out)
    config = _tenant(tmp_path, emu.url, own_types=["private"])
    proc, changed = run()
    assert changed["run_id"] != resumed["run_id"]
    assert "configuration changed" in proc.stderr
    assert changed["resume"]["scopes_from_checkpoint"] == 0

    # --fresh ignores an unfinished run; --run-id naming another run starts that run.
    _unfinish(out)
    proc, fresh = run("--fresh")
    assert fresh["run_id"] != changed["run_id"] and "--fresh given" in proc.stderr
    _unfinish(out)
    proc, named = run("--run-id", "nightly-42")
    assert named["run_id"] == "nightly-42" and named["resume"]["attempt"] == 1
    _unfinish(out)
    proc, same = run("--run-id", "nightly-42")
    assert same["run_id"] == "nightly-42" and same["resume"]["attempt"] == 2

    usage = run_cli("run", "--config", str(config), "--output", str(out), "--resume", "--run-id", "x")
    assert usage.returncode == 2
    assert "not allowed with argument" in usage.stderr
