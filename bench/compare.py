"""The crawler against the raw floor and the official SDK, measured side by side in one run.

::

    .venv/bin/python -m bench.compare [--profile a b] [--big]

One spawned emulator process serves three prewarmed views on loopback (one core), and each
contender runs on the other core, one at a time:

- **A, big projects**: ``--backups`` (1M) in 20 projects, 1000-record pages, private backups, no
  enterprise-project pass. The crawler runs as users run it (``python -m crawler run``, a child
  process measured with ``wait4``) with ``requests_per_second: unlimited`` (allowed because the
  endpoints are the emulator's) and ``--no-report`` (the floor writes no report either). Against
  it: the *floor*, a bare aiohttp + orjson loop over the same pages (same token auth, same
  concurrency, offsets from the first page, one NDJSON file per scope with the provenance key, and
  nothing else), the same loop splitting records with msgspec ``Raw`` as the crawler does (a
  reference); and the official SDK (``huaweicloudsdkcbr`` ListBackups, AK/SK) paged the way its
  users page: a sequential loop, and ``CbrAsyncClient`` (its thread pool) with ``--concurrency``
  requests in flight, both on the first ``--sdk-records`` backups of the biggest project, compared
  per record.
- **B, many small projects**: ``--small-projects`` projects x 10 enterprise projects x (private,
  shared) = 20,000 scopes of a few backups each (most hold none), requests/s, crawler (unlimited)
  against the floor, taking turns ``--b-runs`` times (each one's best counts: these runs last
  seconds and swing by a third on a shared machine). Their outputs stay until the end (see
  :func:`_kept`). On Huawei's public cloud the gateway's 200 requests/s would bind here.
- **C, rate limited**: A's estate behind 100 ms of latency on ``cbr.list_backups``, crawled at
  50 requests/s: wall time against requests / 50.

Then the peak RSS of the crawler at 1M (and at 5M with ``--big``, a separate, slower run), and with
``--profile a b`` a cProfile of the crawler process on A and on B, timed with its
main thread's CPU clock (:mod:`bench._profiled_crawl`), with the top functions by own time. The page
caches are filled before anything is timed (the table says how much), so that the emulator answers
from memory and the clients are what is measured. ``bench/README.md`` says how to read the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import pstats
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import orjson
import yaml

from bench._support import (
    DOMAIN,
    PASSWORD,
    USER,
    BenchEmulator,
    ChildRun,
    ServedEstate,
    ServedInfo,
    project_token,
    run_child,
)
from crawler.emulator.scenario import Scenario

T = TypeVar("T")
PASSWORD_ENV = "CBR_BENCH_PASSWORD"
REGIONS = ("cn-north-4", "ap-southeast-1")
PAGE = 1000
UNLIMITED = "unlimited"  # rate_limit.requests_per_second for A and B: no pacing, as the floor
# Bytes a cached 1000-record page takes per record is ~1.7 KB; Estate.prewarm budgets 2 KB.
CACHE_BYTES_PER_RECORD = 2200


# --------------------------------------------------------------------------------------------------
# Estates


def _scenario(domain: dict[str, Any], seed: int, faults: dict[str, Any] | None = None) -> Scenario:
    data: dict[str, Any] = {"seed": seed, "estate": {"regions": list(REGIONS), "domains": [domain]}}
    if faults is not None:
        data["faults"] = faults
    return Scenario.model_validate(data)


def big_projects(backups: int, seed: int, latency_ms: float) -> ServedEstate:
    """A and C: ``backups`` in 2 regions x (default + 9 sub-projects) = 20 projects, all prewarmed.

    C is the same estate on a second port, behind a fixed latency on ListBackups.
    """
    domain = {"name": DOMAIN, "subprojects": 9, "enterprise_projects": 3, "backups": backups}
    latency = {"latency": [{"api": "cbr.list_backups", "distribution": "fixed", "ms": latency_ms}]}
    return ServedEstate(
        scenario=_scenario(domain, seed),
        variants=(_scenario(domain, seed, latency),),
        cache_bytes=int(backups * CACHE_BYTES_PER_RECORD * 1.1) + 64 * 2**20,
        prewarm_limit=PAGE,
    )


def small_projects(projects: int, backups: int, seed: int) -> ServedEstate:
    """B: ``projects`` projects (half per region) x 10 enterprise projects (one disabled), 10 vaults
    per project spread over the EPs; every (project, EP, own_type) first page prewarmed."""
    domain = {
        "name": DOMAIN,
        "subprojects": projects // len(REGIONS) - 1,
        "enterprise_projects": 9,
        "vaults_per_project": 10,
        "backups": backups,
    }
    return ServedEstate(
        scenario=_scenario(domain, seed),
        cache_bytes=int(backups * CACHE_BYTES_PER_RECORD * 1.5) + 256 * 2**20,
        prewarm_own_types=("private", "shared"),
    )


# --------------------------------------------------------------------------------------------------
# The crawler, as users run it


@dataclass
class CrawlerRun:
    """A crawler child process and what its manifest says."""

    run: ChildRun
    status: str
    scopes: int
    records: int
    requests: int  # CBR requests, from the manifest's quota owners
    phase_seconds: float  # first scope started -> last scope finished
    scope_sizes: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.run.code == 0 and self.status == "complete"


def write_tenant(
    path: Path,
    url: str,
    *,
    rps: float | str,
    concurrency: int,
    eps: bool,
    own_types: Sequence[str],
    plan: str = "auto",
) -> Path:
    tenant: dict[str, Any] = {
        "tenant": "bench",
        "auth": {"mode": "password", "user": USER, "domain": DOMAIN, "password_env": PASSWORD_ENV},
        "endpoints": {"iam": url, "eps": url, "cbr": url},
        "regions": list(REGIONS),
        "projects": {"discover": {}},
        "enterprise_projects": {"mode": "discover"} if eps else {"mode": "none"},
        "own_types": list(own_types),
        "plan": plan,
        "rate_limit": {"requests_per_second": rps, "concurrency": concurrency, "page_size": PAGE},
        "output": {"compression": "none"},
    }
    path.write_text(yaml.safe_dump(tenant, sort_keys=False))
    return path


def _iso(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run_crawler(config: Path, output: Path, *, prefix: Sequence[str] = ("-m", "crawler")) -> CrawlerRun:
    """``python [prefix...] run --config CONFIG --output OUTPUT`` in a child process."""
    env = dict(os.environ, **{PASSWORD_ENV: PASSWORD})
    command = [
        sys.executable,
        *prefix,
        "run",
        "--config",
        str(config),
        "--output",
        str(output),
        "--no-report",
    ]
    child = run_child(command, env)
    manifest_path = output / "manifest.json"
    manifest = orjson.loads(manifest_path.read_bytes()) if manifest_path.exists() else {}
    scopes = manifest.get("scopes", [])
    starts = [_iso(s["started_at"]) for s in scopes if s.get("started_at")]
    ends = [_iso(s["finished_at"]) for s in scopes if s.get("finished_at")]
    requests = sum(
        int(owner.get("requests", 0))
        for owner in manifest.get("quota_owners", [])
        if " -> cbr " in str(owner.get("quota_owner", ""))
    )
    if child.code != 0:
        print(f"crawler exited with {child.code}:\n{child.stderr}", file=sys.stderr)
    return CrawlerRun(
        run=child,
        status=str(manifest.get("status")),
        scopes=len(scopes),
        records=sum(int(s.get("records_written", 0)) for s in scopes),
        requests=requests,
        phase_seconds=(max(ends) - min(starts)) if starts and ends else float("nan"),
        scope_sizes=[int(s.get("records_written", 0)) for s in scopes],
    )


# --------------------------------------------------------------------------------------------------
# The floor: a bare aiohttp + orjson loop


@dataclass(frozen=True)
class FloorScope:
    project_id: str
    region: str
    project_name: str
    enterprise_project_id: str | None
    own_type: str


@dataclass
class Measured:
    """Records and requests over wall and CPU seconds (CPU of this process, all its threads)."""

    records: int
    requests: int
    wall: float
    cpu: float

    @property
    def records_per_second(self) -> float:
        return self.records / self.wall

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.wall

    @property
    def cpu_per_million(self) -> float:
        return self.cpu / max(self.records, 1) * 1e6


class _RawPage(msgspec.Struct):
    backups: list[msgspec.Raw]
    count: int


_decode_raw_page = msgspec.json.Decoder(_RawPage).decode


def _orjson_lines(body: bytes, provenance: dict[str, Any]) -> tuple[int, list[bytes]]:
    """The floor as asked: parse the page, add the key to each record, serialise each record."""
    page = orjson.loads(body)
    lines = []
    for record in page["backups"]:
        record["_crawl"] = provenance
        lines.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
    return int(page["count"]), lines


def _raw_lines(body: bytes, provenance: dict[str, Any]) -> tuple[int, list[bytes]]:
    """The crawler's own decoding without the crawler: each record's raw bytes, the key spliced in."""
    page = _decode_raw_page(body)
    tail = b',"_crawl":' + orjson.dumps(provenance) + b"}\n"
    return page.count, [bytes(raw)[:-1] + tail for raw in page.backups]


async def _floor(
    url: str, scopes: Sequence[FloorScope], concurrency: int, out: Path, raw: bool
) -> tuple[int, int]:
    """Fetch every page of every scope with ``concurrency`` workers; returns (records, requests).

    No scheduling (a FIFO of pages: every first page, then the offsets each count reveals), no
    checks, no state, no ordering: each page is appended to its scope's file as it arrives.
    """
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=concurrency)
    queue: asyncio.Queue[tuple[FloorScope, int]] = asyncio.Queue()
    for scope in scopes:
        queue.put_nowait((scope, 0))
    tokens: dict[str, asyncio.Task[str]] = {}
    made_dirs: set[Path] = set()
    counts = [0, 0]  # records, requests
    run_id = f"floor-{int(time.time())}"
    lines_of = _raw_lines if raw else _orjson_lines

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        def token(project_id: str) -> asyncio.Task[str]:
            # One IAM token per project, as the crawler's password auth gets them.
            task = tokens.get(project_id)
            if task is None:
                task = tokens[project_id] = asyncio.create_task(project_token(session, url, project_id))
            return task

        async def fetch(scope: FloorScope, offset: int) -> None:
            params = [("own_type", scope.own_type)]
            if scope.enterprise_project_id is not None:
                params.append(("enterprise_project_id", scope.enterprise_project_id))
            params += [("limit", str(PAGE)), ("offset", str(offset))]
            headers = {"X-Auth-Token": await token(scope.project_id)}
            async with session.get(
                f"{url}/v3/{scope.project_id}/backups", params=params, headers=headers
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {body[:300]!r}")
            provenance = {
                "tenant": "bench",
                "region": scope.region,
                "project_id": scope.project_id,
                "project_name": scope.project_name,
                "enterprise_project_id": scope.enterprise_project_id,
                "own_type": scope.own_type,
                "run_id": run_id,
                "fetched_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            }
            count, lines = lines_of(body, provenance)
            if offset == 0:
                for later in range(PAGE, count, PAGE):
                    queue.put_nowait((scope, later))
            directory = out / scope.region / scope.project_name
            if directory not in made_dirs:
                directory.mkdir(parents=True, exist_ok=True)
                made_dirs.add(directory)
            ep = scope.enterprise_project_id or "no-ep"
            with open(directory / f"backups.{scope.own_type}.{ep}.ndjson", "ab") as fh:
                fh.write(b"".join(lines))
            counts[0] += len(lines)
            counts[1] += 1

        async def worker() -> None:
            while True:
                scope, offset = await queue.get()
                try:
                    await fetch(scope, offset)
                finally:
                    queue.task_done()

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        joined = asyncio.create_task(queue.join())
        # A failed worker must end the run, not leave join() waiting for its page for ever.
        await asyncio.wait([joined, *workers], return_when=asyncio.FIRST_COMPLETED)
        for task in [joined, *workers]:
            task.cancel()
        failed = [t for t in workers if t.done() and not t.cancelled() and t.exception() is not None]
        if failed:
            raise RuntimeError("a floor worker failed") from failed[0].exception()
    return counts[0], counts[1]


def _run_loop(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """On uvloop, like the crawler's CLI."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(factory())


