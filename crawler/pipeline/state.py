"""Run state: the checkpoint that lets a killed run be continued without losing or repeating a scope.

The state lives next to the output it describes, in ``OUTPUT/.cbr-crawler/state.sqlite`` (SQLite,
WAL journal, ``synchronous=FULL``, completed scopes committed in small batches). It holds one run row (run
id, config digest, start time, attempts, and whether the run finished) and one row per completed
scope with its full manifest entry (:meth:`ScopeResult.as_dict`: status, counts, files with size
and sha256).

Ordering that matters: a scope is recorded only *after* its file has been renamed to its final
name (:class:`crawler.pipeline.sink.FileSink` does that before the engine reports the scope), and each batch
of records is committed only after :func:`crawler.support.files.make_durable` made the batch's files and
their directory entries durable. Output is durable before the checkpoint says done: a crash
between the two leaves a file the state does not know, which the next attempt simply fetches again.

SQLite calls block, so :class:`RunState` runs every one of them on a dedicated single thread
(which also owns the connection); :class:`StateDB` is the blocking core, usable on its own.

What happens when a run starts (:func:`decide`):

- no state, or ``--fresh``: a new run; the state is reset.
- a *finished* state (the previous run reached its end, complete or not): a new run.
- the config digest differs: a new run (the recorded scopes answered another question).
- an explicit ``--run-id`` other than the recorded one: a new run under that id.
- otherwise (an unfinished run of the same config): the run is resumed under its recorded run id;
  scopes recorded complete whose files are still on disk with the recorded size are not fetched
  again, the others are.

A run is *finished* once its manifest is written without interruption, whatever its status; an
interrupted (exit 130), killed or crashed run is not. The manifest of a resumed run lists the scopes
discovery finds in this attempt, as an uninterrupted run would: a recorded scope that is no longer
discovered (or whose tenant's discovery fails this time) is not listed. If the disk is full when a
run that reached its end writes its manifest, the state is deleted to make room for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import orjson

from crawler.errors import CrawlerError
from crawler.pipeline.scope import Scope, ScopeResult
from crawler.support.clock import utc_now_iso
from crawler.support.files import make_durable
from crawler.support.groupcommit import GroupCommit
from crawler.support.logs import set_run_id

log = logging.getLogger(__name__)

STATE_DIR = ".cbr-crawler"
STATE_FILE = "state.sqlite"
SCHEMA_VERSION = 1
# Seconds from one checkpoint batch's start to the next one's, at least (see RunState.checkpoint).
CHECKPOINT_INTERVAL = 1.0

ResumeMode = Literal["auto", "resume", "fresh"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    singleton     INTEGER PRIMARY KEY CHECK (singleton = 1),
    run_id        TEXT NOT NULL,
    config_digest TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    finished_at   TEXT,
    status        TEXT
);
CREATE TABLE IF NOT EXISTS scope (
    key         TEXT PRIMARY KEY,
    result      TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
"""


def state_path(root: Path) -> Path:
    return root / STATE_DIR / STATE_FILE


@dataclass(frozen=True, slots=True)
class RunRecord:
    """The run a state belongs to."""

    run_id: str
    config_digest: str
    started_at: str
    attempts: int  # 1 for the first process of the run, +1 per resume
    finished_at: str | None = None
    status: str | None = None  # the manifest's status when the run finished

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


class StateError(Exception):
    """The state file exists but cannot be used (not SQLite, another schema version)."""


