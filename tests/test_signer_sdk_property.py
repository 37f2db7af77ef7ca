"""Our signer against the official SDK's (huaweicloudsdkcore 3.1.219), on the SDK's own code path.

Three layers:

* in memory: random requests go through ``Client.build_future_request`` (what every service method
  of the SDK calls: header/path/query processing, credentials, signing), and our ``sign`` must give
  the same ``Authorization``, wire path and wire query for the same ``X-Sdk-Date``;
* on the wire: the SDK really sends ``ListBackups`` and generic calls to an aiohttp server on
  loopback, which verifies them with ``split_target`` + ``expected_signature`` from the raw request,
  as the emulator does;
* pinned quirks where the SDK departs from the documented algorithm.

``tests/conftest.py`` points HOME at a temporary directory before the SDK is imported.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from huaweicloudsdkcbr.v1 import CbrClient, ListBackupsRequest  # type: ignore[import-untyped]
from huaweicloudsdkcore.auth.credentials import BasicCredentials  # type: ignore[import-untyped]
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException  # type: ignore[import-untyped]
from huaweicloudsdkcore.http.http_config import HttpConfig  # type: ignore[import-untyped]
from huaweicloudsdkcore.http.user_agent import user_agent_string  # type: ignore[import-untyped]
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from crawler.support import signer

SDK_AGENT = "huaweicloud-usdk-python/3.0"
SDK_RESERVED = {
    "host",
    "x-sdk-date",
    "authorization",
    "content-type",
    "user-agent",
    "x-project-id",
    "x-security-token",
    "x-sdk-content-sha256",
}

# --- strategies ---------------------------------------------------------------------------------

# Any text but lone surrogates (not encodable) and control characters (not valid in a header).
text = st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=10)
# Bias towards the characters that matter: reserved, percent, plus, space, unreserved, non-ASCII.
tricky = st.text(st.sampled_from(list("aZ09-._~ /%+?&=#:@!$'()*,;[]é€𝄞\u3000\xa0")), max_size=8)
value_text = st.one_of(text, tricky)
header_name = st.from_regex(r"X-[A-Za-z0-9_-]{1,10}", fullmatch=True)
query_value = st.one_of(
    value_text, st.integers(-(10**12), 10**12), st.booleans(), st.lists(value_text, max_size=4)
)
# A project id or path parameter: any non-empty text. The SDK percent-encodes it (`/` included), so
# only a value that is exactly "." or ".." becomes a dot segment of the wire path.
path_segment = value_text.filter(bool)
DOT_SEGMENTS = frozenset({".", ".."})
# For requests that really go on the wire: no dot segments. The SDK signs the path verbatim
# (`/v3/x/..` signs as `/v3/x/../`) but `requests` (urllib3's parse_url, RFC 3986 5.2.4) resolves
# them before sending (`/v3/`), so no verifier can accept the call: the signed path is not
# recoverable from the wire one. No real project or resource id is "." or ".."; the quirk is pinned
# by test_quirk_dot_segments_are_signed_verbatim_but_resolved_on_the_wire.
wire_path_segment = path_segment.filter(lambda segment: segment not in DOT_SEGMENTS)


@dataclass
class Call:
    """One request as a user of the SDK would make it, and the wire view of it we expect."""

    method: str
    endpoint: str
    ignore_get_content_type: bool
    user_agent: str | None
    ak: str
    sk: str
    project_id: str
    token: str | None
    path_params: dict[str, str]
    query: dict[str, Any]
    multi: bool  # lists expanded by the client ("multi" collection format) or left to the signer
    headers: dict[str, str]
    content_type: str | None
    body: dict[str, Any] | None

    @property
    def template(self) -> str:
        return "/v3/{project_id}" + "".join(f"/{{{name}}}" for name in self.path_params)

    def wire_path(self) -> str:
        values = [self.project_id, *self.path_params.values()]
        return "".join("/" + signer.quote_path_param(v) for v in ["v3", *values])

    def pairs(self) -> list[tuple[str, signer.QueryValue]]:
        out: list[tuple[str, signer.QueryValue]] = []
        for name, value in self.query.items():
            out.extend((name, v) for v in value) if isinstance(value, list) else out.append((name, value))
        return out

    def collection_formats(self) -> dict[str, str]:
        # Generated clients mark only list-typed parameters "multi" (a scalar would be iterated).
        return {name: "multi" for name, v in self.query.items() if isinstance(v, list)} if self.multi else {}

    def wire_headers(self) -> dict[str, str]:
        """The headers the SDK adds before signing, stated independently of its code."""
        headers = dict(self.headers)
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        if self.ignore_get_content_type and self.method == "GET" and self.body is None:
            headers.pop("Content-Type", None)
        elif "Content-Type" not in headers:
            headers["Content-Type"] = "application/json"
        # Without a configured agent the builder appends its own (os, python, an app id kept in HOME).
        agent = user_agent_string if self.user_agent is None else self.user_agent
        headers["User-Agent"] = f"{SDK_AGENT}; {agent}"
        headers["X-Project-Id"] = self.project_id
        if self.token is not None:
            headers["X-Security-Token"] = self.token
        return headers


@st.composite
def calls(
    draw: st.DrawFn,
    methods: tuple[str, ...] = ("GET", "DELETE", "POST", "PUT", "PATCH"),
    segments: st.SearchStrategy[str] = path_segment,
) -> Call:
    method = draw(st.sampled_from(methods))
    names = draw(st.lists(header_name, max_size=4, unique_by=str.lower))
    bodyless = method in ("GET", "DELETE")
    return Call(
        method=method,
        endpoint=draw(st.sampled_from(["https://cbr.cn-north-4.myhuaweicloud.com", "http://127.0.0.1:8443"])),
        ignore_get_content_type=draw(st.booleans()),
        user_agent=draw(st.one_of(st.none(), st.just("inventory-crawler/0.1"))),
        ak=draw(st.from_regex(r"[A-Z0-9]{1,24}", fullmatch=True)),
        sk=draw(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)),
        project_id=draw(st.one_of(st.from_regex(r"[0-9a-f]{32}", fullmatch=True), segments)),
        token=draw(st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9+/=_-]{1,64}", fullmatch=True))),
        path_params={f"p{i}": v for i, v in enumerate(draw(st.lists(segments, max_size=3)))},
        query=draw(st.dictionaries(value_text, query_value, max_size=6)),
        multi=draw(st.booleans()),
        headers={name: draw(text) for name in names},
        content_type=draw(
            st.sampled_from([None, "application/json", "application/json;charset=UTF-8", "text/plain"])
        ),
        body=None if bodyless else draw(st.one_of(st.none(), st.dictionaries(text, text, max_size=3))),
    )


# --- the SDK ------------------------------------------------------------------------------------


class SdkClients:
    """One SDK client per endpoint and config, credentials swapped per example (clients leak threads)."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, bool, str | None], CbrClient] = {}

    def get(self, endpoint: str, ignore_get_content_type: bool, user_agent: str | None) -> CbrClient:
        key = (endpoint, ignore_get_content_type, user_agent)
        if key not in self._clients:
            config = HttpConfig.get_default_config()
            config.ignore_content_type_for_get_request = ignore_get_content_type
            config.user_agent = user_agent
            config.retry_times = 0
            builder = CbrClient.new_builder().with_http_config(config).with_endpoints([endpoint])
            self._clients[key] = builder.with_credentials(BasicCredentials("AK", "SK", "p")).build()
        return self._clients[key]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
            client.get_http_client().executor.shutdown()


