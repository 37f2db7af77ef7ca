"""Sharding one run over N processes: which scopes are this shard's, and at what rate.

Every shard runs discovery in full (IAM and EPS are asked N times: they cost a few requests per
tenant, and a shard needs no one else to start) and keeps the scopes whose key hashes to its
index. The rule is a pure function of :attr:`Scope.key`, so shards agree on the split without
talking to each other, and the same scope lands in the same shard night after night (which keeps
a shard's resume checkpoint useful).

The N shards of a run run side by side against the same quota owners (credential x service x
endpoint), so each gets ``1/N`` of every configured rate, including the rate a gateway states in
a 429: ``N`` shards at the full rate would together exceed it ``N`` times.

Layout: ``--output OUT --shard K/N`` writes to ``OUT/shard-K-of-N/``, a complete output root of
its own (files, ``manifest.json`` with a ``shard`` block, run state, lock, ``_SUCCESS``);
``cbr-crawler merge OUT`` joins the shards into ``OUT/manifest.json`` (see :mod:`crawler.commands.merge`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crawler.errors import UsageError
from crawler.pipeline.engine import TenantCrawl
from crawler.pipeline.ratelimit import STATED_MARGIN, LimiterRegistry, QuotaLimiter, QuotaOwner, stated_rate

# By project (tenant/region/project_id), so that a single pass and its partitions share a shard.
SPLIT_RULE = "int.from_bytes(sha256(tenant/region/project_id)[:8], 'big') % N"
ENV_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes for the pods of an Indexed Job
ENV_COUNT = "CBR_CRAWLER_SHARDS"
ENV_RUN_ID = "CBR_CRAWLER_RUN_ID"
MAX_SHARDS = 4096  # far more than any gateway budget can feed; catches a typo such as 4/40000

_DIR = re.compile(r"^shard-(\d+)-of-(\d+)$")


class ShardError(UsageError):
    """A wrong shard specification (command line or environment): exit code 2."""


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) that owns the scopes with this shard key (``Scope.shard_key``: the
    project). Stable across runs and machines."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def entry_shard_key(entry: Mapping[str, Any]) -> str:
    """The shard key of a manifest scope entry (as ``Scope.shard_key``)."""
    return f"{entry['tenant']}/{entry['region']}/{entry['project_id']}"


def shard_dir_name(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}"


def parse_shard_dir_name(name: str) -> tuple[int, int] | None:
    """(index, count) of a ``shard-K-of-N`` directory name, or None."""
    match = _DIR.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def keys_digest(keys: Iterable[str]) -> str:
    """sha256 of the sorted scope keys: shards that discovered the same scopes have equal digests."""
    h = hashlib.sha256()
    for key in sorted(keys):
        h.update(key.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def _parse_int(text: str, what: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ShardError(f"{what}: {text!r} is not a whole number") from None


def parse_count(text: str, what: str) -> int:
    count = _parse_int(text, what)
    if not 1 <= count <= MAX_SHARDS:
        raise ShardError(f"{what}: the shard count must be between 1 and {MAX_SHARDS}, not {count}")
    return count


def parse_shard_spec(spec: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N), 0 <= K < N."""
    index_text, slash, count_text = spec.partition("/")
    if not slash:
        raise ShardError(f"--shard {spec}: expected K/N, e.g. --shard 0/4 (shard 0 of 4; K counts from 0)")
    count = parse_count(count_text, f"--shard {spec}")
    index = _parse_int(index_text, f"--shard {spec}")
    if not 0 <= index < count:
        raise ShardError(f"--shard {spec}: the index must be 0..{count - 1} (shards count from 0)")
    return index, count


@dataclass(frozen=True, slots=True)
class Shard:
    """This process's shard: ``index`` of ``count``."""

    index: int
    count: int

    @property
    def name(self) -> str:
        return shard_dir_name(self.index, self.count)

    def owns(self, shard_key: str) -> bool:
        return shard_of(shard_key, self.count) == self.index

    def output_dir(self, output: str) -> str:
        """The shard's own output root below the run's ``output``."""
        if output == "-":
            raise ShardError(
                "--shard needs an output directory: each shard writes OUTPUT/shard-K-of-N/ for "
                "`cbr-crawler merge` to join; standard output cannot be merged"
            )
        if "://" in output:  # an object-store URL: the shard's own prefix below the run's
            return f"{output.rstrip('/')}/{self.name}"
        return str(Path(output) / self.name)


