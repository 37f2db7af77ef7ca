"""Emulated IAM over real sockets: tokens, scopes, agencies, expiry, temporary and permanent AK/SK."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

# tests/conftest.py points HOME at a temporary directory before this import: the SDK writes there.
from huaweicloudsdkcbr.v1 import CbrClient, ListBackupsRequest  # type: ignore[import-untyped]
from huaweicloudsdkcore.auth.credentials import BasicCredentials, GlobalCredentials  # type: ignore[import-untyped]
from huaweicloudsdkcore.http.http_config import HttpConfig  # type: ignore[import-untyped]
from huaweicloudsdkcore.region.region import Region  # type: ignore[import-untyped]
from huaweicloudsdkeps.v1 import EpsClient, ListEnterpriseProjectRequest  # type: ignore[import-untyped]
from yarl import URL

from crawler.emulator import identity as identity_module
from crawler.emulator.scenario import Scenario
from crawler.emulator.server import EmulatorServer
from crawler.support import signer

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


class ManualClock:
    """Wall clock the tests move by hand, so that expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def scenario(**identity: Any) -> Scenario:
    return Scenario.model_validate(
        {
            "seed": 7,
            "estate": {
                "regions": ["cn-north-4", "ap-southeast-1"],
                "domains": [{"name": "acme", "backups": 120}, {"name": "globex", "backups": 40}],
            },
            "identity": {
                "agencies": [{"domain": "globex", "name": "inventory", "trusted_domain": "acme"}],
                "token_ttl_seconds": 1,
                "security_token_ttl_seconds": 2,
                **identity,
            },
        }
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def emu(clock: ManualClock) -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer(scenario(), clock=clock) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def password_body(user: str, password: str, domain: str, scope: dict[str, Any]) -> dict[str, Any]:
    return {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": user, "password": password, "domain": {"name": domain}}},
            },
            "scope": scope,
        }
    }


def project_named(emu: EmulatorServer, domain: str, name: str) -> str:
    dom = emu.estate.domain_by_name(domain)
    assert dom is not None
    return next(p.id for p in emu.estate.projects.values() if p.domain_id == dom.id and p.name == name)


async def get_token(
    http: aiohttp.ClientSession, emu: EmulatorServer, domain: str, scope: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    body = password_body(f"{domain}-admin", f"{domain}-password", domain, scope)
    async with http.post(f"{emu.url}/v3/auth/tokens", json=body) as resp:
        assert resp.status == 201, await resp.text()
        return resp.headers["X-Subject-Token"], await resp.json()


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    data: dict[str, Any] = await resp.json()
    return data


def credentials_of(emu: EmulatorServer, domain: str) -> tuple[str, str]:
    user = next(u for u in emu.identity.credentials() if u.principal.name == f"{domain}-admin")
    assert user.access_key is not None and user.secret_key is not None
    return user.access_key, user.secret_key


async def signed_get(
    http: aiohttp.ClientSession,
    emu: EmulatorServer,
    path: str,
    pairs: Sequence[tuple[str, str]],
    ak: str,
    sk: str,
    *,
    extra: Mapping[str, str] | None = None,
    date: datetime | None = None,
    tamper: bool = False,
) -> aiohttp.ClientResponse:
    headers = {"Content-Type": "application/json", "User-Agent": "cbr-crawler-tests", **(extra or {})}
    sdk_date = (date or datetime.now(UTC)).strftime(signer.SDK_DATE_FORMAT)
    host = f"127.0.0.1:{emu.port}"
    added = signer.sign("GET", host, path, pairs, headers, b"", ak, sk, sdk_date)
    if tamper:
        sig = added["Authorization"][-64:]
        flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
        added["Authorization"] = added["Authorization"][:-64] + flipped
    url = URL(f"{emu.url}{path}?{signer.encode_query(pairs)}", encoded=True)
    return await http.get(url, headers={**headers, **added})


# -- tokens ---------------------------------------------------------------------------------------


async def test_password_token_scoped_to_a_project(emu: EmulatorServer, http: aiohttp.ClientSession) -> None:
    pid = project_named(emu, "acme", "cn-north-4")
    body = password_body("acme-admin", "acme-password", "acme", {"project": {"id": pid}})
    async with http.post(f"{emu.url}/v3/auth/tokens", json=body) as resp:
        assert resp.status == 201
        assert REQUEST_ID.match(resp.headers["X-Request-Id"])
        token = resp.headers["X-Subject-Token"]
        data = (await resp.json())["token"]
    assert len(token) >= 2048
    assert data["project"]["id"] == pid
    assert data["project"]["name"] == "cn-north-4"
    assert data["user"]["name"] == "acme-admin"
    assert data["methods"] == ["password"]
    assert data["catalog"] == []
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", data["expires_at"])
    assert "domain" not in data


async def test_project_by_name_and_domain_scope(emu: EmulatorServer, http: aiohttp.ClientSession) -> None:
    _, by_name = await get_token(
        http, emu, "acme", {"project": {"name": "ap-southeast-1", "domain": {"name": "acme"}}}
    )
    assert by_name["token"]["project"]["id"] == project_named(emu, "acme", "ap-southeast-1")
    _, domain_scoped = await get_token(http, emu, "globex", {"domain": {"name": "globex"}})
    assert domain_scoped["token"]["domain"]["name"] == "globex"
    assert "project" not in domain_scoped["token"]
    # By user id, scope by domain id.
    user_id = domain_scoped["token"]["user"]["id"]
    domain_id = domain_scoped["token"]["domain"]["id"]
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"id": user_id, "password": "globex-password"}},
            },
            "scope": {"domain": {"id": domain_id}},
        }
    }
    async with http.post(f"{emu.url}/v3/auth/tokens", json=body) as resp:
        assert resp.status == 201


