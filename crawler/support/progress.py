"""Progress while a run goes: its counters (:class:`RunStats`), shown as one updating line on a
terminal, as periodic log lines otherwise.

On a terminal (stderr is a TTY, and the logs are not JSON lines) a single line is redrawn in place
a few times a second. Log lines still appear: a filter on the log handlers wipes the bar before a
line is written, and the next tick draws it again below. Anywhere else (a file, a pipe, a
scheduler's log) the ``progress:`` log line is written every ``interval`` seconds, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import IO

log = logging.getLogger("crawler.pipeline.runner")

BAR_REFRESH = 0.25  # seconds between redraws of the bar
_CLEAR = "\r\x1b[K"


@dataclass(slots=True)
class RunStats:
    """The run's counters (the engine and the page walks count, this module shows them)."""

    scopes_total: int = 0
    scopes_done: int = 0
    scopes_failed: int = 0
    records: int = 0
    pages: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"progress: {self.scopes_done}/{self.scopes_total} scopes, {self.records} backups, "
            f"{self.pages} pages, {self.records / elapsed:.0f} backups/s, {elapsed:.0f}s"
        )


def use_bar(stream: IO[str]) -> bool:
    """A bar only on a real terminal, and not when logs are JSON lines (a bar would corrupt them)."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    if not tty or os.environ.get("TERM") == "dumb":
        return False
    return not any(hasattr(h.formatter, "run_id") for h in logging.getLogger().handlers)


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else f"{n:.0f}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def render_bar(stats: RunStats, width: int, now: float | None = None) -> str:
    """One line, at most ``width`` characters: a bar of scopes done, backups, rate, elapsed time."""
    elapsed = max((now if now is not None else time.monotonic()) - stats.started, 1e-9)
    total, done = stats.scopes_total, stats.scopes_done
    failed = f", {stats.scopes_failed} not complete" if stats.scopes_failed else ""
    text = (
        f" {done}/{total} scopes{failed}  {_count(stats.records)} backups  "
        f"{_count(stats.records / elapsed)}/s  {_duration(elapsed)}"
    )
    bar_width = min(30, width - len(text) - 3)
    if bar_width < 5:
        return text.strip()[:width]
    filled = int(bar_width * done / total) if total else 0
    return f"[{'#' * filled}{'.' * (bar_width - filled)}]{text}"[:width]


class ProgressBar:
    """The single updating line; :meth:`clear` is called before anything else is written to it."""

    def __init__(self, stats: RunStats, stream: IO[str]) -> None:
        self.stats = stats
        self.stream = stream
        self.shown = False

    def draw(self) -> None:
        width = shutil.get_terminal_size((100, 24)).columns - 1
        self.stream.write(_CLEAR + render_bar(self.stats, width))
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self.shown = False


class _ClearBar(logging.Filter):
    """Wipes the bar before a log line is written to the same terminal (filters run before emit)."""

    def __init__(self, bar: ProgressBar) -> None:
        super().__init__()
        self.bar = bar

    def filter(self, record: logging.LogRecord) -> bool:
        self.bar.clear()
        return True


async def run_progress(stats: RunStats, interval: float, stream: IO[str] | None = None) -> None:
    """Until cancelled: the bar on a terminal, else a ``progress:`` log line every ``interval`` s."""
    stream = stream if stream is not None else sys.stderr
    if not use_bar(stream):
        while True:
            await asyncio.sleep(interval)
            log.info("%s", stats.line())
    bar = ProgressBar(stats, stream)
    handlers = logging.getLogger().handlers
    guard = _ClearBar(bar)
    for handler in handlers:
        handler.addFilter(guard)
    try:
        while True:
            bar.draw()
            await asyncio.sleep(BAR_REFRESH)
    finally:
        bar.clear()
        for handler in handlers:
            handler.removeFilter(guard)
