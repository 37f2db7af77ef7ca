"""Where a finished run's output lives, for the commands that read runs back: a directory or a bucket.

``merge``, ``diff``, ``report`` and the nightly steps read manifests and scope files and write a
few files of their own next to them; they do it through a :class:`Place`, a small path-like
handle (``place / "manifest.json"``, ``read_bytes``, ``open``, ``size``, ``write_bytes``...) with two
kinds: :class:`LocalPlace` for a directory and :class:`BucketPlace` for ``s3://`` / ``obs://``
URLs, so each command is written once for both.

Reading back is blocking by nature (these commands are synchronous, and large files are streamed
line by line), so the bucket side uses botocore's synchronous client: the same library, settings,
signing and retries as the crawl's aiobotocore client (:mod:`crawler.pipeline.objectstore`).

Writes are whole-or-nothing on both kinds: a local file is written under a temporary name and
renamed; an object is one PutObject, or a multipart upload completed only at the end (aborted on
an error), so a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import posixpath
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, TypeAlias, cast

from crawler.pipeline.objectstore import (
    ObjectLocation,
    StoreSettings,
    is_object_url,
    open_sync_store,
    store_error,
)
from crawler.pipeline.state import RunLock
from crawler.support.files import atomic_file, atomic_write

UPLOAD_PART = 64 << 20  # bytes per part when a file written locally is uploaded whole


class Place(ABC):
    """A file or directory of a run's output, local or in a bucket."""

    @property
    @abstractmethod
    def name(self) -> str: ...

    @property
    @abstractmethod
    def parent(self) -> Place: ...

    @abstractmethod
    def __truediv__(self, relpath: str) -> Place: ...

    @abstractmethod
    def key(self) -> str:
        """The place as an absolute POSIX path (a bucket's keys as ``/BUCKET/KEY``): what
        :meth:`relpath` and :meth:`same` compare."""

    @abstractmethod
    def is_dir(self) -> bool: ...

    @abstractmethod
    def is_file(self) -> bool: ...

    @abstractmethod
    def subdirs(self) -> list[Place]:
        """The directories (key prefixes) directly below this one."""

    @abstractmethod
    def read_bytes(self) -> bytes:
        """The whole file; :class:`FileNotFoundError` if there is none."""

    @abstractmethod
    def size(self) -> int | None:
        """The file's size in bytes, ``None`` if there is no such file."""

    @abstractmethod
    def open(self) -> contextlib.AbstractContextManager[IO[bytes]]:
        """The file as a binary stream to read once, front to back."""

    @abstractmethod
    def write_bytes(self, data: bytes) -> None:
        """Replace the file whole (readers see the old or the new content)."""

    @abstractmethod
    def writer(self) -> contextlib.AbstractContextManager[BinaryIO]:
        """A stream whose content becomes the file only when the block ends without an error."""

    @abstractmethod
    def unlink(self) -> None:
        """Remove the file if it is there."""

    @abstractmethod
    def running(self) -> bool:
        """True while a run holds this output root (its run lock); never true for a bucket."""

    def relpath(self, start: Place) -> str:
        """This place's path relative to the directory ``start`` (same kind and bucket)."""
        return posixpath.relpath(self.key(), start.key())

    def same(self, other: Place) -> bool:
        return type(self) is type(other) and self.key() == other.key()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Place) and self.same(other)

    def __hash__(self) -> int:
        return hash((type(self), self.key()))


class LocalPlace(Place):
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"LocalPlace({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def parent(self) -> LocalPlace:
        return LocalPlace(self.path.resolve().parent)

    def __truediv__(self, relpath: str) -> LocalPlace:
        return LocalPlace(self.path / relpath)

    def key(self) -> str:
        return str(self.path.resolve())

    def is_dir(self) -> bool:
        return self.path.is_dir()

    def is_file(self) -> bool:
        return self.path.is_file()

    def subdirs(self) -> list[Place]:
        return [LocalPlace(c) for c in sorted(self.path.iterdir()) if c.is_dir()]

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()

    def size(self) -> int | None:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return None

    def open(self) -> contextlib.AbstractContextManager[IO[bytes]]:
        return open(self.path, "rb")

    def write_bytes(self, data: bytes) -> None:
        atomic_write(self.path, data)

    def writer(self) -> contextlib.AbstractContextManager[BinaryIO]:
        return atomic_file(self.path, buffering=1 << 20)

    def unlink(self) -> None:
        self.path.unlink(missing_ok=True)

    def running(self) -> bool:
        lock = self.path / RunLock.FILE
        if not lock.exists():
            return False
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing the descriptor releases a lock taken on it
        return False


_buckets_seen: set[str] = set()


@functools.cache
def _client() -> Any:
    """One synchronous S3 client per process, configured like the crawl's (environment only)."""
    return open_sync_store(StoreSettings.from_env())


