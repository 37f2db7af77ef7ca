"""The crawler's exception tree (the lowest layer: it imports nothing else of the crawler).

::

    CrawlerError                      anything the crawler raises on purpose
    ├── ConfigError                   a tenant file is wrong: file, line, key path, fix; exit code 2
    │   ├── ConfigErrors              several of them, all reported at once
    │   └── MissingSecretError        a secret's source (env var, file) is missing, unreadable or empty
    ├── UsageError                    wrong command-line use (a flag, a shard spec); exit code 2
    ├── ApiError                      a service answered with an error status
    │   ├── RetryableApiError         429, 5xx, APIGW.0613: worth another attempt
    │   └── AuthFailedError           401 after re-authentication, IAM refusals
    ├── CredentialRefused             a tenant's credential was refused: its other scopes are not tried
    ├── TransportError                no answer: connection refused/reset, timeout (retryable)
    ├── BadResponseError              an answer that is not what the API promises (retryable)
    └── DeadlineExceeded              a scope's deadline passed while retrying

Lower-level exceptions (aiohttp, orjson, OSError) are mapped at one boundary,
:mod:`crawler.pipeline.client`, with ``raise ... from exc`` so that the cause stays visible in
debug logs. Every error that comes from an HTTP answer carries the request id, which is what
Huawei support asks for first. The command line maps the tree to exit codes (:mod:`crawler.cli`).
"""

from __future__ import annotations

from collections.abc import Sequence


class CrawlerError(Exception):
    """Base class of every error the crawler raises on purpose."""


class ConfigError(CrawlerError):
    """A tenant file is wrong: where (file, key path, line), what, and how to fix it.

    ``key_path`` looks like ``auth.password_env`` or ``projects.discover.include[2]``; ``line`` is
    1-based and None when the problem is not tied to one place (an empty file, a missing file).
    Messages never contain a secret value: at most the *name* of the env var or file holding it.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        key_path: str = "",
        line: int | None = None,
        fix: str | None = None,
    ) -> None:
        self.file = file
        self.key_path = key_path
        self.line = line
        self.problem = problem
        self.fix = fix
        super().__init__(problem)

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        elif self.line is not None:
            where = f"line {self.line}: "
        key = f"{self.key_path}: " if self.key_path else ""
        fix = f" (fix: {self.fix})" if self.fix else ""
        return f"{where}{key}{self.problem}{fix}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class ConfigErrors(ConfigError):
    """Every problem found in one or more tenant files, reported together.

    ``str()`` gives one line per problem (sorted by file and line) under a one-line summary.
    """

    errors: list[ConfigError]

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        flat: list[ConfigError] = []
        for error in errors:
            flat.extend(error.errors if isinstance(error, ConfigErrors) else [error])
        self.errors = sorted(flat, key=lambda e: (e.file or "", e.line or 0, e.key_path))
        files = {e.file for e in self.errors}
        count = len(self.errors)
        super().__init__(
            f"{count} configuration problem{'s' if count != 1 else ''}",
            file=files.pop() if len(files) == 1 else None,
        )

    def __str__(self) -> str:
        if len(self.errors) == 1:
            return str(self.errors[0])
        return "\n".join([f"{self.problem}:", *(f"  {error}" for error in self.errors)])


class MissingSecretError(ConfigError):
    """A secret's source (env var or file) is missing, unreadable or empty. Names the source only."""


class UsageError(CrawlerError):
    """Wrong command-line use (a flag, a shard specification): exit code 2."""


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


class CredentialRefused(CrawlerError):
    """A tenant's credential was refused: names the tenant, the source, the code and request id."""

    def __init__(self, tenant: str, source: str, cause: AuthFailedError) -> None:
        self.tenant = tenant
        self.code = cause.code
        self.request_id = cause.request_id
        super().__init__(f"tenant {tenant}: credential refused ({source}): {cause.describe()}")


class TransportError(CrawlerError):
    """The request got no usable answer: connection refused or reset, timeout, truncated stream."""

    retryable = True


class CertificateError(CrawlerError):
    """The endpoint's TLS certificate is not trusted (self-signed, another CA, wrong host)."""


class BadResponseError(CrawlerError):
    """The answer was not what the API promises: not JSON, no ``backups`` list, a record with no id."""

    retryable = True

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        rid = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{message}{rid}")


class DeadlineExceeded(CrawlerError):
    """A scope's deadline passed while its requests were being retried; not retryable.

    ``code`` and ``request_id`` are those of the last error met, if it had them (the answer an
    operator would look up)."""

    def __init__(self, message: str, *, last: BaseException | None = None) -> None:
        self.code = getattr(last, "code", None)
        self.request_id = getattr(last, "request_id", None)
        super().__init__(message)


def is_retryable(exc: BaseException) -> bool:
    """True for errors another attempt may cure."""
    return bool(getattr(exc, "retryable", False))


__all__ = [
    "ApiError",
    "AuthFailedError",
    "BadResponseError",
    "CertificateError",
    "ConfigError",
    "ConfigErrors",
    "CrawlerError",
    "CredentialRefused",
    "DeadlineExceeded",
    "MissingSecretError",
    "RetryableApiError",
    "TransportError",
    "UsageError",
    "is_retryable",
]
