"""Blocking file helpers with the durability the outputs promise: atomic replacement, batched sync.

Everything here blocks: call it from a thread (or from synchronous code) in async programs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
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
        with open_new(str(tmp), buffering) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def open_new(path: str, buffering: int = -1) -> BinaryIO:
    """``path`` opened for writing, truncated, never through a symbolic link planted there (the
    open fails with ELOOP instead of writing wherever the link points)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o666)
    return os.fdopen(fd, "wb", buffering=buffering)


def make_directories_within(root: str, relative: str) -> None:
    """Create ``root/relative`` one component at a time, refusing a component that is a symbolic
    link or not a directory: the output never follows a link planted in it out of its root. (The
    root itself is the user's choice: created if missing, and it may be a link.)"""
    os.makedirs(root, exist_ok=True)
    path = root
    for part in relative.split("/"):
        if not part or part == ".":
            continue
        path = os.path.join(path, part)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):  # another thread made it meanwhile
                os.mkdir(path)
            info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a directory"
            raise OSError(errno.ELOOP, f"{path} is {kind}: the output does not write through it", path)


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
