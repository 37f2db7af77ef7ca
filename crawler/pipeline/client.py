"""The one aiohttp boundary: limiter -> authenticate (sign afresh) -> send -> map status -> orjson.

Everything below this module is aiohttp and bytes; everything above it sees parsed JSON or an
exception from :mod:`crawler.errors`. Retries live here too, because a retry must go through the
same steps again: wait for the quota owner's limiter, be signed afresh (a replayed ``X-Sdk-Date``
goes stale), and be counted.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import random
import ssl as ssl_module
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import BasicAuth
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from crawler import __version__
from crawler.errors import (
    ApiError,
    AuthFailedError,
    BadResponseError,
    CertificateError,
    DeadlineExceeded,
    RetryableApiError,
    TransportError,
    is_retryable,
)
from crawler.pipeline.ratelimit import QuotaLimiter, stated_rate
from crawler.support.signer import encode_query

log = logging.getLogger(__name__)

USER_AGENT = f"cbr-crawler/{__version__}"

# Gateway codes that mean "try again later" whatever the HTTP status says.
_RETRYABLE_CODES = frozenset({"APIGW.0308", "APIG.0308", "APIGW.0613", "APIG.0613", "APIGW.0201", "IAM.0012"})


@functools.lru_cache(maxsize=256)
def _host_of(base_url: str) -> str:
    """The Host header for a base URL (a handful per run: parsed once each)."""
    url = URL(base_url)
    assert url.raw_host is not None
    return url.raw_authority if url.explicit_port else url.raw_host


@dataclass(slots=True)
class ApiRequest:
    """A request before authentication: what to ask, of which service, for which project."""

    service: str  # "cbr", "iam" or "eps": picks the credential's scope and the quota owner
    method: str
    base_url: str  # scheme://host[:port], no trailing slash
    path: str
    query: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    project_id: str | None = None  # the project a CBR call is scoped to (token scope, X-Project-Id)

    @property
    def host(self) -> str:
        return _host_of(self.base_url)

    def url(self) -> URL:
        # The wire query is exactly the canonical query the signer signs, so it is built once here
        # and handed to aiohttp already encoded (aiohttp would otherwise re-quote it).
        q = encode_query(self.query)
        return URL(f"{self.base_url}{self.path}{'?' + q if q else ''}", encoded=True)


@dataclass(slots=True)
class ApiResponse:
    """A successful answer, parsed."""

    status: int
    data: Any
    request_id: str | None
    headers: Mapping[str, str] = field(default_factory=dict)


class Authenticator(Protocol):
    """Adds credentials to a request. Implementations live in :mod:`crawler.pipeline.auth`."""

    description: str  # names the credential source, never its value
    identity: str  # non-secret identity for the quota owner ("user:x@d", "ak:ABCD...WXYZ")

    async def authorize(self, request: ApiRequest, headers: dict[str, str]) -> None:
        """Add auth headers to ``headers`` for this attempt (called afresh on every attempt)."""

    def invalidate(self, request: ApiRequest) -> None:
        """Forget cached credentials for this request's scope after a 401."""

    def prefetch(self, request: ApiRequest) -> None:
        """Start getting the credential ``request`` will need, without waiting for it.

        A no-op where there is nothing to fetch per request scope. Never raises: a failed
        prefetch is forgotten, and ``authorize`` asks again (and reports the error).
        """


