"""Progress: a single updating line on a terminal, periodic log lines elsewhere."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import crawler_env, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import Scenario
from crawler.emulator.server import EmulatorThread
from crawler.pipeline.engine import RunStats
from crawler.support.progress import render_bar, run_progress, use_bar


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_shows_scopes_backups_rate_and_fits_the_width() -> None:
    stats = RunStats(scopes_total=10, scopes_done=5, scopes_failed=1, records=123_456, started=100.0)
    line = render_bar(stats, 100, now=160.0)
    assert line.startswith("[" + "#" * 15 + "." * 15 + "]")
    assert "5/10 scopes, 1 not complete" in line
    assert "123.5k backups" in line
    assert "2058/s" in line and "1m00s" in line
    assert len(line) <= 100
    narrow = render_bar(stats, 40, now=160.0)
    assert len(narrow) <= 40 and "[" not in narrow


def test_no_bar_off_a_terminal_or_with_json_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not use_bar(io.StringIO())
    monkeypatch.setenv("TERM", "xterm")
    assert use_bar(FakeTerminal())
    monkeypatch.setenv("TERM", "dumb")
    assert not use_bar(FakeTerminal())


async def test_bar_is_redrawn_in_place_and_wiped_before_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    terminal = FakeTerminal()
    handler = logging.StreamHandler(terminal)
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    stats = RunStats(scopes_total=4)
    task = asyncio.create_task(run_progress(stats, interval=60, stream=terminal))
    try:
        while terminal.getvalue().count("scopes") < 2:  # two draws: it redraws, it does not scroll
            stats.scopes_done = min(stats.scopes_done + 1, 4)
            await asyncio.sleep(0.05)
        logging.getLogger("crawler.test").warning("a log line")
        while "scopes" not in terminal.getvalue().split("a log line")[-1]:  # drawn again below it
            stats.records += 1
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        root.handlers[:] = saved
    text = terminal.getvalue()
    assert "\n" not in text.split("a log line")[0], "the bar never scrolls the terminal"
    assert text.count("\r\x1b[K[") >= 2
    # The bar is wiped (\r + erase line) right before the log line, and when progress stops.
    assert "\r\x1b[Ka log line\n" in text
    assert text.endswith("\r\x1b[K")
    assert not handler.filters, "the wiping filter is removed when progress stops"


async def test_progress_lines_off_a_terminal() -> None:
    stream = io.StringIO()
    stats = RunStats(scopes_total=3, scopes_done=1, records=42)
    seen: list[str] = []
    logged = asyncio.Event()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())
            logged.set()

    logger = logging.getLogger("crawler.pipeline.runner")
    catch, level = Catch(), logger.level
    logger.addHandler(catch)
    logger.setLevel(logging.INFO)
    task = asyncio.create_task(run_progress(stats, interval=0.01, stream=stream))
    try:
        await logged.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        logger.removeHandler(catch)
        logger.setLevel(level)
    assert seen[0].startswith("progress: 1/3 scopes, 42 backups")
    assert stream.getvalue() == ""


@pytest.mark.e2e
def test_cli_on_a_terminal_draws_one_updating_line(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    scenario = Scenario(
        seed=4, estate=EstateSpec(seed=4, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=600),))
    )
    emu = emulator_factory(scenario)
    config = write_tenant(
        tmp_path, emu.url, "acme-prod", "acme", regions=["cn-north-4"],
        rate_limit={"requests_per_second": 20, "concurrency": 2, "page_size": 50},
    )  # fmt: skip
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # a pty must be read while the process writes, or it blocks
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "crawler", "run", "-c", str(config), "--output", str(tmp_path / "o")],
            env=crawler_env(TERM="xterm"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=slave, timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, text[-2000:]
    assert "\r\x1b[K[" in text, "a bar drawn in place"
    assert "scopes" in text and "backups" in text
    assert "COMPLETE" in text
