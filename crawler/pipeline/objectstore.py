"""Object storage as an output location: ``s3://`` and ``obs://`` URLs, the store's settings, its client.

Huawei OBS speaks the S3 API, so one client serves both (``obs://`` is an alias of ``s3://``). The
client is aiobotocore's: it rides on aiohttp like the rest of the crawler, signs with botocore's
own SigV4 (no hand-written S3 signing), and retries throttling (503 SlowDown), 5xx and connection
errors itself (botocore's ``standard`` retry mode: exponential backoff with jitter).

The store is configured apart from the CBR credential, by environment only (never in the tenant
file, so no secret can be inlined there):

- ``CBR_CRAWLER_S3_ENDPOINT``: the endpoint URL (e.g. ``https://obs.cn-north-4.myhuaweicloud.com``);
  else botocore's own ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, else AWS S3.
- ``CBR_CRAWLER_S3_REGION``: else ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else ``us-east-1``.
- ``CBR_CRAWLER_S3_ADDRESSING``: ``path``, ``virtual`` or ``auto`` (default).
- ``AWS_MAX_ATTEMPTS``: attempts per request, retries included (default :data:`MAX_ATTEMPTS`).
- credentials: ``CBR_CRAWLER_S3_ACCESS_KEY_FILE`` and ``CBR_CRAWLER_S3_SECRET_KEY_FILE`` (files,
  e.g. a mounted Kubernetes secret), else botocore's chain (``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_SHARED_CREDENTIALS_FILE``, ...).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crawler.errors import CrawlerError, UsageError
from crawler.support.logs import register_secret

SCHEMES = ("s3://", "obs://")
ADDRESSING = ("auto", "path", "virtual")
# Attempts per request, retries of throttling and connection errors included.
MAX_ATTEMPTS = 8


def is_object_url(text: str) -> bool:
    return text.startswith(SCHEMES)


@dataclass(frozen=True, slots=True)
class ObjectLocation:
    """A bucket and a key prefix (no leading or trailing ``/``; may be empty)."""

    scheme: str  # "s3" or "obs", as given: the URL is shown back as the user wrote it
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> ObjectLocation:
        scheme, _, rest = url.partition("://")
        if scheme not in ("s3", "obs"):
            raise UsageError(f"{url}: not an object-storage URL (s3://BUCKET/PREFIX or obs://BUCKET/PREFIX)")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UsageError(f"{url}: no bucket (s3://BUCKET/PREFIX)")
        prefix = prefix.strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise UsageError(f"{url}: the prefix has an empty, '.' or '..' segment")
        return cls(scheme, bucket, prefix)

    def key(self, relpath: str) -> str:
        return f"{self.prefix}/{relpath}" if self.prefix else relpath

    def url(self, relpath: str = "") -> str:
        key = self.key(relpath) if relpath else self.prefix
        return f"{self.scheme}://{self.bucket}/{key}".rstrip("/")


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Where the store is and how to reach it; the secret is never held here, only its file."""

    endpoint_url: str | None
    region: str
    addressing: str
    access_key_file: str | None = None
    secret_key_file: str | None = None
    max_attempts: int = MAX_ATTEMPTS

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> StoreSettings:
        addressing = env.get("CBR_CRAWLER_S3_ADDRESSING", "auto")
        if addressing not in ADDRESSING:
            raise UsageError(f"CBR_CRAWLER_S3_ADDRESSING={addressing!r}: use one of {', '.join(ADDRESSING)}")
        key_file = env.get("CBR_CRAWLER_S3_ACCESS_KEY_FILE")
        secret_file = env.get("CBR_CRAWLER_S3_SECRET_KEY_FILE")
        if bool(key_file) != bool(secret_file):
            raise UsageError(
                "set both CBR_CRAWLER_S3_ACCESS_KEY_FILE and CBR_CRAWLER_S3_SECRET_KEY_FILE, or neither"
            )
        attempts = env.get("AWS_MAX_ATTEMPTS", str(MAX_ATTEMPTS))
        if not attempts.isdigit() or int(attempts) < 1:
            raise UsageError(f"AWS_MAX_ATTEMPTS={attempts!r}: give a whole number of attempts, 1 or more")
        return cls(
            max_attempts=int(attempts),
            endpoint_url=env.get("CBR_CRAWLER_S3_ENDPOINT") or None,
            region=env.get("CBR_CRAWLER_S3_REGION")
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION")
            or "us-east-1",
            addressing=addressing,
            access_key_file=key_file or None,
            secret_key_file=secret_file or None,
        )

    def credentials(self) -> dict[str, str]:
        """Keyword arguments for the client: the key pair read from its files, if configured."""
        if self.access_key_file is None or self.secret_key_file is None:
            return {}
        values = {}
        for name, path in (
            ("aws_access_key_id", self.access_key_file),
            ("aws_secret_access_key", self.secret_key_file),
        ):
            try:
                values[name] = Path(path).read_text().strip()
            except OSError as exc:
                raise CrawlerError(
                    f"cannot read the object store's {name} from {path}: {exc.strerror or exc}"
                ) from exc
        register_secret(values["aws_secret_access_key"])
        return values