def resolve_shard(spec: str | None, shards: str | int | None, env: Mapping[str, str]) -> Shard | None:
    """The shard asked for by ``--shard K/N``, or by ``JOB_COMPLETION_INDEX`` with a count from
    ``--shards N`` or ``CBR_CRAWLER_SHARDS``; None for an unsharded run.

    Contradictions are errors, not guesses: running the whole estate where a shard was meant
    would write into a directory nobody merges, at N times the intended rate.
    """
    env_count_text = env.get(ENV_COUNT, "").strip() or None
    env_index_text = env.get(ENV_INDEX, "").strip() or None
    flag_count = parse_count(str(shards), "--shards") if shards is not None else None
    env_count = parse_count(env_count_text, ENV_COUNT) if env_count_text is not None else None
    if flag_count is not None and env_count is not None and flag_count != env_count:
        raise ShardError(f"--shards {flag_count} contradicts {ENV_COUNT}={env_count}")
    count = flag_count if flag_count is not None else env_count

    if spec is not None:
        index, spec_count = parse_shard_spec(spec)
        if count is not None and count != spec_count:
            source = "--shards" if flag_count is not None else ENV_COUNT
            raise ShardError(f"--shard {spec} contradicts {source} {count}")
        if env_index_text is not None:
            env_index = _parse_int(env_index_text, ENV_INDEX)
            if env_index != index:
                raise ShardError(f"--shard {spec} contradicts {ENV_INDEX}={env_index_text}")
        return Shard(index, spec_count)

    if env_index_text is not None:
        index = _parse_int(env_index_text, ENV_INDEX)
        if count is None:
            raise ShardError(
                f"{ENV_INDEX}={env_index_text} is set (a Kubernetes Indexed Job?) but no shard count: "
                f"give --shards N or set {ENV_COUNT}=N (N = the Job's completions)"
            )
        if not 0 <= index < count:
            raise ShardError(f"{ENV_INDEX}={index} is outside 0..{count - 1} for {count} shards")
        return Shard(index, count)

    if count is not None:
        source = f"--shards {count}" if flag_count is not None else f"{ENV_COUNT}={count}"
        raise ShardError(f"{source} is given but no shard index: add --shard K/{count} or set {ENV_INDEX}=K")
    return None


def shared_run_id(run_id: str | None, env: Mapping[str, str]) -> str:
    """The run id all shards of a run share: ``--run-id`` or ``CBR_CRAWLER_RUN_ID``.

    A random id per process would make the shards of one night indistinguishable, for
    ``merge``, from shards of different nights, so a sharded run must be given one.
    """
    env_id = env.get(ENV_RUN_ID, "").strip() or None
    if run_id is not None and env_id is not None and run_id != env_id:
        raise ShardError(f"--run-id {run_id} contradicts {ENV_RUN_ID}={env_id}")
    chosen = run_id or env_id
    if chosen is None:
        raise ShardError(
            f"a sharded run needs a run id shared by all its shards: give --run-id ID or set {ENV_RUN_ID} "
            "(e.g. the scheduler's run date or the Kubernetes Job name)"
        )
    return chosen


class ShardQuotaLimiter(QuotaLimiter):
    """A quota owner's limiter at ``1/shards`` of the budget, stated gateway limits included."""

    __slots__ = ("shards",)

    def __init__(self, owner: QuotaOwner, rate: float | None, shards: int) -> None:
        super().__init__(owner, None if rate is None else rate / shards)
        self.shards = shards

    def on_throttled(self, message: str) -> None:
        stated = stated_rate(message)
        if stated is None:
            super().on_throttled(message)
            return
        # The gateway's limit is for the whole quota owner, i.e. for all shards together.
        target = stated * STATED_MARGIN / self.shards
        self.ceiling = target if self.ceiling is None else min(self.ceiling, target)
        if self.rate is None or target < self.rate:
            self._set_rate(target)


class ShardLimiterRegistry(LimiterRegistry):
    """:class:`LimiterRegistry` whose limiters spend ``1/shards`` of each quota owner's budget."""

    def __init__(self, shards: int) -> None:
        super().__init__()
        self.shards = shards

    def get(self, owner: QuotaOwner, rate: float | None) -> QuotaLimiter:
        limiter = self._limiters.get(owner)
        if limiter is None:
            limiter = self._limiters[owner] = ShardQuotaLimiter(owner, rate, self.shards)
        return limiter


@dataclass(slots=True)
class ShardRun:
    """One shard's part of a run: its limiters, its scopes, and its block of the manifest."""

    shard: Shard
    discovered: int = 0
    discovered_digest: str | None = None
    kept: int = 0
    _kept_by_tenant: dict[str, int] = field(default_factory=dict)

    def limiters(self) -> LimiterRegistry:
        return ShardLimiterRegistry(self.shard.count)

    def select(self, plans: list[TenantCrawl]) -> list[TenantCrawl]:
        """Keep this shard's scopes of every tenant (all tenants stay, some maybe with none)."""
        keys = [member.key for plan in plans for scope in plan.scopes for member in scope.members]
        self.discovered = len(keys)
        self.discovered_digest = keys_digest(keys)
        kept = [
            dataclasses.replace(plan, scopes=[s for s in plan.scopes if self.shard.owns(s.shard_key)])
            for plan in plans
        ]
        self.kept = sum(len(s.members) for plan in kept for s in plan.scopes)
        self._kept_by_tenant = {plan.name: sum(len(s.members) for s in plan.scopes) for plan in kept}
        return kept

    def manifest_block(self) -> dict[str, Any]:
        return {
            "index": self.shard.index,
            "count": self.shard.count,
            "name": self.shard.name,
            "rule": SPLIT_RULE,
            "rate_divisor": self.shard.count,
            "scopes_discovered": self.discovered,
            "scopes_discovered_digest": self.discovered_digest,
            "scopes_kept": self.kept,
            "scopes_kept_by_tenant": dict(sorted(self._kept_by_tenant.items())),
        }


def shard_run_from_args(
    spec: str | None, shards: str | int | None, output: str, run_id: str | None, env: Mapping[str, str]
) -> tuple[ShardRun | None, str, str | None]:
    """For ``cbr-crawler run``: (the shard or None, the output root to write, the run id given).

    Unsharded, ``output`` and ``run_id`` come back unchanged; sharded, the output is the shard's
    subdirectory and the run id the one all shards share.
    """
    shard = resolve_shard(spec, shards, env)
    if shard is None:
        return None, output, run_id
    return ShardRun(shard), shard.output_dir(output), shared_run_id(run_id, env)
