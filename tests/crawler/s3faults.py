"""A loopback proxy in front of the S3 server that answers chosen requests with the store's errors.

moto's server accepts every key and never throttles, so the errors a real store gives (403
AccessDenied for a key without rights, 503 SlowDown under load) are injected here, on the wire,
as S3 sends them: the status, and for requests other than HEAD the XML error body botocore parses.
Every other request is forwarded unchanged to the real server.
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field

from aiohttp import ClientSession, web

_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "host"}


@dataclass
class Fault:
    """Answer requests whose method matches and whose path matches ``path`` (a regex) with an error,
    ``times`` times (None: always)."""

    method: str
    path: str
    status: int
    code: str
    times: int | None = None
    served: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.served >= self.times:
            return False
        return method == self.method and re.search(self.path, path) is not None


@dataclass
class S3FaultProxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    log: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status) answered
    url: str = ""

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path_qs
        for fault in self.faults:
            if fault.matches(request.method, request.path):
                fault.served += 1
                self.log.append((request.method, path, fault.status))
                body = (
                    b""
                    if request.method == "HEAD"
                    else (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                        f"<Message>injected {fault.code}</Message><RequestId>proxy-1</RequestId></Error>"
                    ).encode()
                )
                return web.Response(status=fault.status, body=body, content_type="application/xml")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(
            request.method, self.upstream + path, headers=headers, data=await request.read()
        ) as upstream:
            body = await upstream.read()
            self.log.append((request.method, path, upstream.status))
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=upstream.status, body=body, headers=out)

    async def _start(self) -> str:
        self._session = ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        # Keep-alive connections' handlers outlive the site: end them here, not at garbage collection.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def start(self) -> S3FaultProxy:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def answered(self, status: int) -> list[tuple[str, str, int]]:
        return [entry for entry in self.log if entry[2] == status]
