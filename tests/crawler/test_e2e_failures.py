"""What the on-call engineer sees when something goes wrong: a 403 scope, a SIGTERM."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import crawler_env, run_cli, scope_ids, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import FaultsSpec, IdentitySpec, LatencySpec, Scenario, UserSpec
from crawler.emulator.server import EmulatorThread

pytestmark = pytest.mark.e2e  # against the emulator over real sockets (pytest -m "not e2e" skips)


def test_forbidden_scope_fails_with_gateway_code_and_request_id_others_complete(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    scenario = Scenario(
        seed=21,
        estate=EstateSpec(seed=21, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=4000),)),
        identity=IdentitySpec(
            users=(
                UserSpec(name="auditor", domain="acme", password="auditor-pw", enterprise_projects=("0",)),
            )
        ),
    )
    emu = emulator_factory(scenario)
    domain = emu.estate.domain_by_name("acme")
    assert domain is not None
    other_ep = next(ep.id for ep in emu.estate.enterprise_projects[domain.id] if ep.id != "0")
    config = write_tenant(
        tmp_path,
        emu.url,
        "acme-audit",
        "acme",
        auth={"mode": "password", "user": "auditor", "domain": "acme", "password_env": "AUDITOR_PW"},
        regions=["cn-north-4"],
        own_types=["private"],
        enterprise_projects={"mode": "ids", "ids": ["0", other_ep]},
    )
    out = tmp_path / "out"
    proc = run_cli(
        "run", "--config", str(config), "--output", str(out), env=crawler_env(AUDITOR_PW="auditor-pw")
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "incomplete"
    assert not (out / "_SUCCESS").exists()
    # all_granted_eps would have left the refused EP out silently: the plan fell back, and says why.
    plan = manifest["plans"]["acme-audit"]
    assert (
        plan["plan"] == "one pass per scope" and f"enterprise project {other_ep} is refused" in plan["reason"]
    )
    forbidden = [s for s in manifest["scopes"] if s["enterprise_project_id"] == other_ep]
    allowed = [s for s in manifest["scopes"] if s["enterprise_project_id"] == "0"]
    assert forbidden and allowed
    for scope in forbidden:
        assert scope["status"] == "failed"
        assert scope["error_code"] == "APIGW.0302"
        assert scope["request_id"] and len(scope["request_id"]) == 32
        assert scope["files"] == []
    for scope in allowed:
        assert scope["status"] == "complete"
        truth = emu.call(lambda s=scope: emu.estate.truth_ids(s["project_id"], "private", "0"))
        assert set(scope_ids(out, scope)) == truth
    assert "APIGW.0302" in proc.stderr


def test_sigterm_stops_cleanly_with_exit_130_and_keeps_complete_scopes(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    scenario = Scenario(
        seed=4,
        estate=EstateSpec(seed=4, domains=(DomainSpec("acme", backups=20000, subprojects=3),)),
        faults=FaultsSpec(latency=(LatencySpec(api="cbr.list_backups", ms=150),)),
    )
    emu = emulator_factory(scenario)
    config = write_tenant(
        tmp_path, emu.url, "acme-prod", "acme", rate_limit={"requests_per_second": 20, "concurrency": 2}
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "crawler", "run", "--config", str(config), "--output", str(out)],
        env=crawler_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(out.rglob("*.ndjson")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the crawl ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "SIGTERM" in stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert not (out / "_SUCCESS").exists()
    assert not list(out.rglob("*.part")), "no half-written files left behind"
    complete = [s for s in manifest["scopes"] if s["status"] == "complete"]
    assert complete
    for scope in complete:
        for file in scope["files"]:
            data = (out / file["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == file["sha256"]
        truth = emu.call(
            lambda s=scope: emu.estate.truth_ids(s["project_id"], s["own_type"], s["enterprise_project_id"])
        )
        assert set(scope_ids(out, scope)) == truth


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the test (root only; the test skips elsewhere)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr!r}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_full_disk_fails_scopes_not_the_run(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    with small_tmpfs(tmp_path / "tiny", "600k") as mount_point:
        scenario = Scenario(seed=6, estate=EstateSpec(seed=6, domains=(DomainSpec("acme", backups=6000),)))
        emu = emulator_factory(scenario)
        config = write_tenant(tmp_path, emu.url, "acme-prod", "acme", own_types=["private"])
        out = mount_point / "out"
        proc = run_cli("run", "--config", str(config), "--output", str(out), env=crawler_env())
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert "No space left on device" in proc.stderr
        assert not (out / "_SUCCESS").exists()
        assert not list(out.rglob("*.part"))
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "incomplete"
        statuses = {s["status"] for s in manifest["scopes"]}
        # Which scopes complete before the disk fills depends on scheduling; some must not.
        assert statuses & {"failed", "partial"}, statuses
        for scope in manifest["scopes"]:
            for file in scope["files"]:
                data = (out / file["path"]).read_bytes()
                assert hashlib.sha256(data).hexdigest() == file["sha256"], "what was kept is whole"


def test_a_full_temporary_directory_fails_the_scopes_that_spill_their_ids_and_says_so(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    # One page of tmpfs: enough for tempfile to accept the directory, not for thousands of ids.
    with small_tmpfs(tmp_path / "tinytmp", "4k") as mount_point:
        scenario = Scenario(seed=6, estate=EstateSpec(seed=6, domains=(DomainSpec("acme", backups=3000),)))
        emu = emulator_factory(scenario)
        config = write_tenant(tmp_path, emu.url, "acme-prod", "acme", own_types=["private"])
        out = tmp_path / "out"
        env = dict(crawler_env(), TMPDIR=str(mount_point), CBR_CRAWLER_SPILL_AT="0")
        proc = run_cli("run", "--config", str(config), "--output", str(out), env=env)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert (
            f"the temporary file of its backup ids in {mount_point}: No space left on device" in proc.stderr
        )
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "incomplete"
        failed = [s for s in manifest["scopes"] if s["status"] != "complete"]
        counts = [s["count"] if s["single_pass"] is None else s["single_pass"]["count"] for s in failed]
        assert failed and all(counts), "only scopes with backups spill"
        assert not list(out.rglob("*.part"))


def test_persistent_5xx_fails_the_scope_at_its_deadline_with_the_request_id(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    from crawler.emulator.scenario import FaultSpec

    scenario = Scenario(
        seed=12,
        estate=EstateSpec(
            seed=12, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=500, subprojects=0),)
        ),
        faults=FaultsSpec(
            faults=(FaultSpec(kind="status", status=503, probability=1.0, api="cbr.list_backups"),)
        ),
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
        timeouts={"scope": 2.0},
    )
    out = tmp_path / "out"
    proc = run_cli("run", "--config", str(config), "--output", str(out), env=crawler_env())
    assert proc.returncode == 1, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    [scope] = manifest["scopes"]
    assert scope["status"] == "failed"
    assert "deadline" in scope["error"]
    assert "503" in scope["error"] and "request id" in scope["error"]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("how", ["small files, written whole", "streamed files"])
def test_a_scope_whose_commit_breaks_unexpectedly_is_reported_failed_never_lost(
    how: str, tmp_path: Path, emulator_factory: Callable[..., EmulatorThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Commits run in the background while workers go on: an unexpected error there (a bug, not a
    # full disk) must still put the scope in the manifest as failed, so the run cannot pass as
    # complete. Small scopes' commits end in a callback, streamed ones' in a task: both are broken.
    from crawler.cli import main
    from crawler.pipeline import sink

    scenario = Scenario(
        seed=5,
        estate=EstateSpec(seed=5, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=300),)),
    )
    emu = emulator_factory(scenario)
    config = write_tenant(
        tmp_path, emu.url, "acme", "acme", regions=["cn-north-4"], own_types=["private"],
        enterprise_projects={"mode": "none"}, projects={"discover": {}},
    )  # fmt: skip
    broken: list[str] = []
    if how == "streamed files":
        monkeypatch.setattr(sink, "BUFFER_BYTES", 0)  # every scope with a record opens its file
        finish = sink._FileWriter.finish

        def breaking_finish(self: sink._FileWriter, destination: Path) -> tuple[int, str]:
            if not broken:
                broken.append(str(destination))
                raise RuntimeError("injected bug")
            return finish(self, destination)

        monkeypatch.setattr(sink._FileWriter, "finish", breaking_finish)
    else:
        monkeypatch.setattr(sink, "BUFFER_BYTES", 1 << 30)  # every scope is written whole
        write_file = sink._write_file

        def breaking_write(part: str, destination: str, payload: bytes) -> tuple[int, str]:
            if not broken:
                broken.append(destination)
                raise RuntimeError("injected bug")
            return write_file(part, destination, payload)

        monkeypatch.setattr(sink, "_write_file", breaking_write)
    for name, value in crawler_env().items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    assert main(["run", "--config", str(config), "--output", str(out), "--no-report"]) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "incomplete"
    failed = [s for s in manifest["scopes"] if s["status"] != "complete"]
    assert len(failed) == 1 and "injected bug" in failed[0]["error"], failed
    assert len(manifest["scopes"]) > 1 and not (out / "_SUCCESS").exists()
