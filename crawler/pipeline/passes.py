"""How a tenant's scopes are fetched: one query each, or one pass per project split into them.

A tenant file asks for *partitions* of each project's backups: per enterprise project (EP), and
per view (``private``: the project owns the backup; ``shared``: another project shared it to this
one). Fetching each partition with its own query costs one pass per EP per view, most of them
one nearly empty page. But one query per project, ``own_type=all_granted`` (both views) with
``enterprise_project_id=all_granted_eps`` (every EP the caller is granted; no parameter when the
tenant asks for no EP split), returns every record once, and each record says which partition it
belongs to:

- ``project_id`` is the owner's project: the record is ``private`` to the project listed when they
  are equal, else ``shared`` to it (a shared backup carries its owner's project id);
- ``enterprise_project_id`` is the EP of the backup's vault, the EP a per-EP query matches on; the
  field is optional in the API and means ``"0"``, the default EP, when absent.

So the crawler makes that *single pass* wherever the partitions can be derived (:func:`choose_plan`
says when, and why not otherwise), and :class:`PassOutput` splits its records into the files and
names the per-partition queries would have written. A record goes to every partition it matches:
exactly one when the views asked are disjoint (``all_granted`` with ``private`` overlaps, as it does
per query). A record in no requested partition (an EP the tenant excluded) is counted, not written.

Completeness: a partition has no ``count`` of its own; the pass is checked against the pass's
``count`` (and reconciled with a marker pass on drift) exactly as any scope, and each partition's
manifest entry says so (``single_pass``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from crawler.pipeline.listbackups import Page
from crawler.pipeline.records import encode_lines
from crawler.pipeline.scope import Scope, ScopeResult
from crawler.pipeline.sink import ScopeOutput

ALL_GRANTED_EPS = "all_granted_eps"
PLANS = ("auto", "per_pass")
OWNER_FIELD_NOTE = (
    "record project_id = the owner's project (private if it is the project listed, else shared); "
    'record enterprise_project_id = the partition\'s EP (absent means "0")'
)


@dataclass(frozen=True, slots=True)
class PlanChoice:
    """The plan chosen for a tenant and why (shown by ``plan``, logged, recorded in the manifest)."""

    single_pass: bool
    reason: str
    probes: int = 0  # ListBackups requests made to choose it (enterprise project grants)

    @property
    def name(self) -> str:
        return "single pass per project" if self.single_pass else "one pass per scope"

    def as_dict(self) -> dict[str, Any]:
        return {"plan": self.name, "reason": self.reason, "probe_requests": self.probes}


def choose_plan(
    plan: str, own_types: Sequence[str], ep_mode: str, eps: int, filters: Sequence[tuple[str, str]]
) -> PlanChoice:
    """The cheapest plan that yields the partitions asked (``eps``: EP partitions per project)."""
    if plan == "per_pass":
        return PlanChoice(False, "plan: per_pass in the tenant file")
    if len(own_types) * max(eps, 1) <= 1:
        return PlanChoice(False, "one partition per project: its own query is already the one pass")
    if any(name == "member_status" for name, _ in filters):
        return PlanChoice(
            False,
            "the member_status filter concerns shared backups; how it acts on an own_type=all_granted "
            "pass is unpublished, so each view is fetched with its own query",
        )
    if ep_mode == "none":
        return PlanChoice(True, "views told apart by each record's project_id (its owner)")
    return PlanChoice(
        True, "views and enterprise projects told apart by each record's project_id and enterprise_project_id"
    )


def refused_plan(ep: str, error: str, probes: int) -> PlanChoice:
    """The fallback when a probe of an enterprise project is refused: ``all_granted_eps`` would
    silently leave that EP's backups out, where one query per scope reports the refusal."""
    return PlanChoice(
        False,
        f"enterprise project {ep} is refused to this credential ({error}): all_granted_eps would "
        "leave its backups out silently, so each scope gets its own query and reports the refusal",
        probes,
    )


def group_into_passes(scopes: Sequence[Scope], ep_mode: str) -> list[Scope]:
    """One single-pass scope per project, its partitions the project's scopes (in their order)."""
    by_project: dict[tuple[str, str], list[Scope]] = {}
    for scope in scopes:
        by_project.setdefault((scope.region, scope.project_id), []).append(scope)
    passes = []
    for members in by_project.values():
        first = members[0]
        passes.append(
            Scope(
                first.tenant,
                first.region,
                first.project_id,
                first.project_name,
                None if ep_mode == "none" else ALL_GRANTED_EPS,
                "all_granted",
                first.filters,
                partitions=tuple(members),
            )
        )
    return passes


