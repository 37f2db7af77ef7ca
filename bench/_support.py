"""Shared pieces of the benchmarks: the emulator in its own process, memory readings, a token.

The emulator runs in a *spawned* process so that neither its CPU nor its memory is counted against
the client or crawler being measured (the machine has two cores: one serves, one crawls).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

import aiohttp
import orjson

DOMAIN = "acme"
USER = f"{DOMAIN}-admin"
# The emulator's built-in demo password for the default user: a local test credential, never printed.
PASSWORD = f"{DOMAIN}-password"


def proc_status_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """A memory line of ``/proc/<pid>/status`` (VmRSS now, VmHWM the peak) in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise LookupError(field)


@dataclass(frozen=True)
class EmulatorInfo:
    """What the emulator process reports once it listens."""

    pid: int
    url: str
    backups: int
    generate_seconds: float
    rss_before_mb: float  # after imports, before the estate
    rss_after_mb: float  # with the estate generated
    biggest_project: str
    biggest_count: int
    projects: tuple[str, ...]
    service: dict[str, float]  # in-process ListBackups figures (see _measure_service), empty if not asked


def _measure_service(estate: Any, project_id: str, pages: int) -> dict[str, float]:
    """ListBackups without HTTP, on one core, in records/s.

    ``cold``: default 1000-record pages from the *end* of the biggest project, served for the first
    time (the HTTP benchmark reads from its start, so its pages stay cold too); this includes the
    first touch of each resource's memoised fragments. ``warm``: the same pages again, from the page
    cache (``pages`` should fit its 64 MiB). ``writer`` and ``reference``: the same 20,000 records
    written by the template writer and by the reference (a dict per record + ``orjson.dumps``, what
    every record cost before the writer), interleaved, best of three, both with warm fragments.
    """
    from multidict import MultiDict

    from crawler.emulator.query import parse_list_backups_query

    total = len(estate.view(project_id, "private"))
    offsets = [max(0, total - (k + 1) * 1000) for k in range(pages)]
    queries = [parse_list_backups_query(MultiDict(offset=str(o), limit="1000")) for o in offsets]
    records = sum(min(1000, total - o) for o in offsets)
    out: dict[str, float] = {}
    for label in ("cold", "warm"):
        started = time.process_time()
        for query in queries:
            estate.list_backups(project_id, query)
        out[label] = records / (time.process_time() - started)
    # Private API on purpose: these two are the serialisers being compared.
    handles = list(estate.view(project_id, "private"))[-20_000:]
    write = getattr(estate, "_writer", None)  # absent from estates older than the writer (baselines)
    writer, reference = float("inf"), float("inf")
    for _ in range(3):
        if write is not None:
            started = time.process_time()
            write.texts(handles)
            writer = min(writer, time.process_time() - started)
        started = time.process_time()
        for handle in handles:
            orjson.dumps(estate._record(handle))
        reference = min(reference, time.process_time() - started)
    out["writer"] = len(handles) / writer if write is not None else 0.0
    out["reference"] = len(handles) / reference
    return out


def _emulator_main(backups: int, seed: int, service_pages: int, conn: Connection) -> None:
    """Body of the emulator process: generate, measure, report over ``conn``, serve until SIGTERM."""
    from crawler.emulator.estate import Estate
    from crawler.emulator.scenario import Scenario, apply_overrides
    from crawler.emulator.server import EmulatorServer

    scenario = apply_overrides(Scenario(), backups=backups, seed=seed)
    rss_before = proc_status_mb()
    started = time.perf_counter()
    estate = Estate.generate(scenario.estate)
    generate_seconds = time.perf_counter() - started
    rss_after = proc_status_mb()
    sizes = {pid: len(estate.view(pid, "private")) for pid in estate.projects}
    biggest = max(sizes, key=sizes.__getitem__)
    service = _measure_service(estate, biggest, service_pages) if service_pages else {}

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with EmulatorServer(scenario, estate=estate) as server:
            conn.send(
                EmulatorInfo(
                    pid=os.getpid(),
                    url=server.url,
                    backups=estate.backup_count,
                    generate_seconds=generate_seconds,
                    rss_before_mb=rss_before,
                    rss_after_mb=rss_after,
                    biggest_project=biggest,
                    biggest_count=sizes[biggest],
                    projects=tuple(pid for pid, n in sizes.items() if n),
                    service=service,
                )
            )
            await stop.wait()

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())


class EmulatorProcess:
    """The emulator with a generated estate of ``backups`` in a spawned process (context manager)."""

    def __init__(self, backups: int, *, seed: int = 42, service_pages: int = 0) -> None:
        self._args = (backups, seed, service_pages)
        self._process: multiprocessing.process.BaseProcess | None = None
        self.info: EmulatorInfo | None = None

    def __enter__(self) -> EmulatorInfo:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=False)
        process = context.Process(target=_emulator_main, args=(*self._args, child), daemon=True)
        process.start()
        self._process = process
        child.close()
        try:
            info = parent.recv()  # EOFError if the process died before listening
        except EOFError:
            process.join()
            raise RuntimeError(f"the emulator process exited with {process.exitcode}") from None
        if not isinstance(info, EmulatorInfo):
            raise TypeError(info)
        self.info = info
        return info

    def peak_rss_mb(self) -> float:
        """The emulator process's peak RSS so far (VmHWM)."""
        if self.info is None:
            raise RuntimeError("not started")
        return proc_status_mb(self.info.pid, "VmHWM")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        process = self._process
        if process is not None and process.is_alive():
            process.terminate()  # SIGTERM: the server stops cleanly
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join()


async def project_token(session: aiohttp.ClientSession, url: str, project_id: str) -> str:
    """An IAM token of the default user scoped to ``project_id``."""
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": USER, "password": PASSWORD, "domain": {"name": DOMAIN}}},
            },
            "scope": {"project": {"id": project_id}},
        }
    }
    async with session.post(f"{url}/v3/auth/tokens", data=orjson.dumps(body)) as resp:
        if resp.status != 201:
            raise RuntimeError(f"token request failed: HTTP {resp.status}")
        return resp.headers["X-Subject-Token"]


def table(rows: list[tuple[str, str]], title: str) -> str:
    """Two aligned columns under a title."""
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title)]
    lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
    return "\n".join(lines)