class NoAuth:
    """For IAM token requests, which carry their credentials in the body."""

    description = "no credentials"
    identity = "anonymous"

    async def authorize(self, request: ApiRequest, headers: dict[str, str]) -> None:
        return None

    def invalidate(self, request: ApiRequest) -> None:
        return None

    def prefetch(self, request: ApiRequest) -> None:
        return None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by attempts (and by the caller's deadline).

    A request that waits for a rate limiter anyway (a *paced* retry: a 5xx, or a 429 whose stated
    limit the limiter has already adopted) gets a short jitter instead: the limiter keeps retries
    within the budget, and a long backoff would only leave the budget unused while other pages
    wait behind the sleeping one. Connection errors, timeouts, unpaced calls and 429s that state
    no limit back off exponentially.
    """

    # 8 attempts with full jitter ride out a 10% error rate with a chance of a scope failing of
    # about 1e-8 per request, and a gateway's minute window within the 30 s cap.
    max_attempts: int = 8
    # Paced retries are cheap for the gateway (they spend the same budget): allow more of them,
    # so a long 429 storm does not fail pages; the scope deadline still bounds them.
    max_paced_attempts: int = 16
    base_delay: float = 0.25
    max_delay: float = 30.0
    paced_delay: float = 0.5

    def delay(
        self, attempt: int, retry_after: float | None, rng: random.Random, paced: bool = False
    ) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (attempt counts from 1)."""
        if paced:
            backoff = rng.uniform(0, self.paced_delay)
        else:
            backoff = rng.uniform(0, min(self.max_delay, self.base_delay * (2 ** (attempt - 1))))
        if retry_after is not None:
            return max(retry_after, backoff)
        return backoff


def is_paced(exc: BaseException, limiter: QuotaLimiter | None) -> bool:
    """A retry the quota owner's limiter already paces (see :class:`RetryPolicy`)."""
    if limiter is None or limiter.rate is None or not isinstance(exc, RetryableApiError):
        return False
    if exc.status == 429:
        return stated_rate(exc.message) is not None
    return exc.status >= 500


def parse_error(status: int, body: bytes) -> tuple[str | None, str]:
    """(code, message) from any of the error shapes Huawei services use."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:200].decode("utf-8", "replace").strip()
        return None, text or f"HTTP {status} with an empty body"
    if isinstance(data, dict):
        if "error_code" in data or "error_msg" in data:
            return str(data.get("error_code")), str(data.get("error_msg", ""))
        err = data.get("error")
        if isinstance(err, dict):  # Keystone shape from IAM
            code = err.get("code")
            title = err.get("title")
            return (str(title) if title else str(code)), str(err.get("message", ""))
    return None, body[:200].decode("utf-8", "replace")


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


# The largest answer read: a 1000-record page is ~2 MB (children and replication records included);
# a server sending more is refused with a clear error instead of filling the memory.
MAX_BODY_BYTES = 64 << 20


class BodyTooLarge(ApiError):
    """An answer larger than the client reads (or a Content-Length that says so); not retried."""


async def _read_capped(resp: aiohttp.ClientResponse, request: ApiRequest, cap: int) -> bytes:
    """The answer's body, at most ``cap`` bytes; :class:`BodyTooLarge` past it (read no further)."""
    request_id = resp.headers.get("X-Request-Id")
    too_large = f"the answer is larger than {cap:,} bytes: refused (a page is ~2 MB)"
    if resp.content_length is not None and resp.content_length > cap:
        raise BodyTooLarge(
            resp.status, "BodyTooLarge", f"{too_large}; Content-Length {resp.content_length:,}",
            request_id=request_id, url=request.path,
        )  # fmt: skip
    if resp.content_length is not None:
        return await resp.read()  # aiohttp reads no further than the stated length: within the cap
    # No length (chunked): counted as it comes, and joined once at the end.
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 20):
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge(
                resp.status, "BodyTooLarge", too_large, request_id=request_id, url=request.path
            )
    return b"".join(chunks)


