"""The run's manifest and ``_SUCCESS`` marker: what the run produced, and whether it is whole.

``manifest.json`` is written last and atomically (temporary file, fsync, rename), after every file
it lists is durable (:func:`seal`), so a reader either sees the previous run's manifest or this
one's, never half of one, and never one that vouches for a file a power cut could still lose.
``_SUCCESS`` is written only when every scope is complete, and removed when a run starts, so that
a marker can never vouch for output a later, failing run has touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from crawler import __version__
from crawler.pipeline.scope import ScopeResult, TenantFailure
from crawler.support.clock import utc_now_iso
from crawler.support.files import atomic_write, make_durable

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"


def build_manifest(
    *,
    run_id: str,
    config_digest: str,
    tenants: Sequence[str],
    results: Sequence[ScopeResult],
    failures: Sequence[TenantFailure],
    quota_owners: list[dict[str, object]],
    started: str,
    duration: float,
    interrupted: bool,
) -> dict[str, Any]:
    """The manifest of a run: ``complete`` only if nothing was interrupted, failed or partial."""
    results = sorted(results, key=lambda r: r.scope.key)
    by_status: dict[str, int] = {}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    complete = not interrupted and not failures and all(r.status == "complete" for r in results)
    status = "interrupted" if interrupted else ("complete" if complete else "incomplete")
    return {
        "format": 1,
        "tool": f"cbr-crawler {__version__}",
        "run_id": run_id,
        "status": status,
        "started_at": started,
        "finished_at": utc_now_iso(milliseconds=False),
        "duration_seconds": round(duration, 3),
        "config_digest": config_digest,
        "tenants": list(tenants),
        "tenant_failures": [f.as_dict() for f in failures],
        "totals": {
            "scopes": len(results),
            "scopes_by_status": by_status,
            "records_written": sum(r.records_written for r in results),
            "files": sum(len(r.files) for r in results),
        },
        "quota_owners": quota_owners,
        "scopes": [r.entry() for r in results],
    }


def clear_success(root: Path) -> None:
    (root / SUCCESS).unlink(missing_ok=True)


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Blocking: call it in a thread from async code. Writes ``_SUCCESS`` if the run is complete."""
    path = root / MANIFEST
    atomic_write(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    if manifest.get("status") == "complete":
        atomic_write(root / SUCCESS, b"")
    return path


def seal(root: Path, manifest: dict[str, Any]) -> None:
    """(Blocking) The files the manifest lists made durable, then the manifest that vouches for them."""
    make_durable(root, [f["path"] for scope in manifest.get("scopes", []) for f in scope.get("files") or []])
    write_manifest(root, manifest)
