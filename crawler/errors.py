"""The crawler's exception tree.

::

    CrawlerError                      anything the crawler raises on purpose
    ├── ConfigError                   a tenant file is wrong (crawler.config); exit code 2
    │   └── ConfigErrors              several of them, all reported at once
    ├── SecretError                   a credential source (env var, file) is missing or empty
    ├── ApiError                      a service answered with an error status
    │   ├── RetryableApiError         429, 5xx, APIGW.0613: worth another attempt
    │   └── AuthFailedError           401 after re-authentication, IAM refusals
    ├── TransportError                no answer: connection refused/reset, timeout (retryable)
    ├── BadResponseError              an answer that is not what the API promises (retryable)
    ├── DeadlineExceeded              a scope's deadline passed while retrying
    └── ScopeIncomplete               a scope ended with fewer unique ids than the API's count

Lower-level exceptions (aiohttp, orjson, OSError) are mapped at one boundary, `crawler.client`,
with ``raise ... from exc`` so that the cause stays visible in debug logs. Every error that comes
from an HTTP answer carries the request id, which is what Huawei support asks for first.
"""

from __future__ import annotations

from crawler.config import ConfigError, ConfigErrors


class CrawlerError(Exception):
    """Base class of every error the crawler raises on purpose."""


class SecretError(CrawlerError):
    """A credential could not be read from its source. Names the source, never the value."""


class ApiError(CrawlerError):
    """A service answered with an error status.

    ``code`` is the service's error code (``APIGW.0308``, ``BackupService.9900``, ``IAM.0001``, the
    Keystone title) when the body had one, ``request_id`` the ``X-Request-Id`` header or body field.
    """

    retryable = False

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        *,
        request_id: str | None = None,
        url: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.url = url
        self.retry_after = retry_after
        super().__init__(self.describe())

    def describe(self) -> str:
        code = f" {self.code}" if self.code else ""
        rid = f" (request id {self.request_id})" if self.request_id else ""
        return f"HTTP {self.status}{code}: {self.message}{rid}"


class RetryableApiError(ApiError):
    """429, 5xx and gateway codes that say "try again later"."""

    retryable = True


class AuthFailedError(ApiError):
    """A credential was refused: wrong password or secret key, unknown AK, missing permission."""


class TransportError(CrawlerError):
    """The request got no usable answer: connection refused or reset, timeout, truncated stream."""

    retryable = True


class BadResponseError(CrawlerError):
    """The answer was not what the API promises: not JSON, no ``backups`` list, a record with no id."""

    retryable = True

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        rid = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{message}{rid}")


class DeadlineExceeded(CrawlerError):
    """A scope's deadline passed while its requests were being retried; not retryable."""


class ScopeIncomplete(CrawlerError):
    """A scope's unique ids never matched the API's count."""


def is_retryable(exc: BaseException) -> bool:
    """True for errors another attempt may cure."""
    return bool(getattr(exc, "retryable", False))


__all__ = [
    "ApiError",
    "AuthFailedError",
    "BadResponseError",
    "ConfigError",
    "ConfigErrors",
    "CrawlerError",
    "DeadlineExceeded",
    "RetryableApiError",
    "ScopeIncomplete",
    "SecretError",
    "TransportError",
    "is_retryable",
]
