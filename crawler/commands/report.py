"""The inventory report: what the backups add up to, written as ``report.json`` next to the manifest.

Backups and GB (``resource_size``, which the API gives in GB) per tenant, region, status and
resource type; backups expiring within N days of the run (``expired_at``); backups in error; and
projects with no backup at all.

Why a second pass over the written files rather than a hook in the engine: the engine streams
pages straight to disk and must hold no records; a hook would put report code on the hot path of
every page (and in modules other people change), while a pass at the end reads files the page
cache often still holds, decodes only the seven fields it needs (msgspec skips the rest without
building objects), and can be run again later on any output (``cbr-crawler report OUT``). Its
memory is a few counters per group plus two bounded lists. The cost is one more read of the
output; with ``--output -`` there are no files, so there is no report.

Counting each backup once: views overlap (``all_granted`` = ``private`` + ``shared``, and a shared
backup also appears in its receiver's views). A backup is counted at its owner project only: per
(tenant, project) the ``private`` scopes are used, or else the ``all_granted`` ones restricted to
records whose ``project_id`` is the project's own. Backups shared *into* a project are counted
apart (``shared_in``). Across tenants nothing is merged: two tenant files crawling one account
count its backups twice, once for each tenant.
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import msgspec
import orjson

from crawler.commands.outputs import iter_scope_lines, load_manifest, output_root
from crawler.commands.places import Place, Where, place
from crawler.support.logs import setup_logging

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
DEFAULT_EXPIRING_DAYS = 7
DEFAULT_LIST_LIMIT = 1000  # entries per list in report.json (the counts always cover everything)


class _Fields(msgspec.Struct):
    """The only fields the report reads; msgspec skips every other one without decoding it."""

    id: str
    name: Any = None
    project_id: Any = None
    status: Any = None
    resource_type: Any = None
    resource_size: Any = None
    resource_name: Any = None
    expired_at: Any = None


_decode = msgspec.json.Decoder(_Fields).decode


def parse_time(value: str) -> dt.datetime:
    """An API or manifest timestamp as an aware UTC datetime (naive ones are UTC, as the API's are)."""
    parsed = dt.datetime.fromisoformat(value)
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


@dataclass(slots=True)
class _Tally:
    backups: int = 0
    gb: float = 0.0

    def add(self, gb: float) -> None:
        self.backups += 1
        self.gb += gb

    def as_dict(self) -> dict[str, Any]:
        return {"backups": self.backups, "gb": _round(self.gb)}


def _round(gb: float) -> int | float:
    return int(gb) if gb == int(gb) else round(gb, 3)


def _tallies(groups: dict[str, _Tally]) -> dict[str, dict[str, Any]]:
    return {k: groups[k].as_dict() for k in sorted(groups)}


@dataclass(slots=True)
class _Project:
    tenant: str
    region: str
    project_id: str
    project_name: str
    backups: int = 0
    shared_in: int = 0
    complete: bool = True


@dataclass(slots=True)
class InventoryReport:
    """Accumulates records scope by scope; :meth:`as_dict` is ``report.json``."""

    as_of: dt.datetime
    expiring_days: float = DEFAULT_EXPIRING_DAYS
    list_limit: int = DEFAULT_LIST_LIMIT
    total: _Tally = field(default_factory=_Tally)
    by_tenant: dict[str, _Tally] = field(default_factory=dict)
    by_region: dict[str, _Tally] = field(default_factory=dict)
    by_status: dict[str, _Tally] = field(default_factory=dict)
    by_resource_type: dict[str, _Tally] = field(default_factory=dict)
    expiring: _Tally = field(default_factory=_Tally)
    expiring_by_tenant: dict[str, _Tally] = field(default_factory=dict)
    # Max-heap by expiry (negated), capped at list_limit: the soonest expiring are kept.
    _expiring_heap: list[tuple[float, str, int, dict[str, Any]]] = field(default_factory=list)
    past_expiry: int = 0
    errors: _Tally = field(default_factory=_Tally)
    errors_by_tenant: dict[str, _Tally] = field(default_factory=dict)
    error_list: list[dict[str, Any]] = field(default_factory=list)
    unparsable: int = 0
    projects: dict[tuple[str, str], _Project] = field(default_factory=dict)
    incomplete_scopes: list[str] = field(default_factory=list)
    scopes_counted: int = 0

    def add_scope(self, scope: dict[str, Any], lines: Iterable[bytes], owned_only: bool) -> None:
        """Count one scope's records; with ``owned_only`` the records of other projects are
        counted as shared into this one, not as its backups."""
        tenant, region, project_id = str(scope["tenant"]), str(scope["region"]), str(scope["project_id"])
        project = self._project(scope)
        if scope.get("status") != "complete":
            project.complete = False
            self.incomplete_scopes.append(str(scope["key"]))
        self.scopes_counted += 1
        horizon = self.as_of + dt.timedelta(days=self.expiring_days)
        for line in lines:
            try:
                rec = _decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.unparsable += 1
                continue
            if owned_only and rec.project_id is not None and rec.project_id != project_id:
                project.shared_in += 1
                continue
            project.backups += 1
            gb = float(rec.resource_size) if isinstance(rec.resource_size, int | float) else 0.0
            status = str(rec.status) if rec.status is not None else "unknown"
            rtype = str(rec.resource_type) if rec.resource_type is not None else "unknown"
            self.total.add(gb)
            self.by_tenant.setdefault(tenant, _Tally()).add(gb)
            self.by_region.setdefault(region, _Tally()).add(gb)
            self.by_status.setdefault(status, _Tally()).add(gb)
            self.by_resource_type.setdefault(rtype, _Tally()).add(gb)
            if status == "error":
                self.errors.add(gb)
                self.errors_by_tenant.setdefault(tenant, _Tally()).add(gb)
                if len(self.error_list) < self.list_limit:
                    self.error_list.append(_entry(rec, scope, gb))
            if isinstance(rec.expired_at, str) and rec.expired_at:
                try:
                    expires = parse_time(rec.expired_at)
                except ValueError:
                    self.unparsable += 1
                    continue
                if expires < self.as_of:
                    self.past_expiry += 1
                elif expires < horizon:
                    self.expiring.add(gb)
                    self.expiring_by_tenant.setdefault(tenant, _Tally()).add(gb)
                    # The count breaks ties (one backup seen by two tenants): dicts never compare.
                    item = (-expires.timestamp(), rec.id, self.expiring.backups, _entry(rec, scope, gb))
                    if len(self._expiring_heap) < self.list_limit:
                        heapq.heappush(self._expiring_heap, item)
                    elif item > self._expiring_heap[0]:
                        heapq.heapreplace(self._expiring_heap, item)

    def _project(self, scope: dict[str, Any]) -> _Project:
        key = (str(scope["tenant"]), str(scope["project_id"]))
        project = self.projects.get(key)
        if project is None:
            project = self.projects[key] = _Project(
                key[0], str(scope["region"]), key[1], str(scope.get("project_name") or key[1])
            )
        return project

    def add_project(self, scope: dict[str, Any]) -> None:
        """A project known from the manifest, even if none of its scopes is counted."""
        project = self._project(scope)
        if scope.get("status") != "complete":
            project.complete = False

    def as_dict(self) -> dict[str, Any]:
        expiring = sorted(self._expiring_heap, key=lambda item: (-item[0], item[1], item[2]))
        empty = sorted(
            (p for p in self.projects.values() if p.backups == 0),
            key=lambda p: (p.tenant, p.region, p.project_name),
        )
        return {
            "as_of": self.as_of.isoformat().replace("+00:00", "Z"),
            "totals": self.total.as_dict(),
            "by_tenant": _tallies(self.by_tenant),
            "by_region": _tallies(self.by_region),
            "by_status": _tallies(self.by_status),
            "by_resource_type": _tallies(self.by_resource_type),
            "expiring": {
                "within_days": self.expiring_days,
                **self.expiring.as_dict(),
                "by_tenant": _tallies(self.expiring_by_tenant),
                "soonest": [item[3] for item in expiring],
                "truncated": self.expiring.backups > len(expiring),
            },
            "past_expiry": self.past_expiry,
            "errors": {
                **self.errors.as_dict(),
                "by_tenant": _tallies(self.errors_by_tenant),
                "items": self.error_list,
                "truncated": self.errors.backups > len(self.error_list),
            },
            "projects_without_backups": [
                {
                    "tenant": p.tenant,
                    "region": p.region,
                    "project_id": p.project_id,
                    "project_name": p.project_name,
                    "shared_in": p.shared_in,
                    # A project whose scopes are not all complete may have backups not fetched.
                    "certain": p.complete,
                }
                for p in empty
            ],
            "coverage": {
                "complete": not self.incomplete_scopes,
                "scopes_counted": self.scopes_counted,
                "incomplete_scopes": self.incomplete_scopes[: self.list_limit],
                "unparsable_records": self.unparsable,
            },
        }


def _entry(rec: _Fields, scope: dict[str, Any], gb: float) -> dict[str, Any]:
    return {
        "id": rec.id,
        "name": rec.name,
        "tenant": scope["tenant"],
        "region": scope["region"],
        "project_id": rec.project_id if rec.project_id is not None else scope["project_id"],
        "project_name": scope.get("project_name"),
        "resource_type": rec.resource_type,
        "resource_name": rec.resource_name,
        "status": rec.status,
        "expired_at": rec.expired_at,
        "gb": _round(gb),
    }


def counted_scopes(manifest: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
    """The scopes that count each backup once, at its owner: per (tenant, project), the ``private``
    scopes, else the ``all_granted`` ones (owned records only). Returns (scope, owned_only)."""
    by_project: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for scope in manifest["scopes"]:
        views = by_project.setdefault((str(scope["tenant"]), str(scope["project_id"])), {})
        views.setdefault(str(scope["own_type"]), []).append(scope)
    chosen: list[tuple[dict[str, Any], bool]] = []
    for key in sorted(by_project):
        views = by_project[key]
        if "private" in views:
            chosen.extend((s, False) for s in views["private"])
        elif "all_granted" in views:
            chosen.extend((s, True) for s in views["all_granted"])
    return chosen


def build_report(
    where: Where,
    *,
    expiring_days: float = DEFAULT_EXPIRING_DAYS,
    as_of: dt.datetime | None = None,
    list_limit: int = DEFAULT_LIST_LIMIT,
) -> dict[str, Any]:
    """The report of the run output in ``root``, as of ``as_of`` (default: the run's start). Blocking."""
    root = place(where)
    manifest = load_manifest(root)
    base = output_root(root)
    when = as_of or parse_time(str(manifest["started_at"]))
    report = InventoryReport(when, expiring_days, list_limit)
    for scope in manifest["scopes"]:
        report.add_project(scope)
    for scope, owned_only in counted_scopes(manifest):
        report.add_scope(scope, iter_scope_lines(base, scope), owned_only)
    return {
        "format": 1,
        "run_id": manifest.get("run_id"),
        "run_status": manifest.get("status"),
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        **report.as_dict(),
    }


def write_report(root: Where, report: dict[str, Any]) -> Place:
    path = output_root(root) / REPORT_FILE
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    return path


def _gb(value: float) -> str:
    return f"{value / 1024:,.1f} TB" if value >= 10 * 1024 else f"{value:,.0f} GB"


def format_report(report: dict[str, Any], path: Place | None = None, limit: int = 5) -> str:
    """A few lines for the terminal; ``report.json`` has the rest."""

    def top(groups: dict[str, dict[str, Any]]) -> str:
        ranked = sorted(groups.items(), key=lambda kv: -kv[1]["backups"])
        text = ", ".join(f"{k} {v['backups']}" for k, v in ranked[:limit])
        return text + (f", ... ({len(ranked)} in all)" if len(ranked) > limit else "")

    totals, expiring, errors = report["totals"], report["expiring"], report["errors"]
    lines = [
        f"inventory: {totals['backups']} backups, {_gb(totals['gb'])} of protected resources",
        f"  by tenant: {top(report['by_tenant']) or '-'}",
        f"  by region: {top(report['by_region']) or '-'}",
        f"  by status: {top(report['by_status']) or '-'}",
        f"  by type: {top(report['by_resource_type']) or '-'}",
        f"  expiring within {expiring['within_days']:g} days: {expiring['backups']} ({_gb(expiring['gb'])})",
        f"  in error: {errors['backups']} ({_gb(errors['gb'])})",
    ]
    empty = report["projects_without_backups"]
    if empty:
        names = ", ".join(f"{p['tenant']}/{p['project_name']}" for p in empty[:limit])
        more = f", ... ({len(empty)} in all)" if len(empty) > limit else ""
        lines.append(f"  projects with no backup: {len(empty)}: {names}{more}")
    if not report["coverage"]["complete"]:
        incomplete = len(report["coverage"]["incomplete_scopes"])
        lines.append(f"  partial: {incomplete} scope(s) incomplete; counts are lower bounds")
    if path is not None:
        lines.append(f"  report: {path}")
    return "\n".join(lines)


def run_report(output: str, expiring_days: float, as_of: str | None, stream: IO[str] | None = None) -> int:
    """``cbr-crawler report OUT``: (re)write ``report.json`` for an existing run output."""
    root = place(output)
    report = build_report(
        root, expiring_days=expiring_days, as_of=parse_time(as_of) if as_of is not None else None
    )
    path = write_report(root, report)
    print(format_report(report, path), file=stream or sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser("report", help="(re)write the inventory report (report.json) of a run output")
    report.add_argument("output", help="the run's output directory (or s3://BUCKET/PREFIX)")
    report.add_argument("--expiring-days", type=float, default=DEFAULT_EXPIRING_DAYS, metavar="N")
    report.add_argument(
        "--as-of", metavar="TIME", help="ISO time the expiry window starts at (default: the run's start)"
    )
    report.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    setup_logging("warning")
    return run_report(args.output, args.expiring_days, args.as_of)
