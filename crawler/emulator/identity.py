"""Emulated IAM: users, agencies, tokens, temporary AK/SK, and request authentication.

Two halves:

* the IAM API itself (``POST /v3/auth/tokens``, ``POST /v3.0/OS-CREDENTIAL/securitytokens`` and the
  project lists), answering Keystone-shaped errors (:class:`KeystoneError`);
* what API Gateway does with every other request (:meth:`Identity.authenticate`): check an
  ``X-Auth-Token`` (live, right scope) or verify an ``SDK-HMAC-SHA256`` signature against the
  request exactly as received, answering :class:`~crawler.emulator.gateway.GatewayError`.

Time comes from an injected wall clock (``clock() -> epoch seconds``) so that tests can expire a
token or a signature date without sleeping. Nothing here prints a secret: the dataclasses holding
passwords, tokens, secret keys and security tokens leave them out of ``repr``.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import orjson

from crawler.emulator.estate import Domain, Estate, Project
from crawler.emulator.gateway import GatewayError
from crawler.emulator.scenario import IdentitySpec, derive_secret
from crawler.support import signer

Clock = Callable[[], float]

_UPPER_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_HEX = "0123456789abcdef"

# API Gateway messages. The codes are documented; the exact wording of the 0301 variants is not,
# so clients must key on status and code, never on these strings.
_BAD_AUTH = "Incorrect IAM authentication information: "
MSG_MISSING_AUTH = _BAD_AUTH + "Authorization header or X-Auth-Token header is missing"
MSG_BAD_TOKEN = _BAD_AUTH + "decrypt token fail"
MSG_TOKEN_EXPIRED = "The token must be updated."
MSG_WRONG_PROJECT_403 = (
    "The IAM user is not authorized to access the API: the token is not scoped to this project."
)
MSG_DOMAIN_SCOPE_NEEDED = (
    "The IAM user is not authorized to access the API: a domain-scoped token is required."
)
MSG_SIGNATURE = _BAD_AUTH + "verify aksk signature fail"
MSG_BAD_AUTHORIZATION = _BAD_AUTH + "verify aksk signature fail, the Authorization header is malformed"
MSG_UNKNOWN_AK = _BAD_AUTH + "ak {ak} not exist"
MSG_AK_LOCKED = _BAD_AUTH + "ak {ak} is locked after too many signature failures, retry later"
MSG_DATE_MISSING = _BAD_AUTH + "X-Sdk-Date header is missing or malformed"
MSG_DATE_SKEW = _BAD_AUTH + "X-Sdk-Date is out of the allowed clock skew"
MSG_TEMP_EXPIRED = _BAD_AUTH + "the temporary access key has expired"
MSG_SECURITY_TOKEN = _BAD_AUTH + "X-Security-Token is missing, unsigned or does not match the access key"
MSG_PROJECT_HEADER = _BAD_AUTH + "X-Project-Id is missing or does not match the project in the URL"
MSG_PROJECT_DOMAIN = _BAD_AUTH + "the project does not belong to the domain of the access key"
MSG_DOMAIN_HEADER = _BAD_AUTH + "X-Domain-Id does not match the domain of the access key"
MSG_PROJECT_DISABLED = "The project is unavailable."


class KeystoneError(Exception):
    """An IAM API error: ``{"error": {"code": 401, "message": ..., "title": "Unauthorized"}}``."""

    TITLES: ClassVar[dict[int, str]] = {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        429: "Too Many Requests",
    }

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "title": self.TITLES.get(self.status, "Error"),
            }
        }


def iso_z(timestamp: float) -> str:
    """``2020-01-04T09:05:22.701000Z``, the shape of IAM's ``expires_at``."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Principal:
    """Who a token or an AK acts as: an IAM user, or an agency assumed by a user of another domain."""

    id: str
    name: str
    domain: Domain
    # Enterprise-project ids the principal may see; None means all of the domain's.
    granted_eps: frozenset[str] | None = None
    assumed_by: Principal | None = None

    def user_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "domain": {"id": self.domain.id, "name": self.domain.name},
            "id": self.id,
            "name": self.name,
            "password_expires_at": "",
        }
        return body


