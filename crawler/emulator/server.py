"""Run the emulator on loopback: in the caller's event loop, or in a thread with its own loop.

::

    async with EmulatorServer(scenario) as emu:      # binds 127.0.0.1:0 in the running loop
        emu.url, emu.port, emu.estate, emu.stats, emu.identity

    with EmulatorThread(scenario) as emu:            # same, for sync tests and subprocess crawlers
        emu.call(lambda: emu.estate.truth_ids(pid))  # runs on the server loop: the estate is not thread-safe
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from aiohttp import web

from crawler.emulator.app import STATE_KEY, EmulatorState, create_app
from crawler.emulator.estate import Estate
from crawler.emulator.gateway import Stats
from crawler.emulator.identity import Identity
from crawler.emulator.scenario import Scenario

T = TypeVar("T")


class EmulatorServer:
    """The emulator app served by an ``AppRunner`` on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        estate: Estate | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scenario = scenario or Scenario()
        self.host = host
        self._requested_port = port
        self.app = create_app(self.scenario, estate=estate, clock=clock, monotonic=monotonic)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def state(self) -> EmulatorState:
        return self.app[STATE_KEY]

    @property
    def estate(self) -> Estate:
        return self.state.estate

    @property
    def identity(self) -> Identity:
        return self.state.identity

    @property
    def stats(self) -> Stats:
        return self.state.gateway.stats

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the emulator is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        # access_log=None: a crawler makes thousands of calls; per-request logs would drown the output.
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        # With port 0 the kernel picked the port; the runner knows which.
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class EmulatorThread:
    """An :class:`EmulatorServer` in a daemon thread with its own event loop.

    ``start()`` returns once the port is listening (or re-raises the start-up error); ``stop()``
    shuts the server down and joins the thread. The estate lives on the server's loop: read or
    change it through :meth:`call`.
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        estate: Estate | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scenario = scenario or Scenario()
        self._host = host
        self._port = port
        self._estate = estate
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def server(self) -> EmulatorServer:
        if self._server is None:
            raise RuntimeError("the emulator thread is not started")
        return self._server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def estate(self) -> Estate:
        return self.server.estate

    @property
    def stats(self) -> Stats:
        return self.server.stats

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name="cbr-emulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        try:
            server = EmulatorServer(
                self.scenario, host=self._host, port=self._port, estate=self._estate, clock=self._clock
            )
            await server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._server = server
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await server.stop()

    def call(self, fn: Callable[[], T], timeout: float | None = 60.0) -> T:
        """Run ``fn()`` on the server's loop and return its result (estate reads without races)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the emulator thread is not started")

        async def run() -> T:
            return fn()

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(run(), loop)
        return future.result(timeout)

    def stop(self) -> None:
        loop, thread, stopping = self._loop, self._thread, self._stopping
        if loop is None or thread is None:
            return
        if stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = None
        self._loop = None

    def __enter__(self) -> EmulatorThread:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["EmulatorServer", "EmulatorThread"]
