"""``cbr-crawler merge``: join the manifests of a sharded run into one manifest.

The shards of a run (``OUT/shard-K-of-N/``, see :mod:`crawler.pipeline.shard`) each wrote a complete
output root with its own manifest. ``merge`` checks that they are the N shards of one run and
writes ``OUT/manifest.json`` (by default; ``--output`` elsewhere), with the shape of a run's
manifest: every scope (file paths relative to the merged manifest), totals, quota owners summed
over the shards, tenant failures, and per shard its status. ``_SUCCESS`` is written only when all
N shards are present and complete, they discovered the same scopes, and every file is on disk.

It refuses (exit 2, nothing written) a set that is not one run: a shard missing or still running,
shards of different runs (run id), configurations (config digest) or shard counts, an unsharded
manifest, or a scope in a shard the split rule does not give it. ``--wait`` polls for shards that
are missing or still running (a Kubernetes merge pod starts with the shards), never for mismatches.

Exit codes: 0 complete, 1 merged but incomplete (the manifest says why), 2 refused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from crawler import __version__
from crawler.commands.places import Place, place
from crawler.pipeline.manifest import MANIFEST, SUCCESS
from crawler.pipeline.objectstore import StoreError
from crawler.pipeline.shard import (
    ENV_COUNT,
    SPLIT_RULE,
    ShardError,
    entry_shard_key,
    parse_count,
    parse_shard_dir_name,
    shard_of,
)
from crawler.support.logs import setup_logging

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_REFUSED = 2
POLL_SECONDS = 5.0


class MergeRefused(ShardError):
    """The given directories are not the complete set of shards of one run: exit code 2."""


@dataclass(slots=True)
class ShardDir:
    """One shard's output root (a directory or a bucket prefix) and what it holds."""

    path: Place
    name_index: tuple[int, int] | None  # (K, N) from a shard-K-of-N name
    manifest: dict[str, Any] | None = None
    running: bool = False

    @property
    def index(self) -> int | None:
        if self.manifest is not None:
            return int(self.manifest["shard"]["index"])
        return self.name_index[0] if self.name_index else None


@dataclass(slots=True)
class Inspection:
    shards: list[ShardDir]
    count: int
    pending: list[str] = field(default_factory=list)  # worth waiting for: missing, running
    # Interrupted shards: a scheduler may be about to resume them (Kubernetes recreates an
    # evicted pod), so --wait waits for them too, then merges them as they are.
    interrupted: list[str] = field(default_factory=list)


def _is_shard_dir(path: Place) -> bool:
    """A shard's output root, by its name or by its manifest; not the directory holding shards
    (which holds the merged manifest once merged)."""
    if parse_shard_dir_name(path.name) is not None:
        return True
    if any(parse_shard_dir_name(child.name) for child in path.subdirs()):
        return False
    return (path / MANIFEST).is_file()


def _outputs_to_clear(paths: Sequence[str], output: str | None) -> list[Place]:
    """Where this merge may write its manifest: the explicit output, or given parent directories."""
    if output is not None:
        return [place(output)]
    return [p for p in map(place, paths) if p.is_dir() and not _is_shard_dir(p)]


def find_shard_dirs(paths: Sequence[str]) -> list[Place]:
    """Each path is a shard directory or a directory (bucket prefix) holding ``shard-K-of-N`` ones."""
    found: dict[Place, None] = {}
    for text in paths:
        path = place(text)
        if not path.is_dir():
            raise MergeRefused(f"{path}: no such directory")
        if _is_shard_dir(path):
            found[path] = None
            continue
        children = sorted(
            (c for c in path.subdirs() if parse_shard_dir_name(c.name)),
            key=lambda c: parse_shard_dir_name(c.name) or (0, 0),
        )
        for child in children:
            found[child] = None
    return list(found)


def _load_manifest(root: Place) -> dict[str, Any] | None:
    path = root / MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        manifest = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MergeRefused(f"{path}: not a manifest ({exc})") from None
    if not isinstance(manifest, dict) or "scopes" not in manifest:
        raise MergeRefused(f"{path}: not a cbr-crawler manifest")
    if not isinstance(manifest.get("shard"), dict):
        raise MergeRefused(
            f"{path}: the manifest of an unsharded run (no 'shard' block); merge joins the shards "
            "of a `cbr-crawler run --shard K/N`"
        )
    return manifest


