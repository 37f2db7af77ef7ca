"""NDJSON objects in an S3-compatible store (Huawei OBS, AWS S3, MinIO...): the file sink's twin.

Same layout and names as :class:`crawler.pipeline.sink.FileSink`, under the URL's prefix. An object
appears under its final key only when its scope is complete:

- a scope whose (compressed) lines stay under :data:`PART_SIZE` is one ``PutObject`` at commit, under
  its final key if complete, else under its ``.partial`` name;
- a bigger scope is a multipart upload to its final key, a part each time :data:`PART_SIZE` bytes
  are ready (one part in flight per scope: memory is bounded by the open scopes, not the estate);
  it is completed at commit if the scope is complete, and *aborted* otherwise, so no orphan parts
  stay billed. Such a failed scope keeps no ``.partial`` object (S3 has no rename, and copying
  every big scope to move it would cost a second upload); the manifest says it failed, and the
  next run fetches it again.

Compression and hashing run in a small thread pool; the sha256 and size in the manifest are those
of the object's bytes. Errors of the store (after botocore's retries) are raised as ``OSError``
naming bucket, key and the store's code, which fails the scope like a full disk fails a file.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, cast

import orjson
import zstandard

from crawler.pipeline.manifest import MANIFEST, SUCCESS
from crawler.pipeline.objectstore import ObjectLocation, store_error
from crawler.pipeline.sink import COMPRESSION_SUFFIX, FileRecord

# S3's least part size is 5 MiB (but the last one's). Memory is about twice this per open scope
# (the part being filled, the one being sent): the least keeps 1M-backup crawls within budget.
PART_SIZE = 5 * 1024 * 1024


class _Collector:
    """The compressor's output: hashed and counted as written, held until shipped as a part."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.size = 0
        self.sha256 = hashlib.sha256()

    @property
    def held(self) -> int:
        return len(self.buffer)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.sha256.update(data)
        self.buffer += data
        self.size += len(data)
        return len(data)

    def take(self) -> bytes:
        # bytes, not the bytearray itself: aiohttp sends bytes as they are, but warns about (and
        # would copy) a large bytearray body. The buffer is dropped at once, not kept for reuse.
        data = bytes(self.buffer)
        self.buffer = bytearray()
        return data

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


class _Encoder:
    """(Sink thread) One scope's lines compressed into a collector."""

    def __init__(self, compression: str) -> None:
        self.out = _Collector()
        self.stream: Any
        if compression == "gzip":
            # No name and no time in the header: the same records give the same bytes.
            self.stream = gzip.GzipFile(filename="", mode="wb", fileobj=self.out, mtime=0)
        elif compression == "zstd":
            self.stream = zstandard.ZstdCompressor(level=3).stream_writer(
                cast(IO[bytes], self.out), closefd=False
            )
        else:
            self.stream = self.out

    def write(self, data: bytes) -> int:
        self.stream.write(data)
        return self.out.held

    def finish(self) -> bytes:
        if self.stream is not self.out:
            self.stream.close()  # the compressor's trailer
        return self.out.take()


