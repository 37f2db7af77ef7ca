"""One run: tenant configs -> credentials -> discovery -> scopes -> engine -> manifest.

This is where the pieces meet; each piece stays ignorant of the others. The outcome is a manifest
and an exit code, decided here and only here:

    0   every scope of every tenant complete
    1   some scope partial or failed, or a tenant could not be discovered
    130 interrupted (SIGINT/SIGTERM); what was complete stays, the manifest says "interrupted"
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import fcntl
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from crawler import __version__
from crawler.auth import (
    AccessKey,
    AgencyTokenAuth,
    AkSkAuth,
    IamEndpoints,
    PasswordAuth,
    StaticTokenAuth,
    TemporaryAkSkAuth,
)
from crawler.client import ApiClient, ApiRequest, Authenticator
from crawler.config import ConfigError, TenantConfig, config_digest
from crawler.dedupe import spill_threshold
from crawler.discovery import discover_enterprise_projects, discover_projects
from crawler.engine import CredentialRefused, Engine, RunStats, TenantPlan
from crawler.errors import AuthFailedError, CrawlerError
from crawler.logs import register_secret
from crawler.manifest import clear_success, write_manifest
from crawler.progress import run_progress
from crawler.ratelimit import LimiterRegistry, QuotaOwner
from crawler.scope import Scope, ScopeResult
from crawler.shard import ShardRun
from crawler.sink import FileSink, Sink, StdoutSink, make_durable
from crawler.state import ResumeMode, RunState, StateError, decide, remove_leftovers

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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
class TenantFailure:
    tenant: str
    stage: str
    error: str
    error_code: str | None = None
    request_id: str | None = None


@dataclass(slots=True)
class RunOutcome:
    exit_code: int
    manifest: dict[str, Any]
    manifest_path: Path | None


class RunLock:
    """An exclusive lock on the output directory: two runs must never write one output."""

    def __init__(self, root: Path) -> None:
        self.path = root / ".cbr-crawler.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CrawlerError(
                f"another run holds the lock on {self.path.parent} (lock file {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class TenantContext:
    """A tenant's credential, limiters and endpoints for this run."""

    def __init__(self, config: TenantConfig, client: ApiClient, limiters: LimiterRegistry) -> None:
        self.config = config
        self.name = config.name
        self.client = client
        self.limiters = limiters
        self._cbr_limiters: dict[str, Any] = {}  # by region
        self._cbr_endpoints: dict[str, str] = {}  # by region
        self.auth = build_auth(config, client, self.iam())

    def _limiter(self, service: str, endpoint: str) -> Any:
        rate = self.config.rate_limit.rate
        identity = getattr(self, "auth", None)
        credential = identity.identity if identity is not None else f"tenant:{self.name}"
        return self.limiters.get(QuotaOwner(credential, service, endpoint), rate)

    def iam(self, region: str | None = None) -> IamEndpoints:
        base = self.config.endpoint("iam", region)
        return IamEndpoints(base, self.limiters.get(QuotaOwner(f"tenant:{self.name}", "iam", base), None))

    def cbr_endpoint(self, region: str) -> str:
        endpoint = self._cbr_endpoints.get(region)
        if endpoint is None:
            endpoint = self._cbr_endpoints[region] = self.config.endpoint("cbr", region)
        return endpoint

    def cbr_limiter(self, region: str) -> Any:
        # Asked once per request: the quota owner of a region never changes within a run.
        limiter = self._cbr_limiters.get(region)
        if limiter is None:
            limiter = self._cbr_limiters[region] = self._limiter("cbr", self.cbr_endpoint(region))
        return limiter

    async def discover(self) -> list[Scope]:
        """The tenant's scopes: projects x enterprise projects x own_type views."""
        cfg = self.config
        regions = list(cfg.regions)
        projects: list[tuple[str, str, str]]  # (region, id, name)
        if cfg.projects.ids:
            projects = [(regions[0], pid, pid) for pid in cfg.projects.ids] if len(regions) == 1 else []
            if not projects:
                # Explicit ids across several regions: ask IAM which region each id is in.
                found = await discover_projects(
                    self.client, self.auth, self.config.endpoint("iam", None), self.iam().limiter, regions
                )
                by_id = {p.id: p for p in found}
                missing = [pid for pid in cfg.projects.ids if pid not in by_id]
                if missing:
                    raise CrawlerError(f"project ids not found in regions {regions}: {', '.join(missing)}")
                projects = [(by_id[pid].region, pid, by_id[pid].name) for pid in cfg.projects.ids]
        else:
            found = await discover_projects(
                self.client,
                self.auth,
                self.config.endpoint("iam", None),
                self.iam().limiter,
                regions,
                include=list(cfg.projects.include),
                exclude=list(cfg.projects.exclude),
            )
            projects = [(p.region, p.id, p.name) for p in found]

        eps: list[str | None]
        ep_cfg = cfg.enterprise_projects
        if ep_cfg.mode == "none":
            eps = [None]
        elif ep_cfg.mode == "ids":
            eps = list(ep_cfg.ids)
        elif ep_cfg.mode == "all_granted":
            eps = ["all_granted_eps"]
        else:
            eps_base = self.config.endpoint("eps", None)
            found_eps = await discover_enterprise_projects(
                self.client,
                self.auth,
                eps_base,
                self._limiter("eps", eps_base),
                include=list(ep_cfg.include),
                exclude=list(ep_cfg.exclude),
                enabled_only=ep_cfg.status == "enabled",
            )
            eps = [ep.id for ep in found_eps]

        asked_iam_or_eps = not (cfg.projects.ids and len(regions) == 1) or ep_cfg.mode == "discover"
        if not asked_iam_or_eps and projects:
            await self._check_credential(projects[0][0], projects[0][1])

        filters = tuple(cfg.filters.to_query())
        return [
            Scope(self.name, region, pid, name, ep, own_type, filters)
            for region, pid, name in projects
            for ep in eps
            for own_type in cfg.own_types
        ]

    async def _check_credential(self, region: str, project_id: str) -> None:
        """One small ListBackups call before the scopes fan out, when discovery asked nothing.

        Without it a refused credential would be refused once per request in flight: as many
        errors, and with AK/SK as many signature failures, which lock the key for everyone after
        five. Only a refused credential (:class:`AuthFailedError`) stops the tenant; any other
        error is left for the scopes to meet and report.
        """
        request = ApiRequest(
            service="cbr",
            method="GET",
            base_url=self.cbr_endpoint(region),
            path=f"/v3/{project_id}/backups",
            query=[("limit", "1")],
            project_id=project_id,
        )
        try:
            await self.client.send(request, self.auth, self.cbr_limiter(region))
        except AuthFailedError:
            raise
        except CrawlerError as exc:
            log.debug("tenant %s: credential check inconclusive: %s", self.name, exc)