def run_floor(
    url: str, scopes: Sequence[FloorScope], concurrency: int, out: Path, *, raw: bool = False
) -> Measured:
    """The floor in this process (idle otherwise), on uvloop; CPU from ``time.process_time``."""
    cpu, started = time.process_time(), time.perf_counter()
    records, requests = _run_loop(lambda: _floor(url, scopes, concurrency, out, raw))
    return Measured(records, requests, time.perf_counter() - started, time.process_time() - cpu)


# --------------------------------------------------------------------------------------------------
# The official SDK, paged as its users page


@contextlib.contextmanager
def _sdk_home() -> Iterator[None]:
    """Importing the SDK writes ``$HOME/.huaweicloud``: keep it in a temporary HOME."""
    home = tempfile.mkdtemp(prefix="cbr-bench-home-")
    previous = os.environ.get("HOME")
    os.environ["HOME"] = home
    try:
        with warnings.catch_warnings():
            # Without python-dateutil the SDK warns once and keeps timestamps as strings.
            warnings.simplefilter("ignore", ImportWarning)
            yield
    finally:
        if previous is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = previous
        shutil.rmtree(home, ignore_errors=True)


def _sdk_lines(response: Any, provenance: dict[str, Any]) -> bytes:
    """The page as NDJSON, the way an SDK user writes it: each model's ``to_dict()`` + provenance."""
    lines = []
    for backup in response.backups or ():
        record = backup.to_dict()
        record["_crawl"] = provenance
        lines.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS))
    return b"".join(lines)