@pytest.fixture(scope="module")
def sdk() -> Iterator[SdkClients]:
    clients = SdkClients()
    yield clients
    clients.close()


def credentials(call: Call) -> BasicCredentials:
    creds = BasicCredentials(call.ak, call.sk, call.project_id)
    return creds.with_security_token(call.token) if call.token is not None else creds


def sdk_signed_request(sdk: SdkClients, call: Call) -> Any:
    """The SdkRequest exactly as the SDK would hand it to `requests`: signed, with its final uri."""
    client = sdk.get(call.endpoint, call.ignore_get_content_type, call.user_agent)
    client.with_credentials(credentials(call))
    headers = dict(call.headers)
    if call.content_type is not None:
        headers["Content-Type"] = call.content_type
    future = client.build_future_request(
        call.method,
        call.template,
        dict(call.path_params),
        list(call.query.items()),
        headers,
        call.body,
        None,  # post_params
        None,  # cname
        None,  # response_type
        call.collection_formats(),
        None,  # progress_callback
    )
    return future.result()


def sdk_header(request: Any, name: str) -> str:
    # The SDK re-encodes header values as UTF-8 bytes shown as ISO-8859-1 text, for `requests`.
    value: str = request.header_params[name]
    return value.encode("iso-8859-1").decode("utf-8")


