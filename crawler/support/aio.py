"""Running the crawler's coroutines: uvloop, and SIGINT/SIGTERM as a clean cancellation."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("crawler")

T = TypeVar("T")


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run on uvloop when available; SIGINT and SIGTERM cancel the main task (clean stop, exit 130)."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        loop = runner.get_loop()

        async def main() -> T:
            task = asyncio.current_task()
            assert task is not None
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, _on_signal, task, sig)
            try:
                return await factory()
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

        return runner.run(main())


def _on_signal(task: asyncio.Task[Any], sig: signal.Signals) -> None:
    log.warning(
        "received %s: stopping; complete scopes are kept, the manifest will say 'interrupted'", sig.name
    )
    task.cancel()
