"""Credentials: how each request proves who it is.

Token modes put ``X-Auth-Token`` on the request; AK/SK modes sign it (``SDK-HMAC-SHA256``, see
:mod:`crawler.support.signer`). Tokens are cached per scope and refreshed before they expire; temporary
AK/SK pairs are renewed the same way. Every attempt, retries included, is authorised afresh, so a
signature always carries a current ``X-Sdk-Date`` and a renewed credential is picked up at once.

CBR is a project-level service: a token must be scoped to the very project of the URL. EPS and IAM
discovery are global and need a domain-scoped token.

No class here lets a secret into its repr, and every error names the credential *source*
(``env CBR_PASSWORD``), never its value.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from crawler.config import (
    AgencyAuthConfig,
    AkSkAuthConfig,
    AuthConfig,
    PasswordAuthConfig,
    Secret,
    TemporaryAuthConfig,
    TokenAuthConfig,
)
from crawler.errors import ApiError, AuthFailedError, BadResponseError, CrawlerError
from crawler.pipeline.client import ApiClient, ApiRequest, Authenticator, NoAuth
from crawler.pipeline.ratelimit import QuotaLimiter
from crawler.support import signer
from crawler.support.logs import register_secret

log = logging.getLogger(__name__)

DOMAIN_SCOPE = "<domain>"


def mask(value: str, keep: int = 4) -> str:
    """``EXAMPLEAKID123456789`` -> ``EXAM...6789``: enough to tell keys apart, not to use them."""
    if len(value) <= 2 * keep:
        return "***"
    return f"{value[:keep]}...{value[-keep:]}"


def _parse_expiry(value: str) -> dt.datetime:
    """IAM's ``expires_at`` (``2020-01-04T09:05:22.701000Z``) as an aware datetime."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class _Cached:
    value: Any = field(repr=False)
    expires_at: dt.datetime
    refresh_at: dt.datetime


class _RenewingCache:
    """Credentials per scope key, renewed before they expire, fetched once however many ask.

    Renewal happens when 80% of the credential's life has passed (at least 60 s before expiry for
    long-lived ones), so a request never leaves with a credential about to die in flight.
    """

    def __init__(
        self, fetch: Callable[[str], Awaitable[tuple[Any, dt.datetime]]], clock: Callable[[], dt.datetime]
    ):
        self._fetch = fetch
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._working = False  # the last fetch succeeded (see working)

    def fresh(self, key: str) -> Any | None:
        """The cached credential if it needs no renewal yet (every request asks: no await)."""
        cached = self._cache.get(key)
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.value
        return None

    async def get(self, key: str) -> Any:
        value = self.fresh(key)
        if value is not None:
            return value
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(key)
            now = self._clock()
            if cached is not None and now < cached.refresh_at:
                return cached.value
            try:
                value, expires_at = await self._fetch(key)
            except BaseException:
                self._working = False
                raise
            life = max((expires_at - now).total_seconds(), 0.0)
            margin = min(max(60.0, life * 0.2), life * 0.5) if life > 120 else life * 0.2
            self._cache[key] = _Cached(value, expires_at, expires_at - dt.timedelta(seconds=margin))
            self._working = True
            return value

    @property
    def working(self) -> bool:
        """Whether the last fetch succeeded: the secret behind the credentials is known to work now."""
        return self._working

    def invalidate(self, key: str) -> None:
        self._cache.pop(key, None)


@dataclass(frozen=True, slots=True)
class IamEndpoints:
    """Where to ask IAM, and the limiter its requests wait for."""

    base_url: str
    limiter: QuotaLimiter | None = None


async def _post_iam(
    client: ApiClient, iam: IamEndpoints, path: str, body: dict[str, Any], headers_auth: Any
) -> Any:
    request = ApiRequest(service="iam", method="POST", base_url=iam.base_url, path=path, body=_dumps(body))
    try:
        return await client.send(request, headers_auth, iam.limiter)
    except ApiError as exc:
        if exc.status in (400, 401, 403):
            raise AuthFailedError(
                exc.status, exc.code, exc.message, request_id=exc.request_id, url=exc.url
            ) from exc
        raise


