"""The engine and its scheduler without a network: a scripted client answers ListBackups from memory.

The sink is the real file sink (in a temporary directory), so what is asserted is what a user sees:
the files, the results, the checkpoints, and the requests the engine spent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from crawler.errors import AuthFailedError
from crawler.pipeline.client import ApiRequest, ApiResponse
from crawler.pipeline.engine import Engine, TenantCrawl
from crawler.pipeline.ratelimit import QuotaLimiter, QuotaOwner
from crawler.pipeline.scheduler import TenantScheduler
from crawler.pipeline.scope import Scope, ScopeResult
from crawler.pipeline.sink import FileRecord, FileScopeOutput, FileSink

PAGE = 10


class _Auth:
    description = "test credential"
    identity = "test"

    def __init__(self) -> None:
        self.prefetched: list[str | None] = []

    async def authorize(self, request: ApiRequest, headers: dict[str, str]) -> None:
        return None

    def invalidate(self, request: ApiRequest) -> None:
        return None

    def prefetch(self, request: ApiRequest) -> None:
        self.prefetched.append(request.project_id)


class _Client:
    """ListBackups from memory (project id -> its backup ids); every request is kept."""

    def __init__(
        self,
        estate: dict[str, list[str]],
        refused: frozenset[str] = frozenset(),
        stall: frozenset[tuple[str, int]] = frozenset(),
        pad: int = 0,
    ) -> None:
        self.estate = estate
        self.refused = refused  # projects whose requests the gateway refuses (401 after re-auth)
        self.stall = stall  # (project, offset) pages that never get an answer
        self.pad = "x" * pad  # extra bytes in every record
        self.requests: list[ApiRequest] = []
        self.stalled = asyncio.Event()

    async def send(
        self,
        request: ApiRequest,
        auth: Any,
        limiter: Any = None,
        *,
        parse: Callable[[bytes, str | None], Any] | None = None,
        deadline: float | None = None,
        expect_json: bool = True,
    ) -> ApiResponse:
        self.requests.append(request)
        project = request.project_id
        assert project is not None and parse is not None
        if project in self.refused:
            raise AuthFailedError(401, "APIGW.0301", "Incorrect token", request_id=f"rid-{project}")
        query = dict(request.query)
        offset, limit = int(query["offset"]), int(query["limit"])
        if (project, offset) in self.stall:
            self.stalled.set()
            await asyncio.Event().wait()
        ids = self.estate[project]
        page = [{"id": i, "pad": self.pad} for i in ids[offset : offset + limit]]
        body = orjson.dumps({"count": len(ids), "backups": page})
        return ApiResponse(200, parse(body, f"rid-{project}-{offset}"), f"rid-{project}-{offset}")


class _Checkpoints:
    def __init__(self, enough: int = 0) -> None:
        self.keys: list[str] = []
        self.flushed = 0
        self.enough = asyncio.Event()  # set once `enough` scopes are checkpointed
        self._enough = enough

    def checkpoint(self, result: ScopeResult) -> None:
        self.keys.append(result.scope.key)
        if len(self.keys) >= self._enough:
            self.enough.set()

    async def flush(self) -> None:
        self.flushed += 1


def _tenant(
    name: str, estate: dict[str, list[str]], auth: _Auth | None = None, concurrency: int = 2
) -> TenantCrawl:
    limiter = QuotaLimiter(QuotaOwner("test", "cbr", "http://cbr"), None)
    return TenantCrawl(
        name=name,
        auth=auth or _Auth(),
        scopes=[Scope(name, "r1", project, project, None, "private") for project in estate],
        cbr_endpoint=lambda region: "http://cbr",
        cbr_limiter=lambda region: limiter,
        concurrency=concurrency,
        page_size=PAGE,
        layout="{tenant}/{project_id}",
    )


def _estate(prefix: str, sizes: list[int]) -> dict[str, list[str]]:
    return {f"{prefix}{n}": [f"{prefix}{n}-b{i:03d}" for i in range(size)] for n, size in enumerate(sizes)}


def _lines(root: Path, result: ScopeResult) -> list[str]:
    [file] = result.files
    return [orjson.loads(line)["id"] for line in (root / file["path"]).read_bytes().splitlines()]


async def test_every_scope_of_every_tenant_is_walked_committed_and_checkpointed(tmp_path: Path) -> None:
    acme, globex = _estate("a", [0, 7, 10, 35]), _estate("g", [3, 120])
    client = _Client({**acme, **globex})
    checkpoints = _Checkpoints()
    sink = FileSink(tmp_path)
    engine = Engine(client, sink, run_id="run-1", checkpoints=checkpoints)  # type: ignore[arg-type]

    results = await engine.run([_tenant("acme", acme), _tenant("globex", globex)])
    await sink.close()

    assert sorted(r.scope.key for r in results) == sorted(checkpoints.keys)
    assert len(results) == 6 and all(r.status == "complete" for r in results)
    for result in results:
        assert _lines(tmp_path, result) == {**acme, **globex}[result.scope.project_id]
    # One request per page: max(1, ceil(n / 10)) per project.
    assert len(client.requests) == 1 + 1 + 1 + 4 + 1 + 12
    assert engine.stats.pages == len(client.requests) and engine.stats.records == 175
    assert checkpoints.flushed == 1
    assert not list(tmp_path.rglob("*.part"))


async def test_a_refused_credential_stops_its_tenant_and_spares_the_others(tmp_path: Path) -> None:
    acme, globex = _estate("a", [5, 5, 5, 5, 5, 5]), _estate("g", [5, 5])
    client = _Client({**acme, **globex}, refused=frozenset({"a1"}))
    sink = FileSink(tmp_path)
    engine = Engine(client, sink, run_id="run-2")  # type: ignore[arg-type]

    results = await engine.run([_tenant("acme", acme, concurrency=1), _tenant("globex", globex)])
    await sink.close()

    by_project = {r.scope.project_id: r for r in results}
    assert by_project["a0"].status == "complete", "scopes before the refusal are kept"
    for project in ("a1", "a2", "a3", "a4", "a5"):
        assert by_project[project].status == "failed"
        assert "tenant acme: credential refused (test credential)" in (by_project[project].error or "")
        assert by_project[project].request_id == "rid-a1"
    assert [r.project_id for r in client.requests if r.project_id.startswith("a")] == ["a0", "a1"], (
        "no request is spent on the tenant's scopes after the refusal"
    )
    assert by_project["g0"].status == by_project["g1"].status == "complete"


class _FailingCommits(FileSink):
    """A file sink whose commit of one scope fails as a bug would."""

    def __init__(self, root: Path, failing: str) -> None:
        super().__init__(root)
        self.failing = failing

    def open(self, relpath: str, compression: str | None = None) -> FileScopeOutput:
        output = super().open(relpath, compression)
        if self.failing in relpath:
            loop = asyncio.get_running_loop()

            def commit(complete: bool) -> asyncio.Future[list[FileRecord]]:
                failed: asyncio.Future[list[FileRecord]] = loop.create_future()
                failed.set_exception(RuntimeError("injected"))
                return failed

            output.commit = commit  # type: ignore[method-assign]
        return output


async def test_a_scope_whose_commit_fails_is_reported_failed_never_lost(tmp_path: Path) -> None:
    acme = _estate("a", [3, 4, 5])
    checkpoints = _Checkpoints()
    sink = _FailingCommits(tmp_path, "/a1/")
    engine = Engine(_Client(acme), sink, run_id="run-3", checkpoints=checkpoints)  # type: ignore[arg-type]

    results = await engine.run([_tenant("acme", acme)])
    await sink.close()

    by_project = {r.scope.project_id: r for r in results}
    assert len(results) == 3
    assert by_project["a1"].status == "failed" and "injected" in (by_project["a1"].error or "")
    assert by_project["a1"].scope.key not in checkpoints.keys
    assert by_project["a0"].status == by_project["a2"].status == "complete"


async def test_interrupted_open_scopes_are_dropped_whole(tmp_path: Path) -> None:
    # a2's first pages outgrow the sink's buffer (its .part file is open), its fourth never comes.
    acme = _estate("a", [3, 25, 40])
    client = _Client(acme, stall=frozenset({("a2", 30)}), pad=20_000)
    sink = FileSink(tmp_path)
    checkpoints = _Checkpoints(enough=2)
    engine = Engine(client, sink, run_id="run-4", checkpoints=checkpoints)  # type: ignore[arg-type]
    task = asyncio.create_task(engine.run([_tenant("acme", acme, concurrency=3)]))
    await asyncio.wait_for(asyncio.gather(client.stalled.wait(), checkpoints.enough.wait()), 30)
    # The pages before the stalled one are written by the sink's threads, which signal nothing.
    while not list(tmp_path.rglob("a2/*.part")):  # noqa: ASYNC110
        await asyncio.sleep(0.01)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sink.close()

    assert sorted(r.scope.project_id for r in engine.results) == ["a0", "a1"]
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.partial"))
    assert not any((tmp_path / "acme" / "a2").iterdir()), "nothing of the open scope is left"


async def test_scopes_done_in_an_earlier_attempt_are_reported_without_a_request(tmp_path: Path) -> None:
    acme = _estate("a", [3, 4])
    tenant = _tenant("acme", acme)
    earlier = ScopeResult(tenant.scopes[0], status="complete", records_written=3)
    client = _Client(acme)
    sink = FileSink(tmp_path)
    engine = Engine(client, sink, run_id="run-5", done={earlier.scope.key: earlier})  # type: ignore[arg-type]

    results = await engine.run([tenant])
    await sink.close()

    assert earlier in results and len(results) == 2
    assert {r.project_id for r in client.requests} == {"a1"}


def test_each_project_is_prefetched_while_the_scopes_before_it_still_run() -> None:
    # 8 projects of 5 scopes each; two open at once, each done as soon as it is opened.
    scopes = [Scope("t", "r", f"p{i // 5}", f"project {i // 5}", None, "private") for i in range(40)]
    prefetched: list[Scope] = []
    opened: list[Scope] = []

    class _OnePage:
        held_pages = 0

        def __init__(self, scope: Scope) -> None:
            self.scope = scope
            opened.append(scope)

        def take_offset(self) -> int:
            return 0

    scheduler = TenantScheduler(
        scopes,
        _OnePage,  # type: ignore[arg-type]
        max_open=2,
        page_budget=100,
        prefetch=prefetched.append,
    )
    while (job := scheduler._take()) is not None:
        scheduler.open.remove(job[0])  # done at once

    assert opened == scopes
    for project in range(1, 8):
        first = next(i for i, s in enumerate(opened) if s.project_id == f"p{project}")
        asked = next(i for i, s in enumerate(prefetched) if s.project_id == f"p{project}")
        # Asked for when scope `asked` opened: two workers' worth of scopes or more before it is needed.
        assert first - asked >= 2 * 2, (project, asked, first)
    assert prefetched[-1] == scopes[-1], "near the end, the last scope is the one looked ahead to"
