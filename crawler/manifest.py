"""The run's manifest and ``_SUCCESS`` marker.

``manifest.json`` is written last and atomically (temporary file, fsync, rename), so a reader
either sees the previous run's manifest or this one's, never half of one. ``_SUCCESS`` is written
only when every scope is complete, and removed when a run starts, so that a marker can never
vouch for output a later, failing run has touched.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"


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


def clear_success(root: Path) -> None:
    (root / SUCCESS).unlink(missing_ok=True)


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Blocking: call it in a thread from async code. Writes ``_SUCCESS`` if the run is complete."""
    path = root / MANIFEST
    atomic_write(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    if manifest.get("status") == "complete":
        atomic_write(root / SUCCESS, b"")
    return path
