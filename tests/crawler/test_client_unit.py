"""ApiClient against a purpose-built server on loopback: retries, re-authentication, error mapping.

The server answers from a script, one answer per request, and records what it was sent; the
client's sleeps are recorded instead of slept, so retries cost no wall time.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
from aiohttp import web

from crawler.errors import ApiError, AuthFailedError, BadResponseError, DeadlineExceeded, TransportError
from crawler.pipeline.client import ApiClient, ApiRequest, RetryPolicy
from crawler.pipeline.ratelimit import QuotaLimiter, QuotaOwner


@dataclass
class Answer:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=dict)


class ScriptedServer:
    """Answers each request with the next scripted answer (the last one repeats)."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.seen: list[web.Request] = []
        self.raw_queries: list[str] = []
        self.tokens: list[str | None] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        self.raw_queries.append(request.raw_path.partition("?")[2])
        self.tokens.append(request.headers.get("X-Auth-Token"))
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


class CountingAuth:
    """A token credential that counts how often it is asked for and told to forget."""

    description = "test token"
    identity = "user:test"

    def __init__(self) -> None:
        self.generation = 0
        self.invalidated = 0

    async def authorize(self, request: ApiRequest, headers: dict[str, str]) -> None:
        self.generation += 1
        headers["X-Auth-Token"] = f"token-{self.invalidated}"

    def invalidate(self, request: ApiRequest) -> None:
        self.invalidated += 1

    def prefetch(self, request: ApiRequest) -> None:
        return None


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    scripted.url = f"http://127.0.0.1:{port}"
    yield scripted
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def _client(session: aiohttp.ClientSession, sleeps: list[float], **policy: float) -> ApiClient:
    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    return ApiClient(session, retry=RetryPolicy(**policy), rng=random.Random(7), sleep=sleep)  # type: ignore[arg-type]


def _request(server: ScriptedServer, query: tuple[tuple[str, str], ...] = ()) -> ApiRequest:
    return ApiRequest("cbr", "GET", server.url, "/v3/p1/backups", query=query, project_id="p1")


def _error(code: str, message: str) -> bytes:
    return orjson.dumps({"error_code": code, "error_msg": message})


LIMITER_OWNER = QuotaOwner("user:test", "cbr", "http://127.0.0.1")


async def test_server_errors_are_retried_signed_afresh_and_counted(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [Answer(503, _error("APIGW.0201", "busy")), Answer(502, b"bad gateway"), Answer()]
    sleeps: list[float] = []
    auth = CountingAuth()
    limiter = QuotaLimiter(LIMITER_OWNER, None)
    response = await _client(session, sleeps).send(_request(server), auth, limiter)
    assert response.data == {"ok": True}
    assert len(server.seen) == 3 and len(sleeps) == 2
    assert auth.generation == 3, "every attempt is authorised afresh (a fresh X-Sdk-Date)"
    assert (limiter.stats.requests, limiter.stats.retries, limiter.stats.errors) == (3, 2, 0)


async def test_a_client_error_is_not_retried_and_names_code_message_and_request_id(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [Answer(400, _error("BackupService.0001", "bad limit"), {"X-Request-Id": "req-42"})]
    sleeps: list[float] = []
    with pytest.raises(ApiError) as caught:
        await _client(session, sleeps).send(_request(server), CountingAuth())
    assert len(server.seen) == 1 and sleeps == []
    error = caught.value
    assert (error.status, error.code, error.message, error.request_id) == (
        400,
        "BackupService.0001",
        "bad limit",
        "req-42",
    )


async def test_the_request_id_is_taken_from_the_body_when_the_header_is_missing(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    body = orjson.dumps({"error_code": "CBR.0403", "error_msg": "forbidden", "request_id": "in-body"})
    server.script = [Answer(403, body)]
    with pytest.raises(ApiError) as caught:
        await _client(session, []).send(_request(server), CountingAuth())
    assert caught.value.request_id == "in-body"


async def test_a_401_re_authenticates_once_then_succeeds(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [Answer(401, _error("APIGW.0301", "token expired")), Answer()]
    auth = CountingAuth()
    response = await _client(session, []).send(_request(server), auth)
    assert response.status == 200
    assert auth.invalidated == 1
    assert server.tokens == ["token-0", "token-1"], "the retry carries the renewed credential"


async def test_a_second_401_is_believed(server: ScriptedServer, session: aiohttp.ClientSession) -> None:
    server.script = [Answer(401, _error("APIGW.0301", "token invalid"))]
    auth = CountingAuth()
    with pytest.raises(AuthFailedError):
        await _client(session, []).send(_request(server), auth)
    assert len(server.seen) == 2 and auth.invalidated == 1


async def test_retry_after_is_waited_at_least(server: ScriptedServer, session: aiohttp.ClientSession) -> None:
    server.script = [Answer(429, _error("APIGW.0308", "throttled"), {"Retry-After": "7"}), Answer()]
    sleeps: list[float] = []
    await _client(session, sleeps).send(_request(server), CountingAuth())
    assert len(sleeps) == 1 and sleeps[0] >= 7.0


async def test_no_retry_starts_after_the_deadline(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [Answer(503, _error("APIGW.0201", "busy"), {"Retry-After": "30"})]
    deadline = asyncio.get_running_loop().time() + 5
    sleeps: list[float] = []
    with pytest.raises(DeadlineExceeded, match="busy"):
        await _client(session, sleeps).send(_request(server), CountingAuth(), deadline=deadline)
    assert len(server.seen) == 1 and sleeps == []


async def test_an_answer_that_is_not_json_is_retried_then_reported(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [Answer(200, b"<html>maintenance</html>", {"X-Request-Id": "req-html"})]
    with pytest.raises(BadResponseError, match="not JSON") as caught:
        await _client(session, [], max_attempts=3).send(_request(server), CountingAuth())
    assert len(server.seen) == 3
    assert caught.value.request_id == "req-html"


async def test_retries_stop_at_max_attempts_and_count_one_error(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [Answer(500, _error("CBR.9999", "internal"))]
    limiter = QuotaLimiter(LIMITER_OWNER, None)
    with pytest.raises(ApiError, match="internal"):
        await _client(session, [], max_attempts=4).send(_request(server), CountingAuth(), limiter)
    assert len(server.seen) == 4
    assert (limiter.stats.retries, limiter.stats.errors) == (3, 1)


async def test_the_wire_query_is_the_signed_canonical_query(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    # Encoded once, by the signer's rules: aiohttp must not quote it again or the signature breaks.
    server.script = [Answer()]
    query = (("name", "a b/c~d"), ("limit", "1000"), ("marker", "é"))
    await _client(session, []).send(_request(server, query), CountingAuth())
    assert server.raw_queries == ["limit=1000&marker=%C3%A9&name=a%20b%2Fc~d"]


async def test_a_refused_connection_is_a_transport_error_after_retries(
    session: aiohttp.ClientSession,
) -> None:
    # A port nothing listens on: bind one, then close it.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    request = ApiRequest("cbr", "GET", f"http://127.0.0.1:{port}", "/v3/p1/backups", project_id="p1")
    sleeps: list[float] = []
    with pytest.raises(TransportError):
        await _client(session, sleeps, max_attempts=2).send(request, CountingAuth())
    assert len(sleeps) == 1
