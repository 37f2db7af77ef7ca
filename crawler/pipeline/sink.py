"""NDJSON sinks: partitioned files written under a temporary name, or standard output.

File writes, compression and hashing run in a small thread pool, never on the event loop. Each
scope's writes are awaited one after another, which keeps its lines in order and gives natural
backpressure: a worker that produced a page waits until it is on disk before fetching the next.

A file is written as ``NAME.part`` and renamed to ``NAME`` only when its scope completes
(``NAME.partial`` when it did not), so a reader globbing ``*.ndjson`` never sees half a scope, and
nothing already fetched is thrown away (an empty uncompressed file, which cannot be half-written, is
created under its final name when its scope completes). The sha256 and size in the manifest are
those of the bytes on disk (after compression).

A scope whose lines never outgrew :data:`BUFFER_BYTES` is written whole when it commits, and such
files go to the threads in batches (group commit, :mod:`crawler.support.groupcommit`): with tens
of thousands of tiny scopes, one trip per file would make the thread hand-offs (wake-ups, the GIL
going back and forth) cost as much as the requests. Either way a commit is one future
(:meth:`ScopeOutput.commit`), which the engine finishes by a callback.

Durability is a separate, batched step (:func:`crawler.support.files.make_durable`): files are not
fsynced one by one when they are renamed. Nothing vouches for a file before it is durable: the run
state checkpoints completed scopes in batches, each after one ``make_durable`` of the batch, and the
manifest is written after one of the whole output. After a power loss a renamed file may thus be
short, but then no checkpoint and no manifest name it, and the next attempt writes it again. For
20,000 small scopes this is one filesystem sync per batch instead of 20,000 fsyncs (a journal commit
each).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

import zstandard

from crawler.support.files import NOFOLLOW, make_directories_within, open_new
from crawler.support.groupcommit import GroupCommit

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

    def __init__(self, root: str, relpath: str, compression: str, made_directories: set[str]) -> None:
        self.final = final = Path(root) / relpath
        self.part = final.with_name(final.name + ".part")
        directory = os.path.dirname(relpath)
        if directory not in made_directories:
            make_directories_within(root, directory)
            made_directories.add(directory)
        self.raw = open_new(str(self.part))  # closed in finish()/discard()
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
        self.raw.close()
        # Whole before it is visible under its final name (durable later: see make_durable).
        os.replace(self.part, destination)
        return self.hashing.size, self.hashing.sha256.hexdigest()

    def discard(self) -> None:
        # Each step on its own: on a full disk closing flushes and fails again, and the temporary
        # file must go all the same.
        try:
            if self.stream is not self.hashing:
                with contextlib.suppress(OSError):
                    self.stream.close()
            with contextlib.suppress(OSError):
                self.raw.close()
        finally:
            self.part.unlink(missing_ok=True)


class ScopeOutput(Protocol):
    """Where one scope's lines go."""

    # Whether discard() lets the scope write its lines afresh (a file), or lines once written are
    # out for good (standard output). Only a rewritable output may spill its ids (crawler.pipeline.dedupe).
    rewritable: bool

    async def write(self, data: bytes, records: int) -> None:
        """Append lines (``records`` of them); awaiting it is the backpressure."""
        ...

    def commit(self, complete: bool) -> asyncio.Future[list[FileRecord]]:
        """Make the output final: under its name if ``complete``, else its ``.partial`` name.

        Returns at once; the future gets the files written (none for a failed scope that fetched
        nothing). A failed commit leaves nothing half-written behind.
        """
        ...

    async def discard(self) -> None:
        """Drop what was written; a rewritable output may be written afresh after this."""
        ...


class Sink(Protocol):
    """Opens one output per scope."""

    def open(self, relpath: str, compression: str | None = None) -> ScopeOutput: ...

    async def close(self) -> None: ...


# A scope's first lines wait in memory up to this size before its file is opened: most scopes
# are small, and such a scope then costs one trip to the sink's threads (open, write, close,
# rename) instead of one per step. Bounded by the open scopes (at most the tenants' concurrency).
BUFFER_BYTES = 256 * 1024