@pytest.mark.parametrize(
    ("body", "status", "title"),
    [
        (password_body("acme-admin", "wrong", "acme", {"domain": {"name": "acme"}}), 401, "Unauthorized"),
        (password_body("nobody", "acme-password", "acme", {"domain": {"name": "acme"}}), 401, "Unauthorized"),
        (
            password_body("acme-admin", "acme-password", "globex", {"domain": {"name": "globex"}}),
            401,
            "Unauthorized",
        ),
        (
            password_body("acme-admin", "acme-password", "acme", {"domain": {"name": "globex"}}),
            401,
            "Unauthorized",
        ),
        ({"auth": {"identity": {"methods": ["password"]}}}, 400, "Bad Request"),
        ({"auth": {"identity": {"methods": ["totp"]}, "scope": {}}}, 400, "Bad Request"),
        (password_body("acme-admin", "acme-password", "acme", {}), 400, "Bad Request"),
    ],
)
async def test_token_refusals_are_keystone_shaped(
    emu: EmulatorServer, http: aiohttp.ClientSession, body: dict[str, Any], status: int, title: str
) -> None:
    async with http.post(f"{emu.url}/v3/auth/tokens", json=body) as resp:
        assert resp.status == status
        assert REQUEST_ID.match(resp.headers["X-Request-Id"])
        assert "X-Subject-Token" not in resp.headers
        error = (await resp.json())["error"]
    assert error["code"] == status
    assert error["title"] == title
    assert "acme-password" not in error["message"]


