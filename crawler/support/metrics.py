"""Run metrics for Prometheus: a textfile for node_exporter's textfile collector, and a Pushgateway push.

The metrics describe the last run (every value is the run's own, so they are gauges, not counters):
status, start, end and duration, per quota owner the requests, throttles, retries and errors, per
tenant the records written and the scopes by status, and, when the inventory report was made, the
backups, GB, expiring and in-error backups per tenant.

``cbr_crawler_last_success_timestamp_seconds`` is the end of the last *complete* run. A run that
is not complete must not erase it (an alert on "no success for 36 h" depends on it): it is read
back from the existing textfile and written again unchanged; in a push it is left out, and since
the push is a POST (which replaces only the metric names it sends), the Pushgateway keeps the value
of the last complete run's push.

The exposition text is made by ``prometheus_client`` (its registry, ``write_to_textfile``, which
writes a temporary file and renames it, and ``pushadd_to_gateway``), not by hand.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Gauge

from crawler import __version__

log = logging.getLogger(__name__)

PREFIX = "cbr_crawler"
LAST_SUCCESS = f"{PREFIX}_last_success_timestamp_seconds"
RUN_STATUSES = ("complete", "incomplete", "interrupted", "failed")
DEFAULT_JOB = "cbr_crawler"
PUSH_TIMEOUT = 10.0


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def previous_last_success(path: Path) -> float | None:
    """The last-success timestamp in an existing textfile, if there is one (and it parses)."""
    try:
        text = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    try:
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(text):
            if family.name == LAST_SUCCESS:
                for sample in family.samples:
                    if sample.name == LAST_SUCCESS:
                        return float(sample.value)
    except ValueError as exc:
        log.warning("metrics file %s does not parse (%s): the last success time starts afresh", path, exc)
    return None


def build_registry(
    manifest: dict[str, Any] | None,
    *,
    exit_code: int | None = None,
    last_success: float | None = None,
    report: dict[str, Any] | None = None,
) -> CollectorRegistry:
    """The run's metrics. ``manifest`` None means the run failed before it could write one.

    ``last_success``: the previous value, kept when this run is not complete (None: left out).
    """
    # Imported here, not at the top: most runs write no metrics, and it costs every start ~25 ms.
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", doc, labelnames=labels, registry=registry)

    status = str(manifest["status"]) if manifest is not None else "failed"
    run_status = gauge("run_status", "1 for the last run's status, 0 for the others", ("status",))
    for name in RUN_STATUSES:
        run_status.labels(status=name).set(1 if name == status else 0)
    info = gauge("run_info", "The last run's id and the tool version", ("run_id", "version"))
    info.labels(run_id=str(manifest.get("run_id")) if manifest else "", version=__version__).set(1)
    if exit_code is not None:
        gauge("run_exit_code", "Exit code of the last run").set(exit_code)
    now = dt.datetime.now(dt.UTC).timestamp()
    if manifest is not None and status == "complete":
        last_success = _timestamp(manifest.get("finished_at")) or now
    if last_success is not None:
        gauge(LAST_SUCCESS.removeprefix(PREFIX + "_"), "End of the last complete run (unix time)").set(
            last_success
        )
    if manifest is None:
        gauge("run_end_timestamp_seconds", "End of the last run (unix time)").set(now)
        return registry

    started, finished = _timestamp(manifest.get("started_at")), _timestamp(manifest.get("finished_at"))
    if started is not None:
        gauge("run_start_timestamp_seconds", "Start of the last run (unix time)").set(started)
    gauge("run_end_timestamp_seconds", "End of the last run (unix time)").set(finished or now)
    gauge("run_duration_seconds", "Duration of the last run (this attempt)").set(
        float(manifest.get("duration_seconds") or 0.0)
    )

    owner = ("quota_owner",)
    requests = gauge("run_requests", "Requests sent in the last run, per quota owner", owner)
    throttles = gauge("run_throttles", "Throttled answers (429) in the last run, per quota owner", owner)
    retries = gauge("run_retries", "Retries in the last run, per quota owner", owner)
    errors = gauge("run_request_errors", "Requests that failed for good in the last run", owner)
    for q in manifest.get("quota_owners") or []:
        name = str(q.get("quota_owner"))
        requests.labels(quota_owner=name).set(q.get("requests") or 0)
        throttles.labels(quota_owner=name).set(q.get("throttled") or 0)
        retries.labels(quota_owner=name).set(q.get("retries") or 0)
        errors.labels(quota_owner=name).set(q.get("errors") or 0)

    records = gauge("run_records", "Backup records written in the last run, per tenant", ("tenant",))
    scopes = gauge("run_scopes", "Scopes of the last run by status, per tenant", ("tenant", "status"))
    per_tenant: dict[str, int] = {t: 0 for t in manifest.get("tenants") or []}
    per_status: dict[tuple[str, str], int] = {}
    for scope in manifest["scopes"]:
        tenant = str(scope["tenant"])
        per_tenant[tenant] = per_tenant.get(tenant, 0) + int(scope.get("records_written") or 0)
        per_status[(tenant, str(scope["status"]))] = per_status.get((tenant, str(scope["status"])), 0) + 1
    for tenant, n in sorted(per_tenant.items()):
        records.labels(tenant=tenant).set(n)
    for (tenant, scope_status), n in sorted(per_status.items()):
        scopes.labels(tenant=tenant, status=scope_status).set(n)
    failures = gauge("run_tenant_failures", "Tenants whose credential or discovery failed", ("tenant",))
    for failure in manifest.get("tenant_failures") or []:
        failures.labels(tenant=str(failure.get("tenant"))).inc()

    if report is not None:
        _report_metrics(report, gauge)
    return registry


def _report_metrics(report: dict[str, Any], gauge: Any) -> None:
    tenant = ("tenant",)
    backups = gauge("inventory_backups", "Backups in the inventory, per tenant", tenant)
    gb = gauge("inventory_gigabytes", "Size of the backed-up resources (resource_size, GB)", tenant)
    for name, tally in report["by_tenant"].items():
        backups.labels(tenant=name).set(tally["backups"])
        gb.labels(tenant=name).set(tally["gb"])
    expiring = gauge("inventory_expiring_backups", "Backups expiring within the report's window", tenant)
    for name, tally in report["expiring"]["by_tenant"].items():
        expiring.labels(tenant=name).set(tally["backups"])
    in_error = gauge("inventory_error_backups", "Backups in status error", tenant)
    for name, tally in report["errors"]["by_tenant"].items():
        in_error.labels(tenant=name).set(tally["backups"])
    gauge("inventory_projects_without_backups", "Projects with no backup at all").set(
        len(report["projects_without_backups"])
    )


def write_metrics_file(path: Path, registry: CollectorRegistry) -> None:
    """Atomically (temporary file in the same directory, then rename). Blocking.

    The file is readable by all (0644) whatever the run's umask (077 by default: outputs are
    private): node_exporter's textfile collector reads it as its own user, and it holds counts and
    statuses only, no secret and no backup.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    from prometheus_client import write_to_textfile

    previous = os.umask(0o022)
    try:
        write_to_textfile(str(path), registry)
    finally:
        os.umask(previous)


