"""Shared pieces of the benchmarks: the emulator in its own process, memory readings, a token.

The emulator runs in a *spawned* process so that neither its CPU nor its memory is counted against
the client or crawler being measured (the machine has two cores: one serves, one crawls).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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


def stop_process(process: multiprocessing.process.BaseProcess | None) -> None:
    """Stop an emulator process: SIGTERM (its server stops cleanly), SIGKILL after 30 s."""
    if process is not None and process.is_alive():
        process.terminate()
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()


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
        stop_process(self._process)


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


# --------------------------------------------------------------------------------------------------
# Several estates in one emulator process, prewarmed (used by bench.compare)


@dataclass(frozen=True)
class ServedEstate:
    """An estate for :class:`BenchEmulator`: generated once, then served on one port per scenario.

    ``scenario`` gives the estate and the identity; each of ``variants`` (same estate section) is
    served on a port of its own over the *same* estate object, e.g. with latency injected, so the
    page cache warmed once serves every variant. ``prewarm_limit`` fills the page cache with the
    default-order private pages of that size (:meth:`Estate.prewarm`); ``prewarm_own_types`` instead
    answers, in the process, the first page of every (project, enterprise project, own_type) query
    once, which caches both the filtered result and its page.
    """

    scenario: Any  # crawler.emulator.scenario.Scenario (pydantic models pickle across spawn)
    variants: tuple[Any, ...] = ()
    cache_bytes: int = 64 * 2**20
    prewarm_limit: int | None = None
    prewarm_own_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProjectInfo:
    id: str
    region: str
    name: str
    private_backups: int


@dataclass(frozen=True)
class ServedInfo:
    """What the emulator process reports about one :class:`ServedEstate` once it listens."""

    urls: tuple[str, ...]  # the scenario's, then each variant's
    backups: int
    projects: tuple[ProjectInfo, ...]  # every project but MOS, biggest first
    enterprise_projects: tuple[str, ...]  # ids, the default "0" included
    generate_seconds: float
    prewarm_seconds: float
    prewarmed_records: int  # records held by cached pages after the prewarm
    cache_mb: float
    access_key: str
    secret_key: str = dataclasses.field(repr=False)  # the emulator's own demo key, never printed

    @property
    def url(self) -> str:
        return self.urls[0]


def _prewarm_scopes(estate: Any, own_types: tuple[str, ...]) -> None:
    """Answer each (project, EP, own_type) first page once, as a crawl with EP discovery asks it."""
    from multidict import MultiDict

    from crawler.emulator.query import parse_list_backups_query

    queries = [
        (project.id, MultiDict(own_type=own_type, enterprise_project_id=ep.id, limit="1000", offset="0"))
        for project in estate.projects.values()
        if project.name != "MOS"
        for ep in estate.enterprise_projects[project.domain_id]
        for own_type in own_types
    ]
    # Keep every filtered result (the default LRU holds 64): a miss rescans the whole project.
    estate.query_cache.capacity = max(estate.query_cache.capacity, 2 * len(queries))
    for project_id, params in queries:
        estate.list_backups(project_id, parse_list_backups_query(params))


def _fleet_main(jobs: tuple[ServedEstate, ...], conn: Connection) -> None:
    """Body of the :class:`BenchEmulator` process: generate, prewarm, serve until SIGTERM."""
    from crawler.emulator.estate import Estate
    from crawler.emulator.server import EmulatorServer

    prepared: list[tuple[ServedEstate, Any, float, float]] = []
    for job in jobs:
        started = time.perf_counter()
        estate = Estate.generate(job.scenario.estate, cache_bytes=job.cache_bytes)
        generated = time.perf_counter() - started
        started = time.perf_counter()
        if job.prewarm_own_types:
            _prewarm_scopes(estate, job.prewarm_own_types)
        elif job.prewarm_limit:
            estate.prewarm(job.prewarm_limit)
        prepared.append((job, estate, generated, time.perf_counter() - started))

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with contextlib.AsyncExitStack() as stack:
            infos = []
            for job, estate, generated, prewarmed in prepared:
                servers = [
                    await stack.enter_async_context(EmulatorServer(scenario, estate=estate))
                    for scenario in (job.scenario, *job.variants)
                ]
                admin = next(r for r in servers[0].identity.credentials() if r.principal.name == USER)
                projects = sorted(
                    (
                        ProjectInfo(p.id, p.region, p.name, len(estate.view(p.id, "private")))
                        for p in estate.projects.values()
                        if p.name != "MOS"
                    ),
                    key=lambda p: -p.private_backups,
                )
                eps = tuple(ep.id for eps in estate.enterprise_projects.values() for ep in eps)
                cached = sum(len(key[1]) for key in estate._pages)  # private on purpose: bench introspection
                infos.append(
                    ServedInfo(
                        urls=tuple(server.url for server in servers),
                        backups=estate.backup_count,
                        projects=tuple(projects),
                        enterprise_projects=eps,
                        generate_seconds=generated,
                        prewarm_seconds=prewarmed,
                        prewarmed_records=cached,
                        cache_mb=estate._cache_used / 2**20,  # private on purpose: bench introspection
                        access_key=admin.access_key or "",
                        secret_key=admin.secret_key or "",
                    )
                )
            conn.send(infos)
            await stop.wait()

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())


class BenchEmulator:
    """Several prewarmed estates served by one spawned emulator process (context manager).

    ``with BenchEmulator((job_a, job_b)) as (a, b):`` gives one :class:`ServedInfo` per job. The
    process serves on one core; the client or crawler measured runs on the other.
    """

    def __init__(self, jobs: tuple[ServedEstate, ...]) -> None:
        self._jobs = jobs
        self._process: multiprocessing.process.BaseProcess | None = None

    def __enter__(self) -> list[ServedInfo]:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=False)
        process = context.Process(target=_fleet_main, args=(self._jobs, child), daemon=True)
        process.start()
        self._process = process
        child.close()
        try:
            infos = parent.recv()
        except EOFError:
            process.join()
            raise RuntimeError(f"the emulator process exited with {process.exitcode}") from None
        if not isinstance(infos, list) or not all(isinstance(i, ServedInfo) for i in infos):
            raise TypeError(infos)
        return infos

    def peak_rss_mb(self) -> float:
        """The emulator process's peak RSS so far (VmHWM)."""
        if self._process is None or self._process.pid is None:
            raise RuntimeError("not started")
        return proc_status_mb(self._process.pid, "VmHWM")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stop_process(self._process)