def _sdk_provenance(project: Any) -> dict[str, Any]:
    return {
        "tenant": "bench",
        "region": project.region,
        "project_id": project.id,
        "project_name": project.name,
        "enterprise_project_id": None,
        "own_type": "private",
        "run_id": "sdk",
        "fetched_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
    }


def run_sdk(info: ServedInfo, records: int, concurrency: int, out: Path) -> tuple[Measured, Measured]:
    """The first ``records`` backups of the biggest project with the sequential ``CbrClient`` loop,
    then with ``CbrAsyncClient`` keeping ``concurrency`` requests in flight."""
    with _sdk_home():
        from huaweicloudsdkcbr.v1 import (  # type: ignore[import-untyped]
            CbrAsyncClient,
            CbrClient,
            ListBackupsRequest,
        )
        from huaweicloudsdkcore.auth.credentials import BasicCredentials  # type: ignore[import-untyped]

        project = info.projects[0]
        records = min(records, project.private_backups)
        offsets = list(range(0, records, PAGE))

        def build(builder: Any) -> Any:
            credentials = BasicCredentials(info.access_key, info.secret_key, project.id)
            return builder.with_credentials(credentials).with_endpoints([info.url]).build()

        def request(offset: int) -> Any:
            return ListBackupsRequest(limit=PAGE, offset=offset, own_type="private")

        # The loop every SDK example shows: one page, write it, next offset, until the end.
        client = build(CbrClient.new_builder())
        out.mkdir(parents=True, exist_ok=True)
        written = 0
        cpu, started = time.process_time(), time.perf_counter()
        with open(out / "sdk-loop.ndjson", "wb") as fh:
            offset = 0
            while offset < records:
                response = client.list_backups(request(offset))
                fh.write(_sdk_lines(response, _sdk_provenance(project)))
                written += len(response.backups or ())
                offset += PAGE
                if offset >= response.count:
                    break
        loop = Measured(written, len(offsets), time.perf_counter() - started, time.process_time() - cpu)

        # CbrAsyncClient: each call returns a future run by the SDK's thread pool (8 threads);
        # keep `concurrency` in flight, write in offset order.
        async_client = build(CbrAsyncClient.new_builder())
        written = 0
        cpu, started = time.process_time(), time.perf_counter()
        with open(out / "sdk-async.ndjson", "wb") as fh:
            first = async_client.list_backups_async(request(0)).result()
            fh.write(_sdk_lines(first, _sdk_provenance(project)))
            written += len(first.backups or ())
            pending = [o for o in offsets[1:] if o < first.count]
            in_flight = [async_client.list_backups_async(request(o)) for o in pending[:concurrency]]
            queued = iter(pending[concurrency:])
            while in_flight:
                response = in_flight.pop(0).result()
                nxt = next(queued, None)
                if nxt is not None:
                    in_flight.append(async_client.list_backups_async(request(nxt)))
                fh.write(_sdk_lines(response, _sdk_provenance(project)))
                written += len(response.backups or ())
        pool = Measured(written, len(offsets), time.perf_counter() - started, time.process_time() - cpu)
    return loop, pool