class StoreError(CrawlerError):
    """The object store refused or failed a request, after retries: names bucket, key and its code."""

    def __init__(self, message: str, *, bucket: str, key: str | None, code: str | None) -> None:
        super().__init__(message)
        self.bucket, self.key, self.code = bucket, key, code


def store_error(exc: Exception, action: str, bucket: str, key: str | None = None) -> StoreError:
    """``exc`` (botocore's) as a :class:`StoreError` that says what was done to which object."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    where = f"s3://{bucket}/{key}" if key else f"bucket {bucket}"
    code: str | None = None
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
        detail = f"{code}: {error.get('Message') or 'no message'}"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            detail += " (check the store's credentials and the bucket policy)"
        elif code in ("404", "NoSuchBucket"):
            detail += " (does the bucket exist in this endpoint and region?)"
    elif isinstance(exc, NoCredentialsError):
        code = type(exc).__name__
        detail = (
            f"{code}: no credentials for the object store (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or CBR_CRAWLER_S3_ACCESS_KEY_FILE and CBR_CRAWLER_S3_SECRET_KEY_FILE)"
        )
    elif isinstance(exc, BotoCoreError):
        code = type(exc).__name__
        detail = f"{code}: {exc} (is the endpoint right and reachable?)"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return StoreError(f"object store: {action} {where} failed: {detail}", bucket=bucket, key=key, code=code)


def _client_config(settings: StoreSettings) -> Any:
    from botocore.config import Config

    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):  # masked should a log line hold one
        if os.environ.get(name):
            register_secret(os.environ[name])
    # "Found credentials in environment variables" on every run says nothing an operator needs.
    for name in ("botocore.credentials", "aiobotocore.credentials"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return Config(
        region_name=settings.region,
        s3={"addressing_style": settings.addressing},
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        # Checksums only where the API requires them: S3-compatible stores (OBS among them) do not
        # all accept the newer CRC headers botocore sends by default.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=32,
    )


@contextlib.asynccontextmanager
async def open_store(settings: StoreSettings) -> AsyncIterator[Any]:
    """An aiobotocore S3 client for the run (imported here: runs to disk never load botocore)."""
    from aiobotocore.session import get_session

    config = _client_config(settings)
    async with get_session().create_client(
        "s3", endpoint_url=settings.endpoint_url, config=config, **settings.credentials()
    ) as client:
        yield client


def open_sync_store(settings: StoreSettings) -> Any:
    """botocore's synchronous S3 client, configured as :func:`open_store`'s: for the commands that
    read a run back (blocking, streaming), where an event loop would only add a thread hop."""
    from botocore.session import get_session

    config = _client_config(settings)
    return get_session().create_client(
        "s3", endpoint_url=settings.endpoint_url, config=config, **settings.credentials()
    )
