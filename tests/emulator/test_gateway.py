"""API-Gateway behaviour: throttling (fake clock and over HTTP), storms, faults as a client sees them."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from crawler.emulator.gateway import FaultInjector, Throttler, window_label
from crawler.emulator.scenario import FaultsSpec, Scenario, ThrottleRule, ThrottleSpec, parse_window
from crawler.emulator.server import EmulatorServer

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rule(**fields: Any) -> ThrottleRule:
    return ThrottleRule.model_validate(fields)


# -- units ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds", "label"),
    [
        ("1 second", 1, "1 second"),
        ("5 second", 5, "5 second"),
        ("1 minute", 60, "1 minute"),
        ("5m", 300, "5 minute"),
    ],
)
def test_windows_parse_and_print_like_api_gateway(text: str, seconds: float, label: str) -> None:
    assert parse_window(text) == seconds
    assert window_label(seconds) == label


def test_bad_window_rejected() -> None:
    with pytest.raises(ValueError, match="bad window"):
        parse_window("fortnight")


def test_sliding_window_admits_again_when_the_oldest_request_leaves() -> None:
    clock = FakeMonotonic()
    throttler = Throttler(ThrottleSpec(rules=(rule(limit=2, window="1 second"),)), random.Random(1), clock)
    assert throttler.check("cbr.list_backups", user="u1", ip="127.0.0.1") is None
    clock.now += 0.4
    assert throttler.check("cbr.list_backups", user="u1", ip="127.0.0.1") is None
    refusal = throttler.check("cbr.list_backups", user="u1", ip="127.0.0.1")
    assert refusal is not None and refusal.retry_after == pytest.approx(0.6)
    # Other users and other APIs have their own counters.
    assert throttler.check("cbr.list_backups", user="u2", ip="127.0.0.1") is None
    assert throttler.check("eps.list", user="u1", ip="127.0.0.1") is None
    clock.now += 0.6
    assert throttler.check("cbr.list_backups", user="u1", ip="127.0.0.1") is None
    assert throttler.check("cbr.list_backups", user="u1", ip="127.0.0.1") is not None


def test_fixed_window_resets_on_the_boundary_and_selector_applies() -> None:
    clock = FakeMonotonic()
    spec = ThrottleSpec(rules=(rule(policy="ip", limit=1, window=10, algorithm="fixed", api="iam.*"),))
    throttler = Throttler(spec, random.Random(1), clock)
    assert throttler.check("iam.tokens", user=None, ip="10.0.0.1") is None
    refusal = throttler.check("iam.tokens", user=None, ip="10.0.0.1")
    assert refusal is not None and refusal.retry_after == pytest.approx(10.0)
    assert throttler.check("cbr.list_backups", user=None, ip="10.0.0.1") is None  # not selected
    clock.now += 10
    assert throttler.check("iam.tokens", user=None, ip="10.0.0.1") is None


def test_fault_dice_are_reproducible_from_the_seed() -> None:
    spec = FaultsSpec.model_validate({"faults": [{"kind": "status", "status": 502, "probability": 0.3}]})

    def pattern(seed: int) -> list[bool]:
        injector = FaultInjector(spec, random.Random(seed))
        return [injector.pick("cbr.list_backups") is not None for _ in range(200)]

    assert pattern(5) == pattern(5)
    assert 20 < sum(pattern(5)) < 100
    assert pattern(5) != pattern(6)


# -- over HTTP ------------------------------------------------------------------------------------


def scenario(**sections: Any) -> Scenario:
    return Scenario.model_validate(
        {
            "seed": 3,
            "estate": {"regions": ["cn-north-4"], "domains": [{"name": "acme", "backups": 60}]},
            **sections,
        }
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def login(http: aiohttp.ClientSession, emu: EmulatorServer) -> tuple[str, str]:
    """A project-scoped token for acme's cn-north-4 project, and that project's id."""
    pid = next(p.id for p in emu.estate.projects.values() if p.name == "cn-north-4")
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": "acme-admin", "password": "acme-password", "domain": {"name": "acme"}}
                },
            },
            "scope": {"project": {"id": pid}},
        }
    }
    async with http.post(f"{emu.url}/v3/auth/tokens", json=body) as resp:
        assert resp.status == 201
        return resp.headers["X-Subject-Token"], pid


@pytest.mark.parametrize("retry_after", [False, True])
async def test_throttled_call_gets_the_gateway_429(http: aiohttp.ClientSession, retry_after: bool) -> None:
    throttle = {"rules": [{"policy": "user", "limit": 2, "window": "1 minute", "api": "cbr.list_backups"}]}
    sc = scenario(throttle=throttle, behaviour={"retry_after": retry_after})
    async with EmulatorServer(sc) as emu:
        token, pid = await login(http, emu)
        statuses = []
        for _ in range(3):
            async with http.get(f"{emu.url}/v3/{pid}/backups", headers={"X-Auth-Token": token}) as resp:
                statuses.append(resp.status)
                body = await resp.json()
                headers = resp.headers
        assert statuses == [200, 200, 429]
        assert body == {
            "error_msg": (
                "The throttling threshold has been reached: policy user over ratelimit,limit:2,time:1 minute"
            ),
            "error_code": "APIGW.0308",
            "request_id": headers["X-Request-Id"],
        }
        if retry_after:
            assert 1 <= int(headers["Retry-After"]) <= 60
        else:
            assert "Retry-After" not in headers
        assert emu.stats.throttled["cbr.list_backups"] == 1
        async with http.get(f"{emu.url}/_emulator/stats") as resp:
            stats = await resp.json()
        assert stats["requests"]["cbr.list_backups"] == {"200": 2, "429": 1}


async def test_iam_throttle_code_and_storm(http: aiohttp.ClientSession) -> None:
    throttle = {
        "rules": [{"policy": "ip", "limit": 1, "window": 60, "api": "iam.tokens", "error_code": "IAM.0012"}],
        "storm": {"fraction": 1.0, "api": "eps.*"},
    }
    async with EmulatorServer(scenario(throttle=throttle)) as emu:
        await login(http, emu)
        async with http.post(f"{emu.url}/v3/auth/tokens", json={}) as resp:
            assert resp.status == 429
            assert (await resp.json())["error_code"] == "IAM.0012"
        async with http.get(f"{emu.url}/v1.0/enterprise-projects") as resp:
            assert resp.status == 429
            assert (await resp.json())["error_code"] == "APIGW.0308"


def faulty(kind: str, **extra: Any) -> Scenario:
    fault = {"kind": kind, "api": "cbr.list_backups", "first_n": 1, **extra}
    return scenario(faults={"faults": [fault]})


@pytest.mark.parametrize(
    ("status", "code"),
    [(502, "APIGW.0201"), (504, "APIGW.0201"), (503, "APIGW.0201"), (500, "BackupService.9910")],
)
async def test_status_fault_then_recovery(http: aiohttp.ClientSession, status: int, code: str) -> None:
    async with EmulatorServer(faulty("status", status=status)) as emu:
        token, pid = await login(http, emu)
        url = f"{emu.url}/v3/{pid}/backups"
        async with http.get(url, headers={"X-Auth-Token": token}) as resp:
            assert resp.status == status
            assert REQUEST_ID.match(resp.headers["X-Request-Id"])
            assert (await resp.json())["error_code"] == code
        async with http.get(url, headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 200  # first_n: 1
        assert emu.stats.faults["status"] == 1


async def test_iam_503_is_apigw_0613(http: aiohttp.ClientSession) -> None:
    sc = scenario(faults={"faults": [{"kind": "status", "status": 503, "api": "iam.*"}]})
    async with EmulatorServer(sc) as emu, http.post(f"{emu.url}/v3/auth/tokens", json={}) as resp:
        assert resp.status == 503
        assert (await resp.json())["error_code"] == "APIGW.0613"


async def test_reset_gives_the_client_no_response(http: aiohttp.ClientSession) -> None:
    # aiohttp silently resends an idempotent request once when the connection drops, so the first
    # two matching requests are reset: the client sees the error, the emulator counts both.
    async with EmulatorServer(faulty("reset", first_n=2)) as emu:
        token, pid = await login(http, emu)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(f"{emu.url}/v3/{pid}/backups", headers={"X-Auth-Token": token}) as resp:
                await resp.read()
        assert emu.stats.faults["reset"] == 2
        async with http.get(f"{emu.url}/v3/{pid}/backups", headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 200


async def test_truncate_with_honest_length_is_a_complete_response_of_broken_json(
    http: aiohttp.ClientSession,
) -> None:
    async with EmulatorServer(faulty("truncate")) as emu:
        token, pid = await login(http, emu)
        url = f"{emu.url}/v3/{pid}/backups"
        async with http.get(url, headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 200
            cut = await resp.read()
        async with http.get(url, headers={"X-Auth-Token": token}) as resp:
            full = await resp.read()
        assert full.startswith(cut) and len(cut) < len(full)
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(cut)


async def test_truncate_with_full_length_is_a_short_read(http: aiohttp.ClientSession) -> None:
    async with EmulatorServer(faulty("truncate", honest_length=False)) as emu:
        token, pid = await login(http, emu)
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(f"{emu.url}/v3/{pid}/backups", headers={"X-Auth-Token": token}) as resp:
                assert resp.status == 200
                await resp.read()


async def test_malformed_body(http: aiohttp.ClientSession) -> None:
    async with EmulatorServer(faulty("malformed")) as emu:
        token, pid = await login(http, emu)
        async with http.get(f"{emu.url}/v3/{pid}/backups", headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(await resp.read())


async def test_slow_body_arrives_in_chunks_and_intact(http: aiohttp.ClientSession) -> None:
    async with EmulatorServer(faulty("slow_body", chunk_bytes=512, chunk_delay_ms=1)) as emu:
        token, pid = await login(http, emu)
        async with http.get(f"{emu.url}/v3/{pid}/backups", headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 200
            assert REQUEST_ID.match(resp.headers["X-Request-Id"])
            chunks = [chunk async for chunk in resp.content.iter_any()]
        body = orjson.loads(b"".join(chunks))
        assert body["count"] == len(emu.estate.truth_ids(pid))
        assert emu.stats.faults["slow_body"] == 1


async def test_latency_is_applied_and_counted(http: aiohttp.ClientSession) -> None:
    sc = scenario(faults={"latency": [{"distribution": "lognormal", "median_ms": 1, "sigma": 0.2}]})
    async with EmulatorServer(sc) as emu:
        token, pid = await login(http, emu)
        async with http.get(f"{emu.url}/v3/{pid}/backups?limit=1", headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 200


async def test_unknown_api_is_apigw_0101(http: aiohttp.ClientSession) -> None:
    async with EmulatorServer(scenario()) as emu, http.get(f"{emu.url}/v9/nothing") as resp:
        assert resp.status == 404
        body = await resp.json()
        assert body["error_code"] == "APIGW.0101"
        assert body["request_id"] == resp.headers["X-Request-Id"]