# --------------------------------------------------------------------------------------------------
# Profile


def profile_summary(path: Path, top: int, title: str) -> str:
    """Top functions by own time, with their share of the profiled total, then the crawler's own
    functions by cumulative time (share of the total in the first column)."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values())  # tottime
    rows = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    lines = [f"{title}; profiled main-thread CPU {total:.1f} s", "by own time:"]
    lines.append(f"  {'share':>6} {'own s':>7} {'cum s':>7} {'calls':>9}  function")
    for (file, line, name), (_cc, calls, tottime, cumtime, _callers) in rows:
        where = _short(file, line, name)
        lines.append(f"  {tottime / total:6.1%} {tottime:7.2f} {cumtime:7.2f} {calls:9d}  {where}")
    ours = [kv for kv in raw.items() if "/crawler/" in kv[0][0]]
    lines.append("crawler functions by cumulative time:")
    for (file, line, name), (_cc, calls, tottime, cumtime, _callers) in sorted(
        ours, key=lambda kv: -kv[1][3]
    )[:top]:
        where = _short(file, line, name)
        lines.append(f"  {cumtime / total:6.1%} {tottime:7.2f} {cumtime:7.2f} {calls:9d}  {where}")
    return "\n".join(lines)


def _short(file: str, line: int, name: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{name} ({file}:{line})" if line else name


# --------------------------------------------------------------------------------------------------
# The run: sections A, B, C and the 5M memory run, each adding rows to the table


Rows = list[tuple[str, str]]


def _fresh(path: Path) -> Path:
    """An empty output directory for the next contender, with everything before it on disk.

    The sync keeps one contender's unwritten pages from being written back (or synced, by the
    crawler's checkpoints) while the next one is timed.
    """
    shutil.rmtree(path, ignore_errors=True)
    os.sync()
    return path


def _kept(path: Path) -> Path:
    """Like :func:`_fresh`, for outputs of many small files, which are not deleted until the end.

    ext4 passes over inodes freed in the last minutes when it allocates new ones: deleting one
    contender's 20,000 files would slow the next contender's file creation several-fold (found by
    ``perf``: ``recently_deleted`` under ``ext4_create``), whichever came second.
    """
    assert not path.exists(), path
    os.sync()
    return path


def _pct(sizes: list[int], q: float) -> int:
    ordered = sorted(sizes)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0


def _verdict(value: float, target: str, good: bool) -> str:
    return f"{value:6.2f}  (target {target}: {'met' if good else 'NOT MET'})"


def _rate_row(m: Measured) -> str:
    return (
        f"{m.records_per_second:>9,.0f} records/s  {m.cpu_per_million:5.1f} CPU s/M  {m.wall:5.1f} s wall"
        f"  {m.records:,} records, {m.requests:,} requests"
    )


def _crawler_row(c: CrawlerRun) -> str:
    return (
        f"{c.records / c.run.wall:>9,.0f} records/s  {c.run.cpu / max(c.records, 1) * 1e6:5.1f} CPU s/M"
        f"  {c.run.wall:5.1f} s wall ({c.phase_seconds:.1f} s first scope to last)"
        f"  {c.status}, {c.records:,} records, {c.requests:,} requests"
    )


@dataclass
class Section:
    """What a section measured: its rows for the table, its ratios, and whether the crawl was right."""

    rows: Rows = field(default_factory=list)
    ratios: Rows = field(default_factory=list)
    ok: bool = True


def section_a(a: ServedInfo, work: Path, args: argparse.Namespace) -> tuple[Section, Path, CrawlerRun]:
    """A: the crawler, the two floors and the SDK on the big projects."""
    out = Section()
    scopes = [FloorScope(p.id, p.region, p.name, None, "private") for p in a.projects]
    config = write_tenant(
        work / "a.yaml",
        a.url,
        rps=UNLIMITED,
        concurrency=args.concurrency,
        eps=False,
        own_types=["private"],
    )
    floor = run_floor(a.url, scopes, args.concurrency, _fresh(work / "out"))
    _fresh(work / "out")
    _progress(f"A floor: {floor.records_per_second:,.0f} records/s")
    raw_floor = run_floor(a.url, scopes, args.concurrency, _fresh(work / "out"), raw=True)
    _fresh(work / "out")
    crawl = run_crawler(config, _fresh(work / "out"))
    _fresh(work / "out")
    _progress(f"A crawler: {crawl.records / crawl.run.wall:,.0f} records/s")
    out.ok = crawl.ok and crawl.records == a.backups
    rate = crawl.records / crawl.run.wall
    out.rows += [
        (
            "A: 1000-record pages, private, concurrency",
            f"{args.concurrency} for the crawler, the floors and the SDK pool",
        ),
        ("A crawler (CLI child process, unlimited)", _crawler_row(crawl)),
        ("A floor (aiohttp + orjson parse/dump)", _rate_row(floor)),
        ("A floor, msgspec raw split (reference)", _rate_row(raw_floor)),
    ]
    ratio = rate / floor.records_per_second
    out.ratios += [
        ("A crawler / floor, records/s", _verdict(ratio, ">= 0.8", ratio >= 0.8)),
        ("A crawler / msgspec floor, records/s", f"{rate / raw_floor.records_per_second:6.2f}  (reference)"),
    ]
    if "sdk" not in args.skip:
        loop, pool = run_sdk(a, args.sdk_records, args.concurrency, _fresh(work / "sdk"))
        _fresh(work / "sdk")
        _progress(f"SDK loop: {loop.records_per_second:,.0f} records/s")
        out.rows += [
            (f"A SDK CbrClient loop (first {loop.records:,})", _rate_row(loop)),
            (f"A SDK CbrAsyncClient, {args.concurrency} in flight", _rate_row(pool)),
        ]
        ratio = rate / loop.records_per_second
        out.ratios += [
            ("A crawler / SDK loop, records/s", _verdict(ratio, ">= 10", ratio >= 10)),
            ("A crawler / SDK async pool, records/s", f"{rate / pool.records_per_second:6.2f}"),
        ]
    out.ratios.append(
        ("A crawler CPU / msgspec floor CPU", f"{crawl.run.cpu / max(raw_floor.cpu, 1e-9):6.2f}")
    )
    return out, config, crawl


def section_b(b: ServedInfo, work: Path, args: argparse.Namespace) -> tuple[Section, Path]:
    """B: 20,000 small scopes; the crawler and the floor."""
    out = Section()
    scopes = [
        FloorScope(p.id, p.region, p.name, ep, own_type)
        for p in b.projects
        for ep in b.enterprise_projects
        for own_type in ("private", "shared")
    ]
    # One query per scope, as the floor does: B measures the request machinery like for like (the
    # default plan fetches B in one pass per project: 1/19 of the requests; measured once below).
    config = write_tenant(
        work / "b.yaml", b.url, rps=UNLIMITED, concurrency=args.concurrency, eps=True,
        own_types=["private", "shared"], plan="per_pass",
    )  # fmt: skip
    # B takes seconds and its figures swing by a third between identical runs on this machine:
    # the two contenders take turns, and each one's best run counts.
    floors: list[Measured] = []
    crawls: list[CrawlerRun] = []
    for turn in range(args.b_runs):
        floors.append(run_floor(b.url, scopes, args.concurrency, _kept(work / f"b-floor-{turn}")))
        _progress(f"B floor: {floors[-1].requests_per_second:,.0f} requests/s")
        crawls.append(run_crawler(config, _kept(work / f"b-crawler-{turn}")))
        _progress(f"B crawler: {crawls[-1].requests / crawls[-1].run.wall:,.0f} requests/s")
    floor = max(floors, key=lambda m: m.requests_per_second)
    crawl = max(crawls, key=lambda c: c.requests / c.run.wall)
    sizes = crawl.scope_sizes
    out.rows += [
        (
            "B: estate",
            f"{b.backups:,} backups, {len(b.projects)} projects x {len(b.enterprise_projects)} EPs"
            f" x (private, shared) = {len(scopes):,} scopes; per scope: {sizes.count(0):,} empty,"
            f" median {_pct(sizes, 0.5)}, p90 {_pct(sizes, 0.9)}, p99 {_pct(sizes, 0.99)},"
            f" max {max(sizes, default=0):,}",
        ),
        (f"B crawler (unlimited), best of {len(crawls)}", _requests_row(crawl)),
        ("B crawler, all runs", ", ".join(f"{c.requests / c.run.wall:,.0f}" for c in crawls) + " requests/s"),
    ]
    out.ok = all(c.ok and c.scopes == len(scopes) for c in crawls)
    ratio = crawl.requests / crawl.run.wall / floor.requests_per_second
    out.ratios.append(("B crawler / floor, requests/s", _verdict(ratio, ">= 0.7", ratio >= 0.7)))
    # The floor is timed around its loop only; the crawler's wall also holds its start-up (imports,
    # discovery) and its end (manifest, sync): the same ratio over its first scope to last.
    phase_ratio = crawl.requests / crawl.phase_seconds / floor.requests_per_second
    out.ratios.append(("B crawler first scope to last / floor", f"{phase_ratio:6.2f}  (reference)"))
    out.rows.append(
        (
            f"B floor (aiohttp + orjson), best of {len(floors)}",
            f"{floor.requests_per_second:>7,.0f} requests/s  {floor.wall:5.1f} s wall  {floor.cpu:5.1f} CPU s"
            f"  {floor.records:,} records, {floor.requests:,} requests",
        )
    )
    out.rows.append(
        ("B floor, all runs", ", ".join(f"{m.requests_per_second:,.0f}" for m in floors) + " requests/s")
    )
    auto = run_crawler(
        write_tenant(
            work / "b-auto.yaml", b.url, rps=UNLIMITED, concurrency=args.concurrency, eps=True,
            own_types=["private", "shared"],
        ),
        _kept(work / "b-crawler-auto"),
    )  # fmt: skip
    out.ok = out.ok and auto.ok and auto.scopes == len(scopes)
    out.rows.append(("B crawler, default plan (a single pass per project)", _requests_row(auto)))
    out.ratios.append(("B default plan wall / floor wall", f"{auto.run.wall / floor.wall:6.2f}  (reference)"))
    return out, config


def _requests_row(c: CrawlerRun) -> str:
    return (
        f"{c.requests / c.run.wall:>7,.0f} requests/s  {c.run.wall:5.1f} s wall"
        f" ({c.phase_seconds:.1f} s first scope to last)  {c.run.cpu:5.1f} CPU s"
        f"  {c.status}, {c.scopes:,} scopes, {c.records:,} records, {c.requests:,} requests"
    )


def section_c(a: ServedInfo, work: Path, args: argparse.Namespace) -> Section:
    """C: A's estate behind latency, at a low rate: how close to requests / rate."""
    out = Section()
    config = write_tenant(
        work / "c.yaml",
        a.urls[1],
        rps=args.rate,
        concurrency=args.concurrency,
        eps=False,
        own_types=["private"],
    )
    crawl = run_crawler(config, _fresh(work / "out"))
    _fresh(work / "out")
    out.ok = crawl.ok
    minimum = crawl.requests / args.rate
    out.rows.append(
        (
            f"C: {args.rate:g} requests/s, {args.latency_ms:g} ms latency",
            f"{crawl.run.wall:5.1f} s wall ({crawl.phase_seconds:.1f} s first scope to last) for "
            f"{crawl.requests:,} requests; the limit alone needs {minimum:.1f} s; {crawl.status}, "
            f"{crawl.records:,} records",
        )
    )
    ratio = crawl.run.wall / minimum
    out.ratios += [
        ("C wall / minimum", _verdict(ratio, "<= 1.05", ratio <= 1.05)),
        ("C first scope to last / minimum", f"{crawl.phase_seconds / minimum:6.2f}"),
    ]
    return out


