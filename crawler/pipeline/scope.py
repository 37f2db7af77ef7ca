"""A scope: one ListBackups query to be paged to its end, and what became of it (or of a tenant)."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Scope:
    """(tenant, region, project, enterprise project, own_type, filters).

    ``enterprise_project_id`` is None when the query carries no ``enterprise_project_id``
    parameter, otherwise an EP id or ``all_granted_eps``.
    """

    tenant: str
    region: str
    project_id: str
    project_name: str
    enterprise_project_id: str | None
    own_type: str
    filters: tuple[tuple[str, str], ...] = ()
    # A single pass (crawler.pipeline.passes): the partitions its records are split into, each a
    # scope of its own in the output and the manifest. Empty for a scope fetched by its own query.
    partitions: tuple[Scope, ...] = ()

    @property
    def key(self) -> str:
        """Stable, unique, human-readable id, used in logs, the manifest and the run state."""
        if self.partitions:
            return f"{self.tenant}/{self.region}/{self.project_id}/single-pass"
        ep = self.enterprise_project_id if self.enterprise_project_id is not None else "-"
        return f"{self.tenant}/{self.region}/{self.project_id}/ep={ep}/{self.own_type}"

    @property
    def shard_key(self) -> str:
        """What decides a scope's shard: its project, so that a single pass and its partitions
        always fall in one shard (crawler.pipeline.shard)."""
        return f"{self.tenant}/{self.region}/{self.project_id}"

    @property
    def members(self) -> tuple[Scope, ...]:
        """The scopes (manifest entries) this query yields: its partitions, or itself."""
        return self.partitions or (self,)

    def query(self) -> list[tuple[str, str]]:
        """The scope's fixed query parameters (paging is added per page)."""
        params = [("own_type", self.own_type)]
        if self.enterprise_project_id is not None:
            params.append(("enterprise_project_id", self.enterprise_project_id))
        params.extend(self.filters)
        return params

    def file_name(self) -> str:
        ep = "no-ep" if self.enterprise_project_id is None else f"ep-{self.enterprise_project_id}"
        return f"backups.{self.own_type}.{safe_component(ep)}.ndjson"

    def layout_fields(self) -> dict[str, str]:
        return {
            "tenant": self.tenant,
            "region": self.region,
            "project_id": self.project_id,
            "project_name": self.project_name,
            "own_type": self.own_type,
            "enterprise_project_id": self.enterprise_project_id or "none",
        }

    def relpath(self, layout: str) -> str:
        """Where this scope's file goes below the output root."""
        fields = {k: safe_component(v) for k, v in self.layout_fields().items()}
        directory = layout.format(**fields).strip("/")
        return f"{directory}/{self.file_name()}" if directory else self.file_name()


_SAFE = re.compile(r"[a-z0-9][a-z0-9._=-]{0,99}")  # kept as it is: lower-case, short, no "..", no "~"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")
_DOTS = re.compile(r"\.{2,}")
READABLE_MAX = 60  # characters of an escaped value kept readable before its hash


@functools.lru_cache(maxsize=4096)  # the same regions, projects and EPs, scope after scope
def safe_component(value: str) -> str:
    """A path component for a value the API sent (region, project name, EP id), safe and distinct.

    A value that is already a plain lower-case name (``cn-north-4_web``, a UUID) is used as it is.
    Any other (upper case, ``/``, ``\\``, ``..``, NUL and control characters, non-ASCII, very
    long) becomes its readable part (unsafe runs replaced by ``_``, at most 60 characters) followed
    by ``~`` and 12 hex digits of the value's sha256: ``Web`` -> ``Web~4f1c...``, ``../etc`` ->
    ``_etc~...``. So a component never leaves its directory, is at most 73 characters, and two
    distinct values never share one: not by case on a case-insensitive filesystem, nor by Unicode
    normalisation (NFC and NFD spellings hash apart), since a plain name has no ``~``.
    """
    if _SAFE.fullmatch(value) and ".." not in value:
        return value
    readable = _DOTS.sub("_", _UNSAFE.sub("_", value)).strip(".")[:READABLE_MAX] or "_"
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{readable}~{digest}"


@dataclass(slots=True)
class ScopeResult:
    """What one scope came to; one entry of the manifest."""

    scope: Scope
    status: str = "pending"  # complete | partial | failed | pending
    count: int | None = None  # the API's count on the first page
    last_count: int | None = None  # the API's count on the last page seen (drift shows here)
    unique_ids: int = 0
    records_written: int = 0
    duplicates: int = 0
    pages: int = 0
    error: str | None = None
    error_code: str | None = None
    request_id: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    started_at: str | None = None
    finished_at: str | None = None
    notes: list[str] = field(default_factory=list)
    # Set when drift (churn) was detected and the scope re-read with a marker pass.
    reconciliation: dict[str, Any] | None = None
    # Set for a partition of a single pass: the pass it came from, and how that pass was checked
    # (a partition has no count of its own; the pass is reconciled against its count).
    single_pass: dict[str, Any] | None = None
    _entry: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def entry(self) -> dict[str, Any]:
        """:meth:`as_dict` of a final result (one the engine has reported), built only once.

        The same entry goes to the run state's checkpoint and to the manifest, so it is built once;
        a result must not change after the engine has reported it.
        """
        if self._entry is None:
            self._entry = self.as_dict()
        return self._entry

    def as_dict(self) -> dict[str, Any]:
        s = self.scope
        return {
            "key": s.key,
            "tenant": s.tenant,
            "region": s.region,
            "project_id": s.project_id,
            "project_name": s.project_name,
            "enterprise_project_id": s.enterprise_project_id,
            "own_type": s.own_type,
            "filters": [list(p) for p in s.filters],
            "status": self.status,
            "count": self.count,
            "last_count": self.last_count,
            "unique_ids": self.unique_ids,
            "records_written": self.records_written,
            "duplicates_dropped": self.duplicates,
            "pages": self.pages,
            "error": self.error,
            "error_code": self.error_code,
            "request_id": self.request_id,
            "files": self.files,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "notes": self.notes,
            "reconciliation": self.reconciliation,
            "single_pass": self.single_pass,
        }


@dataclass(slots=True)
class TenantFailure:
    """A tenant that could not be crawled at all: its credential or its discovery failed."""

    tenant: str
    stage: str  # "credentials" or "discovery"
    error: str
    error_code: str | None = None
    request_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "stage": self.stage,
            "error": self.error,
            "error_code": self.error_code,
            "request_id": self.request_id,
        }