def _dumps(body: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(body)


class StaticTokenAuth:
    """A ready-made token (from an env var or a mounted file), sent as ``X-Auth-Token``."""

    def __init__(self, token: str, source: str) -> None:
        self._token = token
        self.description = f"static token from {source}"
        self.identity = f"token:{source}"

    def __repr__(self) -> str:
        return f"StaticTokenAuth({self.description!r})"

    async def authorize(self, request: ApiRequest, headers: dict[str, str]) -> None:
        headers["X-Auth-Token"] = self._token

    def invalidate(self, request: ApiRequest) -> None:
        # Nothing to renew: a refused static token fails for good (the 401 propagates).
        return None

    def prefetch(self, request: ApiRequest) -> None:
        return None  # nothing is fetched per scope

    async def token_for(self, scope: str) -> str:
        return self._token


class _ScopedTokenAuth:
    """Tokens fetched from IAM per scope (a project id, or the domain) and sent as X-Auth-Token.

    Subclasses say how a token is obtained (``_fetch``); caching, renewal before expiry, and
    forgetting a token after a 401 are shared.
    """

    description: str
    identity: str

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self._tokens = _RenewingCache(self._fetch, clock)
        self._prefetching: asyncio.Task[Any] | None = None

    async def _fetch(self, scope: str) -> tuple[str, dt.datetime]:
        raise NotImplementedError

    async def token_for(self, scope: str) -> str:
        token: str = await self._tokens.get(scope)
        return token

    async def authorize(self, request: ApiRequest, headers: dict[str, str]) -> None:
        scope = _scope_of(request)
        token = self._tokens.fresh(scope)
        headers["X-Auth-Token"] = token if token is not None else await self.token_for(scope)

    def invalidate(self, request: ApiRequest) -> None:
        self._tokens.invalidate(_scope_of(request))

    def prefetch(self, request: ApiRequest) -> None:
        """Fetch the token of a project the crawl reaches soon, so that its first scopes don't wait.

        Each project needs a token of its own: fetched only when its first scope asks, every worker
        reaching a new project would wait one IAM round trip (the engine calls this some scopes
        ahead). A wrong password must not be tried more often than the crawl itself tries it (IAM
        locks users out after repeated failures): a prefetch starts only while the last fetch of
        this credential succeeded, and only one is in flight at a time, so a password changed
        mid-run costs at most one extra failed attempt.
        """
        if self._prefetching is not None or not self._tokens.working:
            return
        scope = _scope_of(request)
        if self._tokens.fresh(scope) is not None:
            return
        task = asyncio.get_running_loop().create_task(self._tokens.get(scope), name=f"token:{scope}")
        self._prefetching = task
        task.add_done_callback(functools.partial(self._prefetched, scope))

    def _prefetched(self, scope: str, task: asyncio.Task[Any]) -> None:
        self._prefetching = None
        if not task.cancelled() and task.exception() is not None:
            # The request that needs it asks again, and reports the error if it persists.
            log.debug("prefetching a token for %s failed: %s", scope, task.exception())


class PasswordAuth(_ScopedTokenAuth):
    """IAM password tokens: project-scoped per project for CBR, domain-scoped for EPS and IAM."""

    def __init__(
        self,
        client: ApiClient,
        iam: IamEndpoints,
        *,
        user: str,
        domain: str,
        password: str,
        source: str,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._client = client
        self._iam = iam
        self._user = user
        self._domain = domain
        self._password = password
        self.description = f"password of IAM user {user!r} in account {domain!r} ({source})"
        self.identity = f"user:{user}@{domain}"
        super().__init__(clock)

    def __repr__(self) -> str:
        return f"PasswordAuth({self.identity!r})"

    async def _fetch(self, scope: str) -> tuple[str, dt.datetime]:
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self._user,
                            "password": self._password,
                            "domain": {"name": self._domain},
                        }
                    },
                },
                "scope": _scope_body(scope, self._domain),
            }
        }
        resp = await _post_iam(self._client, self._iam, "/v3/auth/tokens", body, NoAuth())
        return _token_from(resp.headers, resp.data, resp.request_id)


def _scope_body(scope: str, domain_name: str) -> dict[str, Any]:
    """The ``scope`` of a token request: the domain, or one project (CBR is project-level)."""
    if scope == DOMAIN_SCOPE:
        return {"domain": {"name": domain_name}}
    return {"project": {"id": scope}}


def _scope_of(request: ApiRequest) -> str:
    if request.service == "cbr" and request.project_id:
        return request.project_id
    return DOMAIN_SCOPE