@dataclass(frozen=True)
class UserRecord:
    """A user and its secrets; secrets stay out of ``repr``."""

    principal: Principal
    password: str = field(repr=False)
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Agency:
    """An agency in ``principal.domain`` that users of ``trusted_domain_id`` may assume."""

    principal: Principal
    trusted_domain_id: str


@dataclass(frozen=True)
class Token:
    """An issued X-Subject-Token and what it grants."""

    value: str = field(repr=False)
    principal: Principal
    methods: tuple[str, ...]
    project: Project | None  # project scope, or None for a domain-scoped token
    issued_at: float
    expires_at: float


@dataclass(frozen=True)
class TemporaryCredential:
    """A temporary AK/SK with its security token."""

    access_key: str
    secret_key: str = field(repr=False)
    security_token: str = field(repr=False)
    principal: Principal = field(compare=False)
    expires_at: float = 0.0


@dataclass(frozen=True)
class RequestView:
    """The parts of an HTTP request that authentication looks at, exactly as received."""

    method: str
    path: str  # raw wire path (still percent-encoded), no query
    query_string: str  # raw query string as sent
    headers: Mapping[str, str]  # case-insensitive (a CIMultiDict from aiohttp)
    body: bytes = b""


@dataclass(frozen=True)
class Caller:
    """An authenticated request's principal and scope."""

    principal: Principal
    via: Literal["token", "aksk"]
    domain: Domain
    project: Project | None = None
    access_key: str | None = None

    @property
    def granted_eps(self) -> frozenset[str] | None:
        return self.principal.granted_eps


def _opaque(length: int) -> str:
    # Real tokens are base64 PKI blobs starting with "MII"; the content is meaningless to clients.
    return ("MII" + secrets.token_urlsafe(length))[:length]


# Tokens kept before expired ones are swept out (see Identity._remember_token).
TOKEN_SWEEP_AT = 50_000