class ApiClient:
    """Sends requests for the whole run over one ``ClientSession``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        max_body: int = MAX_BODY_BYTES,
        ssl: ssl_module.SSLContext | bool = True,
        proxy: str | None = None,
    ) -> None:
        self.session = session
        self.max_body = max_body
        # Per tenant (for_tenant): the CA bundle or verification, and an explicit proxy; the
        # environment's HTTPS_PROXY / NO_PROXY apply otherwise (the session trusts the env).
        self.ssl = ssl
        self.proxy = proxy
        # HTTPS_PROXY / HTTP_PROXY / NO_PROXY, looked up once per endpoint (not per request, as
        # aiohttp's trust_env does: it also reads ~/.netrc in a thread for every request).
        self._env_proxies: dict[tuple[str, str | None, int | None], tuple[URL | None, BasicAuth | None]] = {}
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._sleep = sleep

    def _proxy_for(self, url: URL) -> tuple[str | URL | None, BasicAuth | None]:
        if self.proxy is not None:
            return self.proxy, None
        key = (url.scheme, url.host, url.port)
        found = self._env_proxies.get(key)
        if found is None:
            try:
                found = get_env_proxy_for_url(url)
            except LookupError:  # no proxy for this URL (none set, or NO_PROXY matches)
                found = (None, None)
            self._env_proxies[key] = found
        return found

    def for_tenant(self, ssl: ssl_module.SSLContext | bool, proxy: str | None) -> ApiClient:
        """This client, on the same session and retry policy, with a tenant's TLS and proxy."""
        view = copy.copy(self)
        view.ssl, view.proxy = ssl, proxy
        return view

    async def send(
        self,
        request: ApiRequest,
        auth: Authenticator,
        limiter: QuotaLimiter | None = None,
        *,
        expect_json: bool = True,
        parse: Callable[[bytes, str | None], Any] | None = None,
        deadline: float | None = None,
    ) -> ApiResponse:
        """Send with retries; return the parsed answer or raise a :mod:`crawler.errors` error.

        ``parse(body, request_id)`` replaces the generic orjson parse (ListBackups pages use a lazy
        decoder); it runs inside the attempt loop, so a :class:`BadResponseError` from it (a page
        with no ``backups`` list, a record with no id) is retried like a 5xx.
        ``deadline`` (event-loop time) bounds the retries: no retry starts that would begin after it.
        """
        reauthenticated = False
        attempt = 0
        last_error: Exception | None = None
        while True:
            attempt += 1
            try:
                if deadline is None:
                    response = await self._attempt(request, auth, limiter, expect_json, parse)
                else:
                    # The deadline bounds the attempt under way too: a server that answers a byte a
                    # second never trips the read timeout, which restarts with every byte.
                    try:
                        async with asyncio.timeout_at(deadline):
                            response = await self._attempt(request, auth, limiter, expect_json, parse)
                    except TimeoutError as exc:
                        if limiter is not None:
                            limiter.stats.errors += 1
                        before = f"; the attempt before: {last_error}" if last_error is not None else ""
                        raise DeadlineExceeded(
                            f"scope deadline reached during attempt {attempt} of "
                            f"{request.method} {request.path} (no whole answer yet){before}",
                            last=last_error,
                        ) from exc
                if limiter is not None:
                    limiter.on_success()
                return response
            except AuthFailedError:
                if reauthenticated or isinstance(auth, NoAuth) or request.service == "iam":
                    raise
                # A token can be revoked early (password change) or expire between check and use:
                # re-authenticate once, then believe the gateway.
                reauthenticated = True
                auth.invalidate(request)
                log.info("401 from %s %s: re-authenticating once", request.service, request.path)
                continue
            except Exception as exc:
                last_error = exc
                paced = is_paced(exc, limiter)
                limit = self.retry.max_paced_attempts if paced else self.retry.max_attempts
                if not is_retryable(exc) or attempt >= limit:
                    if limiter is not None:
                        limiter.stats.errors += 1
                    raise
                retry_after = exc.retry_after if isinstance(exc, ApiError) else None
                delay = self.retry.delay(attempt, retry_after, self._rng, paced)
                if deadline is not None and asyncio.get_running_loop().time() + delay > deadline:
                    if limiter is not None:
                        limiter.stats.errors += 1
                    raise DeadlineExceeded(
                        f"scope deadline reached after {attempt} attempts; last error: {exc}", last=exc
                    ) from exc
                if limiter is not None:
                    limiter.stats.retries += 1
                log.debug("retrying %s %s in %.2fs after: %s", request.method, request.path, delay, exc)
                await self._sleep(delay)

    async def _attempt(
        self,
        request: ApiRequest,
        auth: Authenticator,
        limiter: QuotaLimiter | None,
        expect_json: bool,
        parse: Callable[[bytes, str | None], Any] | None,
    ) -> ApiResponse:
        if limiter is not None:
            await limiter.acquire()
            limiter.stats.requests += 1
        headers = {
            "Host": request.host,
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
        }
        await auth.authorize(request, headers)
        url = request.url()
        proxy, proxy_auth = self._proxy_for(url)
        try:
            async with self.session.request(
                request.method,
                url,
                headers=headers,
                data=request.body or None,
                allow_redirects=False,
                ssl=self.ssl,
                proxy=proxy,
                proxy_auth=proxy_auth,
            ) as resp:
                status = resp.status
                body = await _read_capped(resp, request, self.max_body)
                request_id = resp.headers.get("X-Request-Id")
                resp_headers = resp.headers
                retry_after = _retry_after(resp.headers)
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            raise TransportError(f"{request.method} {url.path}: connection lost mid-answer: {exc}") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            # Not retried: another attempt meets the same certificate.
            raise CertificateError(
                f"{request.method} {url.host}: the server's certificate is not trusted "
                f"({exc.certificate_error}); set tls.ca_file to the CA bundle that signs it"
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"{request.method} {url.path}: {type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:
            raise TransportError(f"{request.method} {url.path}: timed out") from exc

        if 300 <= status < 400:
            raise ApiError(
                status,
                "Redirect",
                f"redirected to {resp_headers.get('Location', '(no Location)')}: redirects are not "
                "followed, so that no credential is ever sent to another host",
                request_id=request_id,
                url=str(url.path),
            )
        if status >= 400:
            code, message = parse_error(status, body)
            if request_id is None:
                try:
                    parsed = orjson.loads(body)
                    request_id = parsed.get("request_id") if isinstance(parsed, dict) else None
                except orjson.JSONDecodeError:
                    pass
            kind: type[ApiError]
            if status == 429 or status >= 500 or code in _RETRYABLE_CODES:
                kind = RetryableApiError
                if status == 429 and limiter is not None:
                    limiter.stats.throttled += 1
                    limiter.on_throttled(message)
            elif status == 401:
                kind = AuthFailedError
            else:
                kind = ApiError
            raise kind(
                status, code, message, request_id=request_id, url=str(url.path), retry_after=retry_after
            )

        data: Any = None
        if parse is not None:
            data = parse(body, request_id)
        elif expect_json:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise BadResponseError(
                    f"{request.method} {url.path}: answer is not JSON ({len(body)} bytes): {exc}",
                    request_id=request_id,
                ) from exc
        return ApiResponse(status=status, data=data, request_id=request_id, headers=resp_headers)
