"""Reading a finished run's output back: its manifest and each scope's NDJSON lines, streamed.

Used by the jobs that look at a run after it is written (``diff``, the inventory report), on a
directory or a bucket alike (:mod:`crawler.commands.places`). Files are read line by line through
the decompressor, never whole: a scope file can hold millions of lines. All of it is blocking I/O:
call it from a thread (or from synchronous code) in async programs.
"""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Iterator
from typing import IO, Any, cast

import orjson
import zstandard

from crawler.commands.places import Place, Where, place
from crawler.errors import CrawlerError
from crawler.pipeline.manifest import MANIFEST

READ_CHUNK = 1 << 20


class OutputError(CrawlerError):
    """A run's output cannot be read: no manifest, or a manifest this tool does not understand."""


def load_manifest(where: Where) -> dict[str, Any]:
    """The manifest of the run output in ``root`` (a directory, or a manifest file itself)."""
    root = place(where)
    path = root if root.is_file() else root / MANIFEST
    try:
        manifest = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise OutputError(f"{root}: no {MANIFEST} (not a run output, or the run never finished)") from None
    except orjson.JSONDecodeError as exc:
        raise OutputError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("scopes"), list):
        raise OutputError(f"{path}: not a cbr-crawler manifest (no 'scopes' list)")
    return manifest


def output_root(where: Where) -> Place:
    """The directory scope file paths are relative to (``root`` may name the manifest itself)."""
    root = place(where)
    return root.parent if root.is_file() else root


def _compression(path: Place) -> str:
    name = path.name.removesuffix(".partial").removesuffix(".part")
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith(".zst"):
        return "zstd"
    return "none"


def iter_lines(where: Where) -> Iterator[bytes]:
    """Every non-empty line of one NDJSON file (without its newline), decompressed as it is read
    (gzip or zstd, chosen by the file name), a chunk at a time."""
    path = place(where)
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(path.open())
        kind = _compression(path)
        stream: IO[bytes]
        if kind == "gzip":
            stream = cast(IO[bytes], stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb")))
        elif kind == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=READ_CHUNK, closefd=False)
            stream = stack.enter_context(cast(IO[bytes], reader))
        else:
            stream = raw
        rest = b""
        while chunk := stream.read(READ_CHUNK):
            lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
            rest = lines.pop()
            for line in lines:
                line = line.rstrip(b"\r")
                if line:
                    yield line
        rest = rest.rstrip(b"\r")
        if rest:
            yield rest


def scope_files(root: Place, scope: dict[str, Any]) -> list[Place]:
    """The files of one manifest scope entry, as paths below the output root."""
    return [root / str(f["path"]) for f in scope.get("files") or []]


def iter_scope_lines(root: Place, scope: dict[str, Any]) -> Iterator[bytes]:
    """Every record line of a scope, file after file, in the order they were written."""
    for path in scope_files(root, scope):
        yield from iter_lines(path)


def missing_files(root: Place, scope: dict[str, Any]) -> list[str]:
    """Files the manifest lists for ``scope`` that are not there with the recorded size."""
    missing: list[str] = []
    for entry in scope.get("files") or []:
        size = (root / str(entry["path"])).size()
        if size is None:
            missing.append(str(entry["path"]))
            continue
        if entry.get("size") is not None and size != entry["size"]:
            missing.append(f"{entry['path']} (size {size}, manifest says {entry['size']})")
    return missing
