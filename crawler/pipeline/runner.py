"""One run, wired: tenant configs -> discovery -> engine -> sink -> run state -> manifest.

Each piece stays ignorant of the others; this module only connects them and owns the run's
lifecycle: the lock, the run state (resume or begin), the session, the crawl, the manifest, and
the exit code, decided here and only here:

    0   every scope of every tenant complete
    1   some scope partial or failed, or a tenant could not be discovered
    130 interrupted (SIGINT/SIGTERM); what was complete stays, the manifest says "interrupted"
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crawler.config import TenantConfig, config_digest
from crawler.errors import CrawlerError
from crawler.pipeline.client import ApiClient
from crawler.pipeline.dedupe import spill_threshold
from crawler.pipeline.discovery import discover_tenants
from crawler.pipeline.engine import Engine, TenantCrawl
from crawler.pipeline.manifest import build_manifest, clear_success, seal
from crawler.pipeline.objectsink import ObjectSink
from crawler.pipeline.objectstate import ObjectRunState, open_for_object_run
from crawler.pipeline.objectstore import ObjectLocation, StoreSettings, is_object_url, open_store
from crawler.pipeline.ratelimit import LimiterRegistry
from crawler.pipeline.scope import ScopeResult, TenantFailure
from crawler.pipeline.shard import ShardRun
from crawler.pipeline.sink import FileSink, Sink, StdoutSink
from crawler.pipeline.state import ResumeMode, RunLock, RunState, open_for_run
from crawler.pipeline.tenant import open_session
from crawler.support.clock import utc_now_iso
from crawler.support.logs import set_run_id
from crawler.support.progress import RunStats, run_progress

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass(slots=True)
class RunOptions:
    """What the command line adds to the tenant files."""

    output: str  # a directory, or "-" for standard output
    run_id: str = field(default_factory=new_run_id)
    progress_interval: float = 10.0
    manifest_path: Path | None = None  # where the manifest goes with --output -
    # auto: resume an unfinished run of the same config, else start one; resume: the same, but
    # say so loudly when there is nothing to resume; fresh: always start a new run.
    resume: ResumeMode = "auto"
    run_id_given: bool = False  # --run-id was given: a recorded run under another id is not resumed
    shard: ShardRun | None = None  # --shard K/N: crawl this shard's scopes at 1/N of each rate


@dataclass(slots=True)
class RunOutcome:
    exit_code: int
    manifest: dict[str, Any]
    manifest_path: Path | None  # the local manifest, if any (the nightly extras read the files)
    manifest_location: str | None = None  # where the manifest went: a path or an s3:// URL


async def run_crawl(tenants: Sequence[TenantConfig], options: RunOptions) -> RunOutcome:
    """Crawl every tenant; write files (or objects) and the manifest; decide the exit code."""
    spill_threshold()  # a bad $CBR_CRAWLER_SPILL_AT fails before anything is touched
    if is_object_url(options.output):
        location = ObjectLocation.parse(options.output)
        async with open_store(StoreSettings.from_env()) as store:
            objects = ObjectSink(store, location)
            await objects.check()  # a missing bucket or a refused credential fails before CBR is asked
            await objects.clear_success()
            return await _run(tenants, options, objects, None, ObjectRunState(store, location))
    if options.output == "-":
        return await _run(tenants, options, StdoutSink(), None)
    root = Path(options.output)
    lock = RunLock(root)
    # File-system calls go to a thread like every other one: the output may be a slow mount.
    await asyncio.to_thread(lock.acquire)
    try:
        # A marker left by an earlier run must not vouch for what this run is about to rewrite.
        await asyncio.to_thread(clear_success, root)
        return await _run(tenants, options, FileSink(root), root)
    finally:
        lock.release()


async def _run(
    tenants: Sequence[TenantConfig],
    options: RunOptions,
    sink: Sink,
    root: Path | None,
    bucket_state: ObjectRunState | None = None,
) -> RunOutcome:
    """One run on an opened output: ``root`` for a directory (its SQLite run state), ``bucket_state``
    for a bucket (checkpoint objects), neither for standard output (no resume)."""
    spill_at = spill_threshold()
    digest = config_digest(list(tenants))
    started = utc_now_iso(milliseconds=False)
    t0 = time.monotonic()
    limiters = options.shard.limiters() if options.shard is not None else LimiterRegistry()
    stats = RunStats()
    engine: Engine | None = None
    failures: list[TenantFailure] = []
    crawls: list[TenantCrawl] = []
    interrupted = False
    progress: asyncio.Task[None] | None = None
    state: RunState | None = None
    attempt = 1
    try:
        done: dict[str, ScopeResult] = {}
        if root is not None:
            state, options.run_id, done = await open_for_run(
                root, digest, options.resume, options.run_id, options.run_id_given, started
            )
            set_run_id(options.run_id)
            if state is not None and state.run is not None:
                started, attempt = state.run.started_at, state.run.attempts
        elif bucket_state is not None:
            options.run_id, done = await open_for_object_run(
                bucket_state, digest, options.resume, options.run_id, options.run_id_given, started
            )
            set_run_id(options.run_id)
            assert bucket_state.run is not None
            started, attempt = bucket_state.run.started_at, bucket_state.run.attempts
        elif options.resume == "resume":
            log.warning(
                "--resume needs an output directory or a bucket: with --output - every run starts afresh"
            )
        async with open_session(tenants) as session:
            client = ApiClient(session)
            crawls, failures = await discover_tenants(tenants, client, limiters)
            if options.shard is not None:
                crawls = options.shard.select(crawls)
            engine = Engine(
                client,
                sink,
                run_id=options.run_id,
                stats=stats,
                done=done,
                checkpoints=state if bucket_state is None else bucket_state,
                spill_at=spill_at,
            )
            # A bar on a terminal, else a progress line every interval (crawler.support.progress).
            progress = asyncio.create_task(run_progress(stats, options.progress_interval))
            await engine.run(crawls)
    except asyncio.CancelledError:
        interrupted = True
    finally:
        if progress is not None:
            progress.cancel()
        try:
            await sink.close()
        except asyncio.CancelledError:
            interrupted = True
    manifest = build_manifest(
        run_id=options.run_id,
        config_digest=digest,
        tenants=[t.name for t in tenants],
        results=engine.results if engine is not None else [],
        failures=failures,
        quota_owners=limiters.report(),
        started=started,
        duration=time.monotonic() - t0,
        interrupted=interrupted,
    )
    manifest["resume"] = {
        "attempt": attempt,
        "scopes_from_checkpoint": len(engine.done) if engine is not None else 0,
    }
    # Per tenant: the plan (single pass or one per scope, and why) and the regions crawled.
    manifest["plans"] = {crawl.name: crawl.plan_entry() for crawl in crawls}
    if options.shard is not None:
        manifest["shard"] = options.shard.manifest_block()
    manifest_path = options.manifest_path if root is None else root / "manifest.json"
    manifest_location: str | None = None
    try:
        if isinstance(sink, ObjectSink):
            manifest_location = await sink.write_manifest(manifest)
            if bucket_state is not None and bucket_state.run is not None:
                await bucket_state.flush()
                if not interrupted:
                    await bucket_state.finish(manifest["status"])  # the next run starts afresh
        elif manifest_path is not None:
            state = await _seal(manifest_path, manifest, state, interrupted)
            manifest_location = str(manifest_path)
        if state is not None and not interrupted:
            try:
                # The manifest is on disk: this run is over, and the next one starts afresh.
                await state.finish(manifest["status"])
            except (OSError, sqlite3.Error) as exc:
                log.warning("could not mark the run state finished (%s): the next run will resume it", exc)
    finally:
        if state is not None:
            await state.close()
    if interrupted:
        code = EXIT_INTERRUPTED
    elif manifest["status"] == "complete":
        code = EXIT_OK
    else:
        code = EXIT_INCOMPLETE
    return RunOutcome(code, manifest, manifest_path, manifest_location)


async def _seal(
    path: Path, manifest: dict[str, Any], state: RunState | None, interrupted: bool
) -> RunState | None:
    """Write the manifest (after making its files durable); returns the state, if still there.

    On a full disk, a run that reached its end needs its manifest more than its checkpoint (the next
    run would start afresh anyway): the state is deleted to make room, and the manifest tried again.
    """
    root = path.parent
    try:
        try:
            await asyncio.to_thread(seal, root, manifest)
        except OSError as exc:
            if exc.errno != errno.ENOSPC or state is None or interrupted:
                raise
            log.warning("disk full: deleting the run state to make room for the manifest")
            await state.discard()
            state = None
            await asyncio.to_thread(seal, root, manifest)
    except OSError as exc:
        raise CrawlerError(
            f"cannot write the manifest {path}: {exc.strerror or exc}; "
            "files of complete scopes are kept, but no manifest vouches for this run"
        ) from exc
    return state
