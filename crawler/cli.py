"""Command line: parse arguments, set up logging, load config, run, map the outcome to an exit code.

Exit codes (documented in the README):
    0   complete: every scope of every tenant
    1   some scope partial or failed (the manifest says which and why)
    2   bad configuration or usage
    130 interrupted by SIGINT or SIGTERM
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from crawler import __version__
from crawler.config import ConfigError, ConfigErrors, TenantConfig, json_schema, load_tenants
from crawler.errors import CrawlerError
from crawler.logs import setup_logging
from crawler.nightly import add_commands, add_run_arguments, after_failed_run, after_run
from crawler.runner import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_USAGE, RunOptions, new_run_id, run_crawl
from crawler.shard import ShardError, shard_run_from_args

log = logging.getLogger("crawler")

T = TypeVar("T")


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run on uvloop when available; SIGINT and SIGTERM cancel the main task (clean stop, exit 130)."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        loop = runner.get_loop()

        async def main() -> T:
            task = asyncio.current_task()
            assert task is not None
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, _on_signal, task, sig)
            try:
                return await factory()
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

        return runner.run(main())


def _on_signal(task: asyncio.Task[Any], sig: signal.Signals) -> None:
    log.warning(
        "received %s: stopping; complete scopes are kept, the manifest will say 'interrupted'", sig.name
    )
    task.cancel()


def _load(paths: Sequence[str]) -> list[TenantConfig]:
    return load_tenants([Path(p) for p in paths])


def cmd_validate(args: argparse.Namespace) -> int:
    tenants = _load(args.files)
    for tenant in tenants:
        print(f"ok: {tenant.source}: tenant {tenant.name}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.buffer.write(
        orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    tenants = _load(args.config)
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
        with _tuned_gc():
            outcome = run_async(lambda: run_crawl(tenants, options))
    except BaseException as exc:
        # No manifest (the lock is held, the manifest could not be written...): metrics say "failed".
        after_failed_run(args, EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_INCOMPLETE)
        raise
    print_summary(outcome.manifest, outcome.manifest_path)
    after_run(args, outcome.manifest, outcome.manifest_path, outcome.exit_code)  # report, diff, metrics
    return outcome.exit_code


@contextlib.contextmanager
def _tuned_gc() -> Iterator[None]:
    """Fewer, cheaper cyclic collections for the crawl (measured: ~4% of B's CPU down to ~0.7%).

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


def print_summary(manifest: dict[str, Any], manifest_path: Path | None) -> None:
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


class UsageError(CrawlerError):
    """Wrong command-line use: exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cbr-crawler",
        description="A complete, trustworthy inventory of Huawei Cloud CBR backups.",
    )
    parser.add_argument("--version", action="version", version=f"cbr-crawler {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

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

    plan = sub.add_parser(
        "plan", help="list the scopes a run would crawl, with expected backups, requests and time"
    )
    plan.add_argument("--config", "-c", nargs="+", required=True)
    plan.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    plan.set_defaults(func=cmd_plan)

    validate = sub.add_parser("validate", help="check tenant files without touching the network")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=cmd_validate)

    schema = sub.add_parser("schema", help="print the JSON Schema of tenant files (for editors)")
    schema.set_defaults(func=cmd_schema)

    demo = sub.add_parser(
        "demo", help="start the built-in emulator, crawl it with config/demo.yaml, print a summary"
    )
    demo.add_argument("--output", "-o", default="out/demo", help="output directory (default out/demo)")
    demo.add_argument("--backups", type=int, default=20000, help="backups in the demo estate (default 20000)")
    demo.add_argument("--config", "-c", help="tenant file (default: the packaged config/demo.yaml)")
    demo.set_defaults(func=cmd_demo)

    merge = sub.add_parser(
        "merge", help="join the manifests of a sharded run's shards into one manifest (and _SUCCESS)"
    )
    merge.add_argument(
        "shards", nargs="+", help="shard directories (shard-K-of-N), or the directory holding them"
    )
    merge.add_argument("--output", "-o", help="where the merged manifest goes (default: the shards' parent)")
    merge.add_argument(
        "--shards", dest="count", metavar="N", help="expected shard count (also CBR_CRAWLER_SHARDS)"
    )
    merge.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for shards missing, still running or interrupted (maybe resumed)",
    )
    merge.set_defaults(func=cmd_merge)
    add_commands(sub)  # diff, report

    # Listed for --help only: main() hands `emulator ...` to the emulator's own parser.
    sub.add_parser("emulator", help="serve the CBR/IAM/EPS emulator on loopback (see: emulator --help)")
    return parser


def cmd_plan(args: argparse.Namespace) -> int:
    from crawler.plan import run_plan

    setup_logging(args.log_level)
    tenants = _load(args.config)
    return run_async(lambda: run_plan(tenants))


def cmd_merge(args: argparse.Namespace) -> int:
    from crawler.merge import run_merge

    setup_logging("info")
    return run_merge(args.shards, args.output, args.count, args.wait, os.environ)


def cmd_demo(args: argparse.Namespace) -> int:
    from crawler.demo import run_demo

    setup_logging("info")
    return run_demo(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        # The emulator has its own parser (also `python -m crawler.emulator`); hand it every flag.
        from crawler.emulator.__main__ import main as emulator_main

        return emulator_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except (ConfigError, ConfigErrors) as exc:
        print(f"cbr-crawler: configuration error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, ShardError) as exc:
        print(f"cbr-crawler: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CrawlerError as exc:
        print(f"cbr-crawler: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except OSError as exc:
        # The manifest or the lock could not be written (full disk, read-only mount...).
        print(
            f"cbr-crawler: cannot write {exc.filename or 'the output'}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