def build_auth(config: TenantConfig, client: ApiClient, iam: IamEndpoints) -> Authenticator:
    """The tenant's authenticator, with its secrets read now (from env vars or files)."""
    authenticator: Authenticator = _build(config.auth, client, iam)
    return authenticator


def _secret(value: Any) -> str:
    text: str = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    register_secret(text)
    return text


def _build(auth: Any, client: ApiClient, iam: IamEndpoints) -> Any:  # the auth union of crawler.config
    mode = auth.mode
    if mode == "token":
        token, source = auth.resolve_token()
        return StaticTokenAuth(_secret(token), source)
    if mode == "password":
        password, source = auth.resolve_password()
        return PasswordAuth(
            client, iam, user=auth.user, domain=auth.domain, password=_secret(password), source=source
        )
    if mode == "aksk":
        ak, sk, source = auth.resolve_keys()
        return AkSkAuth(AccessKey(_secret(ak), _secret(sk)), source)
    if mode == "temporary":
        source_auth = _build(auth.source, client, iam)
        return TemporaryAkSkAuth(client, iam, source_auth, duration_seconds=auth.duration_seconds)
    if mode == "agency":
        source_auth = _build(auth.source, client, iam)
        if auth.credential == "temporary_aksk":
            return TemporaryAkSkAuth(
                client,
                iam,
                source_auth,
                duration_seconds=auth.duration_seconds,
                agency=(auth.domain_name, auth.agency_name),
            )
        if isinstance(source_auth, AkSkAuth):
            # IAM issues assume_role tokens only to the bearer of a token, and AK/SK cannot buy one.
            raise CrawlerError(
                f"agency {auth.agency_name!r} of account {auth.domain_name!r}: credential 'token' needs a "
                "password or token source; with an AK/SK source set credential: temporary_aksk"
            )
        return AgencyTokenAuth(
            client, iam, source_auth, domain_name=auth.domain_name, agency_name=auth.agency_name
        )
    raise CrawlerError(f"unknown auth mode {mode!r}")


