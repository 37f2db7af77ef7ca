"""The file sink: temporary names until commit, compression, hashes of the bytes on disk."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import time
from pathlib import Path

import pytest
import zstandard

from crawler.pipeline.manifest import SUCCESS, clear_success, write_manifest
from crawler.pipeline.sink import BUFFER_BYTES, FileSink


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
async def test_commit_renames_and_hashes_the_bytes_on_disk(tmp_path: Path, compression: str) -> None:
    sink = FileSink(tmp_path, compression)
    out = sink.open("acme/cn-north-4/p1/backups.private.no-ep.ndjson")
    await out.write(b'{"id":"a"}\n', 1)
    assert not list(tmp_path.rglob("*")), "small scopes wait in memory: one trip to disk at commit"
    big = b'{"id":"b","pad":"' + b"x" * BUFFER_BYTES + b'"}\n'
    await out.write(big, 1)
    part_files = list(tmp_path.rglob("*.part"))
    assert len(part_files) == 1, "written under a temporary name until the scope completes"
    await out.write(b'{"id":"c"}\n', 1)
    [record] = await out.commit(complete=True)
    await sink.close()

    path = tmp_path / record.path
    assert not list(tmp_path.rglob("*.part"))
    raw = path.read_bytes()
    assert record.size == len(raw)
    assert record.sha256 == hashlib.sha256(raw).hexdigest()
    assert record.records == 3
    if compression == "gzip":
        assert path.name.endswith(".ndjson.gz")
        raw = gzip.decompress(raw)
    elif compression == "zstd":
        assert path.name.endswith(".ndjson.zst")
        raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
    assert raw == b'{"id":"a"}\n' + big + b'{"id":"c"}\n'


@pytest.mark.parametrize("size", ["small", "streamed"])
async def test_gzip_output_is_reproducible(
    tmp_path: Path, size: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gzip puts the time of writing in its header unless told not to: the two writes happen at
    # clock times a day apart, so only a header without a time gives equal bytes.
    lines = b'{"id":"a"}\n' * (1 if size == "small" else BUFFER_BYTES // 10)
    digests = []
    for day, run in enumerate(("one", "two")):
        monkeypatch.setattr(time, "time", lambda day=day: 1_800_000_000.0 + 86_400 * day)
        sink = FileSink(tmp_path / run, "gzip")
        out = sink.open("x/backups.ndjson")
        await out.write(lines, lines.count(b"\n"))
        assert bool(list((tmp_path / run).rglob("*.part"))) == (size == "streamed")
        [record] = await out.commit(complete=True)
        await sink.close()
        assert gzip.decompress((tmp_path / run / record.path).read_bytes()) == lines
        digests.append(record.sha256)
    assert digests[0] == digests[1]


async def test_incomplete_scope_is_kept_under_a_partial_name(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, "none")
    out = sink.open("t/backups.private.no-ep.ndjson")
    await out.write(b'{"id":"a"}\n', 1)
    [record] = await out.commit(complete=False)
    await sink.close()
    assert record.path.endswith(".ndjson.partial")
    assert (tmp_path / record.path).read_bytes() == b'{"id":"a"}\n'


async def test_complete_empty_scope_gets_an_empty_file_and_failed_empty_scope_none(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, "none")
    [record] = await sink.open("t/empty.ndjson").commit(complete=True)
    assert (tmp_path / record.path).read_bytes() == b""
    assert await sink.open("t/failed.ndjson").commit(complete=False) == []
    await sink.close()
    assert not (tmp_path / "t" / "failed.ndjson").exists()


def test_success_marker_only_for_complete_runs(tmp_path: Path) -> None:
    write_manifest(tmp_path, {"status": "complete"})
    assert (tmp_path / SUCCESS).exists()
    clear_success(tmp_path)
    write_manifest(tmp_path, {"status": "partial"})
    assert not (tmp_path / SUCCESS).exists()
    assert (tmp_path / "manifest.json").read_bytes().startswith(b"{")


async def test_a_failed_write_leaves_no_file_and_fails_every_later_write(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, "none")
    (tmp_path / "t").write_text("a file where the scope's directory should be")
    out = sink.open("t/backups.ndjson")
    await out.write(b'{"id":"a"}\n', 1)  # buffered: the problem shows on the first trip to disk
    with pytest.raises(OSError):
        await out.write(b"x" * BUFFER_BYTES, 1)
    with pytest.raises(OSError):
        await out.write(b'{"id":"b"}\n', 1)
    assert await out.commit(complete=True) == []
    await sink.close()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["t"]


async def test_small_scopes_committing_together_share_trips_to_the_threads(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, "none")
    (tmp_path / "blocked").write_text("a file where one scope's directory should be")
    trips = 0
    run = sink.run

    async def counting_run(fn: object, *args: object) -> object:
        nonlocal trips
        trips += 1
        return await run(fn, *args)

    sink.run = counting_run  # type: ignore[method-assign]
    outputs = [sink.open(f"t/p{n}/backups.ndjson") for n in range(100)]
    for n, out in enumerate(outputs):
        await out.write(b'{"id":"%d"}\n' % n, 1)
    broken = sink.open("blocked/backups.ndjson")
    await broken.write(b'{"id":"x"}\n', 1)
    outcomes = await asyncio.gather(
        *(out.commit(complete=True) for out in [*outputs, broken]), return_exceptions=True
    )
    await sink.close()
    assert trips < 10, f"{trips} trips for 101 small files"
    assert isinstance(outcomes[-1], OSError), "a file that cannot be written fails alone"
    for n, outcome in enumerate(outcomes[:-1]):
        assert not isinstance(outcome, BaseException)
        [record] = outcome
        assert (tmp_path / record.path).read_bytes() == b'{"id":"%d"}\n' % n
    assert not list(tmp_path.rglob("*.part"))


async def test_a_write_interrupted_while_its_file_is_being_created_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The thread goes on creating the .part after its caller is cancelled: discard() must wait for
    # it and remove the file it made (before, the .part stayed, open, until the next run).
    import threading

    from crawler.pipeline.sink import FileScopeOutput

    created, proceed = threading.Event(), threading.Event()
    open_with = FileScopeOutput._open_with

    def slow_open(self: FileScopeOutput, data: bytes) -> object:
        writer = open_with(self, data)
        created.set()
        proceed.wait(5)
        return writer

    monkeypatch.setattr(FileScopeOutput, "_open_with", slow_open)
    sink = FileSink(tmp_path, "gzip")
    out = sink.open("t/backups.ndjson")
    writing = asyncio.create_task(out.write(b"x" * (BUFFER_BYTES + 1), 1))
    await asyncio.to_thread(created.wait, 5)
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    assert list(tmp_path.rglob("*.part")), "the thread has created the file"
    proceed.set()
    await out.discard()
    await sink.close()
    assert not list(tmp_path.rglob("*.part"))