class FileScopeOutput:
    """One scope's file, opened once its lines outgrow :data:`BUFFER_BYTES` (or at commit).

    A complete scope always gets its file, even an empty one, so that a missing file can never be
    mistaken for a project without backups; a failed scope that fetched nothing leaves none.
    """

    def __init__(self, sink: FileSink, relpath: str, compression: str) -> None:
        self._sink = sink
        self.compression = compression
        self.relpath = relpath + COMPRESSION_SUFFIX[compression]
        self._writer: _FileWriter | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._broken = False
        # The thread's step under way for this file, if any: a caller interrupted while it runs
        # does not stop the thread, so discard() waits for it (and adopts a file it opened).
        self._pending: asyncio.Future[Any] | None = None
        self.records = 0

    rewritable = True  # discard() removes the .part: the scope may write its lines afresh

    def _open_with(self, data: bytes) -> _FileWriter:
        """(Sink thread) Open the file and write ``data``; nothing is left behind if that fails."""
        sink = self._sink
        writer = _FileWriter(sink._root_text, self.relpath, self.compression, sink.made_directories)
        try:
            writer.write(data)
        except BaseException:
            writer.discard()
            raise
        return writer

    def _take_buffer(self) -> bytes:
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        return data

    async def write(self, data: bytes, records: int) -> None:
        if self._broken:
            raise OSError(f"{self.relpath}: an earlier write failed")
        self.records += records
        if self._writer is None and self._buffered + len(data) <= BUFFER_BYTES:
            self._buffer.append(data)
            self._buffered += len(data)
            return
        try:
            if self._writer is None:
                self._buffer.append(data)
                opening = self._step(self._open_with, self._take_buffer())
                opening.add_done_callback(self._opened)
                await asyncio.shield(opening)
            else:
                await asyncio.shield(self._step(self._writer.write, data))
        except OSError:
            # A failed write may have left half a line on disk: the file can't be trusted any more.
            self._broken = True
            raise

    def _step(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        self._pending = asyncio.get_running_loop().run_in_executor(self._sink.pool, fn, *args)
        return self._pending

    def _opened(self, opening: asyncio.Future[_FileWriter]) -> None:
        # A callback, not the awaiting caller: the file is known even if that caller was interrupted
        # while the thread created it (else its .part would stay open and on disk).
        if not opening.cancelled() and opening.exception() is None:
            self._writer = opening.result()

    def commit(self, complete: bool) -> asyncio.Future[list[FileRecord]]:
        """A scope whose lines are all in memory goes with the sink's next batch of whole files;
        one whose file is open is finished (closed, renamed) by a task."""
        loop = asyncio.get_running_loop()
        if self._writer is not None or self._broken:
            return loop.create_task(self._finish_file(complete))
        if not complete and not self._buffer:
            nothing: asyncio.Future[list[FileRecord]] = loop.create_future()
            nothing.set_result([])  # nothing fetched, nothing to keep
            return nothing
        relpath = self.relpath if complete else _partial_name(self.relpath)
        return self._sink.write_whole(self, relpath, self._take_buffer())

    async def _finish_file(self, complete: bool) -> list[FileRecord]:
        if self._broken:
            await self.discard()
            return []
        assert self._writer is not None
        relpath = self.relpath if complete else _partial_name(self.relpath)
        destination = self._sink.root / relpath
        writer, self._writer = self._writer, None
        try:
            size, digest = await self._sink.run(writer.finish, destination)
        except BaseException:
            await asyncio.shield(self._sink.run(writer.discard))
            raise
        return [FileRecord(relpath, size, digest, self.records)]

    async def discard(self) -> None:
        """Drop what was written; the output may be written afresh after this."""
        self._buffer.clear()
        self._buffered = 0
        self.records = 0
        if self._pending is not None:
            await asyncio.wait([self._pending])  # its outcome was the interrupted caller's to see
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await self._sink.run(writer.discard)


@dataclass(slots=True)
class _WholeFile:
    """A small scope's file waiting for its batch."""

    relpath: str  # the complete file's name (its .part is written first)
    destination: str  # relpath, or its .partial name
    compression: str
    data: bytes  # uncompressed
    records: int


_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _compressed(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)  # no name, no time in the header: reproducible bytes
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def _write_file(part: str, destination: str, payload: bytes) -> tuple[int, str]:
    """(Sink thread) ``payload`` as ``part``, renamed to ``destination``; its size and sha256.

    Plain ``os`` calls, no file objects: this runs for every small scope, and every Python step
    here holds the GIL the event loop is waiting for.
    """
    if not payload:
        # An empty file cannot be half-written: it is created under its final name at once.
        os.close(os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o666))
        return 0, _EMPTY_SHA256
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW, 0o666)
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(part, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    return len(payload), hashlib.sha256(payload).hexdigest()


def _partial_name(relpath: str) -> str:
    # The marker goes at the very end so that globs on the extension ("*.ndjson", "*.ndjson.gz")
    # used by downstream loaders never pick up an incomplete scope by accident.
    return relpath + ".partial"


SPLIT_BATCH_AT = 8  # small files per thread before a batch is shared out among the sink's threads


class FileSink:
    """Partitioned NDJSON files under ``root``."""

    def __init__(self, root: Path, compression: str = "none", threads: int = 2) -> None:
        if compression not in COMPRESSION_SUFFIX:
            raise ValueError(f"unknown compression {compression!r}")
        self.root = root
        self.compression = compression
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sink")
        self._threads = threads
        # Directories known to exist (scopes share them): one mkdir each, not one per file. Only
        # ever added to, from the pool's threads; a set's add and lookup are atomic.
        self.made_directories: set[str] = set()
        self._root_text = str(root)
        # Whole files of small scopes, written a batch per trip to the pool (see write_whole).
        self._wholes: GroupCommit[_WholeFile, list[FileRecord]] = GroupCommit(
            self._write_batches, self.pool, name="sink:small-files"
        )

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def write_whole(
        self, output: FileScopeOutput, relpath: str, data: bytes
    ) -> asyncio.Future[list[FileRecord]]:
        """Write a small scope's whole file as ``relpath``; the future gets its FileRecord.

        Files asked for while a batch is being written go in the next one, so thousands of tiny
        scopes cost a few hundred trips to the pool (thread wake-ups and GIL hand-overs), not one each.
        """
        return self._wholes.submit(
            _WholeFile(output.relpath, relpath, output.compression, data, output.records)
        )

    def open(self, relpath: str, compression: str | None = None) -> FileScopeOutput:
        """An output for one scope; ``compression`` overrides the sink's default (per tenant)."""
        chosen = compression or self.compression
        if chosen not in COMPRESSION_SUFFIX:
            raise ValueError(f"unknown compression {chosen!r}")
        return FileScopeOutput(self, relpath, chosen)

    async def _write_batches(self, batch: list[_WholeFile]) -> list[list[FileRecord] | Exception]:
        """A batch of small files, shared out among the pool's threads: creating a file is mostly
        the kernel's work (about 180 us on this project's VM disk), and two threads create nearly
        twice as many a second as one. A single pass of many empty partitions is bound by it."""
        loop = asyncio.get_running_loop()
        share = -(-len(batch) // self._threads)
        if share < SPLIT_BATCH_AT:
            return await loop.run_in_executor(self.pool, self._write_batch, batch)
        parts = [batch[i : i + share] for i in range(0, len(batch), share)]
        done = await asyncio.gather(*(loop.run_in_executor(self.pool, self._write_batch, p) for p in parts))
        return [outcome for part in done for outcome in part]

    def _write_batch(self, batch: list[_WholeFile]) -> list[list[FileRecord] | Exception]:
        """(Sink thread) Each file of a batch; each failure is its own (a full disk fails them all)."""
        root = self._root_text
        outcomes: list[list[FileRecord] | Exception] = []
        for job in batch:
            try:
                final = f"{root}/{job.relpath}"
                directory = os.path.dirname(job.relpath)
                if directory not in self.made_directories:
                    make_directories_within(root, directory)
                    self.made_directories.add(directory)
                payload = _compressed(job.data, job.compression)
                size, digest = _write_file(final + ".part", f"{root}/{job.destination}", payload)
                outcomes.append([FileRecord(job.destination, size, digest, job.records)])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def close(self) -> None:
        # A batch still being written (its callers interrupted): let it end before the pool.
        await self._wholes.flush()
        self.pool.shutdown(wait=True)


class StdoutScopeOutput:
    """Lines go straight to standard output; there is nothing to rename."""

    rewritable = False  # printed lines cannot be taken back

    def __init__(self, sink: StdoutSink) -> None:
        self._sink = sink

    async def write(self, data: bytes, records: int) -> None:
        await self._sink.write(data)

    def commit(self, complete: bool) -> asyncio.Future[list[FileRecord]]:
        done: asyncio.Future[list[FileRecord]] = asyncio.get_running_loop().create_future()
        done.set_result([])
        return done

    async def discard(self) -> None:
        return None


class StdoutSink:
    """NDJSON on standard output, for pipes (``--output -``). One writer thread keeps lines whole."""

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stdout")

    async def write(self, data: bytes) -> None:
        await asyncio.get_running_loop().run_in_executor(self.pool, self._stream.write, data)

    def open(self, relpath: str, compression: str | None = None) -> StdoutScopeOutput:
        return StdoutScopeOutput(self)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.pool, self._stream.flush)
        self.pool.shutdown(wait=True)
