"""``python -m bench._peak_rss OUT MODULE ARGS``: ``python -m MODULE ARGS``, then its peak RSS into OUT.

``wait4``'s ``ru_maxrss`` is not the child's own peak on Linux: ``exec`` keeps the larger of the old
and the new address space's high-water marks, so a child forked from a big parent (the benchmark,
after the floors and the SDK ran in it) reports the parent's size. ``VmHWM`` in ``/proc/self/status``
belongs to the address space made by ``exec``: read at exit, it is the child's own peak.
"""

from __future__ import annotations

import runpy
import sys


def _write_peak(out: str) -> None:
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(out, "w") as fh:
        fh.write(peak)  # KiB


def main() -> None:
    out, module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        _write_peak(out)


if __name__ == "__main__":
    main()