def inspect(paths: Sequence[str], expected: int | None) -> Inspection:
    """Read the shards; raise :class:`MergeRefused` for a set that can never be merged, and
    list in ``pending`` what is missing or still running (a later look may find it)."""
    shards = []
    for root in find_shard_dirs(paths):
        shard = ShardDir(root, parse_shard_dir_name(root.name))
        shard.running = root.running()
        shard.manifest = _load_manifest(root)
        shards.append(shard)
    counts = {s.name_index[1] for s in shards if s.name_index and s.manifest is None}
    counts |= {int(s.manifest["shard"]["count"]) for s in shards if s.manifest is not None}
    if expected is not None:
        if counts - {expected}:
            raise MergeRefused(
                f"{expected} shards expected (--shards or {ENV_COUNT}), but found shards of "
                f"{' and '.join(str(c) for c in sorted(counts))}"
            )
        counts.add(expected)
    if not counts:
        raise MergeRefused(
            f"no shards found in {', '.join(paths)} (expected shard-K-of-N directories); "
            f"give the shard count with --shards N or {ENV_COUNT} to wait for them"
        )
    if len(counts) > 1:
        raise MergeRefused(f"shards of different shard counts: {sorted(counts)} (one run has one count)")
    count = counts.pop()
    _check_one_run(shards, count)

    inspection = Inspection(shards, count)
    by_index: dict[int, ShardDir] = {}
    for shard in shards:
        index = shard.index
        if index is None:  # unnamed directory without a manifest: find_shard_dirs never returns one
            continue
        if index in by_index:
            raise MergeRefused(f"shard {index} of {count} twice: {by_index[index].path} and {shard.path}")
        by_index[index] = shard
        if shard.running:
            inspection.pending.append(f"shard {index} of {count} is still running ({shard.path})")
        elif shard.manifest is not None and shard.manifest.get("status") == "interrupted":
            inspection.interrupted.append(f"shard {index} of {count} was interrupted ({shard.path})")
        elif shard.manifest is None:
            inspection.pending.append(
                f"shard {index} of {count} has no manifest ({shard.path}): it has not finished, or was "
                "killed before writing it; run it again"
            )
    for index in range(count):
        if index not in by_index:
            inspection.pending.append(f"shard {index} of {count} is missing")
    return inspection


def _check_one_run(shards: Iterable[ShardDir], count: int) -> None:
    """Refuse shards of different runs, configurations or split rules."""
    manifests = [(s, s.manifest) for s in shards if s.manifest is not None]
    for key, what in (
        ("run_id", "runs (run id)"),
        ("config_digest", "configurations (config digest)"),
        ("tenants", "tenant sets"),
    ):
        values = {orjson.dumps(m.get(key)).decode(): s for s, m in manifests}
        if len(values) > 1:
            listing = "; ".join(f"{s.path.name}: {v}" for v, s in values.items())
            raise MergeRefused(f"shards of different {what}: {listing}")
    seen: dict[str, int] = {}
    for shard, manifest in manifests:
        block = manifest["shard"]
        index = int(block["index"])
        if block.get("rule") != SPLIT_RULE:
            raise MergeRefused(f"{shard.path}: split by {block.get('rule')!r}, not by {SPLIT_RULE!r}")
        if shard.name_index is not None and shard.name_index != (index, count):
            raise MergeRefused(
                f"{shard.path}: the directory's name says shard {shard.name_index[0]} of "
                f"{shard.name_index[1]}, its manifest shard {index} of {block['count']}"
            )
        for scope in manifest["scopes"]:
            key = scope["key"]
            owner = shard_of(entry_shard_key(scope), count)
            if owner != index:
                raise MergeRefused(
                    f"{shard.path}: scope {key} belongs to shard {owner} of {count}, not {index}"
                )
            if key in seen:
                raise MergeRefused(f"scope {key} is in shard {seen[key]} and shard {index}")
            seen[key] = index


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _rebase(shard_root: Place, output: Place, relpath: str) -> str:
    return (shard_root / relpath).relpath(output)


def _file_problem(shard_root: Place, entry: Mapping[str, Any]) -> str | None:
    path = shard_root / entry["path"]
    size = path.size()
    if size is None:
        return f"{path}: missing"
    expected = entry.get("size")
    if expected is not None and size != expected:
        return f"{path}: {size} bytes on disk, {expected} in the manifest"
    return None


