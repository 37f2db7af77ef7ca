"""The run state store: durability settings, run lifecycle, resume decisions, file checks."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from crawler.pipeline.scope import Scope, ScopeResult
from crawler.pipeline.state import (
    RunRecord,
    RunState,
    StateDB,
    decide,
    remove_leftovers,
    result_from_dict,
    state_path,
    verify_files,
)

DIGEST = "a" * 64


def _result(root: Path, name: str = "p1", body: bytes = b'{"id":"x"}\n') -> ScopeResult:
    scope = Scope("acme", "cn-north-4", name, f"{name}-name", "0", "private", (("status", "available"),))
    relpath = f"acme/cn-north-4/{name}/backups.private.ep-0.ndjson"
    (root / relpath).parent.mkdir(parents=True, exist_ok=True)
    (root / relpath).write_bytes(body)
    return ScopeResult(
        scope,
        status="complete",
        count=1,
        last_count=1,
        unique_ids=1,
        records_written=1,
        duplicates=2,
        pages=1,
        files=[{"path": relpath, "size": len(body), "sha256": "f" * 64, "records": 1}],
        started_at="2026-01-01T00:00:00.000Z",
        finished_at="2026-01-01T00:00:01.000Z",
        notes=["count drift"],
        reconciliation={"method": "marker pass", "complete": True},
    )


def test_store_uses_wal_and_full_sync_and_survives_reopen(tmp_path: Path) -> None:
    path = state_path(tmp_path)
    db = StateDB(path)
    db.begin("run-1", DIGEST, "2026-01-01T00:00:00Z")
    result = _result(tmp_path)
    db.record(result.scope.key, result.as_dict())
    db.close()

    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    db = StateDB(path)
    assert db._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    run = db.run()
    assert run == RunRecord("run-1", DIGEST, "2026-01-01T00:00:00Z", 1)
    assert not run.finished
    assert db.completed() == {result.scope.key: result.as_dict()}
    assert db.resume().attempts == 2
    db.finish("complete")
    finished = db.run()
    assert finished is not None and finished.finished and finished.status == "complete"
    db.close()


def test_begin_resets_recorded_scopes(tmp_path: Path) -> None:
    db = StateDB(state_path(tmp_path))
    db.begin("run-1", DIGEST, "t0")
    result = _result(tmp_path)
    db.record(result.scope.key, result.as_dict())
    db.finish("incomplete")
    db.begin("run-2", DIGEST, "t1")
    assert db.completed() == {}
    assert db.run() == RunRecord("run-2", DIGEST, "t1", 1)
    db.close()


def test_record_replaces_an_earlier_record_of_the_same_scope(tmp_path: Path) -> None:
    db = StateDB(state_path(tmp_path))
    db.begin("run-1", DIGEST, "t0")
    first = _result(tmp_path)
    db.record(first.scope.key, first.as_dict())
    second = dataclasses.replace(first, pages=7)
    db.record(second.scope.key, second.as_dict())
    assert list(db.completed().values()) == [second.as_dict()]
    db.close()


def test_garbage_state_file_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    path = state_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    db, note = StateDB.open_or_reset(path)
    assert note is not None and "unusable" in note
    assert db.run() is None
    db.close()
    assert [p.name for p in path.parent.glob("state.sqlite.unusable-*")]


def test_state_of_an_unknown_schema_version_is_not_used(tmp_path: Path) -> None:
    path = state_path(tmp_path)
    path.parent.mkdir(parents=True)
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version=99")
    raw.close()
    db, note = StateDB.open_or_reset(path)
    assert note is not None and "schema version 99" in note
    db.close()


def test_result_round_trips_through_its_manifest_entry(tmp_path: Path) -> None:
    result = _result(tmp_path)
    assert result_from_dict(result.as_dict()).as_dict() == result.as_dict()
    # Every field of ScopeResult must reach the manifest entry, or a resumed run would lose it.
    entry = result.as_dict()
    for f in dataclasses.fields(ScopeResult):
        if f.name != "scope" and not f.name.startswith("_"):  # _entry: that very entry, cached
            assert {"duplicates": "duplicates_dropped"}.get(f.name, f.name) in entry, f.name


def test_scope_without_enterprise_project_round_trips(tmp_path: Path) -> None:
    result = _result(tmp_path)
    result = dataclasses.replace(result, scope=dataclasses.replace(result.scope, enterprise_project_id=None))
    back = result_from_dict(result.as_dict())
    assert back.scope == result.scope and back.scope.key.endswith("/ep=-/private")


@pytest.mark.parametrize(
    ("recorded", "mode", "run_id", "resume", "why"),
    [
        (None, "auto", None, False, "no earlier run"),
        (RunRecord("r1", DIGEST, "t", 1), "auto", None, True, "did not finish"),
        (RunRecord("r1", DIGEST, "t", 1), "resume", None, True, "attempt 2"),
        (RunRecord("r1", DIGEST, "t", 1), "fresh", None, False, "--fresh"),
        (RunRecord("r1", DIGEST, "t", 3, "t2", "complete"), "auto", None, False, "finished (complete)"),
        (RunRecord("r1", DIGEST, "t", 1, "t2", "incomplete"), "resume", None, False, "finished"),
        (RunRecord("r1", "b" * 64, "t", 1), "auto", None, False, "configuration changed"),
        (RunRecord("r1", DIGEST, "t", 1), "auto", "r1", True, "did not finish"),
        (RunRecord("r1", DIGEST, "t", 1), "auto", "r2", False, "--run-id r2"),
    ],
)
def test_decide(recorded: RunRecord | None, mode: str, run_id: str | None, resume: bool, why: str) -> None:
    decision = decide(recorded, DIGEST, mode, run_id)  # type: ignore[arg-type]
    assert decision.resume is resume
    assert why in decision.reason


def test_verify_files_checks_presence_and_size(tmp_path: Path) -> None:
    result = _result(tmp_path)
    entry = result.as_dict()
    assert verify_files(tmp_path, entry) is None
    path = tmp_path / entry["files"][0]["path"]
    path.write_bytes(b"{}\n")
    assert "bytes" in (verify_files(tmp_path, entry) or "")
    path.unlink()
    assert "missing" in (verify_files(tmp_path, entry) or "")
    assert verify_files(tmp_path, {**entry, "files": []}) == "no file recorded"


def test_remove_leftovers_removes_part_files_only(tmp_path: Path) -> None:
    keep = tmp_path / "t/r/p/backups.private.no-ep.ndjson"
    partial = tmp_path / "t/r/p/backups.shared.no-ep.ndjson.partial"
    part = tmp_path / "t/r/p/backups.all_granted.no-ep.ndjson.gz.part"
    for p in (keep, partial, part):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    (tmp_path / ".manifest.json.tmp").write_bytes(b"{")
    removed = remove_leftovers(tmp_path)
    assert set(removed) == {part, tmp_path / ".manifest.json.tmp"}
    assert keep.exists() and partial.exists() and not part.exists()
    assert remove_leftovers(tmp_path / "missing") == []


async def test_run_state_checkpoints_and_forgets_scopes_whose_files_are_gone(tmp_path: Path) -> None:
    state, note = await RunState.open(tmp_path)
    assert note is None and state.run is None
    await state.begin("run-1", DIGEST, "t0")
    kept, lost = _result(tmp_path, "p1"), _result(tmp_path, "p2")
    await state.record(kept)
    await state.record(lost)
    await state.close()

    (tmp_path / lost.files[0]["path"]).unlink()
    state, _ = await RunState.open(tmp_path)
    assert state.run is not None and state.run.run_id == "run-1"
    await state.resume()
    done = await state.completed_scopes()
    assert list(done) == [kept.scope.key]
    assert done[kept.scope.key].as_dict() == kept.as_dict()
    await state.finish("complete")
    await state.close()

    state, _ = await RunState.open(tmp_path)
    assert state.run is not None and state.run.attempts == 2 and state.run.finished
    # The scope whose file vanished was forgotten, so nothing vouches for it any more.
    assert await state.completed_scopes() == {kept.scope.key: done[kept.scope.key]}
    await state.close()


async def test_scopes_completing_together_are_checkpointed_in_few_transactions(tmp_path: Path) -> None:
    state, _ = await RunState.open(tmp_path)
    await state.begin("run-1", DIGEST, "t0")
    results = [_result(tmp_path, f"p{n}") for n in range(200)]
    transactions: list[int] = []
    record_many = state._db.record_many
    state._db.record_many = lambda batch: (transactions.append(len(batch)), record_many(batch))[1]  # type: ignore[method-assign]
    await asyncio.gather(*(state.record(r) for r in results))
    assert sum(transactions) == 200
    assert len(transactions) < 10, transactions
    await state.close()

    state, _ = await RunState.open(tmp_path)
    await state.resume()
    assert sorted(await state.completed_scopes()) == sorted(r.scope.key for r in results)
    await state.close()


async def test_a_failed_checkpoint_batch_reaches_every_scope_in_it(tmp_path: Path) -> None:
    state, _ = await RunState.open(tmp_path)
    await state.begin("run-1", DIGEST, "t0")
    results = [_result(tmp_path, f"p{n}") for n in range(3)]
    record_many = state._db.record_many
    failures = [sqlite3.OperationalError("disk I/O error")]

    def failing_once(batch: Any) -> None:
        if failures:
            raise failures.pop()
        record_many(batch)

    state._db.record_many = failing_once  # type: ignore[method-assign]
    outcomes = await asyncio.gather(*(state.record(r) for r in results), return_exceptions=True)
    assert outcomes == [outcomes[0]] * 3 and isinstance(outcomes[0], sqlite3.OperationalError)
    await state.record(results[0])  # later batches are written as usual
    await state.close()
    state, _ = await RunState.open(tmp_path)
    await state.resume()
    assert list(await state.completed_scopes()) == [results[0].scope.key]
    await state.close()


async def test_checkpoints_queued_by_the_engine_are_batched_and_flushed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state, _ = await RunState.open(tmp_path)
    await state.begin("run-1", DIGEST, "t0")
    results = [_result(tmp_path, f"p{n}") for n in range(50)]
    transactions: list[int] = []
    record_many = state._db.record_many
    failures = [sqlite3.OperationalError("disk I/O error")]

    def failing_first(batch: Any) -> None:
        transactions.append(len(batch))
        if failures:
            raise failures.pop()
        record_many(batch)

    state._db.record_many = failing_first  # type: ignore[method-assign]
    state.checkpoint(results[0])  # the first batch goes at once (and fails)
    await asyncio.sleep(0.05)
    for result in results[1:]:
        state.checkpoint(result)
        await asyncio.sleep(0)  # scopes completing one by one, as the engine reports them
    await state.flush()  # no error: the failed batch was logged
    assert transactions == [1, 49], "later scopes wait for one batch after the pause"
    assert "could not checkpoint 1 completed scope(s)" in caplog.text
    await state.close()
    state, _ = await RunState.open(tmp_path)
    await state.resume()
    assert sorted(await state.completed_scopes()) == sorted(r.scope.key for r in results[1:])
    await state.close()
