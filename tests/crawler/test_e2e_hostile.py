"""A server that misbehaves on purpose (issue 15, item 4): each project answers ListBackups its own bad way.

Not the emulator's happy path: a small aiohttp server of the test's own, on loopback. The crawl (token
auth, explicit project ids, one region: no discovery) must end with each hostile scope failed or
partial with a clear message and the request id, the run incomplete (exit 1), the good scope complete,
nothing half-written under a final name, bounded memory (a maximum body size) and bounded time
(per-request and per-scope deadlines), and no request, let alone a credential, sent to the host a
redirect points at.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from conftest import crawler_env, run_cli

pytestmark = pytest.mark.e2e  # a crawler process against a server over real sockets

TOKEN = "hostile-test-token-0123456789"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _project(n: int) -> str:
    return f"{n:032x}"


def _page(records: list[dict[str, Any]], count: Any) -> web.Response:
    return web.json_response({"backups": records, "count": count})


class HostileServer:
    """ListBackups of project N answered by behaviour N; every answer carries an X-Request-Id."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.requests = 0
        self.elsewhere: list[dict[str, str]] = []  # requests that reached the redirect's target
        self.url = self.elsewhere_url = ""
        self._runners: list[web.AppRunner] = []
        self.projects: list[dict[str, Any]] = []  # what IAM's GET /v3/auth/projects lists

    async def _serve(self, handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.elsewhere.append(dict(request.headers))
        return _page([], 0)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        rid = f"{self.requests:032x}"
        if request.path == "/v3/auth/projects":
            return web.json_response({"projects": self.projects}, headers={"X-Request-Id": rid})
        behaviour = int(request.match_info["tail"].split("/")[1], 16)
        try:
            response = await BEHAVIOURS.get(behaviour, ("its own page", own_page))[1](self, request)
        except web.HTTPException as exc:  # a redirect: an answer too, with its id
            exc.headers["X-Request-Id"] = rid
            raise
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
        return response

    def start(self) -> HostileServer:
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._serve(self._handle), self.loop).result(10)
        self.elsewhere_url = asyncio.run_coroutine_threadsafe(self._serve(self._elsewhere), self.loop).result(
            10
        )
        return self

    def stop(self) -> None:
        async def stop() -> None:
            # Handlers still sleeping (the slow and lying answers) end here, not at collection.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def ok(server: HostileServer, request: web.Request) -> web.StreamResponse:
    return _page([{"id": f"id-{i}", "project_id": _project(1), "name": "b"} for i in range(3)], 3)


async def own_page(server: HostileServer, request: web.Request) -> web.StreamResponse:
    project = request.match_info["tail"].split("/")[1]
    return _page([{"id": f"{project}-{i}", "project_id": project} for i in range(2)], 2)


async def html(server: HostileServer, request: web.Request) -> web.StreamResponse:
    return web.Response(text="<html><body>Service unavailable</body></html>", content_type="text/html")


async def not_utf8(server: HostileServer, request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"\xff\xfe\x00{\x80\x81", content_type="application/json")


async def deep(server: HostileServer, request: web.Request) -> web.StreamResponse:
    return web.Response(body=b'{"backups":' + b"[" * 100_000, content_type="application/json")


async def says_2gb(server: HostileServer, request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"X-Request-Id": "f" * 32, "Content-Type": "application/json"})
    response.content_length = 2 << 30
    await response.prepare(request)
    await response.write(b'{"backups": [' + b" " * 65536)
    await asyncio.sleep(30)  # the client must not wait for the rest
    return response


async def endless(server: HostileServer, request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"X-Request-Id": "e" * 32, "Content-Type": "application/json"})
    await response.prepare(request)  # chunked, no length: a body that never ends
    await response.write(b'{"backups": [')
    chunk = b'{"id": "x", "pad": "' + b"y" * (1 << 20) + b'"},'
    for _ in range(1000):  # 1 GB if nobody stops reading
        await response.write(chunk)
    return response