async def plan_tenants(
    tenants: Sequence[TenantConfig], client: ApiClient, limiters: LimiterRegistry
) -> tuple[list[TenantPlan], list[TenantFailure]]:
    """Discover every tenant concurrently; a tenant that fails discovery fails alone."""
    plans: list[TenantPlan] = []
    failures: list[TenantFailure] = []

    async def one(cfg: TenantConfig) -> None:
        try:
            ctx = TenantContext(cfg, client, limiters)
        except (CrawlerError, ConfigError) as exc:  # a secret that can't be read fails its tenant only
            failures.append(TenantFailure(cfg.name, "credentials", str(exc)))
            log.error("tenant %s: %s", cfg.name, exc)
            return
        try:
            scopes = await ctx.discover()
        except AuthFailedError as exc:
            error = CredentialRefused(cfg.name, ctx.auth.description, exc)
            failures.append(TenantFailure(cfg.name, "discovery", str(error), exc.code, exc.request_id))
            log.error("%s", error)
            return
        except CrawlerError as exc:
            failures.append(
                TenantFailure(
                    cfg.name,
                    "discovery",
                    f"tenant {cfg.name}: discovery failed: {exc}",
                    getattr(exc, "code", None),
                    getattr(exc, "request_id", None),
                )
            )
            log.error("tenant %s: discovery failed: %s", cfg.name, exc)
            return
        log.info("tenant %s: %d scopes to crawl", cfg.name, len(scopes))
        plans.append(
            TenantPlan(
                name=cfg.name,
                auth=ctx.auth,
                scopes=scopes,
                cbr_endpoint=ctx.cbr_endpoint,
                cbr_limiter=ctx.cbr_limiter,
                concurrency=cfg.rate_limit.concurrency,
                page_size=cfg.rate_limit.page_size,
                layout=cfg.output.layout,
                compression=cfg.output.compression,
                scope_deadline=cfg.timeouts.scope,
            )
        )

    async with asyncio.TaskGroup() as group:
        for cfg in tenants:
            group.create_task(one(cfg))
    plans.sort(key=lambda p: p.name)
    return plans, failures


def make_session(tenants: Sequence[TenantConfig]) -> aiohttp.ClientSession:
    connect = max((t.timeouts.connect for t in tenants), default=10.0)
    read = max((t.timeouts.read for t in tenants), default=60.0)
    timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_read=read)
    limit = sum(t.rate_limit.concurrency for t in tenants) + 8
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(timeout=timeout, connector=connector, raise_for_status=False)


