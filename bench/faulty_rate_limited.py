"""How close a crawl under a rate limit, 5xx faults and a 429 storm comes to the limit's minimum time.

The issue "Never lose or duplicate a backup" asks that a crawl limited to 50 requests/s, with 10% of
ListBackups answered 500/502/503/504 and a 429 storm in the middle, still ends complete and exact,
within 1.25x of the time the limit allows (the pages of the estate / 50). The emulator runs in a
spawned process with that scenario; the crawler runs as a user runs it, ``python -m crawler run``,
as a child process::

    .venv/bin/python -m bench.faulty_rate_limited [--backups 60000] [--page-size 50]

By default a clean crawl (no faults, no storm) of the same estate runs first, so that the start-up
and pacing overhead can be told apart from what the faults cost. The output is checked against the
emulator's ground truth: every backup of every scope once, byte for byte, nothing else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml

from bench._support import DOMAIN, PASSWORD, USER, stop_process, table

TARGET_RATIO = 1.25
ROUTE = "cbr.list_backups"
STATUSES: tuple[Literal[500, 502, 503, 504], ...] = (500, 502, 503, 504)
PASSWORD_ENV = "CBR_BENCH_PASSWORD"
CRAWL_KEY = b',"_crawl":'
_RETRY_LINE = re.compile(r"retrying \S+ (\S+) in ([\d.]+)s after: (?:HTTP (\d+))?")


# --------------------------------------------------------------------------------------------------
# The emulator, in its own process


@dataclass(frozen=True)
class StormWindow:
    """The storm's placement on the bench's monotonic clock (CLOCK_MONOTONIC is system-wide)."""

    start: float
    end: float
    fraction: float


@dataclass(frozen=True)
class EmulatorReady:
    """What the emulator process reports once it listens."""

    url: str
    origin: float  # time.monotonic() when the throttler's clock started: the storm counts from it
    projects: tuple[str, ...]


def build_scenario(args: argparse.Namespace, *, faulty: bool) -> Any:
    """The estate, plus (if ``faulty``) 5xx on ListBackups and a 429 storm on it."""
    from crawler.emulator.scenario import (
        FaultSpec,
        FaultsSpec,
        Scenario,
        StormSpec,
        ThrottleRule,
        ThrottleSpec,
        apply_overrides,
    )

    scenario = apply_overrides(Scenario(seed=args.seed), backups=args.backups, seed=args.seed)
    rules: tuple[ThrottleRule, ...] = ()
    if args.gateway_limit:
        # The gateway enforcing the same limit per user: its 429s state it ("limit:50,time:1 second").
        rules = (ThrottleRule(policy="user", limit=args.gateway_limit, window=1.0, api=ROUTE),)
        scenario = scenario.model_copy(update={"throttle": ThrottleSpec(rules=rules)})
    if not faulty:
        return scenario
    # The first fault whose dice fire wins, so each later status must be rolled with a higher
    # probability for the four to share the total equally: q / (1 - i*q).
    share = args.error_rate / len(STATUSES)
    faults = tuple(
        FaultSpec(kind="status", status=status, probability=share / (1 - i * share), api=ROUTE)
        for i, status in enumerate(STATUSES)
    )
    storm = StormSpec(
        start_seconds=args.storm_at,
        duration_seconds=args.storm_seconds,
        fraction=args.storm_fraction,
        api=ROUTE,
    )
    return scenario.model_copy(
        update={"faults": FaultsSpec(faults=faults), "throttle": ThrottleSpec(rules=rules, storm=storm)}
    )


def _emulator_main(scenario: Any, conn: Connection) -> None:
    """Body of the emulator process: serve ``scenario``, log each ListBackups answer, until SIGTERM."""
    import asyncio

    from aiohttp import web

    from crawler.emulator.estate import Estate
    from crawler.emulator.gateway import route_name
    from crawler.emulator.server import EmulatorServer

    estate = Estate.generate(scenario.estate)
    timeline: list[tuple[float, int]] = []

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        # When each answer goes out, and its status: the crawl's request rate second by second.
        if route_name(request) == ROUTE:
            timeline.append((time.monotonic(), response.status))

    async def serve_timeline(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(timeline), content_type="application/json")

    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        origin = time.monotonic()  # the throttler's clock starts as the app is built, just below
        server = EmulatorServer(scenario, estate=estate)
        server.app.on_response_prepare.append(record)
        # "emulator." routes bypass the gateway's faults and throttles.
        server.app.router.add_get("/_bench/timeline", serve_timeline, name="emulator.bench_timeline")
        async with server:
            projects = tuple(pid for pid in estate.projects if len(estate.view(pid, "private")))
            conn.send(EmulatorReady(url=server.url, origin=origin, projects=projects))
            await stop.wait()

    asyncio.run(serve())


class FaultyEmulator:
    """The emulator with ``scenario`` in a spawned process (context manager)."""

    def __init__(self, scenario: Any) -> None:
        self._scenario = scenario
        self._process: Any = None

    def __enter__(self) -> EmulatorReady:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=False)
        self._process = context.Process(target=_emulator_main, args=(self._scenario, child), daemon=True)
        self._process.start()
        child.close()
        try:
            ready = parent.recv()
        except EOFError:
            self._process.join()
            raise RuntimeError(f"the emulator process exited with {self._process.exitcode}") from None
        if not isinstance(ready, EmulatorReady):
            raise TypeError(ready)
        return ready

    def __exit__(self, *exc: object) -> None:
        stop_process(self._process)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return orjson.loads(resp.read())


def truth_lines(url: str) -> Iterator[bytes]:
    with urllib.request.urlopen(f"{url}/_emulator/truth", timeout=300) as resp:
        yield from resp


# --------------------------------------------------------------------------------------------------
# The crawl


def write_tenant(directory: Path, url: str, args: argparse.Namespace) -> Path:
    """Every project of both regions, private backups, no EP pass, at ``--rps``."""
    tenant: dict[str, Any] = {
        "tenant": "bench",
        "auth": {"mode": "password", "user": USER, "domain": DOMAIN, "password_env": PASSWORD_ENV},
        "endpoints": {"iam": url, "eps": url, "cbr": url},
        "regions": ["cn-north-4", "ap-southeast-1"],
        "projects": {"discover": {}},
        "enterprise_projects": {"mode": "none"},
        "own_types": ["private"],
        "rate_limit": {
            "requests_per_second": args.rps,
            "concurrency": args.concurrency,
            "page_size": args.page_size,
        },
    }
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(tenant, sort_keys=False))
    return path


@dataclass
class Backoffs:
    """The client's retry sleeps, read from its debug log."""

    count: Counter[str] = field(default_factory=Counter)  # cause ("429", "5xx", "other") -> retries
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    longest: float = 0.0
    # Sleeps of over a second: (log time, seconds, status, path): where a page held its scope back.
    long: list[tuple[str, float, str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, log: bytes) -> Backoffs:
        out = cls()
        for line in log.splitlines():
            if b"retrying" not in line:
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            message = entry.get("msg", "")
            match = _RETRY_LINE.search(message)
            if match is None or "/backups" not in match.group(1):
                continue
            delay, status = float(match.group(2)), match.group(3)
            cause = "429" if status == "429" else "5xx" if status and status.startswith("5") else "other"
            out.count[cause] += 1
            out.seconds[cause] += delay
            out.longest = max(out.longest, delay)
            if delay > 1.0:
                out.long.append((entry.get("ts", ""), delay, status or "?", match.group(1)))
        return out


@dataclass
class CrawlRun:
    """Everything one crawl measured."""

    label: str
    code: int
    wall: float
    started_mono: float
    started_wall: float
    manifest: dict[str, Any]
    stats: dict[str, Any]
    timeline: list[tuple[float, int]]
    backoffs: Backoffs
    verdict: str
    exact: bool
    stderr_tail: str
    storm: StormWindow | None = None  # where the storm fell, in seconds since the crawler started


def run_crawler(config: Path, output: Path) -> tuple[int, float, float, float, bytes]:
    """Run the crawler; (exit status, wall seconds, monotonic and wall-clock start, stderr)."""
    env = dict(os.environ, **{PASSWORD_ENV: PASSWORD})
    command = [
        sys.executable,
        "-m",
        "crawler",
        "run",
        "--config",
        str(config),
        "--output",
        str(output),
        "--log-json",
        "--log-level",
        "debug",  # the client logs each retry and its sleep at debug
        "--progress-interval",
        "3600",
    ]
    with tempfile.TemporaryFile() as stderr:
        started_wall = time.time()
        started = time.monotonic()
        code = subprocess.run(
            command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, check=False
        ).returncode
        wall = time.monotonic() - started
        stderr.seek(0)
        return code, wall, started, started_wall, stderr.read()


def verify(output: Path, manifest: dict[str, Any], url: str) -> tuple[bool, str]:
    """Output == ground truth: each private backup of each project once, its bytes as the API's."""
    truth: dict[str, dict[str, bytes]] = defaultdict(dict)
    for line in truth_lines(url):
        record = orjson.loads(line)
        if record["own_type"] != "private":
            continue
        # The backup's text is the line's tail after the wrapper's (first) "backup": key.
        text = line.rstrip(b"\n")[line.index(b',"backup":') + len(b',"backup":') : -1]
        truth[record["project_id"]][record["backup"]["id"]] = hashlib.sha256(text).digest()
    missing = extra = duplicates = differing = 0
    for scope in manifest.get("scopes", []):
        expected = truth.get(scope["project_id"], {})
        seen: set[str] = set()
        for entry in scope.get("files", []):
            with open(output / entry["path"], "rb") as lines:
                for line in lines:
                    cut = line.rindex(CRAWL_KEY)
                    raw = line[:cut] + b"}"  # the record as the API sent it, without the added key
                    backup_id = orjson.loads(raw)["id"]
                    if backup_id in seen:
                        duplicates += 1
                        continue
                    seen.add(backup_id)
                    digest = expected.get(backup_id)
                    if digest is None:
                        extra += 1
                    elif digest != hashlib.sha256(raw).digest():
                        differing += 1
        missing += len(set(expected) - seen)
    crawled = {scope["project_id"] for scope in manifest.get("scopes", [])}
    unvisited = sum(len(ids) for pid, ids in truth.items() if pid not in crawled)
    total = sum(len(ids) for ids in truth.values())
    exact = not (missing or extra or duplicates or differing or unvisited)
    verdict = (
        f"{'OK' if exact else 'MISMATCH'}: {total:,} backups in the truth; missing {missing + unvisited}, "
        f"extra {extra}, duplicated {duplicates}, bytes differing {differing}"
    )
    return exact, verdict


def crawl(args: argparse.Namespace, *, faulty: bool) -> CrawlRun:
    scenario = build_scenario(args, faulty=faulty)
    with FaultyEmulator(scenario) as ready, tempfile.TemporaryDirectory(prefix="cbr-bench-") as tmp:
        work = Path(tmp)
        output = work / "out"
        config = write_tenant(work, ready.url, args)
        code, wall, started, started_wall, stderr = run_crawler(config, output)
        manifest_path = output / "manifest.json"
        manifest = orjson.loads(manifest_path.read_bytes()) if manifest_path.exists() else {}
        stats = get_json(f"{ready.url}/_emulator/stats")
        timeline = [(t - started, status) for t, status in get_json(f"{ready.url}/_bench/timeline")]
        exact, verdict = verify(output, manifest, ready.url) if manifest else (False, "no manifest")
    run = CrawlRun(
        label="faulty" if faulty else "clean",
        code=code,
        wall=wall,
        started_mono=started,
        started_wall=started_wall,
        manifest=manifest,
        stats=stats,
        timeline=timeline,
        backoffs=Backoffs.parse(stderr),
        verdict=verdict,
        exact=exact and manifest.get("status") == "complete",
        stderr_tail=stderr[-3000:].decode(errors="replace"),
    )
    if faulty:
        run.storm = StormWindow(
            ready.origin + args.storm_at - started,
            ready.origin + args.storm_at + args.storm_seconds - started,
            args.storm_fraction,
        )
    return run


# --------------------------------------------------------------------------------------------------
# Figures


def _seconds_since(iso: str, origin_wall: float) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() - origin_wall


def requests_needed(manifest: dict[str, Any], page_size: int) -> int:
    """The pages of the estate: what a crawl with no error costs (each scope at least one request)."""
    return sum(
        max(1, math.ceil((scope.get("count") or 0) / page_size)) for scope in manifest.get("scopes", [])
    )


def cbr_owner(manifest: dict[str, Any]) -> dict[str, Any]:
    owners = [o for o in manifest.get("quota_owners", []) if " -> cbr " in str(o.get("quota_owner"))]
    return owners[0] if owners else {}


def phase(run: CrawlRun) -> tuple[float, float]:
    """ListBackups phase: first scope opened to last scope concluded, in crawl seconds."""
    scopes = run.manifest.get("scopes", [])
    starts = [_seconds_since(s["started_at"], run.started_wall) for s in scopes if s.get("started_at")]
    ends = [_seconds_since(s["finished_at"], run.started_wall) for s in scopes if s.get("finished_at")]
    return (min(starts), max(ends)) if starts and ends else (0.0, run.wall)


def per_second(run: CrawlRun) -> list[tuple[int, int]]:
    """ListBackups answers per second of the crawl: (all, refused with 429 or 5xx)."""
    if not run.timeline:
        return []
    seconds = int(max(t for t, _ in run.timeline)) + 1
    counts = [[0, 0] for _ in range(seconds)]
    for t, status in run.timeline:
        slot = counts[max(0, int(t))]
        slot[0] += 1
        slot[1] += status >= 400
    return [(a, b) for a, b in counts]


def shortfall(run: CrawlRun, rate: float) -> tuple[float, float]:
    """Requests the limit would have allowed but were not sent, in whole seconds of the phase
    (its first and last, partial, seconds left out): (all of them, those in seconds the storm touched)."""
    first, last = phase(run)
    cells = per_second(run)
    storm = run.storm
    total = in_storm = 0.0
    for second in range(math.ceil(first), math.floor(last)):
        if second >= len(cells):
            break
        missing = max(0.0, rate - cells[second][0])
        total += missing
        if storm is not None and storm.start - 1 < second < storm.end:
            in_storm += missing
    return total, in_storm


def report(run: CrawlRun, args: argparse.Namespace) -> list[tuple[str, str]]:
    manifest = run.manifest
    scopes = manifest.get("scopes", [])
    needed = requests_needed(manifest, args.page_size)
    minimum = needed / args.rps
    first, last = phase(run)
    owner = cbr_owner(manifest)
    sent = int(owner.get("requests", 0))
    emulator_routes = run.stats.get("requests", {}).get(ROUTE, {})
    seen = sum(emulator_routes.values())
    refused = sum(n for status, n in emulator_routes.items() if int(status) >= 400)
    records = sum(int(s.get("records_written", 0)) for s in scopes)
    counted = sum(int(s.get("count") or 0) for s in scopes)
    back = run.backoffs
    short, short_storm = shortfall(run, args.rps)
    rows = [
        (
            "estate",
            f"{counted:,} private backups in {len(scopes)} scopes; page_size {args.page_size}",
        ),
        ("requests needed", f"{needed:,} (sum over scopes of max(1, ceil(count / page_size)))"),
        ("minimum time", f"{minimum:.1f} s ({needed:,} / {args.rps:g} requests/s)"),
    ]
    storm = run.storm
    if storm is not None:
        rows.append(
            (
                "faults",
                f"{args.error_rate:.0%} of {ROUTE} answered {'/'.join(map(str, STATUSES))}; "
                f"429 storm on {storm.fraction:.0%} from {storm.start:.1f} to {storm.end:.1f} s",
            )
        )
    else:
        rows.append(("faults", "none (clean baseline)"))
    rows += [
        ("crawler exit code", f"{run.code}; manifest {manifest.get('status')}"),
        ("records written", f"{records:,}; the API's counts sum to {counted:,}"),
        ("ground truth", run.verdict),
        ("wall time (process)", f"{run.wall:.1f} s: {run.wall / minimum:.2f}x the minimum"),
        (
            "ListBackups phase",
            f"{first:.1f} -> {last:.1f} s = {last - first:.1f} s: "
            f"{(last - first) / minimum:.2f}x the minimum (target {TARGET_RATIO}x)",
        ),
        (
            "cbr requests (manifest)",
            f"sent {sent:,} (+{sent - needed:,} over needed), throttled {owner.get('throttled', 0):,}, "
            f"retried {owner.get('retries', 0):,}, errors {owner.get('errors', 0):,}",
        ),
        (
            f"{ROUTE} (emulator)",
            f"{seen:,} answered: "
            + ", ".join(f"{status}: {n:,}" for status, n in sorted(emulator_routes.items()))
            + f"; {refused:,} refused",
        ),
        (
            "time the sent requests need",
            f"{sent / args.rps:.1f} s; phase / that = {(last - first) / max(sent / args.rps, 1e-9):.2f}x "
            f"(limiter idle ~{max(0.0, (last - first) - sent / args.rps):.1f} s)",
        ),
        (
            "below the limit",
            f"{short:.0f} requests the limit allowed were not sent in the phase's whole seconds "
            f"({short / args.rps:.1f} s), {short_storm:.0f} of them in seconds the storm touched",
        ),
        (
            "backoff sleeps (debug log)",
            f"{sum(back.count.values()):,} retries sleeping {sum(back.seconds.values()):.1f} s in all "
            f"(429: {back.count['429']} / {back.seconds['429']:.1f} s; 5xx: {back.count['5xx']} / "
            f"{back.seconds['5xx']:.1f} s; longest {back.longest:.2f} s)",
        ),
        (
            "cbr limiter rates",
            f"configured {owner.get('configured_rate_per_second')}, "
            f"lowest {owner.get('lowest_rate_per_second')}, final {owner.get('final_rate_per_second')}, "
            f"stated ceiling {owner.get('stated_ceiling_per_second')}",
        ),
    ]
    return rows


def timeline_rows(run: CrawlRun, args: argparse.Namespace) -> str:
    """Answers per second (refused in brackets), ten seconds a line."""
    storm = run.storm
    lines = []
    cells = per_second(run)
    for start in range(0, len(cells), 10):
        parts = []
        for second, (total, refused) in enumerate(cells[start : start + 10], start):
            mark = "*" if storm is not None and storm.start - 1 < second < storm.end else " "
            parts.append(f"{total:3d}({refused:2d}){mark}")
        lines.append(f"  {start:3d}s  " + " ".join(parts))
    legend = f"{ROUTE} answers per second of the crawl (refused), * = storm; the limit is {args.rps:g}/s"
    return "\n".join([legend, *lines])


def scope_rows(run: CrawlRun, args: argparse.Namespace) -> str:
    """When each scope was open, and the retry sleeps of over a second (they stall a scope's window)."""
    lines = ["scopes (seconds of the crawl; pages include retried ones only once):"]
    names = {}
    for scope in sorted(run.manifest.get("scopes", []), key=lambda s: str(s.get("started_at"))):
        names[scope["project_id"]] = scope["project_name"]
        opened = _seconds_since(scope["started_at"], run.started_wall)
        closed = _seconds_since(scope["finished_at"], run.started_wall)
        lines.append(
            f"  {scope['project_name']:<26} {scope.get('count') or 0:>7,} backups {scope['pages']:>4} pages "
            f"open {opened:5.1f} -> {closed:5.1f} s"
        )
    long = run.backoffs.long
    lines.append(f"retry sleeps over 1 s: {len(long)}")
    for ts, delay, status, path in long:
        at = _seconds_since(ts, run.started_wall)
        project = names.get(path.split("/")[2] if path.count("/") >= 3 else "", path)
        lines.append(f"  at {at:5.1f} s: {delay:4.2f} s after HTTP {status} ({project})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faulty_rate_limited", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--backups", type=int, default=60_000)
    parser.add_argument("--page-size", type=int, default=50, help="rate_limit.page_size (1..1000)")
    parser.add_argument("--rps", type=float, default=50, help="rate_limit.requests_per_second")
    parser.add_argument("--concurrency", type=int, default=8, help="rate_limit.concurrency")
    parser.add_argument("--error-rate", type=float, default=0.10, help="share of ListBackups answered 5xx")
    parser.add_argument(
        "--storm-at", type=float, default=11.0, help="storm start, s after the emulator starts"
    )
    parser.add_argument("--storm-seconds", type=float, default=5.0)
    parser.add_argument(
        "--storm-fraction", type=float, default=0.4, help="share of requests refused with 429"
    )
    parser.add_argument(
        "--gateway-limit",
        type=int,
        default=0,
        help="also make the emulator enforce N requests/s per user on ListBackups (0: no rule)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-baseline", action="store_true", help="skip the clean crawl")
    args = parser.parse_args(argv)

    runs = [] if args.no_baseline else [crawl(args, faulty=False)]
    runs.append(crawl(args, faulty=True))
    for run in runs:
        if run.code != 0 or not run.exact:
            print(run.stderr_tail, file=sys.stderr)
        print(table(report(run, args), f"{run.label} crawl at {args.rps:g} requests/s"))
        print(timeline_rows(run, args))
        print(scope_rows(run, args))
        print()
    faulty = runs[-1]
    needed = requests_needed(faulty.manifest, args.page_size)
    first, last = phase(faulty)
    ratio = (last - first) / (needed / args.rps)
    within = "within" if ratio <= TARGET_RATIO else "OVER"
    print(f"faulty crawl: {ratio:.3f}x the minimum, {within} the issue's {TARGET_RATIO}x target")
    return 0 if all(run.exact and run.code == 0 for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
