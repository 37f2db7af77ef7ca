"""Wall-clock timestamps as the crawler writes them: UTC, ISO 8601, ``Z``-suffixed."""

from __future__ import annotations

import time

_second_text: tuple[int, str] = (-1, "")  # the last whole second formatted, reused within it


def utc_now_iso(milliseconds: bool = True) -> str:
    """Now in UTC as ``2026-11-27T21:05:39.123Z`` (or ``...T21:05:39Z`` without milliseconds).

    Called a few times per scope (a record's ``fetched_at``), so a second is formatted only once.
    Manifests keep whole seconds: their times are compared as strings, and a mix of both
    spellings would not sort.
    """
    global _second_text
    now = time.time()
    second = int(now)
    if second != _second_text[0]:
        _second_text = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    if not milliseconds:
        return f"{_second_text[1]}Z"
    return f"{_second_text[1]}.{int((now - second) * 1000):03d}Z"
