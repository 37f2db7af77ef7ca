"""How fast the emulator serves ListBackups, so that it is never a crawler benchmark's bottleneck.

Starts the emulator with a generated estate (``--backups``, default 1M) in its own process and drives
it over loopback with an aiohttp client from this process (one core each)::

    .venv/bin/python -m bench.emulator_throughput [--backups 1000000] [--concurrency 4]

Prints the estate's generation time and memory, then records/s and requests/s for default-order
1000-record pages served for the first time (cold) and again (warm, from the page cache), requests/s
for 10-record pages, and the same ListBackups work measured in the emulator process without HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

import aiohttp

from bench._support import EmulatorInfo, EmulatorProcess, project_token, table


async def _fetch_all(
    session: aiohttp.ClientSession, url: str, token: str, queries: Sequence[str], concurrency: int
) -> tuple[float, int]:
    """GET every query with ``concurrency`` workers; returns (seconds, body bytes)."""
    pending = iter(queries)
    total = 0

    async def worker() -> None:
        nonlocal total
        for query in pending:
            async with session.get(f"{url}?{query}", headers={"X-Auth-Token": token}) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
                total += len(body)

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return time.perf_counter() - started, total


async def _measure(info: EmulatorInfo, args: argparse.Namespace) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    pages = min(args.cold_pages, info.biggest_count // 1000)
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        token = await project_token(session, info.url, info.biggest_project)
        url = f"{info.url}/v3/{info.biggest_project}/backups"

        cold = [f"limit=1000&offset={k * 1000}" for k in range(pages)]
        seconds, size = await _fetch_all(session, url, token, cold, args.concurrency)
        rows.append(
            (
                f"1000-record pages, cold ({pages} pages)",
                f"{pages * 1000 / seconds:>10,.0f} records/s  {pages / seconds:7.1f} requests/s"
                f"  {size / pages / 1e6:.2f} MB/page",
            )
        )
        cold_rate = pages * 1000 / seconds

        warm_set = cold[: args.warm_pages]
        await _fetch_all(session, url, token, warm_set, args.concurrency)  # into the page cache
        warm = warm_set * args.warm_rounds
        seconds, _ = await _fetch_all(session, url, token, warm, args.concurrency)
        rows.append(
            (
                f"1000-record pages, warm ({len(warm_set)} pages x {args.warm_rounds})",
                f"{len(warm) * 1000 / seconds:>10,.0f} records/s  {len(warm) / seconds:7.1f} requests/s",
            )
        )
        warm_rate = len(warm) * 1000 / seconds

        small = [f"limit=10&offset={(k * 7919) % max(1, info.biggest_count - 10)}" for k in range(args.small)]
        seconds, _ = await _fetch_all(session, url, token, small, args.concurrency)
        rows.append(
            (f"10-record pages ({args.small} requests)", f"{args.small / seconds:>10,.0f} requests/s")
        )
        rows.append(("warm / cold records/s", f"{warm_rate / cold_rate:10.1f}x"))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.emulator_throughput", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--backups", type=int, default=1_000_000, help="estate size (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cold-pages", type=int, default=200, help="distinct 1000-record pages to fetch")
    parser.add_argument("--warm-pages", type=int, default=20, help="pages fetched again (must fit the cache)")
    parser.add_argument("--warm-rounds", type=int, default=5)
    parser.add_argument("--small", type=int, default=3000, help="10-record requests")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--service-pages", type=int, default=30, help="pages timed without HTTP")
    args = parser.parse_args(argv)

    emulator = EmulatorProcess(args.backups, seed=args.seed, service_pages=args.service_pages)
    with emulator as info:
        rows = [
            ("estate", f"{info.backups:,} backups, biggest project {info.biggest_count:,}"),
            ("generation time", f"{info.generate_seconds:.2f} s"),
            (
                "emulator RSS",
                f"{info.rss_before_mb:.0f} MB before the estate, {info.rss_after_mb:.0f} MB with it "
                f"({(info.rss_after_mb - info.rss_before_mb) * 2**20 / max(1, info.backups):.0f} B/backup)",
            ),
        ]
        service = info.service
        if service:
            rows += [
                (
                    f"no HTTP: 1000-record pages, cold ({args.service_pages})",
                    f"{service['cold']:>10,.0f} records/s",
                ),
                ("no HTTP: same pages, warm (page cache)", f"{service['warm']:>10,.0f} records/s"),
                ("no HTTP: reference dict + orjson (20k)", f"{service['reference']:>10,.0f} records/s"),
            ]
            if service["writer"]:
                rows += [
                    ("no HTTP: template writer (same 20k)", f"{service['writer']:>10,.0f} records/s"),
                    ("no HTTP: writer / reference", f"{service['writer'] / service['reference']:10.2f}x"),
                ]
        rows += asyncio.run(_measure(info, args))
        rows.append(("emulator peak RSS", f"{emulator.peak_rss_mb():.0f} MB"))
    print(table(rows, f"emulator throughput over loopback (concurrency {args.concurrency})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