def safe_url(url: str) -> str:
    """``url`` without any user:password part, for log lines."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def push_metrics(
    gateway: str,
    registry: CollectorRegistry,
    *,
    job: str = DEFAULT_JOB,
    grouping_key: dict[str, str] | None = None,
    timeout: float = PUSH_TIMEOUT,
) -> bool:
    """POST the metrics to a Pushgateway (replacing, in this group, only the names sent). Blocking.

    A failed push is logged and reported as False; it never fails the run.
    """
    grouping = {"instance": socket.gethostname(), **(grouping_key or {})}
    try:
        from prometheus_client import pushadd_to_gateway

        pushadd_to_gateway(gateway, job=job, registry=registry, grouping_key=grouping, timeout=timeout)
    except OSError as exc:  # urllib's URLError/HTTPError are OSErrors
        log.warning("could not push metrics to %s: %s", safe_url(gateway), exc)
        return False
    log.info("metrics pushed to %s (job %s)", safe_url(gateway), job)
    return True


def export_run_metrics(
    manifest: dict[str, Any] | None,
    *,
    exit_code: int | None,
    metrics_file: Path | None,
    pushgateway: str | None,
    job: str = DEFAULT_JOB,
    grouping_key: dict[str, str] | None = None,
    report: dict[str, Any] | None = None,
) -> None:
    """Write the textfile and/or push, as configured. Blocking; never raises for a push."""
    last_success = previous_last_success(metrics_file) if metrics_file is not None else None
    if metrics_file is not None:
        registry = build_registry(manifest, exit_code=exit_code, last_success=last_success, report=report)
        write_metrics_file(metrics_file, registry)
    if pushgateway is not None:
        # Without the previous value at hand, a push leaves it out and the gateway keeps its own.
        pushed = build_registry(manifest, exit_code=exit_code, last_success=None, report=report)
        push_metrics(pushgateway, pushed, job=job, grouping_key=grouping_key)