async def slowloris(server: HostileServer, request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"X-Request-Id": "5" * 32, "Content-Type": "application/json"})
    await response.prepare(request)
    for byte in b'{"backups": [], "count": 0}' * 100:
        await response.write(bytes([byte]))
        await asyncio.sleep(1.0)  # a byte a second: the read timeout restarts with every byte
    return response


async def negative_count(server: HostileServer, request: web.Request) -> web.StreamResponse:
    return _page([], -1)


async def huge_count(server: HostileServer, request: web.Request) -> web.StreamResponse:
    return _page([], 10**30)


async def string_count(server: HostileServer, request: web.Request) -> web.StreamResponse:
    return _page([], "5")


async def no_id(server: HostileServer, request: web.Request) -> web.StreamResponse:
    return _page([{"name": "no id here", "project_id": _project(12)}], 1)


async def always_429(server: HostileServer, request: web.Request) -> web.StreamResponse:
    body = {"error_code": "APIGW.0308", "error_msg": "The throttling threshold has been reached"}
    return web.json_response(body, status=429)


async def redirect(server: HostileServer, request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"{server.elsewhere_url}/v3/{_project(14)}/backups?steal=1")


BEHAVIOURS: dict[int, tuple[str, Callable[[HostileServer, web.Request], Awaitable[web.StreamResponse]]]] = {
    1: ("a page (the good scope)", ok),
    2: ("a 200 with HTML", html),
    3: ("non-UTF-8 bytes", not_utf8),
    4: ("JSON nested 100,000 deep", deep),
    5: ("a Content-Length of 2 GB", says_2gb),
    6: ("a body that never ends", endless),
    7: ("1 byte per second", slowloris),
    8: ("count negative", negative_count),
    9: ("count huge", huge_count),
    10: ("count a string", string_count),
    11: ("unused", ok),
    12: ("records without id", no_id),
    13: ("a 429 that never stops", always_429),
    14: ("a redirect to another host", redirect),
}
EXPECTED = {  # what the scope's error must say
    2: "not a ListBackups page",
    3: "not a ListBackups page",
    4: "nested too deep",
    5: "BodyTooLarge",
    6: "BodyTooLarge",
    7: "deadline",
    8: "bad 'count'",
    9: "bad 'count'",
    10: "not a ListBackups page",
    12: "missing required field `id`",
    13: "APIGW.0308",
    14: "redirects are not followed",
}


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer().start()
    yield server
    server.stop()


def _tenant(directory: Path, url: str, projects: list[str], name: str = "hostile") -> Path:
    tenant = {
        "tenant": name,
        "auth": {"mode": "token", "token_env": "HOSTILE_TOKEN"},
        "endpoints": {"iam": url, "eps": url, "cbr": url},
        "regions": ["cn-north-4"],
        "projects": {"ids": projects},
        "rate_limit": {"requests_per_second": "unlimited", "concurrency": 16, "page_size": 100},
        "timeouts": {"connect": 2.0, "read": 2.0, "request": 3.0, "scope": 8.0},
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tenant))
    return path


def test_every_misbehaviour_fails_its_scope_clearly_and_the_run_goes_on(
    tmp_path: Path, hostile: HostileServer
) -> None:
    projects = [_project(n) for n in BEHAVIOURS if n != 11]
    config = _tenant(tmp_path, hostile.url, projects)
    out = tmp_path / "out"

    proc = run_cli("run", "--config", str(config), "--output", str(out), timeout=180,
                   env=crawler_env(HOSTILE_TOKEN=TOKEN))  # fmt: skip

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "incomplete" and not (out / "_SUCCESS").exists()
    scopes = {int(s["project_id"], 16): s for s in manifest["scopes"]}
    assert scopes[1]["status"] == "complete" and scopes[1]["records_written"] == 3
    for n, phrase in EXPECTED.items():
        scope = scopes[n]
        assert scope["status"] in ("failed", "partial"), (BEHAVIOURS[n][0], scope)
        assert phrase in scope["error"], (BEHAVIOURS[n][0], scope["error"])
        if n not in (7,):  # a deadline met mid-answer has no answer to take an id from
            assert scope["request_id"], (BEHAVIOURS[n][0], scope)
        assert scope["files"] == [], "nothing under a final name for a scope that is not complete"
    # Nothing half-written anywhere, and the redirect's target never heard from the crawler.
    assert not list(out.rglob("*.part"))
    assert hostile.elsewhere == []
    assert TOKEN not in proc.stderr