# --- in memory ----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=calls())
@example(  # an encoded "/" inside a path parameter signs as a real "/" (SDK quirk)
    call=Call(
        "GET",
        "http://127.0.0.1:8443",
        False,
        None,
        "AK",
        "SK",
        "p",
        None,
        {"p0": "a/b"},
        {},
        False,
        {},
        None,
        None,
    )
)
@example(  # dot segments are signed verbatim, by the SDK as by us (requests resolves them later)
    call=Call(
        "GET",
        "http://127.0.0.1:8443",
        False,
        None,
        "AK",
        "SK",
        ".",
        None,
        {"p0": "..", "p1": "."},
        {},
        False,
        {},
        None,
        None,
    )
)
def test_authorization_equals_the_sdk(sdk: SdkClients, call: Call) -> None:
    request = sdk_signed_request(sdk, call)
    sdk_date = request.header_params["X-Sdk-Date"]
    host = request.host

    wire_path = call.wire_path()
    assert request.resource_path == wire_path
    wire_query = signer.encode_query(call.pairs())
    assert request.uri == (f"{wire_path}?{wire_query}" if wire_query else wire_path)

    headers = call.wire_headers()
    body = request.body or b""
    ours = signer.sign(call.method, host, wire_path, call.pairs(), headers, body, call.ak, call.sk, sdk_date)
    assert ours["Authorization"] == request.header_params["Authorization"]
    # Every header the SDK sends is one we modelled or added, with the value it signed.
    sent = {**headers, **ours}
    assert {k.lower() for k in request.header_params} == {k.lower() for k in sent}
    for name, value in sent.items():
        assert sdk_header(request, name) == value.strip()


# --- on the wire --------------------------------------------------------------------------------


@dataclass
class Seen:
    raw_target: str
    verified: bool
    headers: dict[str, str]


class WireServer:
    """An aiohttp server on loopback, in its own thread, that verifies signatures as the emulator must.

    Not a dataclass: hypothesis pretty-prints dataclass fields (secrets included) on failure.
    """

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.seen: list[Seen] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"WireServer({self.url!r})"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        path, pairs = signer.split_target(request.raw_path)
        try:
            auth = signer.parse_authorization(request.headers["Authorization"])
            expected = signer.expected_signature(
                request.method,
                path,
                pairs,
                request.headers,
                body,
                self.secrets[auth.access_key],
                auth.signed_headers,
            )
            verified = hmac.compare_digest(expected, auth.signature)
        except (ValueError, KeyError):
            verified = False
        self.seen.append(Seen(request.raw_path, verified, dict(request.headers)))
        if not verified:
            error = {"error_code": "APIGW.0301", "error_msg": "verify aksk signature fail", "request_id": "x"}
            return web.json_response(error, status=401)
        return web.json_response({"backups": [], "count": 0})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


@pytest.fixture(scope="module")
def wire() -> Iterator[WireServer]:
    server = WireServer()
    server.start()
    yield server
    server.stop()


list_backups_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": value_text,
        "resource_name": value_text,
        "sort": st.sampled_from(["created_at:desc", "name:asc,id", "updated_at"]),
        "start_time": st.just("2024-01-01T00:00:00Z"),
        "status": st.one_of(
            st.sampled_from(["available", "error"]), st.lists(value_text, min_size=1, max_size=3)
        ),
        "limit": st.integers(1, 1000),
        "offset": st.integers(0, 10**6),
        "marker": value_text,
        "own_type": st.sampled_from(["private", "shared", "all_granted"]),
        "enterprise_project_id": st.sampled_from(["0", "all_granted_eps"]),
        "dec": st.booleans(),
        "show_replication": st.booleans(),
        "incremental": st.booleans(),
        "used_percent": st.just("80"),
    },
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fields=list_backups_fields,
    project_id=st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
    temporary=st.booleans(),
)
def test_sdk_list_backups_verifies_from_the_raw_wire(
    sdk: SdkClients, wire: WireServer, fields: dict[str, Any], project_id: str, temporary: bool
) -> None:
    ak, sk = f"AK{len(wire.secrets)}", "SKé-secret"
    wire.secrets[ak] = sk
    client = sdk.get(wire.url, False, "inventory-crawler/0.1")
    creds = BasicCredentials(ak, sk, project_id)
    client.with_credentials(creds.with_security_token("TOKEN/+=") if temporary else creds)

    response = client.list_backups(ListBackupsRequest(**fields))

    assert response.status_code == 200
    seen = wire.seen[-1]
    assert seen.verified
    pairs = [(k, v) for k, vs in fields.items() for v in (vs if isinstance(vs, list) else [vs])]
    query = signer.encode_query(pairs)
    # The SDK's wire query is our canonical query, byte for byte.
    assert seen.raw_target == f"/v3/{project_id}/backups" + (f"?{query}" if query else "")
    assert ("X-Security-Token" in seen.headers) is temporary


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=calls(methods=("GET", "POST"), segments=wire_path_segment))
def test_sdk_generic_calls_verify_from_the_raw_wire(sdk: SdkClients, wire: WireServer, call: Call) -> None:
    wire.secrets[call.ak] = call.sk
    client = sdk.get(wire.url, call.ignore_get_content_type, call.user_agent)
    client.with_credentials(credentials(call))
    headers = dict(call.headers)
    if call.content_type is not None:
        headers["Content-Type"] = call.content_type
    client.call_api(
        call.template,
        call.method,
        path_params=dict(call.path_params),
        query_params=list(call.query.items()),
        header_params=headers,
        body=call.body,
        collection_formats=call.collection_formats(),
        response_type="ListBackupsResponse",
    )
    seen = wire.seen[-1]
    assert seen.verified
    query = signer.encode_query(call.pairs())
    assert seen.raw_target == call.wire_path() + (f"?{query}" if query else "")
    # aiohttp hands the verifier non-ASCII header values as the text the client signed.
    for name, value in call.headers.items():
        assert seen.headers[name] == value.strip()


