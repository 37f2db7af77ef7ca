"""What a nightly run does after the crawl: the inventory report, the diff, the metrics.

``run`` gains ``--metrics-file``, ``--pushgateway``, ``--diff-against`` and ``--expiring-days``;
after the manifest is written :func:`after_run` makes the inventory report (``report.json``), the
diff against the previous run (``OUTPUT/diff/``) and the metrics, in that order, each failing alone:
none of them changes the run's exit code, which is about the inventory itself. They run after the
event loop has finished, so their blocking file reads hold up nothing else. (The ``diff`` and
``report`` commands, which look at finished runs, are :mod:`crawler.commands.diff` and
:mod:`crawler.commands.report`.)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from crawler.commands.places import Place, place
from crawler.commands.report import (
    DEFAULT_EXPIRING_DAYS,
    build_report,
    format_report,
    write_report,
)
from crawler.errors import CrawlerError
from crawler.support.metrics import DEFAULT_JOB, export_run_metrics

log = logging.getLogger("crawler")

DIFF_DIR = "diff"
AUTO = "auto"


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """The nightly flags of ``run``."""
    run.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="write Prometheus metrics of the run to PATH (node_exporter textfile collector, *.prom), "
        "atomically, at the end and on interruption",
    )
    run.add_argument(
        "--pushgateway", metavar="URL", help="also push the metrics to this Prometheus Pushgateway"
    )
    run.add_argument(
        "--pushgateway-job",
        default=DEFAULT_JOB,
        metavar="JOB",
        help=f"Pushgateway job (default {DEFAULT_JOB})",
    )
    run.add_argument(
        "--diff-against",
        metavar="PREVIOUS|auto",
        help="at the end, diff this run against a previous run's output into OUTPUT/diff/ "
        "('auto': the newest complete run in a sibling directory of OUTPUT)",
    )
    run.add_argument(
        "--expiring-days",
        type=float,
        default=DEFAULT_EXPIRING_DAYS,
        metavar="N",
        help=f"report backups expiring within N days of the run (default {DEFAULT_EXPIRING_DAYS:g})",
    )
    run.add_argument(
        "--no-report", action="store_true", help="do not write report.json (skips a read of the output)"
    )


def after_run(args: argparse.Namespace, manifest: dict[str, Any], root: Place | None, code: int) -> None:
    """Report, diff and metrics of a finished (or interrupted) run whose output is ``root`` (a
    directory or a bucket prefix; ``None`` for ``--output -``); never raises for them."""
    report: dict[str, Any] | None = None
    interrupted = manifest.get("status") == "interrupted"
    if root is not None and not interrupted and not getattr(args, "no_report", False):
        try:
            report = build_report(root, expiring_days=args.expiring_days)
            path = write_report(root, report)
            print(format_report(report, path), file=sys.stderr)
        except (OSError, CrawlerError, ValueError) as exc:
            log.warning("could not write the inventory report: %s", exc)
    elif root is None and not getattr(args, "no_report", False):
        log.info("no inventory report: the records went to standard output (--output -)")
    if getattr(args, "diff_against", None) and root is not None and not interrupted:
        _diff_after_run(args.diff_against, root, manifest)
    _metrics(args, manifest, code, report)


def _diff_after_run(against: str, root: Place, manifest: dict[str, Any]) -> None:
    # Imported when used (as crawler.support.metrics imports prometheus_client): most runs make no diff.
    from crawler.commands.diff import find_previous_run, report_diff, write_diff

    previous: Place | None
    if against == AUTO:
        previous = find_previous_run(root, before=str(manifest.get("started_at") or "") or None)
        if previous is None:
            log.warning("--diff-against auto: no earlier complete run next to %s; no diff", root)
            return
    else:
        previous = place(against)
    try:
        result = write_diff(previous, root, root / DIFF_DIR)
    except (OSError, CrawlerError, ValueError) as exc:
        log.warning("could not diff against %s: %s", previous, exc)
        return
    report_diff(result)
    print(f"  diff: {root / DIFF_DIR}", file=sys.stderr)


def _metrics(args: argparse.Namespace, manifest: dict[str, Any] | None, code: int, report: Any) -> None:
    metrics_file = getattr(args, "metrics_file", None)
    pushgateway = getattr(args, "pushgateway", None)
    if metrics_file is None and pushgateway is None:
        return
    grouping: dict[str, str] = {}
    shard = (manifest or {}).get("shard")
    if isinstance(shard, dict):
        grouping["shard"] = f"{shard.get('index')}-of-{shard.get('count')}"
    try:
        export_run_metrics(
            manifest,
            exit_code=code,
            metrics_file=Path(metrics_file) if metrics_file else None,
            pushgateway=pushgateway,
            job=args.pushgateway_job,
            grouping_key=grouping,
            report=report,
        )
    except (OSError, ValueError) as exc:
        log.warning("could not write the metrics file %s: %s", metrics_file, exc)


def after_failed_run(args: argparse.Namespace, code: int) -> None:
    """Metrics for a run that ended without a manifest (status ``failed``)."""
    _metrics(args, None, code, None)