def _token_from(headers: Any, data: Any, request_id: str | None) -> tuple[str, dt.datetime]:
    token = headers.get("X-Subject-Token")
    try:
        expires = _parse_expiry(data["token"]["expires_at"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadResponseError(
            "IAM token answer has no usable token.expires_at", request_id=request_id
        ) from exc
    if not token:
        raise BadResponseError("IAM token answer has no X-Subject-Token header", request_id=request_id)
    return str(token), expires


class AgencyTokenAuth(_ScopedTokenAuth):
    """Account A's credential assumes an agency of account B (``assume_role``) for B's tokens."""

    def __init__(
        self,
        client: ApiClient,
        iam: IamEndpoints,
        source: StaticTokenAuth | PasswordAuth,
        *,
        domain_name: str,
        agency_name: str,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._client = client
        self._iam = iam
        self._source = source
        self._domain_name = domain_name
        self._agency_name = agency_name
        self.description = f"agency {agency_name!r} of account {domain_name!r} via {source.description}"
        self.identity = f"agency:{domain_name}/{agency_name}"
        super().__init__(clock)

    def __repr__(self) -> str:
        return f"AgencyTokenAuth({self.identity!r})"

    async def _fetch(self, scope: str) -> tuple[str, dt.datetime]:
        body = {
            "auth": {
                "identity": {
                    "methods": ["assume_role"],
                    "assume_role": {"domain_name": self._domain_name, "agency_name": self._agency_name},
                },
                "scope": _scope_body(scope, self._domain_name),
            }
        }
        source_token = await self._source.token_for(DOMAIN_SCOPE)
        resp = await _post_iam(self._client, self._iam, "/v3/auth/tokens", body, _TokenHeader(source_token))
        return _token_from(resp.headers, resp.data, resp.request_id)


class _TokenHeader:
    """Authenticates one IAM call with a given token."""

    description = "source token"
    identity = "token"

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "_TokenHeader('***')"

    async def authorize(self, request: ApiRequest, headers: dict[str, str]) -> None:
        headers["X-Auth-Token"] = self._token

    def invalidate(self, request: ApiRequest) -> None:
        return None

    def prefetch(self, request: ApiRequest) -> None:
        return None  # nothing is fetched per scope


@dataclass(frozen=True, slots=True)
class AccessKey:
    """An AK/SK pair, with the security token of temporary credentials. The repr shows none of it."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        kind = "temporary" if self.security_token else "permanent"
        return f"AccessKey({mask(self.access_key)}, {kind})"


def sign_into(key: AccessKey, request: ApiRequest, headers: dict[str, str], now: dt.datetime) -> None:
    """Sign ``request`` with ``key`` into ``headers`` (which already hold Host, User-Agent, Content-Type)."""
    if request.service == "cbr" and request.project_id:
        headers["X-Project-Id"] = request.project_id
    if key.security_token:
        headers["X-Security-Token"] = key.security_token
    sdk_date = now.strftime(signer.SDK_DATE_FORMAT)
    added = signer.sign(
        request.method,
        headers["Host"],
        request.path,
        list(request.query),
        {k: v for k, v in headers.items() if k != "Host"},
        request.body,
        key.access_key,
        key.secret_key,
        sdk_date,
    )
    headers.update(added)


class AkSkAuth:
    """Permanent AK/SK: every request signed with ``SDK-HMAC-SHA256``."""

    def __init__(self, key: AccessKey, source: str, clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self._key = key
        self._clock = clock
        self.description = f"access key {mask(key.access_key)} ({source})"
        self.identity = f"ak:{mask(key.access_key)}"

    def __repr__(self) -> str:
        return f"AkSkAuth({self.identity!r})"

    async def authorize(self, request: ApiRequest, headers: dict[str, str]) -> None:
        sign_into(self._key, request, headers, self._clock())

    def invalidate(self, request: ApiRequest) -> None:
        return None

    def prefetch(self, request: ApiRequest) -> None:
        return None  # nothing is fetched per scope


class TemporaryAkSkAuth:
    """Temporary AK/SK from IAM ``securitytokens``, renewed before they expire.

    ``source`` authenticates the securitytokens call: a token (password or static), or an agency
    (``assume_role`` method), so that account A can sign as account B. ``duration_seconds`` None
    leaves the lifetime to IAM (900 s); IAM may grant less than asked, so renewal follows the
    ``expires_at`` of each answer, never the lifetime asked for.
    """

    def __init__(
        self,
        client: ApiClient,
        iam: IamEndpoints,
        source: StaticTokenAuth | PasswordAuth | AkSkAuth,
        *,
        duration_seconds: int | None,
        agency: tuple[str, str] | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._client = client
        self._iam = iam
        self._source = source
        self._duration = duration_seconds
        self._agency = agency
        self._clock = clock
        via = f"agency {agency[1]!r} of account {agency[0]!r} via " if agency else ""
        self.description = f"temporary access keys ({via}{source.description})"
        self.identity = f"temporary:{agency[0] + '/' + agency[1] if agency else source.identity}"
        self._keys = _RenewingCache(self._fetch, clock)

    def __repr__(self) -> str:
        return f"TemporaryAkSkAuth({self.identity!r})"

    async def _fetch(self, _scope: str) -> tuple[AccessKey, dt.datetime]:
        # An absent duration_seconds is IAM's default; null would be refused as an invalid body.
        lifetime: dict[str, Any] = {} if self._duration is None else {"duration_seconds": self._duration}
        identity: dict[str, Any]
        if self._agency is not None:
            identity = {
                "methods": ["assume_role"],
                "assume_role": {"domain_name": self._agency[0], "agency_name": self._agency[1], **lifetime},
            }
        else:
            identity = {"methods": ["token"], "token": lifetime}
        body = {"auth": {"identity": identity}}
        if isinstance(self._source, AkSkAuth):
            caller: Any = self._source
        else:
            caller = _TokenHeader(await self._source.token_for(DOMAIN_SCOPE))
        resp = await _post_iam(self._client, self._iam, "/v3.0/OS-CREDENTIAL/securitytokens", body, caller)
        try:
            cred = resp.data["credential"]
            key = AccessKey(str(cred["access"]), str(cred["secret"]), str(cred["securitytoken"]))
            expires = _parse_expiry(str(cred["expires_at"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadResponseError(
                "IAM securitytokens answer has no usable credential", request_id=resp.request_id
            ) from exc
        log.debug("obtained %r, expires %s", key, expires.isoformat())
        return key, expires

    async def authorize(self, request: ApiRequest, headers: dict[str, str]) -> None:
        key: AccessKey = await self._keys.get("temporary")
        sign_into(key, request, headers, self._clock())

    def invalidate(self, request: ApiRequest) -> None:
        self._keys.invalidate("temporary")

    def prefetch(self, request: ApiRequest) -> None:
        return None  # one key pair for every request, fetched by the first


def build_authenticator(auth: AuthConfig, client: ApiClient, iam: IamEndpoints) -> Authenticator:
    """The authenticator a tenant's ``auth`` section describes, with its secrets read now.

    Every secret read is registered with the log filter (crawler.support.logs), as a second line
    of defence; a source that cannot be read raises :class:`crawler.errors.MissingSecretError`.
    """
    if isinstance(auth, TokenAuthConfig):
        token, source = auth.resolve_token()
        return StaticTokenAuth(_revealed(token), source)
    if isinstance(auth, PasswordAuthConfig):
        password, source = auth.resolve_password()
        return PasswordAuth(
            client, iam, user=auth.user, domain=auth.domain, password=_revealed(password), source=source
        )
    if isinstance(auth, AkSkAuthConfig):
        ak, sk, source = auth.resolve_keys()
        return AkSkAuth(AccessKey(_revealed(ak), _revealed(sk)), source)
    if isinstance(auth, TemporaryAuthConfig):
        token_source = _token_source(auth.source, client, iam)
        return TemporaryAkSkAuth(client, iam, token_source, duration_seconds=auth.duration_seconds)
    assert isinstance(auth, AgencyAuthConfig)
    trusted = build_authenticator(auth.source, client, iam)
    assert isinstance(trusted, StaticTokenAuth | PasswordAuth | AkSkAuth)
    if auth.credential == "temporary_aksk":
        return TemporaryAkSkAuth(
            client,
            iam,
            trusted,
            duration_seconds=auth.duration_seconds,
            agency=(auth.domain_name, auth.agency_name),
        )
    if isinstance(trusted, AkSkAuth):
        # IAM issues assume_role tokens only to the bearer of a token, and AK/SK cannot buy one.
        raise CrawlerError(
            f"agency {auth.agency_name!r} of account {auth.domain_name!r}: credential 'token' needs a "
            "password or token source; with an AK/SK source set credential: temporary_aksk"
        )
    return AgencyTokenAuth(client, iam, trusted, domain_name=auth.domain_name, agency_name=auth.agency_name)


def _token_source(
    auth: PasswordAuthConfig | TokenAuthConfig, client: ApiClient, iam: IamEndpoints
) -> StaticTokenAuth | PasswordAuth:
    source = build_authenticator(auth, client, iam)
    assert isinstance(source, StaticTokenAuth | PasswordAuth)
    return source


def _revealed(secret: Secret) -> str:
    text = secret.reveal()
    register_secret(text)
    return text
