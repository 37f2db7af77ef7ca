"""Group commit: items asked for while a batch is being written go together in the next batch.

The sink writes tens of thousands of small files and the run state checkpoints as many scopes;
one trip to a thread (a wake-up and a GIL hand-over each way) or one transaction per item would
cost as much as the crawl. :class:`GroupCommit` queues items, writes them a batch per trip with a
blocking function in an executor, and answers each item with a future of its own outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Batches of ``T`` written by ``write``, one future per item: a blocking ``write`` runs in
    ``executor``, a coroutine function on the event loop (its ``executor`` is unused).

    ``write(batch)`` returns one outcome per item: a result, or the exception that failed that
    item alone; if it raises, every item of the batch fails with that error (later batches are
    still tried). ``interval`` is the least time from one batch's start to the next one's: items
    arriving meanwhile wait and go together (a larger batch), unless :meth:`flush` hurries them.

    Futures are answered even when nobody awaits them (their exceptions are marked retrieved), and
    an item whose future was cancelled by its caller is still written.
    """

    def __init__(
        self,
        write: Callable[[list[T]], Sequence[R | Exception]]
        | Callable[[list[T]], Awaitable[Sequence[R | Exception]]],
        executor: Executor | None,
        *,
        interval: float = 0.0,
        name: str = "group-commit",
    ) -> None:
        self._write = write
        self._executor = executor
        self._interval = interval
        self._name = name
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()
        self._last_batch = float("-inf")  # event-loop time the last batch started

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue ``item`` for the next batch; the future gets its outcome."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, done))
        if self._writer is None:
            self._writer = loop.create_task(self._run(), name=self._name)
        return done

    async def flush(self) -> None:
        """Write everything queued now (no pause) and return when nothing is left to write."""
        self._hurry.set()
        while self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._writer)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                pause = self._last_batch + self._interval - loop.time()
                if pause > 0 and not self._hurry.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._hurry.wait(), pause)
                self._hurry.clear()
                self._last_batch = loop.time()
                batch, self._queue = self._queue, []
                items = [item for item, _ in batch]
                try:
                    if inspect.iscoroutinefunction(self._write):
                        outcomes = await self._write(items)  # an async write (a store's API)
                    else:
                        outcomes = await loop.run_in_executor(self._executor, self._write, items)
                except asyncio.CancelledError:
                    # No writer is left to answer what is queued: every caller is told.
                    for _, done in [*batch, *self._queue]:
                        done.cancel()
                    self._queue = []
                    raise
                except Exception as exc:
                    outcomes = [exc] * len(batch)
                for (_, done), outcome in zip(batch, outcomes, strict=True):
                    if done.done():
                        continue  # its caller was interrupted; the item was written all the same
                    if isinstance(outcome, Exception):
                        done.set_exception(outcome)
                        done.exception()  # retrieved here: callers need not wait for it
                    else:
                        done.set_result(outcome)
        finally:
            self._writer = None