class Identity:
    """Users, agencies, tokens and temporary credentials of one emulator, and request authentication."""

    def __init__(
        self,
        estate: Estate,
        spec: IdentitySpec,
        *,
        seed: int,
        wrong_project_token_status: int = 401,
        clock: Clock = time.time,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self._estate = estate
        self._seed = seed
        self._wrong_project_status = wrong_project_token_status
        self._projects_by_domain: dict[str, list[Project]] = {}
        for project in estate.projects.values():
            self._projects_by_domain.setdefault(project.domain_id, []).append(project)
        self.users: dict[str, UserRecord] = {}  # by user id
        self._users_by_name: dict[tuple[str, str], UserRecord] = {}  # (domain id, user name)
        self._users_by_ak: dict[str, UserRecord] = {}
        self.agencies: dict[tuple[str, str], Agency] = {}  # (owner domain id, agency name)
        self._tokens: dict[str, Token] = {}
        self._sweep_tokens_at = TOKEN_SWEEP_AT
        self._temporary: dict[str, TemporaryCredential] = {}
        self._failures: dict[str, int] = {}
        self._locked_until: dict[str, float] = {}
        self._build_users()
        self._build_agencies()

    # -- set-up ---------------------------------------------------------------------------------

    def _domain(self, name: str) -> Domain:
        domain = self._estate.domain_by_name(name)
        if domain is None:
            raise ValueError(f"identity: unknown domain {name!r}")
        return domain

    def _resolve_eps(self, domain: Domain, wanted: Sequence[str] | None) -> frozenset[str] | None:
        if wanted is None:
            return None
        eps = self._estate.enterprise_projects.get(domain.id, [])
        ids: set[str] = set()
        for item in wanted:
            match = [ep.id for ep in eps if item in (ep.id, ep.name)]
            if not match:
                raise ValueError(f"identity: domain {domain.name} has no enterprise project {item!r}")
            ids.update(match)
        return frozenset(ids)

    def _add_user(self, record: UserRecord) -> None:
        self.users[record.principal.id] = record
        self._users_by_name[(record.principal.domain.id, record.principal.name)] = record
        if record.access_key is not None:
            self._users_by_ak[record.access_key] = record

    def _build_users(self) -> None:
        if self.spec.default_users:
            for domain in self._estate.domains.values():
                self._add_user(
                    UserRecord(
                        principal=Principal(
                            id=derive_secret(
                                self._seed, "user-id", domain.name, "admin", length=32, alphabet=_HEX
                            ),
                            name=f"{domain.name}-admin",
                            domain=domain,
                        ),
                        password=f"{domain.name}-password",
                        access_key=derive_secret(
                            self._seed, "ak", domain.name, length=20, alphabet=_UPPER_DIGITS
                        ),
                        secret_key=derive_secret(self._seed, "sk", domain.name, length=40, alphabet=_ALNUM),
                    )
                )
        for user in self.spec.users:
            domain = self._domain(user.domain)
            principal = Principal(
                id=user.id
                or derive_secret(self._seed, "user-id", domain.name, user.name, length=32, alphabet=_HEX),
                name=user.name,
                domain=domain,
                granted_eps=self._resolve_eps(domain, user.enterprise_projects),
            )
            # A scenario user replaces a default user of the same name.
            old = self._users_by_name.pop((domain.id, user.name), None)
            if old is not None:
                self.users.pop(old.principal.id, None)
                if old.access_key is not None:
                    self._users_by_ak.pop(old.access_key, None)
            self._add_user(
                UserRecord(
                    principal=principal,
                    password=user.password.get_secret_value(),
                    access_key=user.ak,
                    secret_key=user.sk.get_secret_value() if user.sk is not None else None,
                )
            )

    def _build_agencies(self) -> None:
        for agency in self.spec.agencies:
            owner = self._domain(agency.domain)
            trusted = self._domain(agency.trusted_domain)
            principal = Principal(
                id=derive_secret(self._seed, "agency-id", owner.name, agency.name, length=32, alphabet=_HEX),
                name=f"{owner.name}/{agency.name}",
                domain=owner,
                granted_eps=self._resolve_eps(owner, agency.enterprise_projects),
            )
            self.agencies[(owner.id, agency.name)] = Agency(principal, trusted.id)

    # -- lookups ----------------------------------------------------------------------------------

    def projects_of(self, domain_id: str) -> list[Project]:
        """Every project of a domain, all regions, in a stable order."""
        return self._projects_by_domain.get(domain_id, [])

    def user_of(self, headers: Mapping[str, str]) -> str | None:
        """The id of the principal behind a request, without verifying it (for per-user throttles)."""
        token = headers.get("X-Auth-Token")
        if token:
            found = self._tokens.get(token)
            return found.principal.id if found else None
        authorization = headers.get("Authorization", "")
        if authorization.startswith("SDK-HMAC-SHA256"):
            try:
                ak = signer.parse_authorization(authorization).access_key
            except ValueError:
                return None
            user = self._users_by_ak.get(ak)
            if user is not None:
                return user.principal.id
            temporary = self._temporary.get(ak)
            return temporary.principal.id if temporary else None
        return None

    def token(self, value: str) -> Token | None:
        return self._tokens.get(value)

    # -- IAM API ------------------------------------------------------------------------------------

    def issue_token(self, body: bytes, subject_token: str | None) -> tuple[Token, dict[str, Any]]:
        """``POST /v3/auth/tokens``: the token and the 201 body. ``subject_token`` is X-Auth-Token."""
        auth = _dig(_parse_json(body), "auth", kind=dict)
        identity = _dig(auth, "identity", kind=dict)
        methods = _dig(identity, "methods", kind=list)
        if methods == ["password"]:
            principal = self._password_principal(
                _dig(_dig(identity, "password", kind=dict), "user", kind=dict)
            )
        elif methods == ["assume_role"]:
            principal = self._assume_role(_dig(identity, "assume_role", kind=dict), subject_token)
        else:
            raise KeystoneError(400, 'Invalid identity methods: use ["password"] or ["assume_role"].')
        project = self._scope(principal, _dig(auth, "scope", kind=dict))
        now = self.clock()
        token = Token(
            value=_opaque(self.spec.token_length),
            principal=principal,
            methods=tuple(methods),
            project=project,
            issued_at=now,
            expires_at=now + self.spec.token_ttl_seconds,
        )
        self._remember_token(token)
        return token, {"token": self._token_body(token)}

    def _remember_token(self, token: Token) -> None:
        # Expired tokens are kept (to answer 0307 rather than 0301) until the store grows large.
        # The next sweep waits until the store has doubled: a long-lived emulator holding many
        # valid tokens (the benchmarks' runs, a day of demos) would otherwise sweep them all again
        # for every new token, and token requests would slow down without bound.
        if len(self._tokens) >= self._sweep_tokens_at:
            now = self.clock()
            self._tokens = {k: t for k, t in self._tokens.items() if t.expires_at > now}
            self._sweep_tokens_at = max(TOKEN_SWEEP_AT, 2 * len(self._tokens))
        self._tokens[token.value] = token

    def _token_body(self, token: Token) -> dict[str, Any]:
        principal = token.principal
        body: dict[str, Any] = {
            "expires_at": iso_z(token.expires_at),
            "issued_at": iso_z(token.issued_at),
            "methods": list(token.methods),
            "user": principal.user_body(),
            "catalog": [],
            "roles": [
                {
                    "id": derive_secret(self._seed, "role", "te_admin", length=32, alphabet=_HEX),
                    "name": "te_admin",
                }
            ],
        }
        if principal.assumed_by is not None:
            body["assumed_by"] = {"user": principal.assumed_by.user_body()}
        if token.project is not None:
            body["project"] = {
                "id": token.project.id,
                "name": token.project.name,
                "domain": {"id": principal.domain.id, "name": principal.domain.name},
            }
        else:
            body["domain"] = {"id": principal.domain.id, "name": principal.domain.name}
        return body

    def _password_principal(self, user: dict[str, Any]) -> Principal:
        password = user.get("password")
        if not isinstance(password, str):
            raise KeystoneError(
                400, "The request body is invalid: auth.identity.password.user.password is required."
            )
        record: UserRecord | None = None
        if isinstance(user.get("id"), str):
            record = self.users.get(user["id"])
        elif isinstance(user.get("name"), str):
            domain_ref = _dig(user, "domain", kind=dict)
            domain = self._domain_ref(domain_ref)
            if domain is not None:
                record = self._users_by_name.get((domain.id, user["name"]))
        else:
            raise KeystoneError(
                400, "The request body is invalid: the user needs an id or a name and a domain."
            )
        # One message for unknown user and wrong password, as IAM does: no user enumeration.
        if record is None or not hmac.compare_digest(record.password.encode(), password.encode()):
            raise KeystoneError(401, "The username or password is wrong.")
        return record.principal

    def _domain_ref(self, ref: dict[str, Any]) -> Domain | None:
        if isinstance(ref.get("id"), str):
            return self._estate.domains.get(ref["id"])
        if isinstance(ref.get("name"), str):
            return self._estate.domain_by_name(ref["name"])
        raise KeystoneError(400, "The request body is invalid: a domain needs an id or a name.")

    def _live_token(self, value: str | None) -> Token:
        if not value:
            raise KeystoneError(401, "The request you have made requires authentication.")
        token = self._tokens.get(value)
        if token is None or token.expires_at <= self.clock():
            raise KeystoneError(401, "The request you have made requires authentication.")
        return token

    def _agency_principal(
        self, ref: dict[str, Any], subject_token: str | None, signed_by: Principal | None = None
    ) -> Principal:
        if subject_token is None and signed_by is not None:
            caller = signed_by
        else:
            caller = self._live_token(subject_token).principal
        owner_name = ref.get("domain_name")
        owner = (
            self._estate.domain_by_name(owner_name)
            if isinstance(owner_name, str)
            else self._estate.domains.get(str(ref.get("domain_id", "")))
        )
        agency_name = ref.get("agency_name")
        if not isinstance(agency_name, str) or (owner_name is None and "domain_id" not in ref):
            raise KeystoneError(
                400, "The request body is invalid: assume_role needs domain_name and agency_name."
            )
        agency = self.agencies.get((owner.id, agency_name)) if owner is not None else None
        if agency is None or caller.domain.id != agency.trusted_domain_id or caller.assumed_by is not None:
            raise KeystoneError(403, "You are not authorized to perform the requested action: assume_role.")
        return Principal(
            id=agency.principal.id,
            name=agency.principal.name,
            domain=agency.principal.domain,
            granted_eps=agency.principal.granted_eps,
            assumed_by=caller,
        )

    def _assume_role(self, ref: dict[str, Any], subject_token: str | None) -> Principal:
        return self._agency_principal(ref, subject_token)

    def _scope(self, principal: Principal, scope: dict[str, Any]) -> Project | None:
        if "project" in scope:
            ref = _dig(scope, "project", kind=dict)
            project: Project | None = None
            if isinstance(ref.get("id"), str):
                project = self._estate.projects.get(ref["id"])
            elif isinstance(ref.get("name"), str):
                domain = (
                    self._domain_ref(ref["domain"])
                    if isinstance(ref.get("domain"), dict)
                    else principal.domain
                )
                candidates = self.projects_of(domain.id) if domain is not None else []
                project = next((p for p in candidates if p.name == ref["name"]), None)
            else:
                raise KeystoneError(400, "The request body is invalid: scope.project needs an id or a name.")
            if project is None or project.domain_id != principal.domain.id:
                raise KeystoneError(
                    401, "The request you have made requires authentication: unknown project."
                )
            if not project.enabled:
                raise KeystoneError(
                    401, "The request you have made requires authentication: project disabled."
                )
            return project
        if "domain" in scope:
            domain = self._domain_ref(_dig(scope, "domain", kind=dict))
            if domain is None or domain.id != principal.domain.id:
                raise KeystoneError(401, "The request you have made requires authentication: unknown domain.")
            return None
        raise KeystoneError(400, "The request body is invalid: auth.scope needs a project or a domain.")

    def issue_security_token(
        self, body: bytes, subject_token: str | None, signed_by: Principal | None = None
    ) -> dict[str, Any]:
        """``POST /v3.0/OS-CREDENTIAL/securitytokens``: a temporary AK/SK (201 body).

        The caller is named by ``X-Auth-Token`` (``subject_token``), by ``token.id`` in the body,
        or, as IAM's reference recommends and the official SDK does, by an AK/SK signature
        (``signed_by``, already verified by the gateway).
        """
        identity = _dig(_dig(_parse_json(body), "auth", kind=dict), "identity", kind=dict)
        methods = _dig(identity, "methods", kind=list)
        if methods == ["token"]:
            ref = identity.get("token") or {}
            if not isinstance(ref, dict):
                raise KeystoneError(
                    400, "The request body is invalid: auth.identity.token must be an object."
                )
            # The official SDK sends the token in the body (token.id), other clients in X-Auth-Token.
            body_token = ref.get("id") if isinstance(ref.get("id"), str) else None
            if subject_token is None and body_token is None and signed_by is not None:
                principal = signed_by
            else:
                principal = self._live_token(subject_token or body_token).principal
        elif methods == ["assume_role"]:
            ref = _dig(identity, "assume_role", kind=dict)
            principal = self._agency_principal(ref, subject_token, signed_by)
        else:
            raise KeystoneError(400, 'Invalid identity methods: use ["token"] or ["assume_role"].')
        duration = ref.get("duration_seconds", 900)
        if not isinstance(duration, int) or isinstance(duration, bool) or not 900 <= duration <= 86400:
            raise KeystoneError(400, "The request body is invalid: duration_seconds must be 900..86400.")
        # The scenario may cap lifetimes far below IAM's minimum so that tests see expiry quickly.
        lifetime = min(float(duration), self.spec.security_token_ttl_seconds)
        credential = TemporaryCredential(
            access_key=secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
            + "".join(secrets.choice(_UPPER_DIGITS) for _ in range(19)),
            secret_key="".join(secrets.choice(_ALNUM) for _ in range(40)),
            security_token=("gQpjbi1" + secrets.token_urlsafe(1200)),
            principal=principal,
            expires_at=self.clock() + lifetime,
        )
        self._temporary[credential.access_key] = credential
        return {
            "credential": {
                "access": credential.access_key,
                "secret": credential.secret_key,
                "securitytoken": credential.security_token,
                "expires_at": iso_z(credential.expires_at),
            }
        }

    def token_principal(self, subject_token: str | None) -> Principal:
        """The principal of a live token, for IAM read APIs (Keystone 401 otherwise)."""
        return self._live_token(subject_token).principal

    # -- gateway authentication ---------------------------------------------------------------------

    def authenticate(
        self, request: RequestView, *, project_id: str | None = None, domain_scope: bool = False
    ) -> Caller:
        """Authenticate a request as API Gateway does, or raise :class:`GatewayError`.

        ``project_id``: a project-level service (CBR) called for this project; the token must be
        scoped to it, or an AK/SK request must carry it in ``X-Project-Id``.
        ``domain_scope``: a global service (EPS) that needs a domain-scoped token.
        """
        token = request.headers.get("X-Auth-Token")
        if token:
            return self._authenticate_token(token, project_id=project_id, domain_scope=domain_scope)
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("SDK-HMAC-SHA256"):
            return self._authenticate_aksk(request, authorization, project_id=project_id)
        raise GatewayError(401, "APIGW.0301", MSG_MISSING_AUTH)

    def _authenticate_token(self, value: str, *, project_id: str | None, domain_scope: bool) -> Caller:
        token = self._tokens.get(value)
        if token is None:
            raise GatewayError(401, "APIGW.0301", MSG_BAD_TOKEN)
        if token.expires_at <= self.clock():
            raise GatewayError(401, "APIGW.0307", MSG_TOKEN_EXPIRED)
        if project_id is not None and (token.project is None or token.project.id != project_id):
            if self._wrong_project_status == 403:
                raise GatewayError(403, "APIGW.0302", MSG_WRONG_PROJECT_403)
            raise GatewayError(401, "APIGW.0307", MSG_TOKEN_EXPIRED)
        if domain_scope and token.project is not None:
            raise GatewayError(403, "APIGW.0302", MSG_DOMAIN_SCOPE_NEEDED)
        if token.project is not None:
            self._check_project_enabled(token.project)
        return Caller(token.principal, "token", token.principal.domain, token.project)

    def _check_project_enabled(self, project: Project) -> None:
        if not project.enabled:
            raise GatewayError(403, "APIGW.0310", MSG_PROJECT_DISABLED)

    def _authenticate_aksk(
        self, request: RequestView, authorization: str, *, project_id: str | None
    ) -> Caller:
        try:
            parsed = signer.parse_authorization(authorization)
        except ValueError:
            raise GatewayError(401, "APIGW.0301", MSG_BAD_AUTHORIZATION) from None
        ak = parsed.access_key
        user = self._users_by_ak.get(ak)
        temporary = self._temporary.get(ak) if user is None else None
        if user is not None and user.secret_key is not None:
            principal, secret_key = user.principal, user.secret_key
        elif temporary is not None:
            principal, secret_key = temporary.principal, temporary.secret_key
        else:
            raise GatewayError(401, "APIGW.0301", MSG_UNKNOWN_AK.format(ak=ak))
        now = self.clock()
        if self._locked_until.get(ak, 0.0) > now:
            raise GatewayError(401, "APIGW.0301", MSG_AK_LOCKED.format(ak=ak))
        sdk_date = request.headers.get("X-Sdk-Date", "")
        try:
            signed_at = datetime.strptime(sdk_date, signer.SDK_DATE_FORMAT).replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise GatewayError(401, "APIGW.0301", MSG_DATE_MISSING) from None
        if abs(now - signed_at) > self.spec.skew_window_seconds:
            raise GatewayError(401, "APIGW.0301", MSG_DATE_SKEW)
        if temporary is not None:
            if temporary.expires_at <= now:
                raise GatewayError(401, "APIGW.0301", MSG_TEMP_EXPIRED)
            sent = request.headers.get("X-Security-Token", "")
            if "x-security-token" not in parsed.signed_headers or not hmac.compare_digest(
                sent.encode(), temporary.security_token.encode()
            ):
                raise GatewayError(401, "APIGW.0301", MSG_SECURITY_TOKEN)
        if not self._signature_matches(request, parsed, secret_key, sdk_date):
            failures = self._failures.get(ak, 0) + 1
            self._failures[ak] = failures
            if failures >= self.spec.aksk_lock_after:
                self._failures[ak] = 0
                self._locked_until[ak] = now + self.spec.aksk_lock_seconds
            raise GatewayError(401, "APIGW.0301", MSG_SIGNATURE)
        self._failures.pop(ak, None)
        domain = principal.domain
        project: Project | None = None
        if project_id is not None:
            if request.headers.get("X-Project-Id") != project_id:
                raise GatewayError(401, "APIGW.0301", MSG_PROJECT_HEADER)
            project = self._estate.projects.get(project_id)
            if project is None or project.domain_id != domain.id:
                raise GatewayError(401, "APIGW.0301", MSG_PROJECT_DOMAIN)
            self._check_project_enabled(project)
        else:
            domain_header = request.headers.get("X-Domain-Id")
            if domain_header and domain_header != domain.id:
                raise GatewayError(401, "APIGW.0301", MSG_DOMAIN_HEADER)
        return Caller(principal, "aksk", domain, project, access_key=ak)

    @staticmethod
    def _signature_matches(
        request: RequestView, parsed: signer.ParsedAuthorization, secret_key: str, sdk_date: str
    ) -> bool:
        del sdk_date  # expected_signature reads the same X-Sdk-Date header
        try:
            expected = signer.expected_signature(
                request.method,
                request.path,
                # The query exactly as received: every pair, repeats kept; the signer sorts and encodes.
                signer.parse_query(request.query_string),
                request.headers,
                request.body,
                secret_key,
                parsed.signed_headers,
            )
        except ValueError:
            return False  # a header the client says it signed is not in the request
        return hmac.compare_digest(expected.encode(), parsed.signature.encode())

    # -- credentials listing --------------------------------------------------------------------------

    def credentials(self) -> Iterable[UserRecord]:
        """Every user, for ``--print-credentials``."""
        return self.users.values()


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise KeystoneError(400, "The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise KeystoneError(400, "The request body must be a JSON object.")
    return data


def _dig(data: dict[str, Any], key: str, *, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise KeystoneError(400, f"The request body is invalid: '{key}' is missing or of the wrong type.")
    return value


__all__ = [
    "Agency",
    "Caller",
    "Clock",
    "Identity",
    "KeystoneError",
    "Principal",
    "RequestView",
    "TemporaryCredential",
    "Token",
    "UserRecord",
    "iso_z",
]
