"""``cbr-crawler run``: crawl the tenants of the given files, then the nightly extras.

The run itself is :func:`crawler.pipeline.runner.run_crawl`; this command turns the command line
into its options, tunes the garbage collector for the crawl, prints the summary, and hands the
finished run to the nightly steps (report, diff, metrics: :mod:`crawler.commands.nightly`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crawler.commands.nightly import add_run_arguments, after_failed_run, after_run
from crawler.commands.places import place
from crawler.config import load_tenants
from crawler.errors import UsageError
from crawler.pipeline.runner import EXIT_INCOMPLETE, EXIT_INTERRUPTED, RunOptions, new_run_id, run_crawl
from crawler.pipeline.shard import shard_run_from_args
from crawler.support.aio import run_async
from crawler.support.logs import setup_logging

log = logging.getLogger("crawler")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="crawl the tenants of the given config files into NDJSON and a manifest")
    run.add_argument("--config", "-c", nargs="+", required=True, help="tenant YAML files or directories")
    run.add_argument("--output", "-o", help="output directory, or '-' for NDJSON on stdout")
    run.add_argument("--manifest", help="with --output -: where to write the manifest")
    resume = run.add_mutually_exclusive_group()
    resume.add_argument("--run-id", help="run id (default: UTC time + random suffix)")
    resume.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run in --output (the default when its config is unchanged); "
        "says so when there is none and starts a new run",
    )
    resume.add_argument(
        "--fresh", action="store_true", help="start a new run, ignoring the run state in --output"
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-json", action="store_true", help="JSON-lines logs, each with the run id")
    run.add_argument("--progress-interval", type=float, default=10.0, help="seconds between progress lines")
    run.add_argument(
        "--shard",
        metavar="K/N",
        help="crawl shard K of N (K from 0) into OUTPUT/shard-K-of-N at 1/N of each rate; needs a "
        "shared --run-id or CBR_CRAWLER_RUN_ID; join the shards with `cbr-crawler merge`",
    )
    run.add_argument(
        "--shards",
        metavar="N",
        help="shard count when the index comes from JOB_COMPLETION_INDEX (also env CBR_CRAWLER_SHARDS)",
    )
    add_run_arguments(run)  # --metrics-file, --pushgateway, --diff-against, --expiring-days
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    tenants = load_tenants(args.config)
    output = args.output or (
        str(tenants[0].output.directory) if tenants and tenants[0].output.directory else None
    )
    if output is None:
        raise UsageError(
            "no output directory: give --output DIR (or '-' for stdout), or output.directory in the config"
        )
    shard, output, given_run_id = shard_run_from_args(
        args.shard, args.shards, output, args.run_id, os.environ
    )
    run_id = given_run_id or new_run_id()
    setup_logging(args.log_level, args.log_json, run_id)
    options = RunOptions(
        output=output,
        run_id=run_id,
        progress_interval=args.progress_interval,
        manifest_path=Path(args.manifest) if args.manifest else None,
        resume="resume" if args.resume else "fresh" if args.fresh else "auto",
        run_id_given=given_run_id is not None,
        shard=shard,
    )
    # The run id is settled once the run state is read (a resumed run keeps its recorded id).
    log.info("%d tenant(s), output %s", len(tenants), output)
    try:
        with tuned_gc():
            outcome = run_async(lambda: run_crawl(tenants, options))
    except BaseException as exc:
        # No manifest (the lock is held, the manifest could not be written...): metrics say "failed".
        after_failed_run(args, EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_INCOMPLETE)
        raise
    print_summary(outcome.manifest, outcome.manifest_location)
    root = None if output == "-" else place(output)
    after_run(args, outcome.manifest, root, outcome.exit_code)  # report, diff, metrics
    return outcome.exit_code


@contextlib.contextmanager
def tuned_gc() -> Iterator[None]:
    """Fewer, cheaper cyclic collections for the crawl (bench/README.md has the figures).

    A crawl allocates millions of short-lived containers and hardly any cycles, so the default
    gen-0 threshold (700) collects far too often; and each collection of the older generations
    would walk every module, class and config object loaded so far: freeze() moves them out of
    the collector's sight. Cycles are still collected, only in bigger batches.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)  # as it was, for a caller that goes on (tests call main())
        gc.unfreeze()


def print_summary(manifest: dict[str, Any], manifest_path: Path | str | None) -> None:
    totals = manifest["totals"]
    by_status = ", ".join(f"{n} {s}" for s, n in sorted(totals["scopes_by_status"].items())) or "no scopes"
    lines = [
        f"run {manifest['run_id']}: {manifest['status'].upper()} in {manifest['duration_seconds']:.1f}s",
        f"  scopes: {totals['scopes']} ({by_status})",
        f"  backups written: {totals['records_written']} in {totals['files']} files",
    ]
    for failure in manifest["tenant_failures"]:
        lines.append(f"  tenant failure: {failure['error']}")
    bad = [s for s in manifest["scopes"] if s["status"] != "complete"]
    for scope in bad[:10]:
        lines.append(f"  {scope['status']}: {scope['key']}: {scope['error']}")
    if len(bad) > 10:
        lines.append(f"  ... and {len(bad) - 10} more (see the manifest)")
    if manifest_path is not None:
        lines.append(f"  manifest: {manifest_path}")
    print("\n".join(lines), file=sys.stderr)