def test_a_401_that_never_stops_fails_the_tenant_with_one_message(
    tmp_path: Path, hostile: HostileServer
) -> None:
    async def always_401(server: HostileServer, request: web.Request) -> web.StreamResponse:
        body = {"error_code": "APIGW.0301", "error_msg": "Incorrect IAM authentication information"}
        return web.json_response(body, status=401)

    BEHAVIOURS[11] = ("a 401 that never stops", always_401)
    try:
        config = _tenant(tmp_path, hostile.url, [_project(11), _project(1)], name="refused")
        proc = run_cli("run", "--config", str(config), "--output", str(tmp_path / "out"), timeout=120,
                       env=crawler_env(HOSTILE_TOKEN=TOKEN))  # fmt: skip
    finally:
        BEHAVIOURS[11] = ("unused", ok)

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "APIGW.0301" in proc.stderr and "Traceback" not in proc.stderr
    assert hostile.requests <= 4, "a refused credential stops the tenant: no request per scope"


def test_hostile_project_names_stay_under_the_root_each_in_its_own_file(
    tmp_path: Path, hostile: HostileServer
) -> None:
    import unicodedata

    names = [
        "cn-north-4_../../../escape", "cn-north-4_a/b", "cn-north-4_a\\b", "cn-north-4_..",
        "cn-north-4_Web", "cn-north-4_web", "cn-north-4_WEB", "cn-north-4_caf\u00e9",
        unicodedata.normalize("NFD", "cn-north-4_caf\u00e9"), "cn-north-4_\x1b[31mred",
        "cn-north-4_" + "x" * 300, "cn-north-4_a\x00b",
    ]  # fmt: skip
    hostile.projects = [
        {"id": _project(0x100 + i), "name": name, "enabled": True, "domain_id": "d"}
        for i, name in enumerate(names)
    ]
    tenant = {
        "tenant": "names",
        "auth": {"mode": "token", "token_env": "HOSTILE_TOKEN"},
        "endpoints": {"iam": hostile.url, "eps": hostile.url, "cbr": hostile.url},
        "regions": ["cn-north-4"],
        "rate_limit": {"requests_per_second": "unlimited", "concurrency": 4, "page_size": 100},
    }
    config = tmp_path / "names.yaml"
    config.write_text(yaml.safe_dump(tenant))
    out = tmp_path / "out"
    before = set(tmp_path.iterdir())

    proc = run_cli("run", "--config", str(config), "--output", str(out), env=crawler_env(HOSTILE_TOKEN=TOKEN))

    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["scopes"]) == len(names)
    paths = [f["path"] for s in manifest["scopes"] for f in s["files"]]
    assert len(paths) == len(names) == len({p.casefold() for p in paths}), "one file each, by case too"
    root = out.resolve()
    for scope in manifest["scopes"]:
        [entry] = scope["files"]
        path = (out / entry["path"]).resolve()
        assert path.is_relative_to(root) and not path.is_symlink(), entry["path"]
        assert all(part.isprintable() and len(part) <= 80 for part in path.relative_to(root).parts)
        ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
        assert ids == [f"{scope['project_id']}-{i}" for i in range(2)]
    assert set(tmp_path.iterdir()) == before | {out}, "nothing written outside the output root"
