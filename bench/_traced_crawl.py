"""``python -m bench._traced_crawl ARGS``: ``cbr-crawler ARGS`` under tracemalloc.

A sampler thread snapshots the traced allocations every half second and keeps the largest one;
at exit the top allocation sites of that snapshot (by line, then by traceback) go to stderr.
Used by ``bench.crawl_memory --tracemalloc`` to say where the crawler's memory goes.
"""

from __future__ import annotations

import sys
import threading
import tracemalloc

from crawler.cli import main as crawler_main

FRAMES = 12
TOP = 15


def _sample(stop: threading.Event, best: list[tracemalloc.Snapshot], sizes: list[int]) -> None:
    while not stop.wait(0.5):
        current, _ = tracemalloc.get_traced_memory()
        if not sizes or current > sizes[0]:
            best[:] = [tracemalloc.take_snapshot()]
            sizes[:] = [current]


def main() -> int:
    tracemalloc.start(FRAMES)
    stop = threading.Event()
    best: list[tracemalloc.Snapshot] = []
    sizes: list[int] = []
    sampler = threading.Thread(target=_sample, args=(stop, best, sizes), daemon=True)
    sampler.start()
    try:
        code = crawler_main(sys.argv[1:])
    finally:
        stop.set()
        sampler.join()
        _, peak = tracemalloc.get_traced_memory()
        print(f"\ntracemalloc: peak traced {peak / 2**20:.1f} MiB", file=sys.stderr)
        if best:
            snapshot = best[0].filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            print(f"largest sampled snapshot: {sizes[0] / 2**20:.1f} MiB; top lines:", file=sys.stderr)
            for stat in snapshot.statistics("lineno")[:TOP]:
                print(
                    f"  {stat.size / 2**20:8.1f} MiB {stat.count:9} blocks  {stat.traceback[0]}",
                    file=sys.stderr,
                )
            print("top tracebacks:", file=sys.stderr)
            for stat in snapshot.statistics("traceback")[:5]:
                print(f"  {stat.size / 2**20:8.1f} MiB {stat.count:9} blocks", file=sys.stderr)
                for line in stat.traceback.format()[-FRAMES * 2 :]:
                    print(f"      {line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
