"""The run's manifest and ``_SUCCESS`` marker.

``manifest.json`` is written last and atomically (temporary file, fsync, rename), so a reader
either sees the previous run's manifest or this one's, never half of one. ``_SUCCESS`` is written
only when every scope is complete, and removed when a run starts, so that a marker can never
vouch for output a later, failing run has touched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def clear_success(root: Path) -> None:
    (root / SUCCESS).unlink(missing_ok=True)


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Blocking: call it in a thread from async code. Writes ``_SUCCESS`` if the run is complete."""
    path = root / MANIFEST
    atomic_write(path, orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    if manifest.get("status") == "complete":
        atomic_write(root / SUCCESS, b"")
    return path
