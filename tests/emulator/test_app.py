"""The emulator app end to end: ListBackups over HTTP, auth refusals, EPS, churn, control routes, runners."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from crawler.emulator.__main__ import build_parser, describe, scenario_from_args
from crawler.emulator.estate import Estate
from crawler.emulator.scenario import Scenario, apply_overrides, load_scenario
from crawler.emulator.server import EmulatorServer, EmulatorThread

REPO = Path(__file__).resolve().parents[2]
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


def base_scenario(**sections: Any) -> Scenario:
    data: dict[str, Any] = {
        "seed": 11,
        "estate": {
            "regions": ["cn-north-4", "ap-southeast-1"],
            "domains": [
                {"name": "acme", "backups": 400, "enterprise_projects": 3, "shared_fraction": 0.2},
                {"name": "globex", "backups": 60},
            ],
        },
    }
    data.update(sections)
    return Scenario.model_validate(data)


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer(base_scenario()) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def busiest_project(estate: Estate, domain: str) -> str:
    dom = estate.domain_by_name(domain)
    assert dom is not None
    ids = [p.id for p in estate.projects.values() if p.domain_id == dom.id]
    return max(ids, key=lambda pid: len(estate.truth_ids(pid)))


async def token_for(http: aiohttp.ClientSession, url: str, domain: str, scope: dict[str, Any]) -> str:
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": f"{domain}-admin",
                        "password": f"{domain}-password",
                        "domain": {"name": domain},
                    }
                },
            },
            "scope": scope,
        }
    }
    async with http.post(f"{url}/v3/auth/tokens", json=body) as resp:
        assert resp.status == 201, await resp.text()
        return resp.headers["X-Subject-Token"]


# -- ListBackups ------------------------------------------------------------------------------------


async def test_list_backups_pages_add_up_to_the_truth(
    emu: EmulatorServer, http: aiohttp.ClientSession
) -> None:
    pid = busiest_project(emu.estate, "acme")
    token = await token_for(http, emu.url, "acme", {"project": {"id": pid}})
    truth = emu.estate.truth_ids(pid)
    assert len(truth) > 50
    seen: list[str] = []
    offset = 0
    while True:
        params = {"limit": "50", "offset": str(offset)}
        async with http.get(
            f"{emu.url}/v3/{pid}/backups", params=params, headers={"X-Auth-Token": token}
        ) as resp:
            assert resp.status == 200
            assert REQUEST_ID.match(resp.headers["X-Request-Id"])
            page = await resp.json()
        assert page["count"] == len(truth)
        if not page["backups"]:
            break
        seen += [b["id"] for b in page["backups"]]
        offset += 50
    assert sorted(seen) == sorted(truth)


async def test_repeated_status_params_filter_through_http(
    emu: EmulatorServer, http: aiohttp.ClientSession
) -> None:
    pid = busiest_project(emu.estate, "acme")
    token = await token_for(http, emu.url, "acme", {"project": {"id": pid}})
    wanted = {"available", "error"}
    expected = {b["id"] for b in emu.estate.truth(pid) if b["status"] in wanted}
    url = f"{emu.url}/v3/{pid}/backups?status=available&status=error&limit=1000"
    async with http.get(url, headers={"X-Auth-Token": token}) as resp:
        body = await resp.json()
    assert {b["id"] for b in body["backups"]} == expected
    assert body["count"] == len(expected)
    assert {b["status"] for b in body["backups"]} <= wanted


@pytest.mark.parametrize(
    "query", ["limit=abc", "limit=0", "own_type=everything", "status=sleeping", "dec=yes"]
)
async def test_bad_parameters_are_backupservice_9900(
    emu: EmulatorServer, http: aiohttp.ClientSession, query: str
) -> None:
    pid = busiest_project(emu.estate, "acme")
    token = await token_for(http, emu.url, "acme", {"project": {"id": pid}})
    async with http.get(f"{emu.url}/v3/{pid}/backups?{query}", headers={"X-Auth-Token": token}) as resp:
        assert resp.status == 400
        assert REQUEST_ID.match(resp.headers["X-Request-Id"])
        body = await resp.json()
    assert set(body) == {"error_code", "error_msg"}
    assert body["error_code"] == "BackupService.9900"


async def test_restricted_user_sees_only_granted_enterprise_projects(http: aiohttp.ClientSession) -> None:
    sc = base_scenario()
    estate = Estate.generate(sc.estate)
    acme = estate.domain_by_name("acme")
    assert acme is not None
    eps = estate.enterprise_projects[acme.id]
    granted = eps[1]
    users = [
        {"name": "auditor", "domain": "acme", "password": "pw-auditor", "enterprise_projects": [granted.name]}
    ]
    sc = base_scenario(identity={"users": users})
    async with EmulatorServer(sc, estate=estate) as emu:
        pid = busiest_project(emu.estate, "acme")
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {"name": "auditor", "password": "pw-auditor", "domain": {"name": "acme"}}
                    },
                },
                "scope": {"project": {"id": pid}},
            }
        }
        async with http.post(f"{emu.url}/v3/auth/tokens", json=body) as resp:
            token = resp.headers["X-Subject-Token"]
        url = f"{emu.url}/v3/{pid}/backups?enterprise_project_id=all_granted_eps"
        async with http.get(url, headers={"X-Auth-Token": token}) as resp:
            backups = (await resp.json())["backups"]
        expected = emu.estate.truth_ids(pid, enterprise_project_id=granted.id)
        assert {b["id"] for b in backups} == expected
        assert {b.get("enterprise_project_id", "0") for b in backups} <= {granted.id}


# -- auth refusals ----------------------------------------------------------------------------------


async def test_missing_and_bad_tokens(emu: EmulatorServer, http: aiohttp.ClientSession) -> None:
    pid = busiest_project(emu.estate, "acme")
    for headers in ({}, {"X-Auth-Token": "MIInot-a-token"}):
        async with http.get(f"{emu.url}/v3/{pid}/backups", headers=headers) as resp:
            assert resp.status == 401
            body = await resp.json()
            assert body["error_code"] == "APIGW.0301"
            assert body["error_msg"].startswith("Incorrect IAM authentication information")
            assert body["request_id"] == resp.headers["X-Request-Id"]


@pytest.mark.parametrize(("switch", "status", "code"), [(401, 401, "APIGW.0307"), (403, 403, "APIGW.0302")])
async def test_token_of_another_project(
    http: aiohttp.ClientSession, switch: int, status: int, code: str
) -> None:
    async with EmulatorServer(base_scenario(behaviour={"wrong_project_token_status": switch})) as emu:
        acme = emu.estate.domain_by_name("acme")
        assert acme is not None
        a, b = [p.id for p in emu.estate.projects.values() if p.domain_id == acme.id][:2]
        token = await token_for(http, emu.url, "acme", {"project": {"id": a}})
        for target in (b, "0" * 32):  # another project of the domain, and an unknown one
            async with http.get(f"{emu.url}/v3/{target}/backups", headers={"X-Auth-Token": token}) as resp:
                assert resp.status == status
                body = await resp.json()
                assert body["error_code"] == code
                assert body["request_id"] == resp.headers["X-Request-Id"]
        domain_token = await token_for(http, emu.url, "acme", {"domain": {"name": "acme"}})
        async with http.get(f"{emu.url}/v3/{a}/backups", headers={"X-Auth-Token": domain_token}) as resp:
            assert resp.status == status


# -- EPS --------------------------------------------------------------------------------------------


async def test_enterprise_projects_paging_and_domain_scope(
    emu: EmulatorServer, http: aiohttp.ClientSession
) -> None:
    acme = emu.estate.domain_by_name("acme")
    assert acme is not None
    expected = emu.estate.enterprise_projects[acme.id]
    token = await token_for(http, emu.url, "acme", {"domain": {"name": "acme"}})
    headers = {"X-Auth-Token": token}
    ids: list[str] = []
    for offset in range(len(expected)):
        params = {"limit": "1", "offset": str(offset), "sort_key": "name", "sort_dir": "asc"}
        async with http.get(f"{emu.url}/v1.0/enterprise-projects", params=params, headers=headers) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["total_count"] == len(expected)
        assert len(body["enterprise_projects"]) == 1
        ids.append(body["enterprise_projects"][0]["id"])
    assert ids == [ep.id for ep in sorted(expected, key=lambda ep: (ep.name, ep.id))]
    fragment = expected[1].name[1:4].upper()
    async with http.get(
        f"{emu.url}/v1.0/enterprise-projects", params={"name": fragment}, headers=headers
    ) as resp:
        names = [ep["name"] for ep in (await resp.json())["enterprise_projects"]]
    assert expected[1].name in names and all(fragment.lower() in n.lower() for n in names)
    async with http.get(f"{emu.url}/v1.0/enterprise-projects?limit=1001", headers=headers) as resp:
        assert resp.status == 400
    pid = busiest_project(emu.estate, "acme")
    project_token = await token_for(http, emu.url, "acme", {"project": {"id": pid}})
    async with http.get(
        f"{emu.url}/v1.0/enterprise-projects", headers={"X-Auth-Token": project_token}
    ) as resp:
        assert resp.status == 403
        body = await resp.json()
        assert body["error_code"] == "APIGW.0302"
        assert body["request_id"] == resp.headers["X-Request-Id"]


# -- churn and control routes -----------------------------------------------------------------------


async def test_churn_changes_the_estate_while_serving(http: aiohttp.ClientSession) -> None:
    sc = base_scenario(churn={"creates_per_second": 2000, "deletes_per_second": 500, "tick_seconds": 0.02})
    async with EmulatorServer(sc) as emu:
        before = emu.estate.backup_count
        # No timing assertion: wait (bounded by the test timeout) until the churn task has run.
        while emu.stats.churn_created == 0:  # noqa: ASYNC110 - polling a counter the server owns
            await asyncio.sleep(0.02)
        async with http.get(f"{emu.url}/_emulator/stats") as resp:
            stats = await resp.json()
        assert stats["churn"]["created"] > 0
        assert emu.estate.backup_count == before + emu.stats.churn_created - emu.stats.churn_deleted
        assert emu.estate.backup_count != before or emu.stats.churn_created == emu.stats.churn_deleted


async def test_truth_endpoint_streams_ndjson(emu: EmulatorServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{emu.url}/_emulator/truth") as resp:
        assert resp.status == 200
        assert REQUEST_ID.match(resp.headers["X-Request-Id"])
        lines = (await resp.read()).splitlines()
    records = [orjson.loads(line) for line in lines]
    assert sum(1 for r in records if r["own_type"] == "private") == emu.estate.backup_count
    pid = busiest_project(emu.estate, "acme")
    async with http.get(
        f"{emu.url}/_emulator/truth", params={"project_id": pid, "own_type": "private"}
    ) as resp:
        filtered = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert {r["backup"]["id"] for r in filtered} == emu.estate.truth_ids(pid)
    assert all(r["project_id"] == pid for r in filtered)


async def test_scenario_endpoint_masks_secrets(http: aiohttp.ClientSession) -> None:
    users = [{"name": "ops", "domain": "acme", "password": "s3cret-pass", "ak": "OPSAK", "sk": "s3cret-sk"}]
    sc = base_scenario(identity={"users": users})
    assert "s3cret" not in repr(sc)
    async with EmulatorServer(sc) as emu, http.get(f"{emu.url}/_emulator/scenario") as resp:
        text = await resp.text()
    assert "s3cret" not in text
    assert json.loads(text)["identity"]["users"][0]["password"] == "**********"


def test_thread_runner_serves_sync_callers() -> None:
    with EmulatorThread(base_scenario()) as emu:
        with urllib.request.urlopen(f"{emu.url}/_emulator/stats", timeout=30) as resp:
            assert resp.status == 200
            assert json.load(resp)["backup_count"] == emu.call(lambda: emu.estate.backup_count)
        url = emu.url
    with pytest.raises(OSError), urllib.request.urlopen(f"{url}/_emulator/stats", timeout=5):
        pass


# -- scenarios and the command line -----------------------------------------------------------------


def test_example_scenarios_load() -> None:
    demo = load_scenario(REPO / "config/emulator/demo.yaml")
    assert 2 <= len(demo.estate.domains) <= 3 and len(demo.estate.regions) == 2
    assert sum(d.backups for d in demo.estate.domains) == 20_000
    big = load_scenario(REPO / "config/emulator/big.yaml")
    assert sum(d.backups for d in big.estate.domains) == 100_000


def test_flags_override_the_scenario() -> None:
    args = build_parser().parse_args(
        ["--seed", "5", "--backups", "301", "--domains", "a,b", "--regions", "eu-west-0", "--token-ttl", "3"]
    )
    sc = scenario_from_args(args)
    assert sc.seed == 5 and sc.estate.seed == 5
    assert [d.name for d in sc.estate.domains] == ["a", "b"]
    assert [d.backups for d in sc.estate.domains] == [151, 150]
    assert sc.estate.regions == ("eu-west-0",)
    assert sc.identity.token_ttl_seconds == 3
    kept = apply_overrides(
        base_scenario(identity={"users": [{"name": "u", "domain": "acme", "password": "p1"}]})
    )
    assert kept.identity.users[0].password.get_secret_value() == "p1"


async def test_describe_masks_credentials_unless_asked() -> None:
    async with EmulatorServer(base_scenario()) as emu:
        user = next(iter(emu.identity.credentials()))
        assert user.secret_key is not None
        masked, shown = io.StringIO(), io.StringIO()
        describe(emu, show_secrets=False, out=masked)
        describe(emu, show_secrets=True, out=shown)
    assert emu.url in masked.getvalue()
    assert user.secret_key not in masked.getvalue() and user.password not in masked.getvalue()
    assert user.secret_key in shown.getvalue() and "curl" in shown.getvalue()


def test_module_entry_point_serves_until_terminated(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crawler.emulator",
            "--port",
            "0",
            "--backups",
            "300",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"listening on (http://\S+)", first)
        assert match, first
        with urllib.request.urlopen(f"{match.group(1)}/_emulator/stats", timeout=30) as resp:
            assert json.load(resp)["backup_count"] == 300
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