def _merge_quota_owners(manifests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for manifest in manifests:
        for owner in manifest.get("quota_owners", []):
            entry = merged.setdefault(
                owner["quota_owner"],
                {
                    "quota_owner": owner["quota_owner"],
                    "shards": 0,
                    "configured_rate_per_second": 0.0,
                    "requests": 0,
                    "throttled": 0,
                    "retries": 0,
                    "errors": 0,
                },
            )
            entry["shards"] += 1
            rate = owner.get("configured_rate_per_second")
            # The shards' rates add up to the quota owner's budget; unlimited stays unlimited.
            if rate is None or entry["configured_rate_per_second"] is None:
                entry["configured_rate_per_second"] = None
            else:
                entry["configured_rate_per_second"] += rate
            for counter in ("requests", "throttled", "retries", "errors"):
                entry[counter] += int(owner.get(counter, 0))
    for entry in merged.values():
        if entry["configured_rate_per_second"] is not None:
            entry["configured_rate_per_second"] = round(entry["configured_rate_per_second"], 3)
    return [merged[k] for k in sorted(merged)]


def build_merged_manifest(inspection: Inspection, output: Place) -> dict[str, Any]:
    """The merged manifest of a set that passed :func:`inspect` with nothing pending."""
    shards = sorted(inspection.shards, key=lambda s: s.index or 0)
    manifests: list[dict[str, Any]] = [s.manifest for s in shards if s.manifest is not None]
    first = manifests[0]
    problems: list[str] = []
    scopes: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []
    for shard in shards:
        manifest = shard.manifest
        assert manifest is not None
        block = manifest["shard"]
        if manifest["status"] != "complete":
            problems.append(f"shard {block['index']} of {block['count']} is {manifest['status']}")
        for failure in manifest["tenant_failures"]:
            failures.append({**failure, "shard": block["index"]})
        for scope in manifest["scopes"]:
            files = []
            for entry in scope["files"]:
                issue = _file_problem(shard.path, entry)
                if issue is not None:
                    problems.append(f"scope {scope['key']}: {issue}")
                files.append({**entry, "path": _rebase(shard.path, output, entry["path"])})
            scopes.append({**scope, "files": files, "shard": block["index"]})
        members.append(
            {
                "index": block["index"],
                "path": shard.path.relpath(output),
                "status": manifest["status"],
                "run_id": manifest["run_id"],
                "started_at": manifest["started_at"],
                "finished_at": manifest["finished_at"],
                "duration_seconds": manifest["duration_seconds"],
                "scopes": manifest["totals"]["scopes"],
                "records_written": manifest["totals"]["records_written"],
                "scopes_discovered": block.get("scopes_discovered"),
                "scopes_discovered_digest": block.get("scopes_discovered_digest"),
                "tenant_failures": len(manifest["tenant_failures"]),
                "resume": manifest.get("resume"),
            }
        )
    digests = {m["shard"].get("scopes_discovered_digest") for m in manifests}
    if len(digests) > 1:
        problems.append(
            "the shards discovered different scopes (projects or enterprise projects changed between "
            "their discoveries, or a tenant's discovery failed in some shard): some scope may be in no "
            "shard; run the shards again"
        )
    elif len(scopes) != first["shard"].get("scopes_discovered"):
        problems.append(
            f"{len(scopes)} scopes in the shards, {first['shard'].get('scopes_discovered')} discovered"
        )
    scopes.sort(key=lambda s: s["key"])
    by_status: dict[str, int] = {}
    for scope in scopes:
        by_status[scope["status"]] = by_status.get(scope["status"], 0) + 1
    complete = not problems and not failures and all(s["status"] == "complete" for s in scopes)
    started = min(m["started_at"] for m in manifests)
    finished = max(m["finished_at"] for m in manifests)
    return {
        "format": 1,
        "tool": f"cbr-crawler {__version__}",
        "kind": "merged",
        "run_id": first["run_id"],
        "status": "complete" if complete else "incomplete",
        "started_at": started,
        "finished_at": finished,
        "duration_seconds": round((_parse_time(finished) - _parse_time(started)).total_seconds(), 3),
        "merged_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "config_digest": first["config_digest"],
        "tenants": first["tenants"],
        "tenant_failures": failures,
        "problems": problems,
        "shards": {"count": inspection.count, "rule": SPLIT_RULE, "members": members},
        "totals": {
            "scopes": len(scopes),
            "scopes_by_status": by_status,
            "records_written": sum(s["records_written"] for s in scopes),
            "files": sum(len(s["files"]) for s in scopes),
        },
        "quota_owners": _merge_quota_owners(manifests),
        "scopes": scopes,
    }


def _default_output(inspection: Inspection, output: str | None) -> Place:
    if output is not None:
        return place(output)
    parents = {s.path.parent for s in inspection.shards}
    if len(parents) != 1:
        raise MergeRefused("the shards are in different directories: give --output DIR")
    parent = parents.pop()
    if type(parent) is not type(inspection.shards[0].path):
        raise MergeRefused("the shards are in different kinds of storage: give --output")
    return parent


def merge(
    paths: Sequence[str],
    output: str | None = None,
    expected: int | None = None,
    wait: float = 0.0,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[int, dict[str, Any], Place]:
    """Merge; returns (exit code, merged manifest, its path). Raises :class:`MergeRefused`."""
    deadline = clock() + max(wait, 0.0)
    for root in _outputs_to_clear(paths, output):
        # Whatever happens next, an earlier merge's marker must not vouch for this set.
        (root / SUCCESS).unlink()
    while True:
        inspection = inspect(paths, expected)
        remaining = deadline - clock()
        if not inspection.pending and (not inspection.interrupted or remaining <= 0):
            break
        if remaining <= 0:
            raise MergeRefused(
                f"not every shard of the run is there ({len(inspection.pending)} problem(s)):\n  "
                + "\n  ".join(inspection.pending)
            )
        waiting_for = inspection.pending + inspection.interrupted
        log.info("waiting for %d shard(s): %s", len(waiting_for), waiting_for[0])
        sleep(min(POLL_SECONDS, remaining))
    root = _default_output(inspection, output)
    (root / SUCCESS).unlink()
    manifest = build_merged_manifest(inspection, root)
    path = root / MANIFEST
    path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    if manifest["status"] == "complete":
        (root / SUCCESS).write_bytes(b"")  # last: it vouches for the manifest written before it
    return (EXIT_OK if manifest["status"] == "complete" else EXIT_INCOMPLETE), manifest, path


def run_merge(
    paths: Sequence[str], output: str | None, count: str | None, wait: float, env: Mapping[str, str]
) -> int:
    """The ``merge`` command: merge, print a summary on stderr, return the exit code."""
    try:
        env_count = env.get(ENV_COUNT, "").strip() or None
        expected = parse_count(count, "--shards") if count is not None else None
        if expected is None and env_count is not None:
            expected = parse_count(env_count, ENV_COUNT)
        code, manifest, path = merge(paths, output, expected, wait)
    except ShardError as exc:
        print(f"cbr-crawler merge: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except StoreError as exc:
        print(f"cbr-crawler merge: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    totals = manifest["totals"]
    by_status = ", ".join(f"{n} {s}" for s, n in sorted(totals["scopes_by_status"].items())) or "no scopes"
    lines = [
        f"run {manifest['run_id']}: {manifest['shards']['count']} shards merged: "
        f"{manifest['status'].upper()}",
        f"  scopes: {totals['scopes']} ({by_status})",
        f"  backups written: {totals['records_written']} in {totals['files']} files",
    ]
    lines += [f"  shard {m['index']}: {m['status']} ({m['path']})" for m in manifest["shards"]["members"]]
    lines += [f"  problem: {p}" for p in manifest["problems"][:10]]
    lines += [f"  tenant failure (shard {f['shard']}): {f['error']}" for f in manifest["tenant_failures"]]
    lines.append(f"  manifest: {path}" + (f" and {path.parent / SUCCESS}" if code == EXIT_OK else ""))
    print("\n".join(lines), file=sys.stderr)
    return code


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    merge = sub.add_parser(
        "merge", help="join the manifests of a sharded run's shards into one manifest (and _SUCCESS)"
    )
    merge.add_argument(
        "shards",
        nargs="+",
        help="shard directories (shard-K-of-N), or the directory holding them; or s3:// prefixes",
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


def cmd_merge(args: argparse.Namespace) -> int:
    setup_logging("info")
    return run_merge(args.shards, args.output, args.count, args.wait, os.environ)
