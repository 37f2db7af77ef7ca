"""Blocking file helpers with the durability the outputs promise: atomic replacement, batched sync.

Everything here blocks: call it from a thread (or from synchronous code) in async programs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, cast


@contextlib.contextmanager
def atomic_file(path: Path, buffering: int = -1) -> Iterator[BinaryIO]:
    """A file written under a temporary name, made durable, then renamed to ``path`` on success.

    Readers see the old or the new content, never a mix; on an error the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb", buffering=buffering) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix."""
    with atomic_file(path) as fh:
        fh.write(data)


def _find_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return cast(Callable[[int], int], syncfs)


_SYNCFS = _find_syncfs()


def make_durable(root: Path, relpaths: Iterable[str]) -> None:
    """Make files already in place under ``root`` durable, with their directory entries.

    On Linux one ``syncfs(2)`` of the output's filesystem covers any number of files in one journal
    commit (a file system mounted below ``root`` is not supported as an output). Elsewhere each
    file and each of their directories is fsynced.
    """
    relpaths = list(relpaths)
    if not relpaths:
        return
    if _SYNCFS is not None:
        # No path is built: with tens of thousands of files, building them costs more than the sync.
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _SYNCFS(fd) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"syncfs of {root}: {os.strerror(errno)}")
        finally:
            os.close(fd)
        return
    paths = [root / relpath for relpath in relpaths]
    for path in [*paths, *sorted({p.parent for p in paths})]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