class StateDB:
    """The blocking SQLite store. Use it from one thread only (the connection is not shared)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: each statement outside an explicit BEGIN is its own durable transaction.
        self._db = sqlite3.connect(path, isolation_level=None)
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StateError(f"{path}: {exc}") from exc
        except StateError:
            self._db.close()
            raise

    def _setup(self) -> None:
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise StateError(f"{self.path}: schema version {version}, this crawler knows {SCHEMA_VERSION}")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.debug("state %s: journal mode %s (WAL unavailable on this filesystem)", self.path, mode)
        # FULL: a commit is on disk when it returns, even if the machine loses power; commits are
        # per batch of completed scopes (RunState.record), so their fsyncs stay few.
        db.execute("PRAGMA synchronous=FULL")
        # Keep the WAL small (checkpoint every ~1 MB, and shrink it back after): the state shares
        # the disk with the output and the manifest, which matter more.
        db.execute("PRAGMA wal_autocheckpoint=256")
        db.execute("PRAGMA journal_size_limit=1048576")
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @classmethod
    def open_or_reset(cls, path: Path) -> tuple[StateDB, str | None]:
        """Open the store; an unusable file is moved aside (the reason is returned) and a new one made."""
        try:
            return cls(path), None
        except StateError as exc:
            aside = path.with_name(f"{path.name}.unusable-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{path}{suffix}")
                if src.exists():
                    src.replace(Path(f"{aside}{suffix}"))
            return cls(path), f"state file unusable ({exc}); moved aside to {aside.name}"

    def run(self) -> RunRecord | None:
        row = self._db.execute(
            "SELECT run_id, config_digest, started_at, attempts, finished_at, status FROM run"
        ).fetchone()
        return RunRecord(*row) if row is not None else None

    def begin(self, run_id: str, config_digest: str, started_at: str) -> RunRecord:
        """Start a new run: forget every recorded scope and the previous run, in one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM scope")
            db.execute("DELETE FROM run")
            db.execute(
                "INSERT INTO run (singleton, run_id, config_digest, started_at, attempts)"
                " VALUES (1, ?, ?, ?, 1)",
                (run_id, config_digest, started_at),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return RunRecord(run_id, config_digest, started_at, 1)

    def resume(self) -> RunRecord:
        """Count one more attempt of the recorded (unfinished) run."""
        self._db.execute("UPDATE run SET attempts = attempts + 1")
        run = self.run()
        if run is None:
            raise StateError(f"{self.path}: no run to resume")
        return run

    def record(self, key: str, result: Mapping[str, Any]) -> None:
        """Record a completed scope (durable when this returns). Replaces an earlier record."""
        self.record_many([(key, result)])

    def record_many(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """Record completed scopes in one transaction (durable when this returns)."""
        now = utc_now_iso()
        rows = [(key, orjson.dumps(result).decode(), now) for key, result in entries]
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                "INSERT OR REPLACE INTO scope (key, result, recorded_at) VALUES (?, ?, ?)", rows
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def forget(self, keys: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM scope WHERE key = ?", [(k,) for k in keys])

    def completed(self) -> dict[str, dict[str, Any]]:
        """Every recorded scope's manifest entry, by scope key."""
        rows = self._db.execute("SELECT key, result FROM scope ORDER BY key").fetchall()
        return {key: orjson.loads(result) for key, result in rows}

    def finish(self, status: str) -> None:
        """Mark the run finished: the next run with this output starts a new run."""
        self._db.execute("UPDATE run SET finished_at = ?, status = ?", (utc_now_iso(), status))

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a starting run continues the recorded one, and why (for the log)."""

    resume: bool
    reason: str


def decide(
    recorded: RunRecord | None, config_digest: str, mode: ResumeMode, requested_run_id: str | None = None
) -> Decision:
    """Resume the recorded run, or start a new one? Pure; see the module docstring for the rules."""
    if mode == "fresh":
        return Decision(False, "--fresh given")
    if recorded is None:
        return Decision(False, "no earlier run state in this output")
    if recorded.finished:
        return Decision(
            False,
            f"the previous run {recorded.run_id} finished ({recorded.status}) at {recorded.finished_at}",
        )
    if recorded.config_digest != config_digest:
        return Decision(
            False,
            f"the configuration changed since run {recorded.run_id} "
            f"(digest {recorded.config_digest[:12]} -> {config_digest[:12]})",
        )
    if requested_run_id is not None and requested_run_id != recorded.run_id:
        return Decision(
            False, f"--run-id {requested_run_id} differs from the unfinished run {recorded.run_id}"
        )
    return Decision(True, f"run {recorded.run_id} did not finish (attempt {recorded.attempts + 1})")


_RENAMED = {"duplicates": "duplicates_dropped"}  # ScopeResult field -> manifest key


def result_from_dict(entry: Mapping[str, Any]) -> ScopeResult:
    """A :class:`ScopeResult` from its manifest entry (the inverse of :meth:`ScopeResult.as_dict`).

    Fields absent from ``entry`` (recorded by an older crawler) keep their defaults.
    """
    ep = entry["enterprise_project_id"]
    scope = Scope(
        tenant=entry["tenant"],
        region=entry["region"],
        project_id=entry["project_id"],
        project_name=entry["project_name"],
        enterprise_project_id=ep,
        own_type=entry["own_type"],
        filters=tuple((str(k), str(v)) for k, v in entry.get("filters", [])),
    )
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ScopeResult):
        name = _RENAMED.get(f.name, f.name)
        if f.name != "scope" and name in entry:
            values[f.name] = entry[name]
    return ScopeResult(scope, **values)


def verify_files(root: Path, entry: Mapping[str, Any]) -> str | None:
    """Why a recorded scope's files cannot be trusted any more, or None if they can.

    Checks existence and size (cheap), not the sha256: re-hashing every kept file on each resume
    would cost as much as reading the whole inventory again.
    """
    files = entry.get("files") or []
    if not files:
        return "no file recorded"
    for file in files:
        path = root / file["path"]
        try:
            size = path.stat().st_size
        except OSError:
            return f"{file['path']} is missing"
        if size != file["size"]:
            return f"{file['path']} has {size} bytes, {file['size']} recorded"
    return None


def remove_leftovers(root: Path) -> list[Path]:
    """Delete ``*.part`` files (and a half-written manifest) a killed run left behind."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    candidates = [p for p in root.rglob("*.part") if STATE_DIR not in p.relative_to(root).parts]
    candidates.extend(p for p in (root / ".manifest.json.tmp", root / "._SUCCESS.tmp") if p.exists())
    for path in candidates:
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class RunState:
    """The run's checkpoint for async code: every SQLite call runs on one dedicated thread."""

    def __init__(self, root: Path, db: StateDB, executor: ThreadPoolExecutor) -> None:
        self.root = root
        self._db = db
        self._executor = executor
        self.run: RunRecord | None = None
        # Completed scopes, checkpointed a batch at a time (see checkpoint()).
        self._batches: GroupCommit[tuple[str, dict[str, Any]], None] = GroupCommit(
            self._write_batch, executor, interval=CHECKPOINT_INTERVAL, name="state:checkpoints"
        )

    @classmethod
    async def open(cls, root: Path) -> tuple[RunState, str | None]:
        """Open (or create) the state of the output ``root``; the note says if a bad file was set aside."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state")
        loop = asyncio.get_running_loop()
        try:
            db, note = await loop.run_in_executor(executor, StateDB.open_or_reset, state_path(root))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        state = cls(root, db, executor)
        state.run = await state._call(db.run)
        return state, note

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def begin(self, run_id: str, config_digest: str, started_at: str) -> RunRecord:
        self.run = await self._call(self._db.begin, run_id, config_digest, started_at)
        return self.run

    async def resume(self) -> RunRecord:
        self.run = await self._call(self._db.resume)
        return self.run

    async def completed_scopes(self) -> dict[str, ScopeResult]:
        """Recorded scopes whose files are still whole on disk; the others are forgotten (refetched)."""

        def load() -> tuple[dict[str, ScopeResult], dict[str, str]]:
            kept: dict[str, ScopeResult] = {}
            dropped: dict[str, str] = {}
            for key, entry in self._db.completed().items():
                problem = verify_files(self.root, entry)
                if problem is None:
                    kept[key] = result_from_dict(entry)
                else:
                    dropped[key] = problem
            self._db.forget(dropped)
            return kept, dropped

        kept, dropped = await self._call(load)
        for key, problem in dropped.items():
            log.warning("scope %s was recorded complete but %s: fetching it again", key, problem)
        return kept

    def checkpoint(self, result: ScopeResult) -> asyncio.Future[None]:
        """Queue a completed scope for the next checkpoint batch; the future says when it is durable.

        Call only once the scope's files are renamed (see the module docstring). Group commit:
        scopes completing while a batch is written, or within :data:`CHECKPOINT_INTERVAL` of its
        start, go in the next one: one make_durable of their files, then one transaction. Tens of
        thousands of tiny scopes then cost a few dozen commits (and filesystem syncs), not one
        each; a crash loses at most the last interval's checkpoints (those scopes are fetched
        again). A batch that cannot be written is logged, once; its futures carry the error.
        """
        return self._batches.submit((result.scope.key, result.entry()))

    async def record(self, result: ScopeResult) -> None:
        """Checkpoint a completed scope now and wait until it is durable (or raise the batch's error)."""
        recorded = self.checkpoint(result)
        await self._batches.flush()
        await recorded

    async def flush(self) -> None:
        """Write every queued checkpoint now; returns when none is left (failures are logged)."""
        await self._batches.flush()

    def _write_batch(self, batch: list[tuple[str, dict[str, Any]]]) -> list[None]:
        try:
            # Output durable before the checkpoint says done.
            make_durable(self.root, [f["path"] for _, entry in batch for f in entry.get("files") or []])
            self._db.record_many(batch)
        except Exception as exc:
            log.warning(
                "could not checkpoint %d completed scope(s) (%s): their files are kept, "
                "but a resumed run would fetch them again",
                len(batch),
                exc,
            )
            raise
        return [None] * len(batch)

    async def finish(self, status: str) -> None:
        await self._call(self._db.finish, status)

    async def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # the executor may already be shut down
            await self._call(self._db.close)
        self._executor.shutdown(wait=False)

    async def discard(self) -> None:
        """Close and delete the state: the next run starts afresh (as after a finished run)."""

        def delete() -> None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            path = state_path(self.root)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)

        with contextlib.suppress(RuntimeError):
            await self._call(delete)
        self._executor.shutdown(wait=False)


class ResumableState(Protocol):
    """A run state in a directory (:class:`RunState`) or a bucket (``objectstate.ObjectRunState``)."""

    run: RunRecord | None

    async def resume(self) -> RunRecord: ...

    async def completed_scopes(self) -> dict[str, ScopeResult]: ...

    async def begin(self, run_id: str, config_digest: str, started_at: str) -> object: ...


async def resume_or_begin(
    state: ResumableState, config_digest: str, mode: ResumeMode, run_id: str, run_id_given: bool, started: str
) -> tuple[str, dict[str, ScopeResult]]:
    """Continue the recorded run (its id, its completed scopes) or begin a new one (:func:`decide`)."""
    decision = decide(state.run, config_digest, mode, run_id if run_id_given else None)
    if decision.resume:
        run = await state.resume()
        set_run_id(run.run_id)  # this line and every later one carry the resumed run's id
        done = await state.completed_scopes()
        log.info(
            "resuming run %s (%s): %d scope(s) already complete are kept, not fetched again",
            run.run_id,
            decision.reason,
            len(done),
        )
        return run.run_id, done
    if mode == "resume":
        log.warning("--resume: nothing to resume (%s); starting a new run %s", decision.reason, run_id)
    else:
        log.info("starting run %s (%s)", run_id, decision.reason)
    await state.begin(run_id, config_digest, started)
    return run_id, {}


async def open_for_run(
    root: Path, config_digest: str, mode: ResumeMode, run_id: str, run_id_given: bool, started: str
) -> tuple[RunState | None, str, dict[str, ScopeResult]]:
    """Clean up after a killed run, then resume it or begin a new run (see the module docstring).

    Returns the state (None if it cannot be used: the run goes on, but could not be resumed), the
    run id (a resumed run keeps its recorded one, so that every record of the run carries one id)
    and the scopes already complete, by key. Call with the run lock held.
    """
    removed = await asyncio.to_thread(remove_leftovers, root)
    if removed:
        log.info("removed %d unfinished file(s) left by an interrupted run", len(removed))
    try:
        state, note = await RunState.open(root)
    except (OSError, sqlite3.Error, StateError) as exc:
        log.warning("cannot use the run state in %s (%s): this run could not be resumed", root, exc)
        return None, run_id, {}
    if note is not None:
        log.warning("%s", note)
    try:
        run_id, done = await resume_or_begin(state, config_digest, mode, run_id, run_id_given, started)
        return state, run_id, done
    except (OSError, sqlite3.Error, StateError) as exc:
        await state.close()
        log.warning("cannot use the run state in %s (%s): this run could not be resumed", root, exc)
        return None, run_id, {}
    except BaseException:
        await asyncio.shield(state.close())
        raise


class RunLock:
    """An exclusive lock on the output directory: two runs must never write one output."""

    FILE = ".cbr-crawler.lock"

    def __init__(self, root: Path) -> None:
        self.path = root / self.FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """(Blocking) Take the lock, or raise :class:`CrawlerError` naming the lock file."""
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