def test_a_wrong_secret_is_refused_on_the_wire(sdk: SdkClients, wire: WireServer) -> None:
    wire.secrets["AKWRONG"] = "the-real-secret"
    client = sdk.get(wire.url, False, None)
    client.with_credentials(BasicCredentials("AKWRONG", "not-the-secret", "0" * 32))
    with pytest.raises(Exception) as info:
        client.list_backups(ListBackupsRequest(limit=5))
    assert getattr(info.value, "status_code", None) == 401
    assert not wire.seen[-1].verified


# --- quirks: where the SDK departs from the documented algorithm ---------------------------------


def _uri(sdk: SdkClients, query: list[tuple[str, Any]], multi: bool = False) -> str:
    call = Call(
        "GET",
        "http://127.0.0.1:8443",
        False,
        None,
        "AK",
        "SK",
        "p",
        None,
        {},
        dict(query),
        multi,
        {},
        None,
        None,
    )
    return str(sdk_signed_request(sdk, call).uri)


def test_quirk_booleans_in_a_list_are_capitalised(sdk: SdkClients) -> None:
    # A bare bool goes on the wire as true/false, and so does a list the client expanded ("multi");
    # but a list left to the signer gets str(): True/False.
    assert _uri(sdk, [("flag", True)]) == "/v3/p?flag=true"
    assert _uri(sdk, [("flag", [True, False])], multi=True) == "/v3/p?flag=false&flag=true"
    assert _uri(sdk, [("flag", [True, False])]) == "/v3/p?flag=False&flag=True"
    assert signer.encode_query([("flag", True), ("flag", False)]) == "flag=false&flag=true"


def test_quirk_repeated_integers_sort_numerically(sdk: SdkClients) -> None:
    # The SDK sorts typed values, so 2 < 10; a verifier only has wire strings, where "10" < "2".
    assert _uri(sdk, [("n", [10, 2])]) == "/v3/p?n=2&n=10"
    assert signer.encode_query([("n", 10), ("n", 2)]) == "n=10&n=2"


def test_quirk_none_values_are_dropped_and_empty_lists_vanish(sdk: SdkClients) -> None:
    assert _uri(sdk, [("a", None), ("b", []), ("c", "")]) == "/v3/p?c="


@pytest.mark.parametrize(
    ("project_id", "path_params", "resolved"),
    [
        (".", {}, "/v3/"),
        ("..", {}, "/"),
        ("p", {"p0": ".."}, "/v3/"),
        ("p", {"p0": ".", "p1": "x"}, "/v3/p/x"),
    ],
)
def test_quirk_dot_segments_are_signed_verbatim_but_resolved_on_the_wire(
    sdk: SdkClients, wire: WireServer, project_id: str, path_params: dict[str, str], resolved: str
) -> None:
    # The SDK signs its resource path as built (`/v3/p/..`), then `requests` resolves the dot
    # segments (urllib3 parse_url) and sends `/v3/`: the call is refused, by any verifier. Why the
    # generic wire test never draws "." or ".." as a path segment.
    call = Call(
        "GET",
        wire.url,
        False,
        None,
        "AKDOT",
        "SKDOT",
        project_id,
        None,
        path_params,
        {"q": "1"},
        False,
        {},
        None,
        None,
    )
    wire.secrets[call.ak] = call.sk
    client = sdk.get(wire.url, False, None)
    client.with_credentials(credentials(call))
    with pytest.raises(ClientRequestException) as info:
        client.call_api(
            call.template,
            "GET",
            path_params=dict(path_params),
            query_params=list(call.query.items()),
            header_params={},
            collection_formats={},
            response_type="ListBackupsResponse",
        )
    assert info.value.status_code == 401
    seen = wire.seen[-1]
    assert not seen.verified
    assert seen.raw_target == f"{resolved}?q=1"
    # Everything but the path reached us as signed: with the path the SDK built, the signature verifies.
    signed_path = call.wire_path()
    assert signed_path != resolved
    auth = signer.parse_authorization(seen.headers["Authorization"])
    _, pairs = signer.split_target(seen.raw_target)
    expected = signer.expected_signature(
        "GET", signed_path, pairs, seen.headers, b"", call.sk, auth.signed_headers
    )
    assert hmac.compare_digest(expected, auth.signature)