async def test_body_that_is_not_json_is_400(emu: EmulatorServer, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{emu.url}/v3/auth/tokens", data=b"{not json") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["title"] == "Bad Request"


async def test_token_expires_with_the_clock(
    emu: EmulatorServer, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    pid = project_named(emu, "acme", "cn-north-4")
    token, _ = await get_token(http, emu, "acme", {"project": {"id": pid}})
    async with http.get(f"{emu.url}/v3/{pid}/backups?limit=1", headers={"X-Auth-Token": token}) as resp:
        assert resp.status == 200
    clock.now += 1.5  # the scenario's token_ttl_seconds is 1
    async with http.get(f"{emu.url}/v3/{pid}/backups?limit=1", headers={"X-Auth-Token": token}) as resp:
        assert resp.status == 401
        body = await resp.json()
        assert body == {
            "error_code": "APIGW.0307",
            "error_msg": "The token must be updated.",
            "request_id": resp.headers["X-Request-Id"],
        }
    async with http.get(f"{emu.url}/v3/auth/projects", headers={"X-Auth-Token": token}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["title"] == "Unauthorized"


async def test_token_store_sweeps_expired_tokens_but_not_on_every_new_token(
    monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    # Once the store reached its sweep size while full of valid tokens, the emulator swept all of
    # them again for every new token: a long-lived emulator's token requests slowed down without
    # bound (a bench's 50th run took five times as long).
    monkeypatch.setattr(identity_module, "TOKEN_SWEEP_AT", 4)
    async with EmulatorServer(scenario(), clock=clock) as emu:
        pid = project_named(emu, "acme", "cn-north-4")
        expired, _ = await get_token(http, emu, "acme", {"project": {"id": pid}})
        clock.now += 1.5  # the scenario's token_ttl_seconds is 1
        store = emu.identity._tokens
        sweeps = 0
        valid = []
        for _ in range(40):
            valid.append((await get_token(http, emu, "acme", {"project": {"id": pid}}))[0])
            if emu.identity._tokens is not store:
                sweeps, store = sweeps + 1, emu.identity._tokens
        assert 1 <= sweeps <= 4  # at 4, 8, 16 and 32 tokens, not at each of the last 36
        for token in (valid[0], valid[-1]):
            headers = {"X-Auth-Token": token}
            async with http.get(f"{emu.url}/v3/{pid}/backups?limit=1", headers=headers) as resp:
                assert resp.status == 200
        # The expired token was swept out: now unknown (0301), no longer "expired" (0307).
        headers = {"X-Auth-Token": expired}
        async with http.get(f"{emu.url}/v3/{pid}/backups?limit=1", headers=headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error_code"] == "APIGW.0301"


async def test_assume_role_gives_a_token_of_the_owner_domain(
    emu: EmulatorServer, http: aiohttp.ClientSession
) -> None:
    acme_token, _ = await get_token(http, emu, "acme", {"domain": {"name": "acme"}})
    globex_pid = project_named(emu, "globex", "cn-north-4")
    body = {
        "auth": {
            "identity": {
                "methods": ["assume_role"],
                "assume_role": {"domain_name": "globex", "agency_name": "inventory"},
            },
            "scope": {"project": {"id": globex_pid}},
        }
    }
    async with http.post(
        f"{emu.url}/v3/auth/tokens", json=body, headers={"X-Auth-Token": acme_token}
    ) as resp:
        assert resp.status == 201, await resp.text()
        agency_token = resp.headers["X-Subject-Token"]
        data = (await resp.json())["token"]
    assert data["methods"] == ["assume_role"]
    assert data["user"]["domain"]["name"] == "globex"
    assert data["assumed_by"]["user"]["name"] == "acme-admin"
    async with http.get(f"{emu.url}/v3/{globex_pid}/backups", headers={"X-Auth-Token": agency_token}) as resp:
        assert resp.status == 200
        assert (await resp.json())["count"] == len(emu.estate.truth_ids(globex_pid))
    # globex is not trusted by any acme agency, and the agency name must exist.
    globex_token, _ = await get_token(http, emu, "globex", {"domain": {"name": "globex"}})
    async with http.post(
        f"{emu.url}/v3/auth/tokens", json=body, headers={"X-Auth-Token": globex_token}
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"]["title"] == "Forbidden"
    async with http.post(f"{emu.url}/v3/auth/tokens", json=body) as resp:
        assert resp.status == 401


# -- projects -------------------------------------------------------------------------------------


async def test_auth_projects_lists_every_region_without_paging(
    emu: EmulatorServer, http: aiohttp.ClientSession
) -> None:
    token, data = await get_token(http, emu, "acme", {"domain": {"name": "acme"}})
    domain_id = data["token"]["domain"]["id"]
    async with http.get(f"{emu.url}/v3/auth/projects", headers={"X-Auth-Token": token}) as resp:
        assert resp.status == 200
        projects = (await resp.json())["projects"]
    expected = {p.id for p in emu.estate.projects.values() if p.domain_id == domain_id}
    assert {p["id"] for p in projects} == expected
    names = {p["name"] for p in projects}
    assert {"cn-north-4", "ap-southeast-1", "MOS"} <= names
    assert all(p["domain_id"] == domain_id and p["links"]["self"].endswith(p["id"]) for p in projects)


async def test_projects_paging_and_filters(emu: EmulatorServer, http: aiohttp.ClientSession) -> None:
    token, _ = await get_token(http, emu, "acme", {"domain": {"name": "acme"}})
    headers = {"X-Auth-Token": token}
    async with http.get(f"{emu.url}/v3/projects", headers=headers) as resp:
        everything = (await resp.json())["projects"]
    assert len(everything) >= 4
    seen: list[str] = []
    page = 1
    while True:
        async with http.get(
            f"{emu.url}/v3/projects", params={"page": page, "per_page": 2}, headers=headers
        ) as resp:
            assert resp.status == 200
            data = await resp.json()
        seen += [p["id"] for p in data["projects"]]
        if data["links"]["next"] is None:
            break
        page += 1
        assert page < 100
    assert seen == [p["id"] for p in everything]
    assert page == (len(everything) + 1) // 2
    async with http.get(f"{emu.url}/v3/projects", params={"name": "cn-north-4"}, headers=headers) as resp:
        assert [p["name"] for p in (await resp.json())["projects"]] == ["cn-north-4"]
    async with http.get(f"{emu.url}/v3/projects", params={"per_page": 5001}, headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == 400


# -- AK/SK ----------------------------------------------------------------------------------------


async def test_permanent_aksk_verified(emu: EmulatorServer, http: aiohttp.ClientSession) -> None:
    ak, sk = credentials_of(emu, "acme")
    pid = project_named(emu, "acme", "cn-north-4")
    path = f"/v3/{pid}/backups"
    pairs = [("limit", "5"), ("status", "error"), ("status", "available"), ("name", "a b:c")]
    async with await signed_get(http, emu, path, pairs, ak, sk, extra={"X-Project-Id": pid}) as resp:
        assert resp.status == 200, await resp.text()
        assert "backups" in await resp.json()
    # The same project with no X-Project-Id, or another domain's project, is refused.
    async with await signed_get(http, emu, path, pairs, ak, sk) as resp:
        assert resp.status == 401
        assert (await resp.json())["error_code"] == "APIGW.0301"
    other = project_named(emu, "globex", "cn-north-4")
    async with await signed_get(
        http, emu, f"/v3/{other}/backups", [], ak, sk, extra={"X-Project-Id": other}
    ) as resp:
        assert resp.status == 401
    # EPS and IAM accept the same key.
    async with await signed_get(http, emu, "/v1.0/enterprise-projects", [], ak, sk) as resp:
        assert resp.status == 200
    async with await signed_get(http, emu, "/v3/projects", [("name", "cn-north-4")], ak, sk) as resp:
        assert [p["id"] for p in (await resp.json())["projects"]] == [pid]


async def test_aksk_failures_have_exact_bodies(
    emu: EmulatorServer, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    ak, sk = credentials_of(emu, "acme")
    pid = project_named(emu, "acme", "cn-north-4")
    path = f"/v3/{pid}/backups"
    hdr = {"X-Project-Id": pid}
    async with await signed_get(http, emu, path, [("limit", "1")], ak, sk, extra=hdr, tamper=True) as resp:
        assert resp.status == 401
        assert await resp.json() == {
            "error_code": "APIGW.0301",
            "error_msg": "Incorrect IAM authentication information: verify aksk signature fail",
            "request_id": resp.headers["X-Request-Id"],
        }
    # Signed for limit=1, sent with limit=2: the query is part of the signature.
    headers = {"Content-Type": "application/json", "User-Agent": "t", **hdr}
    date = datetime.now(UTC).strftime(signer.SDK_DATE_FORMAT)
    added = signer.sign("GET", f"127.0.0.1:{emu.port}", path, [("limit", "1")], headers, b"", ak, sk, date)
    async with http.get(URL(f"{emu.url}{path}?limit=2", encoded=True), headers={**headers, **added}) as resp:
        assert (await resp.json())["error_msg"].endswith("verify aksk signature fail")
    stale = datetime.fromtimestamp(clock.now - 16 * 60, UTC)
    async with await signed_get(http, emu, path, [], ak, sk, extra=hdr, date=stale) as resp:
        assert resp.status == 401
        body = await resp.json()
        assert body["error_code"] == "APIGW.0301" and "X-Sdk-Date" in body["error_msg"]
    async with await signed_get(http, emu, path, [], "UNKNOWNAK0000000000X", sk, extra=hdr) as resp:
        assert resp.status == 401
        assert "not exist" in (await resp.json())["error_msg"]
    async with http.get(f"{emu.url}{path}", headers={"Authorization": "SDK-HMAC-SHA256 nonsense"}) as resp:
        assert resp.status == 401
        assert (await resp.json())["error_code"] == "APIGW.0301"


async def test_ak_locked_after_consecutive_signature_failures(
    emu: EmulatorServer, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    ak, sk = credentials_of(emu, "globex")
    path = "/v1.0/enterprise-projects"
    for _ in range(5):
        async with await signed_get(http, emu, path, [], ak, sk, tamper=True) as resp:
            assert (await resp.json())["error_msg"].endswith("verify aksk signature fail")
    async with await signed_get(http, emu, path, [], ak, sk) as resp:
        assert resp.status == 401
        assert "locked" in (await resp.json())["error_msg"]
    clock.now += 301  # aksk_lock_seconds defaults to 300
    async with await signed_get(
        http, emu, path, [], ak, sk, date=datetime.fromtimestamp(clock.now, UTC)
    ) as resp:
        assert resp.status == 200


async def test_temporary_credentials_from_token_and_agency(
    emu: EmulatorServer, http: aiohttp.ClientSession, clock: ManualClock
) -> None:
    token, _ = await get_token(http, emu, "acme", {"domain": {"name": "acme"}})
    body = {"auth": {"identity": {"methods": ["token"], "token": {"duration_seconds": 900}}}}
    url = f"{emu.url}/v3.0/OS-CREDENTIAL/securitytokens"
    async with http.post(url, json=body, headers={"X-Auth-Token": token}) as resp:
        assert resp.status == 201, await resp.text()
        cred = (await resp.json())["credential"]
    assert set(cred) == {"access", "secret", "securitytoken", "expires_at"}
    pid = project_named(emu, "acme", "cn-north-4")
    path = f"/v3/{pid}/backups"
    good = {"X-Project-Id": pid, "X-Security-Token": cred["securitytoken"]}
    async with await signed_get(
        http, emu, path, [("limit", "1")], cred["access"], cred["secret"], extra=good
    ) as resp:
        assert resp.status == 200, await resp.text()
    async with await signed_get(
        http, emu, path, [], cred["access"], cred["secret"], extra={"X-Project-Id": pid}
    ) as resp:
        assert resp.status == 401
        assert "X-Security-Token" in (await resp.json())["error_msg"]
    clock.now += 3  # security_token_ttl_seconds caps the lifetime at 2 s
    now = datetime.fromtimestamp(clock.now, UTC)
    async with await signed_get(
        http, emu, path, [], cred["access"], cred["secret"], extra=good, date=now
    ) as resp:
        assert resp.status == 401
        assert "expired" in (await resp.json())["error_msg"]
    # Agency credentials act in the owner's domain.
    token, _ = await get_token(http, emu, "acme", {"domain": {"name": "acme"}})
    body = {
        "auth": {
            "identity": {
                "methods": ["assume_role"],
                "assume_role": {"domain_name": "globex", "agency_name": "inventory", "duration_seconds": 900},
            }
        }
    }
    async with http.post(url, json=body, headers={"X-Auth-Token": token}) as resp:
        assert resp.status == 201
        cred = (await resp.json())["credential"]
    gpid = project_named(emu, "globex", "cn-north-4")
    extra = {"X-Project-Id": gpid, "X-Security-Token": cred["securitytoken"]}
    async with await signed_get(
        http, emu, f"/v3/{gpid}/backups", [], cred["access"], cred["secret"], extra=extra
    ) as r:
        assert r.status == 200
    async with http.post(url, json={"auth": {"identity": {"methods": ["token"]}}}) as resp:
        assert resp.status == 401


# The SDK warns that python-dateutil is missing while it parses the backups' timestamps.
@pytest.mark.filterwarnings("ignore::ImportWarning")
async def test_official_sdk_requests_verify(emu: EmulatorServer) -> None:
    """The official huaweicloudsdkcbr client, signing with AK/SK, gets its backups (HOME is a tmp dir)."""

    ak, sk = credentials_of(emu, "acme")
    pid = max(
        (p.id for p in emu.estate.projects.values() if p.name != "MOS"),
        key=lambda p: len(emu.estate.truth_ids(p)),
    )
    if emu.estate.projects[pid].domain_id != emu.estate.domain_by_name("acme").id:  # type: ignore[union-attr]
        ak, sk = credentials_of(emu, "globex")
    config = HttpConfig.get_default_config()
    config.ignore_ssl_verification = True
    client = (
        CbrClient.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials(ak, sk, pid))
        .with_endpoints([emu.url])
        .build()
    )

    def call() -> Any:
        request = ListBackupsRequest(limit=1000, status="available", own_type="private", sort="name:asc")
        return client.list_backups(request)

    response = await asyncio.to_thread(call)
    truth = [b for b in emu.estate.truth(pid) if b["status"] == "available"]
    assert response.count == len(truth)
    assert sorted(b.id for b in response.backups) == sorted(b["id"] for b in truth)


@pytest.mark.filterwarnings("ignore::ImportWarning")
async def test_official_sdk_eps_with_temporary_credentials_and_domain_lookup(
    emu: EmulatorServer, http: aiohttp.ClientSession
) -> None:
    """The official EPS client signs with a temporary AK/SK and looks up its domain id through IAM."""

    token, data = await get_token(http, emu, "acme", {"domain": {"name": "acme"}})
    body = {"auth": {"identity": {"methods": ["token"], "token": {"id": token, "duration_seconds": 900}}}}
    async with http.post(f"{emu.url}/v3.0/OS-CREDENTIAL/securitytokens", json=body) as resp:
        assert resp.status == 201  # the SDK's own shape: the token in the body, no X-Auth-Token
        cred = (await resp.json())["credential"]
    credentials = (
        GlobalCredentials(cred["access"], cred["secret"])
        .with_security_token(cred["securitytoken"])
        .with_iam_endpoint(emu.url)
    )
    client = EpsClient.new_builder().with_credentials(credentials).with_endpoints([emu.url]).build()

    def call() -> Any:
        return client.list_enterprise_project(ListEnterpriseProjectRequest(limit=2, offset=1))

    response = await asyncio.to_thread(call)
    expected = emu.estate.enterprise_projects[data["token"]["domain"]["id"]]
    assert response.total_count == len(expected)
    assert len(response.enterprise_projects) == 2
    # A permanent key without a domain id: the SDK first asks IAM for it (GET /v3/auth/domains).
    ak, sk = credentials_of(emu, "acme")
    permanent = GlobalCredentials(ak, sk).with_iam_endpoint(emu.url)

    def build_and_call() -> Any:
        # Only a client built with a region resolves the domain id, and it does so in build():
        # off the event loop, which serves that request.
        client = (
            EpsClient.new_builder().with_credentials(permanent).with_region(Region("local", emu.url)).build()
        )
        return client.list_enterprise_project(ListEnterpriseProjectRequest(limit=2, offset=1))

    response = await asyncio.to_thread(build_and_call)
    assert response.total_count == len(expected)
    assert emu.stats.total("iam.auth_domains", 200) == 1
    assert permanent.domain_id == data["token"]["domain"]["id"]
