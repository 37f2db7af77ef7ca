"""TLS and proxies (issue 15, item 2): verification on by default, a CA bundle per tenant, verification
off only explicitly and loudly, HTTPS_PROXY / HTTP_PROXY and a tenant's own proxy honoured.

The tests make their own certificates (trustme: a throwaway CA and a certificate for 127.0.0.1), put
a TLS front (an aiohttp server with that certificate) before the emulator, and a plain forward
proxy of their own (absolute-form requests, recorded) on loopback.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from conftest import crawler_env, run_cli, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import Scenario
from crawler.emulator.server import EmulatorThread

pytestmark = pytest.mark.e2e  # crawler processes against servers over real sockets

SCENARIO = Scenario(
    seed=81, estate=EstateSpec(seed=81, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=300),))
)
_HOP = {"content-length", "transfer-encoding", "connection", "host", "proxy-connection", "keep-alive"}


class Relay:
    """An aiohttp server on loopback that forwards every request to ``upstream`` and records it: with an
    SSL context, a TLS front; without, a forward proxy (requests in absolute form)."""

    def __init__(self, upstream: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.upstream, self.ssl_context = upstream, ssl_context
        self.seen: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append(str(request.url))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with (
            ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                self.upstream + request.rel_url.path_qs,
                headers=headers,
                data=await request.read(),
            ) as answer,
        ):
            body = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            return web.Response(status=answer.status, body=body, headers=out)

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"

    def __enter__(self) -> Relay:
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    bundle = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return server, bundle


@pytest.fixture
def emu(emulator_factory: Callable[..., EmulatorThread]) -> Iterator[EmulatorThread]:
    yield emulator_factory(SCENARIO)


def _crawl(tmp_path: Path, name: str, url: str, env: dict[str, str] | None = None, **settings: Any) -> Any:
    directory = tmp_path / name
    directory.mkdir()
    config = write_tenant(directory, url, "acme-prod", "acme", regions=["cn-north-4"], **settings)
    proc = run_cli("run", "--config", str(config), "--output", str(directory / "out"), "--no-report", env=env)
    manifest_path = directory / "out" / "manifest.json"
    return proc, json.loads(manifest_path.read_text()) if manifest_path.exists() else None


def test_tls_is_verified_against_the_tenants_ca_bundle_and_off_only_loudly(
    tmp_path: Path, emu: EmulatorThread, certificates: tuple[ssl.SSLContext, Path]
) -> None:
    server_context, bundle = certificates
    with Relay(emu.url, server_context) as front:
        trusted, manifest = _crawl(tmp_path, "trusted", front.url, tls={"ca_file": str(bundle)})
        untrusted, _ = _crawl(tmp_path, "untrusted", front.url)
        unverified, unverified_manifest = _crawl(tmp_path, "unverified", front.url, tls={"verify": False})

    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert manifest["status"] == "complete" and front.seen, "the crawl went through the TLS front"
    assert "verification is OFF" not in trusted.stderr
    # The system's CAs do not know the test's CA: refused, clearly, and not retried for nothing.
    assert untrusted.returncode == 1
    assert "certificate is not trusted" in untrusted.stderr and "tls.ca_file" in untrusted.stderr
    assert "Traceback" not in untrusted.stderr
    # Off only when asked, and said on every run.
    assert unverified.returncode == 0 and unverified_manifest["status"] == "complete"
    assert "TLS certificate verification is OFF" in unverified.stderr


def test_a_ca_bundle_is_read_relative_to_the_tenant_file_and_a_bad_one_named(
    tmp_path: Path, emu: EmulatorThread, certificates: tuple[ssl.SSLContext, Path]
) -> None:
    server_context, bundle = certificates
    (tmp_path / "relative").mkdir()
    (tmp_path / "relative" / "ca.pem").write_bytes(bundle.read_bytes())
    with Relay(emu.url, server_context) as front:
        config = write_tenant(tmp_path / "relative", front.url, "acme-prod", "acme",
                              regions=["cn-north-4"], tls={"ca_file": "ca.pem"})  # fmt: skip
        proc = run_cli("run", "--config", str(config), "--output", str(tmp_path / "out"), "--no-report")
        (tmp_path / "bad").mkdir()
        broken, _ = _crawl(tmp_path, "broken", front.url, tls={"ca_file": str(tmp_path / "missing.pem")})

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert broken.returncode == 1 and f"tls.ca_file {tmp_path / 'missing.pem'}" in broken.stderr


def test_proxies_from_the_environment_and_the_tenant_file_are_used(
    tmp_path: Path, emu: EmulatorThread
) -> None:
    with Relay(emu.url) as proxy:
        from_env, manifest1 = _crawl(tmp_path, "env", emu.url, env=crawler_env(HTTP_PROXY=proxy.url))
        through_env = list(proxy.seen)
        bypassed, manifest2 = _crawl(
            tmp_path, "no-proxy", emu.url, env=crawler_env(HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
        )
        through_bypass = len(proxy.seen) - len(through_env)
        from_file, manifest3 = _crawl(tmp_path, "file", emu.url, proxy=proxy.url)

    for proc, manifest in ((from_env, manifest1), (bypassed, manifest2), (from_file, manifest3)):
        assert proc.returncode == 0 and manifest["status"] == "complete", proc.stderr[-3000:]
    assert any("/v3/auth/projects" in url for url in through_env)
    assert any("/backups" in url for url in through_env), "CBR requests went through HTTP_PROXY"
    assert through_bypass == 0, "NO_PROXY is honoured"
    assert len(proxy.seen) > len(through_env), "the tenant file's proxy is used"
