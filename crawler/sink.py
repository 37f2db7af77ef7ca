"""NDJSON sinks: partitioned files written under a temporary name, or standard output.

File writes, compression and hashing run in a small thread pool, never on the event loop. Each
scope's writes are awaited one after another, which keeps its lines in order and gives natural
backpressure: a worker that produced a page waits until it is on disk before fetching the next.

A file is written as ``NAME.part`` and renamed to ``NAME`` only when its scope completes
(``NAME.partial`` when it did not), so a reader globbing ``*.ndjson`` never sees half a scope, and
nothing already fetched is thrown away. The sha256 and size in the manifest are those of the bytes
on disk (after compression).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

import zstandard

COMPRESSION_SUFFIX = {"none": "", "gzip": ".gz", "zstd": ".zst"}


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A file as the manifest lists it."""

    path: str  # relative to the output root, "/"-separated
    size: int
    sha256: str
    records: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "records": self.records}


class _HashingWriter:
    """A raw file that hashes and counts every byte it writes (after compression)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        # Closing is done explicitly by _FileWriter, after the compressor has flushed its trailer.
        pass

    @property
    def closed(self) -> bool:
        return self.raw.closed

    def writable(self) -> bool:
        return True


class _FileWriter:
    """Blocking part of a scope file; every method runs in the sink's thread pool."""

    def __init__(self, final: Path, compression: str) -> None:
        self.final = final
        self.part = final.with_name(final.name + ".part")
        final.parent.mkdir(parents=True, exist_ok=True)
        self.raw = open(self.part, "wb")  # noqa: SIM115 - closed in finish()/discard()
        self.hashing = _HashingWriter(self.raw)
        self.stream: Any
        if compression == "gzip":
            # mtime=0 and no file name in the header: the same records give the same bytes,
            # so a resumed run's files equal an uninterrupted run's.
            self.stream = gzip.GzipFile(filename="", mode="wb", fileobj=self.hashing, mtime=0)
        elif compression == "zstd":
            self.stream = zstandard.ZstdCompressor(level=3).stream_writer(
                cast(IO[bytes], self.hashing), closefd=False
            )
        else:
            self.stream = self.hashing

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def finish(self, destination: Path) -> tuple[int, str]:
        if self.stream is not self.hashing:
            self.stream.close()  # writes the compressor's trailer through the hashing writer
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        # Durable before it is visible under its final name.
        os.replace(self.part, destination)
        return self.hashing.size, self.hashing.sha256.hexdigest()

    def discard(self) -> None:
        try:
            if self.stream is not self.hashing:
                self.stream.close()
        finally:
            self.raw.close()
            self.part.unlink(missing_ok=True)


class ScopeOutput(Protocol):
    """Where one scope's lines go."""

    async def write(self, data: bytes, records: int) -> None: ...

    async def commit(self, complete: bool) -> list[FileRecord]: ...

    async def discard(self) -> None: ...


class Sink(Protocol):
    """Opens one output per scope."""

    def open(self, relpath: str, compression: str | None = None) -> ScopeOutput: ...

    async def close(self) -> None: ...


class FileScopeOutput:
    """One scope's file, opened on first write.

    A complete scope always gets its file, even an empty one, so that a missing file can never be
    mistaken for a project without backups; a failed scope that fetched nothing leaves none.
    """

    def __init__(self, sink: FileSink, relpath: str, compression: str) -> None:
        self._sink = sink
        self.compression = compression
        self.relpath = relpath + COMPRESSION_SUFFIX[compression]
        self._writer: _FileWriter | None = None
        self._broken = False
        self.records = 0

    async def _ensure(self) -> _FileWriter:
        if self._writer is None:
            self._writer = await self._sink.run(_FileWriter, self._sink.root / self.relpath, self.compression)
        return self._writer

    async def write(self, data: bytes, records: int) -> None:
        writer = await self._ensure()
        try:
            await self._sink.run(writer.write, data)
        except OSError:
            # A failed write may have left half a line on disk: the file can't be trusted any more.
            self._broken = True
            raise
        self.records += records

    async def commit(self, complete: bool) -> list[FileRecord]:
        if self._broken:
            await self.discard()
            return []
        if not complete and self._writer is None:
            return []  # nothing fetched, nothing to keep
        writer = await self._ensure()
        relpath = self.relpath if complete else _partial_name(self.relpath)
        size, digest = await self._sink.run(writer.finish, self._sink.root / relpath)
        self._writer = None
        return [FileRecord(relpath, size, digest, self.records)]

    async def discard(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await self._sink.run(writer.discard)


def _partial_name(relpath: str) -> str:
    # The marker goes at the very end so that globs on the extension ("*.ndjson", "*.ndjson.gz")
    # used by downstream loaders never pick up an incomplete scope by accident.
    return relpath + ".partial"


class FileSink:
    """Partitioned NDJSON files under ``root``."""

    def __init__(self, root: Path, compression: str = "none", threads: int = 2) -> None:
        if compression not in COMPRESSION_SUFFIX:
            raise ValueError(f"unknown compression {compression!r}")
        self.root = root
        self.compression = compression
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sink")

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def open(self, relpath: str, compression: str | None = None) -> FileScopeOutput:
        """An output for one scope; ``compression`` overrides the sink's default (per tenant)."""
        chosen = compression or self.compression
        if chosen not in COMPRESSION_SUFFIX:
            raise ValueError(f"unknown compression {chosen!r}")
        return FileScopeOutput(self, relpath, chosen)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)


class StdoutScopeOutput:
    """Lines go straight to standard output; there is nothing to rename."""

    def __init__(self, sink: StdoutSink) -> None:
        self._sink = sink

    async def write(self, data: bytes, records: int) -> None:
        await self._sink.write(data)

    async def commit(self, complete: bool) -> list[FileRecord]:
        return []

    async def discard(self) -> None:
        return None


class StdoutSink:
    """NDJSON on standard output, for pipes (``--output -``). One writer thread keeps lines whole."""

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stdout")

    async def write(self, data: bytes) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._stream.write, data)

    def open(self, relpath: str, compression: str | None = None) -> StdoutScopeOutput:
        return StdoutScopeOutput(self)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self._stream.flush)
        self._pool.shutdown(wait=True)
