"""``cbr-crawler diff OLD NEW``: what changed between two runs, backup by backup.

The two outputs are compared scope by scope (same scope key), so that memory holds one scope's
ids at a time, never a whole estate:

1. the OLD scope file is read once into ``{id: digest of the record}`` (8-byte digests, ids as
   16-byte keys);
2. the NEW file is streamed: an id not in the index is *added* (written at once); an id found is
   taken out of the index, and if its digest differs it becomes a *candidate* change;
3. the OLD file is streamed again: ids still in the index are *removed* (written at once), and the
   old records of candidates are kept as the "before" side (at most ``before_budget`` bytes per
   round; more rounds if needed);
4. the NEW file is streamed again to write each *changed* record with its "before".

A record is compared without its ``_crawl`` provenance key (which differs every run). The fast
digest is of the API's bytes (the line without the provenance the crawler spliced at its end), so
unchanged records need no parse; when those bytes differ the records are parsed and compared as
JSON (sorted keys), so a change of key order or number spelling alone is not a change.

"removed" is only ever said of scopes complete in both runs: a record missing from a partial
scope may simply not have been fetched. Scopes that cannot be compared are listed as skipped with
the reason. A scope present in only one run counts as wholly added (or removed) only when the
other run was complete with the same configuration (the project or enterprise project really
appeared or vanished); otherwise it is skipped too.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import msgspec
import orjson

from crawler.commands.outputs import OutputError, iter_scope_lines, load_manifest, missing_files, output_root
from crawler.commands.places import Place, Where, place
from crawler.pipeline.dedupe import compact_id
from crawler.pipeline.objectstore import StoreError
from crawler.pipeline.records import PROVENANCE_KEY
from crawler.support.logs import setup_logging

log = logging.getLogger(__name__)

CHANGES_FILE = "changes.ndjson"
SUMMARY_FILE = "diff.json"
DEFAULT_BEFORE_BUDGET = 64 << 20  # bytes of "before" records held at once while writing changes

EXIT_DIFF_OK = 0
EXIT_DIFF_SKIPPED = 1  # written, but some scopes could not be compared
EXIT_DIFF_USAGE = 2

_PROVENANCE_MARK = b',"' + PROVENANCE_KEY.encode() + b'":{'


class _Id(msgspec.Struct):
    id: str


_decode_id = msgspec.json.Decoder(_Id).decode


def _record_id(line: bytes) -> str:
    return _decode_id(line).id


def _raw_digest(line: bytes) -> int:
    """Digest of the API's bytes: the line without the provenance spliced before its last brace."""
    cut = line.rfind(_PROVENANCE_MARK)
    body = line[:cut] if cut >= 0 else line
    return int.from_bytes(hashlib.blake2b(body, digest_size=8).digest(), "big")


def _canonical(line: bytes) -> bytes:
    record = orjson.loads(line)
    if isinstance(record, dict):
        record.pop(PROVENANCE_KEY, None)
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)


@dataclass(slots=True)
class ScopeDiff:
    """What one scope came to in the diff."""

    scope: str
    status: str  # compared | appeared | vanished | skipped
    added: int = 0
    removed: int = 0
    changed: int = 0
    unchanged: int = 0
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scope": self.scope,
            "status": self.status,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.unchanged,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(slots=True)