async def run_crawl(tenants: Sequence[TenantConfig], options: RunOptions) -> RunOutcome:
    """Crawl every tenant; write files and the manifest; decide the exit code."""
    spill_at = spill_threshold()  # a bad $CBR_CRAWLER_SPILL_AT fails before anything is touched
    started = _now_iso()
    t0 = time.monotonic()
    to_stdout = options.output == "-"
    root = None if to_stdout else Path(options.output)
    lock = None
    if root is not None:
        lock = RunLock(root)
        # File-system calls go to a thread like every other one: the output may be a slow mount.
        await asyncio.to_thread(lock.acquire)
        # A marker left by an earlier run must not vouch for what this run is about to rewrite.
        await asyncio.to_thread(clear_success, root)
    sink: Sink = StdoutSink() if to_stdout else FileSink(root or Path("."))
    limiters = options.shard.limiters() if options.shard is not None else LimiterRegistry()
    stats = RunStats()
    engine: Engine | None = None
    failures: list[TenantFailure] = []
    interrupted = False
    progress: asyncio.Task[None] | None = None
    state: RunState | None = None
    attempt = 1
    try:
        done: dict[str, ScopeResult] = {}
        if root is not None:
            state, done = await open_run_state(root, tenants, options, started)
            if state is not None and state.run is not None:
                started, attempt = state.run.started_at, state.run.attempts
        elif options.resume == "resume":
            log.warning("--resume needs an output directory: with --output - every run starts afresh")
        async with make_session(tenants) as session:
            client = ApiClient(session)
            plans, failures = await plan_tenants(tenants, client, limiters)
            if options.shard is not None:
                plans = options.shard.select(plans)
            engine = Engine(
                client,
                sink,
                run_id=options.run_id,
                stats=stats,
                done=done,
                checkpoints=state,
                spill_at=spill_at,
            )
            # A bar on a terminal, else a progress line every interval (crawler.progress).
            progress = asyncio.create_task(run_progress(stats, options.progress_interval))
            await engine.run(plans)
    except asyncio.CancelledError:
        interrupted = True
    finally:
        if progress is not None:
            progress.cancel()
        try:
            await sink.close()
        except asyncio.CancelledError:
            interrupted = True
    results = engine.results if engine is not None else []
    manifest = build_manifest(
        options, tenants, results, failures, limiters, started, time.monotonic() - t0, interrupted
    )
    manifest["resume"] = {
        "attempt": attempt,
        "scopes_from_checkpoint": len(engine.done) if engine is not None else 0,
    }
    if options.shard is not None:
        manifest["shard"] = options.shard.manifest_block()
    manifest_path = options.manifest_path if to_stdout else (root / "manifest.json" if root else None)
    if manifest_path is not None:
        target_root = manifest_path.parent if to_stdout else root
        assert target_root is not None
        try:
            try:
                await asyncio.to_thread(_seal, target_root, manifest)
            except OSError as exc:
                if exc.errno != errno.ENOSPC or state is None or interrupted:
                    raise
                # The disk is full. A run that reached its end needs its manifest, not its
                # checkpoint (the next run would start afresh anyway): free the state's space.
                log.warning("disk full: deleting the run state to make room for the manifest")
                await state.discard()
                state = None
                await asyncio.to_thread(_seal, target_root, manifest)
        except OSError as exc:
            if state is not None:
                await state.close()
            if lock is not None:
                lock.release()
            raise CrawlerError(
                f"cannot write the manifest {manifest_path}: {exc.strerror or exc}; "
                "files of complete scopes are kept, but no manifest vouches for this run"
            ) from exc
    if state is not None:
        try:
            if not interrupted:
                # The manifest is on disk: this run is over, and the next one starts afresh.
                await state.finish(manifest["status"])
        except (OSError, sqlite3.Error) as exc:
            log.warning("could not mark the run state finished (%s): the next run will resume this one", exc)
        finally:
            await state.close()
    if lock is not None:
        lock.release()
    if interrupted:
        code = EXIT_INTERRUPTED
    elif manifest["status"] == "complete":
        code = EXIT_OK
    else:
        code = EXIT_INCOMPLETE
    return RunOutcome(code, manifest, manifest_path)