@dataclass(frozen=True)
class ChildRun:
    """A finished child process: exit code, wall seconds, CPU seconds, peak RSS, stderr's tail."""

    code: int
    wall: float
    cpu: float
    peak_rss_mb: float
    stderr: str


def compile_crawler() -> None:
    """Byte-compile the crawler's modules once, as ``pip install`` does for an installed package.

    From an editable install on a machine with ``PYTHONDONTWRITEBYTECODE`` set (this one), every
    crawler start would compile its own modules again (~45 ms), which no installed crawler pays.
    """
    import compileall

    import crawler

    compileall.compile_dir(os.path.dirname(crawler.__file__), quiet=1)


def run_child(command: list[str], env: dict[str, str], *, stderr_tail: int = 4000) -> ChildRun:
    """Run ``python -m MODULE ARGS`` and measure exactly that process: user+system CPU from ``wait4``,
    peak RSS from its own ``VmHWM`` (:mod:`bench._peak_rss` says why not ``wait4``'s). The crawler's
    modules are byte-compiled first (:func:`compile_crawler`)."""
    import subprocess
    import tempfile

    compile_crawler()

    python, dash_m, *rest = command
    if dash_m != "-m":
        raise ValueError(f"run_child runs 'python -m MODULE ...', not {command!r}")
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile() as err:
        peak_file = os.path.join(tmp, "peak")
        wrapped = [python, "-m", "bench._peak_rss", peak_file, *rest]
        started = time.perf_counter()
        process = subprocess.Popen(wrapped, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")[-stderr_tail:]
        with open(peak_file) as fh:
            peak_kib = int(fh.read())
    return ChildRun(
        code=process.returncode,
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=peak_kib / 1024,
        stderr=text,
    )