class DiffResult:
    """The summary of a diff (written as ``diff.json``)."""

    old_root: Place
    new_root: Place
    old_run_id: str | None
    new_run_id: str | None
    scopes: list[ScopeDiff] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        totals = {"added": 0, "removed": 0, "changed": 0, "unchanged": 0}
        for s in self.scopes:
            totals["added"] += s.added
            totals["removed"] += s.removed
            totals["changed"] += s.changed
            totals["unchanged"] += s.unchanged
        return totals

    @property
    def skipped(self) -> list[ScopeDiff]:
        return [s for s in self.scopes if s.status == "skipped"]

    def as_dict(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for s in self.scopes:
            by_status[s.status] = by_status.get(s.status, 0) + 1
        return {
            "format": 1,
            "old": {"path": str(self.old_root), "run_id": self.old_run_id},
            "new": {"path": str(self.new_root), "run_id": self.new_run_id},
            "totals": self.totals(),
            "scopes_by_status": by_status,
            "skipped": [{"scope": s.scope, "reason": s.reason} for s in self.skipped],
            "scopes": [s.as_dict() for s in self.scopes if s.status != "skipped"],
        }

    def line(self) -> str:
        t = self.totals()
        compared = sum(1 for s in self.scopes if s.status != "skipped")
        text = (
            f"diff {self.old_run_id} -> {self.new_run_id}: {t['added']} added, {t['removed']} removed, "
            f"{t['changed']} changed, {t['unchanged']} unchanged in {compared} scopes"
        )
        if self.skipped:
            text += f"; {len(self.skipped)} scope(s) skipped (not complete in both runs)"
        return text


Emit = Callable[[bytes], Any]


def _change_line(
    change: str, scope: str, backup_id: str, backup: bytes, before: bytes | None = None
) -> bytes:
    # The records are spliced in as written (valid JSON already), not parsed and re-serialised.
    parts = [
        b'{"change":"',
        change.encode(),
        b'","scope":',
        orjson.dumps(scope),
        b',"id":',
        orjson.dumps(backup_id),
        b',"backup":',
        backup,
    ]
    if before is not None:
        parts += [b',"before":', before]
    parts.append(b"}\n")
    return b"".join(parts)


class _ScopeComparer:
    """The four passes of one scope complete in both runs (see the module docstring)."""

    def __init__(
        self,
        key: str,
        old: Callable[[], Iterator[bytes]],
        new: Callable[[], Iterator[bytes]],
        emit: Emit,
        before_budget: int,
    ) -> None:
        self.key, self.old, self.new, self.emit, self.budget = key, old, new, emit, before_budget
        self.result = ScopeDiff(key, "compared")

    def run(self) -> ScopeDiff:
        index: dict[str | bytes, int] = {}
        for line in self.old():
            index[compact_id(_record_id(line))] = _raw_digest(line)
        # Candidates: same id, different bytes; their new canonical form, to compare with the old.
        candidates: dict[str | bytes, bytes] = {}
        for line in self.new():
            backup_id = _record_id(line)
            key = compact_id(backup_id)
            digest = index.pop(key, None)
            if digest is None:
                self.result.added += 1
                self.emit(_change_line("added", self.key, backup_id, line))
            elif digest == _raw_digest(line):
                self.result.unchanged += 1
            else:
                candidates[key] = _canonical(line)
        removed = index  # what NEW did not have
        first_round = True
        while first_round or candidates:
            befores: dict[str | bytes, bytes] = {}
            held = 0
            for line in self.old():
                if not removed and not candidates:
                    break
                backup_id = _record_id(line)
                key = compact_id(backup_id)
                if first_round and key in removed:
                    del removed[key]
                    self.result.removed += 1
                    self.emit(_change_line("removed", self.key, backup_id, line))
                elif key in candidates and key not in befores and held < self.budget:
                    if _canonical(line) == candidates[key]:
                        del candidates[key]  # same record, only spelled differently
                        self.result.unchanged += 1
                    else:
                        befores[key] = line
                        held += len(line)
                if not first_round and held >= self.budget:
                    break
            first_round = False
            if not befores:
                if candidates:  # ids the old file no longer yields: it changed under us
                    raise OutputError(f"{self.key}: the old run's file changed while being read")
                break
            for line in self.new():
                backup_id = _record_id(line)
                key = compact_id(backup_id)
                before = befores.pop(key, None)
                if before is not None:
                    del candidates[key]
                    self.result.changed += 1
                    self.emit(_change_line("changed", self.key, backup_id, line, before))
                    if not befores:
                        break
        return self.result


def _scopes_by_key(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(s["key"]): s for s in manifest["scopes"]}


def _vouches_for_absence(this: dict[str, Any], other: dict[str, Any]) -> bool:
    """Does run ``this`` prove that a scope it lacks did not exist (rather than was not crawled)?"""
    return (
        this.get("status") == "complete"
        and this.get("config_digest") == other.get("config_digest")
        and _shard(this) == _shard(other)
    )


def _shard(manifest: dict[str, Any]) -> tuple[Any, Any] | None:
    block = manifest.get("shard")
    return (block.get("index"), block.get("count")) if isinstance(block, dict) else None


def _unusable(root: Place, scope: dict[str, Any] | None, side: str) -> str | None:
    if scope is None:
        return f"not in the {side} run"
    if scope.get("status") != "complete":
        return f"{scope.get('status')} in the {side} run"
    missing = missing_files(root, scope)
    if missing:
        return f"{side} run's files missing or changed: {', '.join(missing[:3])}"
    return None


def diff_runs(
    old: Where, new: Where, emit: Emit, *, before_budget: int = DEFAULT_BEFORE_BUDGET
) -> DiffResult:
    """Compare two run outputs (directories or their manifest files); ``emit`` gets each NDJSON line.

    Blocking: run it in a thread from async code.
    """
    old, new = place(old), place(new)
    old_manifest, new_manifest = load_manifest(old), load_manifest(new)
    old_root, new_root = output_root(old), output_root(new)
    result = DiffResult(old_root, new_root, old_manifest.get("run_id"), new_manifest.get("run_id"))
    old_scopes, new_scopes = _scopes_by_key(old_manifest), _scopes_by_key(new_manifest)
    for key in sorted(old_scopes.keys() | new_scopes.keys()):
        o, n = old_scopes.get(key), new_scopes.get(key)
        old_problem, new_problem = _unusable(old_root, o, "old"), _unusable(new_root, n, "new")
        if old_problem is None and new_problem is None:
            assert o is not None and n is not None
            comparer = _ScopeComparer(
                key,
                functools.partial(iter_scope_lines, old_root, o),
                functools.partial(iter_scope_lines, new_root, n),
                emit,
                before_budget,
            )
            result.scopes.append(comparer.run())
        elif (
            o is None
            and n is not None
            and new_problem is None
            and _vouches_for_absence(old_manifest, new_manifest)
        ):
            result.scopes.append(_whole_scope(key, "appeared", "added", iter_scope_lines(new_root, n), emit))
        elif (
            n is None
            and o is not None
            and old_problem is None
            and _vouches_for_absence(new_manifest, old_manifest)
        ):
            result.scopes.append(
                _whole_scope(key, "vanished", "removed", iter_scope_lines(old_root, o), emit)
            )
        else:
            reason = "; ".join(p for p in (old_problem, new_problem) if p)
            result.scopes.append(ScopeDiff(key, "skipped", reason=reason))
    return result


def _whole_scope(key: str, status: str, change: str, lines: Iterator[bytes], emit: Emit) -> ScopeDiff:
    diff = ScopeDiff(key, status)
    for line in lines:
        emit(_change_line(change, key, _record_id(line), line))
        if change == "added":
            diff.added += 1
        else:
            diff.removed += 1
    return diff


def write_diff(
    old: Where, new: Where, output: Where, *, before_budget: int = DEFAULT_BEFORE_BUDGET
) -> DiffResult:
    """Diff ``old`` against ``new`` into ``output``: a directory or bucket prefix (``changes.ndjson``
    and ``diff.json``, each appearing whole), or ``-`` for the changes on standard output. Blocking."""
    if output == "-":
        out = sys.stdout.buffer
        result = diff_runs(old, new, out.write, before_budget=before_budget)
        out.flush()
        return result
    directory = place(output)
    final = directory / CHANGES_FILE
    with final.writer() as fh:
        result = diff_runs(old, new, fh.write, before_budget=before_budget)
    summary = result.as_dict()
    summary["changes_file"] = str(final)
    (directory / SUMMARY_FILE).write_bytes(
        orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    )
    return result


def report_diff(result: DiffResult, stream: IO[str] | None = None) -> None:
    """The counts, and the skipped scopes (the first few), on stderr."""
    stream = stream or sys.stderr
    lines = [result.line()]
    skipped = result.skipped
    for s in skipped[:5]:
        lines.append(f"  skipped {s.scope}: {s.reason}")
    if len(skipped) > 5:
        lines.append(f"  ... and {len(skipped) - 5} more skipped (see the diff summary)")
    print("\n".join(lines), file=stream)


def run_diff(old: str, new: str, output: str) -> int:
    """``cbr-crawler diff``: 0 every scope compared, 1 some skipped, 2 an output unreadable."""
    try:
        result = write_diff(place(old), place(new), output)
    except (OutputError, StoreError) as exc:
        print(f"cbr-crawler diff: {exc}", file=sys.stderr)
        return EXIT_DIFF_USAGE
    report_diff(result)
    if output != "-":
        print(
            f"  changes: {place(output) / CHANGES_FILE}, summary: {place(output) / SUMMARY_FILE}",
            file=sys.stderr,
        )
    return EXIT_DIFF_SKIPPED if result.skipped else EXIT_DIFF_OK


def find_previous_run(where: Where, before: str | None = None) -> Place | None:
    """The newest complete run among ``output``'s sibling directories (nightly runs side by side,
    e.g. ``/data/cbr/2026-11-26`` next to ``/data/cbr/2026-11-27``, or the same under a bucket
    prefix), finished before ``before``."""
    best: tuple[str, Place] | None = None
    output = place(where)
    try:
        siblings = output.parent.subdirs()
    except OSError:
        return None
    for sibling in siblings:
        if sibling.same(output) or not (sibling / "manifest.json").is_file():
            continue
        try:
            manifest = load_manifest(sibling)
        except OutputError:
            continue
        finished = str(manifest.get("finished_at") or "")
        if manifest.get("status") != "complete" or (before is not None and finished > before):
            continue
        if best is None or finished > best[0]:
            best = (finished, sibling)
    return best[1] if best else None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    diff = sub.add_parser(
        "diff", help="backups added, removed and changed between two runs (their output directories)"
    )
    diff.add_argument("old", help="the earlier run's output directory or s3:// prefix (or its manifest.json)")
    diff.add_argument("new", help="the later run's output directory or s3:// prefix (or its manifest.json)")
    diff.add_argument(
        "--output",
        "-o",
        default="-",
        help="directory or s3:// prefix for changes.ndjson and diff.json, or '-' (default) for the changes "
        "on stdout",
    )
    diff.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    setup_logging("warning")
    return run_diff(args.old, args.new, args.output)