def section_big(work: Path, args: argparse.Namespace) -> CrawlerRun:
    """The crawler alone on a ``--big-backups`` estate (its own emulator process), for peak RSS."""
    job = big_projects(args.big_backups, args.seed, args.latency_ms)
    started = time.perf_counter()
    with BenchEmulator((job,)) as (info,):
        _progress(f"{args.big_backups:,}-backup emulator ready in {time.perf_counter() - started:.0f} s")
        config = write_tenant(
            work / "big.yaml", info.url, rps=UNLIMITED, concurrency=args.concurrency, eps=False,
            own_types=["private"],
        )  # fmt: skip
        crawl = run_crawler(config, _fresh(work / "out"))
        _fresh(work / "out")
    return crawl


def run_profiles(configs: dict[str, Path], work: Path, args: argparse.Namespace) -> list[str]:
    """cProfile (main-thread CPU clock) of the crawler on the asked sections."""
    texts = []
    for name in args.profile:
        prof = work / f"crawl-{name}.prof"
        prefix = ["-m", "bench._profiled_crawl", str(prof)]
        out = _kept(work / f"profile-{name}") if name == "b" else _fresh(work / "out")
        crawl = run_crawler(configs[name], out, prefix=prefix)
        if name != "b":
            _fresh(out)
        title = (
            f"cProfile of the crawler on {name.upper()}"
            + f": {crawl.run.wall:.1f} s wall, {crawl.run.cpu:.1f} s process CPU"
        )
        texts.append(profile_summary(prof, args.profile_top, title))
    return texts


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--backups", type=int, default=1_000_000, help="A's and C's estate (20 projects)")
    parser.add_argument("--concurrency", type=int, default=8, help="crawler, floors and SDK pool")
    parser.add_argument("--sdk-records", type=int, default=50_000, help="the SDK's share of A")
    parser.add_argument("--small-projects", type=int, default=1000, help="B: x 10 EPs x 2 own_types")
    parser.add_argument("--small-backups", type=int, default=100_000, help="B's backups in total")
    parser.add_argument("--b-runs", type=int, default=3, help="B: turns of floor and crawler, best counts")
    parser.add_argument("--rate", type=float, default=50.0, help="C's requests/s")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="C's latency on ListBackups")
    parser.add_argument("--big", action="store_true", help="also the crawler's peak RSS at --big-backups")
    parser.add_argument("--big-backups", type=int, default=5_000_000)
    parser.add_argument(
        "--profile", nargs="*", choices=["a", "b"], default=[], help="cProfile the crawler on A and/or B"
    )
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--skip", nargs="*", default=[], choices=["sdk", "b", "c"])
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if "b" in args.skip and "b" in args.profile:
        parser.error("--profile b needs section B")

    rows: Rows = []
    ratios: Rows = []
    sections: list[Section] = []
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cbr-compare-") as tmp:
        work = Path(tmp)
        jobs = [big_projects(args.backups, args.seed, args.latency_ms)]
        if "b" not in args.skip:
            jobs.append(small_projects(args.small_projects, args.small_backups, args.seed))
        started = time.perf_counter()
        emulator = BenchEmulator(tuple(jobs))
        with emulator as infos:
            a = infos[0]
            _progress(f"emulator ready in {time.perf_counter() - started:.0f} s")
            rows.append(
                (
                    "emulator (own process, one core)",
                    f"A: {a.backups:,} backups in {len(a.projects)} projects (biggest "
                    f"{a.projects[0].private_backups:,}); page cache prewarmed before timing with "
                    f"{a.prewarmed_records:,} records ({a.cache_mb:,.0f} MB, {a.prewarm_seconds:.0f} s)"
                    + (
                        f"; B: every scope's first page prewarmed ({infos[1].prewarm_seconds:.0f} s)"
                        if len(infos) > 1
                        else ""
                    ),
                )
            )
            section, config_a, crawl_a = section_a(a, work, args)
            sections.append(section)
            configs = {"a": config_a}
            if "b" not in args.skip:
                section, configs["b"] = section_b(infos[1], work, args)
                sections.append(section)
            if "c" not in args.skip:
                sections.append(section_c(a, work, args))
            profiles = run_profiles(configs, work, args)
            emulator_peak = emulator.peak_rss_mb()
        big = section_big(work, args) if args.big else None

    for section in sections:
        rows += section.rows
        ratios += section.ratios
    rows.append(("emulator peak RSS (not counted)", f"{emulator_peak:,.0f} MB"))
    rss = crawl_a.run.peak_rss_mb
    if big is None:
        ratios.append((f"crawler peak RSS at {args.backups / 1e6:g}M", f"{rss:.0f} MB (the 5M run: --big)"))
    else:
        growth = big.run.peak_rss_mb / rss - 1
        ratios.append(
            (
                f"crawler peak RSS, {args.backups / 1e6:g}M -> {args.big_backups / 1e6:g}M",
                f"{rss:.0f} MB -> {big.run.peak_rss_mb:.0f} MB: {growth:+.0%}  (target flat within 10%: "
                f"{'met' if abs(growth) <= 0.10 else 'NOT MET'}; {big.status}, {big.records:,} records, "
                f"{big.run.wall:.0f} s)",
            )
        )
    rows.append(("RATIOS", ""))
    rows += ratios
    print(_table(rows, "cbr-crawler against the floor and the official SDK (loopback emulator, same run)"))
    for text in profiles:
        print()
        print(text)
    ok = all(s.ok for s in sections) and (big is None or big.ok)
    if not ok:
        print("\nsome crawl was not complete and exact: its figures are not comparable", file=sys.stderr)
    return 0 if ok else 1


def _table(rows: Rows, title: str) -> str:
    width = max(len(name) for name, value in rows if value)
    lines = [title, "-" * len(title)]
    lines += [f"{name.ljust(width)}  {value}" if value else name for name, value in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
