"""The file sink: temporary names until commit, compression, hashes of the bytes on disk."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from pathlib import Path

import pytest
import zstandard

from crawler.manifest import SUCCESS, clear_success, write_manifest
from crawler.sink import BUFFER_BYTES, FileSink


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


async def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    digests = []
    for run in ("one", "two"):
        sink = FileSink(tmp_path / run, "gzip")
        out = sink.open("x/backups.ndjson")
        await out.write(b'{"id":"a"}\n', 1)
        [record] = await out.commit(complete=True)
        await sink.close()
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


async def test_a_trip_that_fails_whole_fails_the_files_asked_for_meanwhile_too(tmp_path: Path) -> None:
    # Before, files queued while the failing batch ran were left with no writer: their commits
    # never ended, and the engine, which waits for every commit, would have hung.
    sink = FileSink(tmp_path, "none")
    run = sink.run
    trips = 0

    async def failing_first_trip(fn: object, *args: object) -> object:
        nonlocal trips
        trips += 1
        if trips == 1:
            await asyncio.sleep(0.01)  # the other files are asked for meanwhile
            raise RuntimeError("the pool is gone")
        return await run(fn, *args)

    sink.run = failing_first_trip  # type: ignore[method-assign]
    outputs = [sink.open(f"t/p{n}/backups.ndjson") for n in range(3)]
    for out in outputs:
        await out.write(b'{"id":"1"}\n', 1)
    first = asyncio.ensure_future(outputs[0].commit(complete=True))
    await asyncio.sleep(0)  # the first trip starts with the first file alone
    later = asyncio.gather(*(out.commit(complete=True) for out in outputs[1:]), return_exceptions=True)
    outcomes = await asyncio.wait_for(asyncio.gather(first, later, return_exceptions=True), timeout=5)
    await sink.close()
    assert isinstance(outcomes[0], RuntimeError)
    assert all(isinstance(o, RuntimeError) for o in outcomes[1]), outcomes[1]