async def open_run_state(
    root: Path, tenants: Sequence[TenantConfig], options: RunOptions, started: str
) -> tuple[RunState | None, dict[str, ScopeResult]]:
    """Clean up after a killed run, then resume it or begin a new run (see :mod:`crawler.state`).

    Returns the state (None if it cannot be used: the run goes on, but could not be resumed) and
    the scopes already complete, by key. On resume ``options.run_id`` becomes the recorded run id,
    so that every record of the run carries one id. Call with the run lock held.
    """
    removed = await asyncio.to_thread(remove_leftovers, root)
    if removed:
        log.info("removed %d unfinished file(s) left by an interrupted run", len(removed))
    try:
        state, note = await RunState.open(root)
    except (OSError, sqlite3.Error, StateError) as exc:
        log.warning("cannot use the run state in %s (%s): this run could not be resumed", root, exc)
        return None, {}
    if note is not None:
        log.warning("%s", note)
    try:
        return state, await _resume_or_begin(state, tenants, options, started)
    except (OSError, sqlite3.Error, StateError) as exc:
        await state.close()
        log.warning("cannot use the run state in %s (%s): this run could not be resumed", root, exc)
        return None, {}
    except BaseException:
        await asyncio.shield(state.close())
        raise


async def _resume_or_begin(
    state: RunState, tenants: Sequence[TenantConfig], options: RunOptions, started: str
) -> dict[str, ScopeResult]:
    digest = config_digest(list(tenants))
    decision = decide(state.run, digest, options.resume, options.run_id if options.run_id_given else None)
    if decision.resume:
        run = await state.resume()
        options.run_id = run.run_id
        _relabel_logs(run.run_id)
        done = await state.completed_scopes()
        log.info(
            "resuming run %s (%s): %d scope(s) already complete are kept, not fetched again",
            run.run_id,
            decision.reason,
            len(done),
        )
        return done
    if options.resume == "resume":
        log.warning(
            "--resume: nothing to resume (%s); starting a new run %s", decision.reason, options.run_id
        )
    else:
        log.info("starting run %s (%s)", options.run_id, decision.reason)
    await state.begin(options.run_id, digest, started)
    return {}


def _seal(root: Path, manifest: dict[str, Any]) -> None:
    """(Blocking) The files the manifest lists made durable, then the manifest that vouches for them."""
    make_durable(root, [f["path"] for scope in manifest.get("scopes", []) for f in scope.get("files") or []])
    write_manifest(root, manifest)


def _relabel_logs(run_id: str) -> None:
    # JSON log lines carry the run id chosen at start-up; a resumed run takes the recorded one.
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None and hasattr(handler.formatter, "run_id"):
            handler.formatter.run_id = run_id


def build_manifest(
    options: RunOptions,
    tenants: Sequence[TenantConfig],
    results: list[ScopeResult],
    failures: list[TenantFailure],
    limiters: LimiterRegistry,
    started: str,
    duration: float,
    interrupted: bool,
) -> dict[str, Any]:
    results = sorted(results, key=lambda r: r.scope.key)
    by_status: dict[str, int] = {}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    complete = not interrupted and not failures and all(r.status == "complete" for r in results)
    status = "interrupted" if interrupted else ("complete" if complete else "incomplete")
    return {
        "format": 1,
        "tool": f"cbr-crawler {__version__}",
        "run_id": options.run_id,
        "status": status,
        "started_at": started,
        "finished_at": _now_iso(),
        "duration_seconds": round(duration, 3),
        "config_digest": config_digest(list(tenants)),
        "tenants": [t.name for t in tenants],
        "tenant_failures": [
            {
                "tenant": f.tenant,
                "stage": f.stage,
                "error": f.error,
                "error_code": f.error_code,
                "request_id": f.request_id,
            }
            for f in failures
        ],
        "totals": {
            "scopes": len(results),
            "scopes_by_status": by_status,
            "records_written": sum(r.records_written for r in results),
            "files": sum(len(r.files) for r in results),
        },
        "quota_owners": limiters.report(),
        "scopes": [r.entry() for r in results],
    }
