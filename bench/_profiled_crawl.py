"""``python -m bench._profiled_crawl OUT.prof ARGS``: ``cbr-crawler ARGS`` under cProfile.

Like ``python -m cProfile -o OUT.prof -m crawler ARGS``, but timed with the main thread's CPU
clock (``time.thread_time``) instead of the wall clock: with uvloop, time spent waiting in epoll
would otherwise be charged to ``asyncio.Runner.run`` and swamp the shares. What the crawler does in
its thread pools (file writes, fsync, hashing, SQLite) is not in the profile; the process's CPU
seconds (``wait4``) are.
"""

from __future__ import annotations

import cProfile
import sys
import time

from crawler.cli import main as crawler_main


def main(argv: list[str]) -> int:
    out, args = argv[0], argv[1:]
    profiler = cProfile.Profile(time.thread_time)
    try:
        return int(profiler.runcall(crawler_main, args))
    finally:
        profiler.dump_stats(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
