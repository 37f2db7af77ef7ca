"""Logging set-up: human lines on stderr, or JSON lines, with every known secret masked.

Secrets are never logged on purpose; the redaction filter is the second line of defence, for a
secret that reaches a log line through an exception message from a library.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

_SECRETS: set[str] = set()
MASK = "***"


def register_secret(value: str) -> None:
    """Mask ``value`` wherever it would appear in a log line from now on."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _JsonFormatter(logging.Formatter):
    def __init__(self, run_id: str | None) -> None:
        super().__init__()
        self.run_id = run_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.run_id:
            entry["run_id"] = self.run_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(entry).decode())


def setup_logging(level: str = "info", json_lines: bool = False, run_id: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if json_lines:
        formatter = _JsonFormatter(run_id)
    else:
        formatter = _RedactingFormatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
    formatter.converter = __import__("time").gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log and asyncio's debug chatter are not the on-call engineer's business.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def set_run_id(run_id: str) -> None:
    """Label JSON log lines with ``run_id`` from now on (a resumed run takes its recorded id)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, _JsonFormatter):
            handler.formatter.run_id = run_id
