"""Peak memory of a 1M-backup crawl (the issue asks for under 200 MB), with its time and CPU.

The emulator runs in a spawned process (its memory is not counted); the crawler runs as a user
runs it, ``python -m crawler run --config <tenant.yaml> --output <dir>``, in its own process whose
peak RSS (its own ``VmHWM``, see :mod:`bench._peak_rss`), wall time and CPU seconds (``wait4``) are
measured::

    .venv/bin/python -m bench.crawl_memory [--backups 1000000] [--compression none]

``--tracemalloc`` runs the crawler under :mod:`bench._traced_crawl` instead, which adds the Python
allocation sites at the moment of peak traced memory (slower; the RSS is then not representative).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench._support import DOMAIN, PASSWORD, USER, ChildRun, EmulatorProcess, run_child, table

LIMIT_MB = 200
PASSWORD_ENV = "CBR_BENCH_PASSWORD"


def write_tenant(directory: Path, url: str, args: argparse.Namespace) -> Path:
    """The tenant file of the crawl: every project of both regions, private backups, no EP pass."""
    tenant: dict[str, Any] = {
        "tenant": "bench",
        "auth": {"mode": "password", "user": USER, "domain": DOMAIN, "password_env": PASSWORD_ENV},
        "endpoints": {"iam": url, "eps": url, "cbr": url},
        "regions": ["cn-north-4", "ap-southeast-1"],
        "projects": {"discover": {}},
        "enterprise_projects": {"mode": "none"},
        "own_types": ["private"],
        "rate_limit": {"requests_per_second": args.rps, "concurrency": args.concurrency},
        "output": {"compression": args.compression},
    }
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(tenant, sort_keys=False))
    return path


def run_crawler(config: Path, output: Path, traced: bool) -> ChildRun:
    """Run the crawler process, measured by :func:`bench._support.run_child` (its own peak RSS)."""
    module = "bench._traced_crawl" if traced else "crawler"
    env = dict(os.environ, **{PASSWORD_ENV: PASSWORD})
    command = [sys.executable, "-m", module, "run", "--config", str(config), "--output", str(output)]
    # The allocation report of --tracemalloc is long: keep all of it.
    return run_child(command, env, stderr_tail=1 << 20 if traced else 4000)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crawl_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--backups", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rps", type=float, default=200, help="requests_per_second (the config's max: 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="the tenant config's default")
    parser.add_argument("--compression", choices=["none", "gzip", "zstd"], default="none")
    parser.add_argument("--tracemalloc", action="store_true", help="report the allocation sites at the peak")
    parser.add_argument("--keep", metavar="DIR", help="write the output here and keep it")
    args = parser.parse_args(argv)

    emulator = EmulatorProcess(args.backups, seed=args.seed)
    with emulator as info, tempfile.TemporaryDirectory(prefix="cbr-bench-") as tmp:
        work = Path(tmp)
        output = Path(args.keep) if args.keep else work / "out"
        config = write_tenant(work, info.url, args)
        child = run_crawler(config, output, args.tracemalloc)
        code, wall, stderr = child.code, child.wall, child.stderr
        emulator_peak = emulator.peak_rss_mb()
        manifest_path = output / "manifest.json"
        manifest = orjson.loads(manifest_path.read_bytes()) if manifest_path.exists() else {}
        if stderr and (code != 0 or args.tracemalloc):
            print(stderr, file=sys.stderr)

    scopes = manifest.get("scopes", [])
    records = sum(int(scope.get("records_written", 0)) for scope in scopes)
    peak_mb = child.peak_rss_mb
    cpu = child.cpu
    complete = manifest.get("status") == "complete" and records == info.backups
    rows = [
        (
            "estate",
            f"{info.backups:,} backups in {len(info.projects)} projects (emulator in its own process)",
        ),
        (
            "rate limit",
            f"{args.rps:g} requests/s, concurrency {args.concurrency}, compression {args.compression}",
        ),
        ("crawler exit code", str(code)),
        ("manifest status", f"{manifest.get('status')} ({len(scopes)} scopes)"),
        ("records written", f"{records:,} (expected {info.backups:,}: {'OK' if complete else 'MISMATCH'})"),
        ("wall time", f"{wall:.1f} s"),
        ("crawler CPU", f"{cpu:.1f} s (user + system)"),
        (
            "records/s",
            f"{records / wall:,.0f} (wall), {records / max(cpu, 1e-9):,.0f} per crawler CPU second",
        ),
        (
            "crawler peak RSS",
            f"{peak_mb:.0f} MB: {'under' if peak_mb < LIMIT_MB else 'OVER'} the {LIMIT_MB} MB requirement",
        ),
        ("emulator peak RSS (not counted)", f"{emulator_peak:.0f} MB"),
    ]
    print(table(rows, f"crawl of {info.backups:,} backups: memory, time, CPU"))
    return 0 if complete and code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
