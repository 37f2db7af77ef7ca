"""crawler.pipeline.auth without a network: masked reprs, the renewal margin, and signatures that verify."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from crawler.errors import AuthFailedError
from crawler.pipeline.auth import (
    DOMAIN_SCOPE,
    AccessKey,
    AgencyTokenAuth,
    AkSkAuth,
    IamEndpoints,
    PasswordAuth,
    StaticTokenAuth,
    TemporaryAkSkAuth,
    _RenewingCache,
    _TokenHeader,
    mask,
    sign_into,
)
from crawler.pipeline.client import USER_AGENT, ApiClient, ApiRequest, ApiResponse, Authenticator
from crawler.pipeline.ratelimit import QuotaLimiter
from crawler.support import signer

AK = "EXAMPLEAKID123456789"
SK = "EXAMPLESKexampleSK0123456789abcdefghijkl"
SECURITY_TOKEN = "gQpjbi1-EXAMPLE-SECURITY-TOKEN-" + "x" * 64
PASSWORD = "Sup3r-Secret-Passw0rd"
TOKEN = "MIIEXAMPLETOKEN" + "t" * 64
T0 = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
IAM = IamEndpoints("https://iam.myhuaweicloud.com")


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self, start: dt.datetime = T0) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def iso_z(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeIam(ApiClient):
    """Answers IAM token and securitytokens calls from memory and records what was asked, and how."""

    def __init__(self, clock: FakeClock, lifetime: float = 3600.0, token_lifetime: float = 86400.0) -> None:
        self.clock = clock
        self.lifetime = lifetime  # of temporary keys
        self.token_lifetime = token_lifetime
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.issued = 0

    async def send(
        self,
        request: ApiRequest,
        auth: Authenticator,
        limiter: QuotaLimiter | None = None,
        *,
        expect_json: bool = True,
        check: Callable[[ApiResponse], None] | None = None,
    ) -> ApiResponse:
        headers = {"Host": request.host, "User-Agent": USER_AGENT, "Content-Type": "application/json"}
        await auth.authorize(request, headers)
        self.calls.append((request.path, orjson.loads(request.body), headers))
        await asyncio.sleep(0)  # let concurrent callers pile up, as a real round trip would
        self.issued += 1
        if request.path == "/v3/auth/tokens":
            expires = iso_z(self.clock() + dt.timedelta(seconds=self.token_lifetime))
            return ApiResponse(
                201, {"token": {"expires_at": expires}}, "rid", {"X-Subject-Token": f"{TOKEN}-{self.issued}"}
            )
        expires = iso_z(self.clock() + dt.timedelta(seconds=self.lifetime))
        credential = {
            "access": f"TEMPAK{self.issued:014d}",
            "secret": f"{SK}-{self.issued}",
            "securitytoken": f"{SECURITY_TOKEN}-{self.issued}",
            "expires_at": expires,
        }
        return ApiResponse(201, {"credential": credential}, "rid", {})


def cbr_request(project_id: str = "0123456789abcdef0123456789abcdef") -> ApiRequest:
    return ApiRequest(
        service="cbr",
        method="GET",
        base_url="https://cbr.cn-north-4.myhuaweicloud.com",
        path=f"/v3/{project_id}/backups",
        query=[("limit", "1000"), ("offset", "0"), ("sort", "created_at:desc")],
        project_id=project_id,
    )


def iam_request() -> ApiRequest:
    return ApiRequest(
        service="iam", method="GET", base_url="https://iam.myhuaweicloud.com", path="/v3/auth/projects"
    )


# -- reprs ----------------------------------------------------------------------------------------------


def every_auth(client: ApiClient) -> list[object]:
    password = PasswordAuth(
        client, IAM, user="crawler", domain="acme", password=PASSWORD, source="env CBR_PW"
    )
    static = StaticTokenAuth(TOKEN, "env CBR_TOKEN")
    aksk = AkSkAuth(AccessKey(AK, SK), "env CBR_AK and env CBR_SK")
    return [
        password,
        static,
        aksk,
        _TokenHeader(TOKEN),
        AccessKey(AK, SK),
        AccessKey(AK, SK, SECURITY_TOKEN),
        AgencyTokenAuth(client, IAM, password, domain_name="globex", agency_name="inventory"),
        AgencyTokenAuth(client, IAM, static, domain_name="globex", agency_name="inventory"),
        TemporaryAkSkAuth(client, IAM, password, duration_seconds=900),
        TemporaryAkSkAuth(client, IAM, aksk, duration_seconds=None, agency=("globex", "inventory")),
    ]


@pytest.mark.parametrize("index", range(10))
def test_no_repr_str_or_description_shows_a_secret(index: int) -> None:
    auth = every_auth(FakeIam(FakeClock()))[index]
    shown = [repr(auth), str(auth), f"{auth}", str(getattr(auth, "description", "")), repr([auth])]
    for text in shown:
        for secret in (AK, SK, SECURITY_TOKEN, PASSWORD, TOKEN):
            assert secret not in text, f"{type(auth).__name__} shows a secret in {text!r}"


def test_reprs_still_tell_credentials_apart() -> None:
    assert repr(AccessKey(AK, SK)) == "AccessKey(EXAM...6789, permanent)"
    assert repr(AccessKey(AK, SK, SECURITY_TOKEN)) == "AccessKey(EXAM...6789, temporary)"
    auths = every_auth(FakeIam(FakeClock()))
    assert "CBR_PW" in str(getattr(auths[0], "description", ""))
    assert "CBR_SK" in str(getattr(auths[2], "description", ""))
    assert "globex" in repr(auths[6]) and "inventory" in repr(auths[6])
    assert mask("short") == "***"


async def test_temporary_keys_in_use_are_not_shown_either() -> None:
    clock = FakeClock()
    client = FakeIam(clock)
    source = PasswordAuth(client, IAM, user="u", domain="acme", password=PASSWORD, source="env PW")
    auth = TemporaryAkSkAuth(client, IAM, source, duration_seconds=900, clock=clock)
    headers = {"Host": "cbr.cn-north-4.myhuaweicloud.com"}
    await auth.authorize(cbr_request(), headers)
    issued_sk, issued_token = f"{SK}-2", f"{SECURITY_TOKEN}-2"
    assert headers["X-Security-Token"] == issued_token
    for text in (repr(auth), auth.description, auth.identity):
        assert issued_sk not in text and issued_token not in text and PASSWORD not in text


# -- renewal margin -------------------------------------------------------------------------------------


def counting_fetch(clock: FakeClock, lifetime: float) -> tuple[list[str], Callable[[str], Any]]:
    fetched: list[str] = []

    async def fetch(key: str) -> tuple[str, dt.datetime]:
        fetched.append(key)
        value = f"{key}-{len(fetched)}"
        await asyncio.sleep(0)  # a round trip: concurrent callers pile up meanwhile
        return value, clock() + dt.timedelta(seconds=lifetime)

    return fetched, fetch


@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [
        (86400.0, 17280.0),  # renewed when 80% of the life has passed
        (3600.0, 720.0),
        (900.0, 180.0),  # IAM's shortest temporary key
        (200.0, 60.0),  # at least 60 s before expiry
        (121.0, 60.0),
        (100.0, 20.0),  # test-sized lifetimes: 20%
        (2.0, 0.4),
    ],
)
async def test_renewal_happens_at_the_margin_before_expiry(lifetime: float, margin: float) -> None:
    clock = FakeClock()
    fetched, fetch = counting_fetch(clock, lifetime)
    cache = _RenewingCache(fetch, clock)

    assert await cache.get("p1") == "p1-1"
    clock.advance(lifetime - margin - 0.001)
    assert await cache.get("p1") == "p1-1", "still fresh just before the margin"
    clock.advance(0.001)
    assert await cache.get("p1") == "p1-2", "renewed at the margin, before expiry"
    assert fetched == ["p1", "p1"]


async def test_concurrent_callers_share_one_fetch_and_keys_are_independent() -> None:
    clock = FakeClock()
    fetched, fetch = counting_fetch(clock, 3600)
    cache = _RenewingCache(fetch, clock)

    values = await asyncio.gather(*(cache.get("p1") for _ in range(20)), cache.get(DOMAIN_SCOPE))

    assert values[:20] == ["p1-1"] * 20
    assert values[20] == f"{DOMAIN_SCOPE}-2"
    assert sorted(fetched) == sorted(["p1", DOMAIN_SCOPE])


async def test_invalidate_forces_a_fetch_for_that_key_only() -> None:
    clock = FakeClock()
    fetched, fetch = counting_fetch(clock, 3600)
    cache = _RenewingCache(fetch, clock)
    await cache.get("p1")
    await cache.get("p2")

    cache.invalidate("p1")

    assert await cache.get("p1") == "p1-3"
    assert await cache.get("p2") == "p2-2"
    assert fetched == ["p1", "p2", "p1"]


async def test_a_credential_that_is_already_expired_is_used_once_then_fetched_again() -> None:
    clock = FakeClock()
    fetched, fetch = counting_fetch(clock, -5.0)  # IAM's clock far behind ours
    cache = _RenewingCache(fetch, clock)
    assert await cache.get("p1") == "p1-1"
    assert await cache.get("p1") == "p1-2"
    assert fetched == ["p1", "p1"]


async def test_temporary_keys_are_renewed_and_the_source_token_is_reused() -> None:
    clock = FakeClock()
    client = FakeIam(clock, lifetime=900)
    source = PasswordAuth(
        client, IAM, user="u", domain="acme", password=PASSWORD, source="env PW", clock=clock
    )
    # IAM grants 900 s where 3600 s were asked for: renewal follows expires_at, not the request.
    auth = TemporaryAkSkAuth(client, IAM, source, duration_seconds=3600, clock=clock)
    access_keys = []
    for _ in range(4):
        headers = {"Host": "cbr.cn-north-4.myhuaweicloud.com"}
        await auth.authorize(cbr_request(), headers)
        access_keys.append(signer.parse_authorization(headers["Authorization"]).access_key)
        clock.advance(400)
    # Keys live 900 s and are renewed 180 s early: at t=0 and t=800 (the token lives on).
    assert len(set(access_keys)) == 2
    paths = [path for path, _, _ in client.calls]
    assert paths.count("/v3/auth/tokens") == 1
    assert paths.count("/v3.0/OS-CREDENTIAL/securitytokens") == 2


@pytest.mark.parametrize(
    ("duration", "agency", "identity"),
    [
        (1800, None, {"methods": ["token"], "token": {"duration_seconds": 1800}}),
        (None, None, {"methods": ["token"], "token": {}}),
        (
            None,
            ("globex", "inventory"),
            {
                "methods": ["assume_role"],
                "assume_role": {"domain_name": "globex", "agency_name": "inventory"},
            },
        ),
        (
            900,
            ("globex", "inventory"),
            {
                "methods": ["assume_role"],
                "assume_role": {"domain_name": "globex", "agency_name": "inventory", "duration_seconds": 900},
            },
        ),
    ],
)
async def test_securitytokens_body_leaves_an_unset_duration_to_iam(
    duration: int | None, agency: tuple[str, str] | None, identity: dict[str, Any]
) -> None:
    clock = FakeClock()
    client = FakeIam(clock)
    source = StaticTokenAuth(TOKEN, "env T")
    auth = TemporaryAkSkAuth(client, IAM, source, duration_seconds=duration, agency=agency, clock=clock)
    await auth.authorize(iam_request(), {"Host": "iam.myhuaweicloud.com"})
    [(path, body, headers)] = client.calls
    assert path == "/v3.0/OS-CREDENTIAL/securitytokens"
    assert body == {"auth": {"identity": identity}}
    assert headers["X-Auth-Token"] == TOKEN


async def test_agency_tokens_are_scoped_per_project_and_use_the_source_domain_token() -> None:
    clock = FakeClock()
    client = FakeIam(clock)
    source = PasswordAuth(
        client, IAM, user="u", domain="acme", password=PASSWORD, source="env PW", clock=clock
    )
    auth = AgencyTokenAuth(client, IAM, source, domain_name="globex", agency_name="inventory", clock=clock)
    headers: dict[str, str] = {}
    await auth.authorize(cbr_request("p" * 32), headers)
    await auth.authorize(iam_request(), {})
    source_call, project_call, domain_call = client.calls
    assert source_call[1]["auth"]["scope"] == {"domain": {"name": "acme"}}
    assert project_call[1]["auth"]["identity"]["assume_role"] == {
        "domain_name": "globex",
        "agency_name": "inventory",
    }
    assert project_call[1]["auth"]["scope"] == {"project": {"id": "p" * 32}}
    assert project_call[2]["X-Auth-Token"] == f"{TOKEN}-1"
    assert domain_call[1]["auth"]["scope"] == {"domain": {"name": "globex"}}
    assert headers["X-Auth-Token"] == f"{TOKEN}-2"


# -- signing --------------------------------------------------------------------------------------------


def verify(request: ApiRequest, headers: dict[str, str], secret_key: str) -> bool:
    """What the gateway does: recompute the signature from the request as sent."""
    parsed = signer.parse_authorization(headers["Authorization"])
    expected = signer.expected_signature(
        request.method,
        str(request.url().raw_path),
        signer.parse_query(request.url().raw_query_string),
        headers,
        request.body,
        secret_key,
        parsed.signed_headers,
    )
    return expected == parsed.signature


def base_headers(request: ApiRequest) -> dict[str, str]:
    return {"Host": request.host, "User-Agent": USER_AGENT, "Content-Type": "application/json"}


@pytest.mark.parametrize("security_token", [None, SECURITY_TOKEN])
@pytest.mark.parametrize("make_request", [cbr_request, iam_request])
def test_sign_into_output_verifies(
    security_token: str | None, make_request: Callable[[], ApiRequest]
) -> None:
    request = make_request()
    headers = base_headers(request)

    sign_into(AccessKey(AK, SK, security_token), request, headers, T0)

    assert headers["X-Sdk-Date"] == "20240102T030405Z"
    assert verify(request, headers, SK)
    assert not verify(request, headers, SK[:-1] + "X")
    signed = signer.parse_authorization(headers["Authorization"]).signed_headers
    assert signer.parse_authorization(headers["Authorization"]).access_key == AK
    # CBR calls carry (and sign) their project; IAM and EPS calls are global and carry none.
    assert ("x-project-id" in signed) == (request.service == "cbr")
    assert ("X-Project-Id" in headers) == (request.service == "cbr")
    assert ("x-security-token" in signed) == (security_token is not None)


def test_sign_into_reproduces_the_official_sdk_test_vector() -> None:
    request = ApiRequest(
        service="cbr",
        method="GET",
        base_url="https://cbr.cn-north-4.myhuaweicloud.com",
        path="/v3/0123456789abcdef0123456789abcdef/backups",
        query=[
            ("end_time", "2024-01-31T23:59:59Z"),
            ("limit", "1000"),
            ("name", "db backup"),
            ("offset", "0"),
            ("sort", "created_at:desc"),
            ("start_time", "2024-01-01T00:00:00Z"),
            ("status", "error"),
            ("status", "available"),
            ("enterprise_project_id", "all_granted_eps"),
            ("own_type", "all_granted"),
            ("show_replication", "true"),
        ],
        project_id="0123456789abcdef0123456789abcdef",
    )
    for token, expected in [
        (None, "e0f6691e0b9e3550ab12618947a0cefdf5bde1d5e2f0d9a4092469bdd80572b0"),
        ("EXAMPLE-SECURITY-TOKEN", "082ba9235b1eb6dfb9c12531923576dedbbd96763b42a7637537ca13319ee342"),
    ]:
        headers = {
            "Host": request.host,
            "User-Agent": "huaweicloud-usdk-python/3.0; inventory-crawler/0.1",
            "Content-Type": "application/json",
        }
        sign_into(AccessKey(AK, SK, token), request, headers, T0)
        assert signer.parse_authorization(headers["Authorization"]).signature == expected


async def test_aksk_auth_signs_every_attempt_afresh_with_the_current_date() -> None:
    clock = FakeClock()
    auth = AkSkAuth(AccessKey(AK, SK), "env AK and env SK", clock=clock)
    request = cbr_request()
    first = base_headers(request)
    await auth.authorize(request, first)
    clock.advance(61)
    second = base_headers(request)
    await auth.authorize(request, second)
    assert first["X-Sdk-Date"] == "20240102T030405Z"
    assert second["X-Sdk-Date"] == "20240102T030506Z"
    assert verify(request, first, SK) and verify(request, second, SK)
    assert first["Authorization"] != second["Authorization"]


# -- prefetching project tokens -------------------------------------------------------------------------


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_prefetch_fetches_a_project_token_ahead_once_the_credential_has_worked() -> None:
    clock = FakeClock()
    client = FakeIam(clock)
    auth = PasswordAuth(client, IAM, user="u", domain="acme", password=PASSWORD, source="env PW", clock=clock)
    auth.prefetch(cbr_request("a" * 32))
    await _settle()
    assert client.calls == []  # not before the password has worked once: a wrong one is not tried more
    await auth.authorize(iam_request(), {})
    auth.prefetch(cbr_request("b" * 32))
    auth.prefetch(cbr_request("b" * 32))  # already on its way: not fetched twice
    await _settle()
    assert [call[1]["auth"]["scope"] for call in client.calls] == [
        {"domain": {"name": "acme"}},
        {"project": {"id": "b" * 32}},
    ]
    headers: dict[str, str] = {}
    await auth.authorize(cbr_request("b" * 32), headers)
    auth.prefetch(cbr_request("b" * 32))  # cached: nothing to do
    await _settle()
    assert len(client.calls) == 2 and headers["X-Auth-Token"] == f"{TOKEN}-2"


async def test_a_failed_prefetch_is_forgotten_and_the_request_asks_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FailingOnce(FakeIam):
        failed = False

        async def send(
            self, request: ApiRequest, auth: Authenticator, *args: Any, **kwargs: Any
        ) -> ApiResponse:
            if b'"project"' in request.body and not self.failed:
                self.failed = True
                raise AuthFailedError(401, "IAM.0001", "project not reachable just now")
            return await super().send(request, auth, *args, **kwargs)

    clock = FakeClock()
    client = FailingOnce(clock)
    auth = PasswordAuth(client, IAM, user="u", domain="acme", password=PASSWORD, source="env PW", clock=clock)
    await auth.authorize(iam_request(), {})
    with caplog.at_level("DEBUG", logger="crawler.pipeline.auth"):
        auth.prefetch(cbr_request("c" * 32))
        await _settle()
    assert client.failed and "prefetching a token" in caplog.text
    headers: dict[str, str] = {}
    await auth.authorize(cbr_request("c" * 32), headers)  # fetched again, now successfully
    assert headers["X-Auth-Token"].startswith(TOKEN)


async def test_after_a_refused_fetch_no_prefetch_tries_the_credential_again() -> None:
    # A password changed mid-run: every project token is refused from now on. Prefetching must not
    # multiply the failed logins (IAM locks the user out): at most one extra attempt, one at a time.
    class Rotated(FakeIam):
        async def send(
            self, request: ApiRequest, auth: Authenticator, *args: Any, **kwargs: Any
        ) -> ApiResponse:
            if b'"project"' in request.body:
                self.calls.append((request.path, orjson.loads(request.body), {}))
                await asyncio.sleep(0)
                raise AuthFailedError(401, "IAM.0002", "wrong password")
            return await super().send(request, auth, *args, **kwargs)

    clock = FakeClock()
    client = Rotated(clock)
    auth = PasswordAuth(client, IAM, user="u", domain="acme", password=PASSWORD, source="env PW", clock=clock)
    await auth.authorize(iam_request(), {})  # the domain token: the password worked once
    for project in "defgh":
        auth.prefetch(cbr_request(project * 32))  # one scope opened after another
    await _settle()
    for project in "ijk":
        auth.prefetch(cbr_request(project * 32))
    await _settle()
    project_calls = [c for c in client.calls if "project" in c[1]["auth"]["scope"]]
    assert len(project_calls) == 1, project_calls


@pytest.mark.parametrize("auth_of", [
    lambda client: StaticTokenAuth(TOKEN, "env T"),
    lambda client: AkSkAuth(AccessKey(AK, SK), "env AK"),
])  # fmt: skip
async def test_prefetch_is_a_no_op_where_nothing_is_fetched_per_project(
    auth_of: Callable[[ApiClient], Any],
) -> None:
    client = FakeIam(FakeClock())
    auth_of(client).prefetch(cbr_request())
    await _settle()
    assert client.calls == []