def in_partition(partition: Scope, listed_project: str, owner: str, ep: str) -> bool:
    """Does a record (its owner project and EP) of ``listed_project``'s pass belong to ``partition``?"""
    if partition.own_type == "private" and owner != listed_project:
        return False
    if partition.own_type == "shared" and owner == listed_project:
        return False
    wanted = partition.enterprise_project_id
    return wanted is None or wanted in (ALL_GRANTED_EPS, ep)


class PassOutput:
    """Where one query's records go: its scope's :class:`ScopeOutput`, or, for a single pass, one
    per partition, each record to the partitions its fields say (the walk and the engine see the
    same interface either way)."""

    def __init__(self, scope: Scope, outputs: dict[str, ScopeOutput]) -> None:
        """``outputs``: by scope key, the scopes still to write (a resumed run leaves out the
        partitions an earlier attempt completed: their records are then counted as done elsewhere)."""
        self.scope = scope
        self.outputs = outputs
        self.targets = [p for p in scope.members if p.key in outputs]
        self.done = [p for p in scope.members if p.key not in outputs]
        self.rewritable = all(o.rewritable for o in outputs.values())
        self.written = dict.fromkeys(outputs, 0)
        self.outside = 0  # records of this pass in no partition asked for
        self._routes: dict[tuple[bool, str], tuple[str, ...]] = {}

    def encode(
        self, page: Page, keep: Sequence[int], provenance: Callable[[Scope], dict[str, Any]]
    ) -> list[tuple[str, bytes, int]]:
        """(scope key, NDJSON lines, records) for each scope the kept records fall in."""
        if not keep:
            return []
        if not self.scope.partitions:  # a scope's own query: every record is the scope's
            scope = self.scope
            return [
                (scope.key, encode_lines(page.records, keep, page.clashing, provenance(scope)), len(keep))
            ]
        assert page.owners is not None and page.eps is not None, "a single pass parses owners"
        owners, eps, project = page.owners, page.eps, self.scope.project_id
        routes = self._routes
        mine: dict[str, list[int]] = {}
        outside = 0
        for i in keep:
            # One dict lookup per record: its (view, EP) -> the partitions it belongs to.
            key = (owners[i] == project, eps[i])
            targets = routes.get(key)
            if targets is None:
                targets = routes[key] = self._targets_of(owners[i], eps[i])
            if not targets:
                outside += 1
            for partition_key in targets:
                mine.setdefault(partition_key, []).append(i)
        self.outside += outside
        return [
            (p.key, encode_lines(page.records, mine[p.key], page.clashing, provenance(p)), len(mine[p.key]))
            for p in self.targets
            if p.key in mine
        ]

    def _targets_of(self, owner: str, ep: str) -> tuple[str, ...]:
        """The partitions still to write that a record of this owner and EP belongs to; () when it
        belongs to none asked; ``("",)``, a key no target has, when it belongs only to partitions an
        earlier attempt wrote (counted as placed, written nowhere)."""
        project = self.scope.project_id
        wanted = tuple(p.key for p in self.targets if in_partition(p, project, owner, ep))
        if not wanted and any(in_partition(p, project, owner, ep) for p in self.done):
            return ("",)
        return wanted

    async def write(self, chunks: Sequence[tuple[str, bytes, int]]) -> None:
        for key, data, records in chunks:
            await self.outputs[key].write(data, records)
            self.written[key] += records

    async def discard(self) -> None:
        for output in self.outputs.values():
            await output.discard()
        self.written = dict.fromkeys(self.outputs, 0)
        self.outside = 0

    def partition_results(self, result: ScopeResult) -> list[ScopeResult]:
        """Each scope's result: a scope's own query's as it is, a single pass's partitions' from it
        (one per partition still to write)."""
        if not self.scope.partitions:
            return [result]
        check = {
            "pass": result.scope.key,
            "query": [list(p) for p in result.scope.query()],
            "count": result.count,
            "last_count": result.last_count,
            "unique_ids": result.unique_ids,
            "records_outside_partitions": self.outside,
            "complete": result.status == "complete",
            "checked": "this partition has no count of its own: the single pass's unique ids are "
            "checked against the pass's count",
        }
        results = []
        for partition in self.targets:
            written = self.written[partition.key]
            status = result.status
            if status != "complete":
                status = "partial" if written else "failed"
            results.append(
                ScopeResult(
                    partition,
                    status=status,
                    unique_ids=written,
                    records_written=written,
                    duplicates=result.duplicates,
                    pages=result.pages,
                    error=result.error,
                    error_code=result.error_code,
                    request_id=result.request_id,
                    started_at=result.started_at,
                    finished_at=result.finished_at,
                    notes=list(result.notes),
                    reconciliation=result.reconciliation,
                    single_pass=check,
                )
            )
        return results