class ObjectScopeOutput:
    """One scope's object: a PutObject if small, else a multipart upload (module docstring)."""

    rewritable = True  # discard() aborts the upload: the scope may be written afresh

    def __init__(self, sink: ObjectSink, relpath: str, compression: str) -> None:
        self._sink = sink
        self.compression = compression
        self.relpath = relpath + COMPRESSION_SUFFIX[compression]
        self.records = 0
        self._encoder: _Encoder | None = None
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        # The store step under way, if any: an interrupted caller does not stop it, so discard()
        # waits for it (and aborts an upload it started).
        self._pending: asyncio.Future[Any] | None = None

    @property
    def _key(self) -> str:
        return self._sink.location.key(self.relpath)

    async def write(self, data: bytes, records: int) -> None:
        self.records += records
        if self._encoder is None:
            self._encoder = _Encoder(self.compression)
        held = await self._sink.run(self._encoder.write, data)
        if held >= PART_SIZE:
            await self._ship(self._encoder.out.take())

    async def _ship(self, part: bytes) -> None:
        """Upload one part (starting the upload first if needed); an error is an OSError."""
        # Shielded: an interrupted caller leaves the step running, and discard() waits for it.
        self._pending = asyncio.ensure_future(self._upload_part(part))
        await asyncio.shield(self._pending)

    async def _upload_part(self, part: bytes) -> None:
        client, bucket, key = self._sink.client, self._sink.location.bucket, self._key
        try:
            if self._upload_id is None:
                created = await client.create_multipart_upload(Bucket=bucket, Key=key)
                self._upload_id = created["UploadId"]
            number = len(self._parts) + 1
            answer = await client.upload_part(
                Bucket=bucket, Key=key, UploadId=self._upload_id, PartNumber=number, Body=part
            )
            self._parts.append({"ETag": answer["ETag"], "PartNumber": number})
        except Exception as exc:
            raise OSError(str(store_error(exc, "uploading a part of", bucket, key))) from exc

    def commit(self, complete: bool) -> asyncio.Future[list[FileRecord]]:
        return asyncio.ensure_future(self._commit(complete))

    async def _commit(self, complete: bool) -> list[FileRecord]:
        client, bucket = self._sink.client, self._sink.location.bucket
        if self._pending is not None:
            await asyncio.wait([self._pending])
        if self._upload_id is not None and not complete:
            await self._abort()
            return []
        if self._encoder is None:
            if not complete:
                return []  # nothing fetched, nothing to keep
            self._encoder = _Encoder(self.compression)  # an empty scope still gets its object
        tail = await self._sink.run(self._encoder.finish)
        out = self._encoder.out
        relpath = self.relpath if complete else self.relpath + ".partial"
        key = self._sink.location.key(relpath)
        try:
            if self._upload_id is None:
                await client.put_object(Bucket=bucket, Key=key, Body=tail)
            else:
                if tail or not self._parts:
                    await self._upload_part(tail)
                await client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
                )
                self._upload_id = None
        except OSError:
            await asyncio.shield(self._abort())
            raise
        except Exception as exc:
            await asyncio.shield(self._abort())
            raise OSError(str(store_error(exc, "writing", bucket, key))) from exc
        return [FileRecord(relpath, out.size, out.sha256.hexdigest(), self.records)]

    async def _abort(self) -> None:
        """Abort the multipart upload, if any: its parts are deleted, not left billed."""
        upload_id, self._upload_id = self._upload_id, None
        self._parts = []
        if upload_id is None:
            return
        try:
            await self._sink.client.abort_multipart_upload(
                Bucket=self._sink.location.bucket, Key=self._key, UploadId=upload_id
            )
        except Exception as exc:
            # The store's lifecycle rule for incomplete uploads is the last resort (README).
            self._sink.log_abort_failure(
                store_error(exc, "aborting the upload of", self._sink.location.bucket, self._key)
            )

    async def discard(self) -> None:
        if self._pending is not None:
            await asyncio.wait([self._pending])  # its outcome was the interrupted caller's to see
        self._encoder = None
        self.records = 0
        await self._abort()


class ObjectSink:
    """Partitioned NDJSON objects under ``location`` in the store ``client`` talks to."""

    def __init__(
        self, client: Any, location: ObjectLocation, compression: str = "none", threads: int = 2
    ) -> None:
        if compression not in COMPRESSION_SUFFIX:
            raise ValueError(f"unknown compression {compression!r}")
        self.client = client
        self.location = location
        self.compression = compression
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="objects")
        self.abort_failures: list[str] = []

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def open(self, relpath: str, compression: str | None = None) -> ObjectScopeOutput:
        chosen = compression or self.compression
        if chosen not in COMPRESSION_SUFFIX:
            raise ValueError(f"unknown compression {chosen!r}")
        return ObjectScopeOutput(self, relpath, chosen)

    def log_abort_failure(self, error: Exception) -> None:
        import logging

        logging.getLogger(__name__).warning("%s", error)
        self.abort_failures.append(str(error))

    async def check(self) -> None:
        """Fail early, before any request to CBR, if the bucket cannot be reached or written."""
        bucket = self.location.bucket
        try:
            await self.client.head_bucket(Bucket=bucket)
        except Exception as exc:
            raise store_error(exc, "checking", bucket) from exc

    async def clear_success(self) -> None:
        """A marker left by an earlier run must not vouch for what this run is about to rewrite."""
        key = self.location.key(SUCCESS)
        try:
            await self.client.delete_object(Bucket=self.location.bucket, Key=key)
        except Exception as exc:
            raise store_error(exc, "deleting", self.location.bucket, key) from exc

    async def write_manifest(self, manifest: dict[str, Any]) -> str:
        """The manifest after every object it lists (they are all complete by now), ``_SUCCESS`` last."""
        bucket = self.location.bucket
        key = self.location.key(MANIFEST)
        body = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        try:
            await self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
            if manifest.get("status") == "complete":
                key = self.location.key(SUCCESS)
                await self.client.put_object(Bucket=bucket, Key=key, Body=b"")
        except Exception as exc:
            raise store_error(exc, "writing", bucket, key) from exc
        return self.location.url(MANIFEST)

    async def close(self) -> None:
        self.pool.shutdown(wait=True)
