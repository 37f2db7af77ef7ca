"""GroupCommit: the batching shared by the sink's small files and the run state's checkpoints."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from crawler.support.groupcommit import GroupCommit


class Recorder:
    """A blocking write that records its batches; it can hold a trip until released or fail one."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.fail_trips: set[int] = set()

    def __call__(self, batch: list[str]) -> list[str | Exception]:
        self.batches.append(list(batch))
        self.release.wait(5)
        if len(self.batches) in self.fail_trips:
            raise RuntimeError("the pool is gone")
        return [ValueError(item) if item.startswith("bad") else item.upper() for item in batch]


@pytest.fixture
def pool() -> ThreadPoolExecutor:
    executor = ThreadPoolExecutor(max_workers=1)
    yield executor  # type: ignore[misc]
    executor.shutdown(wait=True)


async def _until(condition: object) -> None:
    for _ in range(500):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


async def test_items_asked_for_during_a_trip_go_together_in_the_next(pool: ThreadPoolExecutor) -> None:
    write = Recorder()
    write.release.clear()
    group: GroupCommit[str, str] = GroupCommit(write, pool)
    first = group.submit("a")
    await _until(lambda: write.batches)  # the first trip holds "a" alone
    later = [group.submit(x) for x in ("b", "c", "d")]
    write.release.set()
    assert await first == "A"
    assert await asyncio.gather(*later) == ["B", "C", "D"]
    assert write.batches == [["a"], ["b", "c", "d"]]


async def test_an_item_that_fails_fails_alone(pool: ThreadPoolExecutor) -> None:
    group: GroupCommit[str, str] = GroupCommit(Recorder(), pool)
    outcomes = await asyncio.gather(*(group.submit(x) for x in ("a", "bad", "c")), return_exceptions=True)
    assert outcomes[0] == "A" and outcomes[2] == "C"
    assert isinstance(outcomes[1], ValueError)


async def test_a_trip_that_fails_whole_fails_its_batch_and_later_items_are_still_written(
    pool: ThreadPoolExecutor,
) -> None:
    # Items queued while the failing trip ran must still get a writer: before, their futures never
    # ended, and the engine, which waits for every commit, hung.
    write = Recorder()
    write.release.clear()
    write.fail_trips = {1}
    group: GroupCommit[str, str] = GroupCommit(write, pool)
    first = group.submit("a")
    await _until(lambda: write.batches)
    later = [group.submit(x) for x in ("b", "c")]
    write.release.set()
    with pytest.raises(RuntimeError, match="the pool is gone"):
        await asyncio.wait_for(first, 5)
    assert await asyncio.wait_for(asyncio.gather(*later), 5) == ["B", "C"]


async def test_failures_nobody_awaits_are_not_reported_as_never_retrieved(pool: ThreadPoolExecutor) -> None:
    # filterwarnings=error turns "Future exception was never retrieved" into a failure.
    group: GroupCommit[str, str] = GroupCommit(Recorder(), pool)
    group.submit("bad")
    await group.flush()


async def test_a_cancelled_caller_does_not_stop_its_item_being_written(pool: ThreadPoolExecutor) -> None:
    write = Recorder()
    write.release.clear()
    group: GroupCommit[str, str] = GroupCommit(write, pool)
    first = group.submit("a")
    await _until(lambda: write.batches)
    first.cancel()
    second = group.submit("b")
    write.release.set()
    assert await second == "B"
    assert write.batches == [["a"], ["b"]]


async def test_interval_gathers_items_into_one_batch_and_flush_hurries_them(pool: ThreadPoolExecutor) -> None:
    write = Recorder()
    group: GroupCommit[str, str] = GroupCommit(write, pool, interval=60.0)
    assert await group.submit("a") == "A"  # the first batch goes at once
    later = [group.submit(x) for x in ("b", "c")]
    await asyncio.sleep(0.05)
    assert write.batches == [["a"]], "within the interval, nothing more is written"
    await asyncio.wait_for(group.flush(), 5)  # ...unless flushed
    assert await asyncio.gather(*later) == ["B", "C"]
    assert write.batches == [["a"], ["b", "c"]]


async def test_cancelling_the_writer_cancels_what_is_queued(pool: ThreadPoolExecutor) -> None:
    write = Recorder()
    write.release.clear()
    group: GroupCommit[str, str] = GroupCommit(write, pool)
    first = group.submit("a")
    await _until(lambda: write.batches)
    queued = group.submit("b")
    assert group._writer is not None
    group._writer.cancel()
    await asyncio.sleep(0)
    write.release.set()
    await asyncio.sleep(0.05)
    assert first.cancelled() and queued.cancelled()


async def test_an_async_write_is_awaited_on_the_loop_with_the_same_batching() -> None:
    # The bucket's checkpoints: the store's API is async, so no thread is involved.
    batches: list[list[str]] = []
    release = asyncio.Event()

    async def write(batch: list[str]) -> list[str | Exception]:
        batches.append(list(batch))
        await release.wait()
        if "bad" in batch:
            raise RuntimeError("the store said no")
        return [item.upper() for item in batch]

    group: GroupCommit[str, str] = GroupCommit(write, None)
    first = group.submit("a")
    await _until(lambda: batches)
    later = [group.submit(x) for x in ("b", "bad")]
    release.set()
    assert await first == "A"
    outcomes = await asyncio.gather(*later, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes), "a raising write fails its whole batch"
    assert batches == [["a"], ["b", "bad"]]