class BucketPlace(Place):
    """An object (or a key prefix taken as a directory) in a bucket."""

    def __init__(self, location: ObjectLocation, client: Any | None = None) -> None:
        self.location = location
        self._given_client = client

    @property
    def client(self) -> Any:
        return self._given_client if self._given_client is not None else _client()

    @property
    def _bucket(self) -> str:
        return self.location.bucket

    @property
    def _key(self) -> str:
        return self.location.prefix

    def _at(self, prefix: str) -> BucketPlace:
        return BucketPlace(ObjectLocation(self.location.scheme, self._bucket, prefix), self._given_client)

    def __str__(self) -> str:
        return self.location.url()

    def __repr__(self) -> str:
        return f"BucketPlace({str(self)!r})"

    @property
    def name(self) -> str:
        return posixpath.basename(self._key)

    @property
    def parent(self) -> BucketPlace:
        return self._at(posixpath.dirname(self._key))

    def __truediv__(self, relpath: str) -> BucketPlace:
        joined = posixpath.normpath(posixpath.join("/", self._key, relpath)).lstrip("/")
        return self._at(joined)

    def key(self) -> str:
        return f"/{self._bucket}/{self._key}".rstrip("/")  # the bucket first: places differ by it

    def _dir_prefix(self) -> str:
        return f"{self._key}/" if self._key else ""

    def _call(self, action: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(Bucket=self._bucket, **kwargs)
        except Exception as exc:
            if _is_missing(exc):
                raise FileNotFoundError(str(self)) from None
            raise store_error(exc, action, self._bucket, kwargs.get("Key") or kwargs.get("Prefix")) from exc

    def is_dir(self) -> bool:
        listing = self._call("list", "list_objects_v2", Prefix=self._dir_prefix(), MaxKeys=1)
        return bool(listing.get("KeyCount"))

    def is_file(self) -> bool:
        return self.size() is not None

    def subdirs(self) -> list[Place]:
        found: list[Place] = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list", "list_objects_v2", Prefix=self._dir_prefix(), Delimiter="/", **token)
            found += [self._at(p["Prefix"].rstrip("/")) for p in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                return sorted(found, key=str)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def read_bytes(self) -> bytes:
        with self.open() as body:
            return body.read()

    def size(self) -> int | None:
        try:
            return int(self._call("read", "head_object", Key=self._key)["ContentLength"])
        except FileNotFoundError:
            self._check_bucket()  # a HEAD's 404 alone does not say whether the bucket is there
            return None

    def _check_bucket(self) -> None:
        if self._bucket not in _buckets_seen:
            try:
                self.client.head_bucket(Bucket=self._bucket)
            except Exception as exc:
                raise store_error(exc, "check", self._bucket) from exc
            _buckets_seen.add(self._bucket)

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        body = self._call("read", "get_object", Key=self._key)["Body"]
        try:
            yield cast(IO[bytes], body)
        finally:
            body.close()

    def write_bytes(self, data: bytes) -> None:
        self._call("write", "put_object", Key=self._key, Body=data)

    @contextlib.contextmanager
    def writer(self) -> Iterator[BinaryIO]:
        # Written to a local temporary file first (bounded memory, any size), uploaded at the end.
        with tempfile.TemporaryFile(prefix="cbr-crawler-") as tmp:
            yield cast(BinaryIO, tmp)
            tmp.flush()
            self._upload(cast(BinaryIO, tmp))

    def _upload(self, fh: BinaryIO) -> None:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        if size <= UPLOAD_PART:
            self.write_bytes(fh.read())
            return
        upload = self._call("write", "create_multipart_upload", Key=self._key)["UploadId"]
        try:
            parts = []
            number = 1
            while chunk := fh.read(UPLOAD_PART):
                done = self._call(
                    "write", "upload_part", Key=self._key, UploadId=upload, PartNumber=number, Body=chunk
                )
                parts.append({"PartNumber": number, "ETag": done["ETag"]})
                number += 1
            self._call(
                "write",
                "complete_multipart_upload",
                Key=self._key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=upload)
            raise

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", "delete_object", Key=self._key)

    def running(self) -> bool:
        return False  # no lock on a bucket output (one writer per prefix); see objectstate


def _is_missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    return str(error.get("Code")) in ("404", "NoSuchKey", "NotFound")


Where: TypeAlias = "Place | str | os.PathLike[str]"  # what the read-back functions accept for a place


def place(text: Where) -> Place:
    """The place a command-line argument names: ``s3://``/``obs://`` URL or a local path."""
    if isinstance(text, Place):
        return text
    text = os.fspath(text)
    if is_object_url(text):
        return BucketPlace(ObjectLocation.parse(text))
    return LocalPlace(text)
