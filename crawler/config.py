"""Tenant configuration: YAML files -> validated, immutable models.

One YAML file describes one tenant (one Huawei Cloud account, or one account seen through an
agency). :func:`load_tenants` reads files and directories, and either returns every tenant or raises
one :class:`ConfigErrors` holding *every* problem found, each with the file, the key path
(``auth.password_env``, ``regions[2]``) and the line, so that a user fixes everything in one go::

    config/acme.yaml:12: auth.password: inline secrets are not allowed (fix: ...)

Secrets never appear in a file: a file names an environment variable (``password_env``) or a file
(``password_file``) and the secret is read at run time by :meth:`SecretSource.resolve` into a
:class:`Secret`, whose repr and str are masked. Loading never touches the network and by default
does not read secrets either (``check_secrets=True`` does), so ``validate`` runs anywhere.

The models are pydantic v2, frozen, and forbid unknown keys (typos get a did-you-mean hint).
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import hashlib
import hmac
import json
import os
import re
import string
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

# --------------------------------------------------------------------------------------------------
# Errors


class ConfigError(Exception):
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


def _fail(problem: str, fix: str | None = None, at: Sequence[str | int] = ()) -> PydanticCustomError:
    """A validation error with our own problem/fix text.

    ``at`` extends the error's location below the validated value, so that an error raised by a
    model validator still points at the precise key (and so at its line).
    """
    # The problem text goes through the context, not the template: it may hold braces (layouts).
    return PydanticCustomError("config", "{problem}", {"problem": problem, "fix": fix, "at": tuple(at)})


# --------------------------------------------------------------------------------------------------
# Secrets


class Secret:
    """A secret value read at run time. ``repr``/``str`` are masked; :meth:`reveal` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call only where it is put on the wire."""
        return self._value

    def get_secret_value(self) -> str:
        """Same as :meth:`reveal`, spelled like pydantic's ``SecretStr``."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        # Pickling would write the value to wherever the pickle goes (multiprocessing, caches).
        raise TypeError("Secret objects cannot be pickled")


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a secret lives (an env var or a file), never the secret itself.

    ``key_path``, ``config_file`` and ``line`` locate the setting in the tenant file, for errors.
    """

    name: str
    env: str | None
    file: str | None
    key_path: str
    config_file: str | None = None
    line: int | None = None

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env is not None else f"file {self.file}"

    def resolve(self, environ: Mapping[str, str] | None = None) -> Secret:
        """Read the secret now (trailing newline stripped); :class:`MissingSecretError` if unavailable."""
        if self.env is not None:
            value = (os.environ if environ is None else environ).get(self.env)
            if value is None:
                raise self._error(
                    f"environment variable {self.env} is not set",
                    f"export {self.env} before running, or use {self.name}_file",
                )
        else:
            assert self.file is not None
            try:
                raw = Path(self.file).read_bytes()
            except OSError as exc:
                raise self._error(
                    f"cannot read file {self.file}: {exc.strerror or type(exc).__name__}",
                    "check the path and that the crawler's user may read it",
                ) from None
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                # The exception text would quote bytes of the secret, so it is not chained.
                raise self._error(f"file {self.file} is not UTF-8 text", "store the secret as text") from None
        value = value.rstrip("\r\n")
        if not value.strip():
            raise self._error(f"{self.describe()} is empty", f"put the {self.name} in {self.describe()}")
        return Secret(value)

    def _error(self, problem: str, fix: str) -> MissingSecretError:
        return MissingSecretError(
            problem, file=self.config_file, key_path=self.key_path, line=self.line, fix=fix
        )


# --------------------------------------------------------------------------------------------------
# Constants

KNOWN_REGIONS: frozenset[str] = frozenset(
    {
        "af-north-1", "af-south-1", "ae-ad-1",
        "ap-southeast-1", "ap-southeast-2", "ap-southeast-3", "ap-southeast-4", "ap-southeast-5",
        "cn-east-2", "cn-east-3", "cn-east-4", "cn-east-5",
        "cn-north-1", "cn-north-2", "cn-north-4", "cn-north-9", "cn-north-11", "cn-north-12",
        "cn-south-1", "cn-south-2", "cn-south-4", "cn-southwest-2", "cn-southwest-3",
        "eu-west-0", "eu-west-101", "la-north-2", "la-south-2", "me-east-1", "my-kualalumpur-1",
        "na-mexico-1", "ru-moscow-1", "ru-northwest-2", "sa-brazil-1", "tr-west-1",
    }
)  # fmt: skip
"""The 34 regions where CBR exists, per the official SDK's region table."""

REGION_PATTERN = re.compile(r"^[a-z]{2}-[a-z]+-\d+$")
OWN_TYPES = ("private", "shared", "all_granted")
LAYOUT_FIELDS = ("tenant", "region", "project_id", "project_name", "own_type", "enterprise_project_id")
DEFAULT_LAYOUT = "{tenant}/{region}/{project_name}"
SERVICES = ("iam", "eps", "cbr")
# Huawei's API gateway allows 200 requests/s per API and tenant and cannot be raised; a higher
# rate would only buy 429s.
GATEWAY_CEILING_RPS = 200.0
UNLIMITED = "unlimited"  # rate_limit.requests_per_second off the public cloud

# Keys that would hold a secret inline, and the keys to use instead.
_INLINE_SECRET_KEYS = {
    "password": "password",
    "passwd": "password",
    "token": "token",
    "auth_token": "token",
    "access_key": "access_key",
    "ak": "access_key",
    "secret_key": "secret_key",
    "sk": "secret_key",
    "secret": "secret_key",
}
# ListBackups parameters that the crawler sets itself, and where the user controls them instead.
_CRAWLER_PARAMETERS = {
    "limit": "set rate_limit.page_size instead",
    "offset": "the crawler pages by itself",
    "marker": "the crawler pages by itself",
    "sort": "the crawler chooses a stable order by itself",
    "own_type": "set own_types at the top level instead",
    "enterprise_project_id": "set enterprise_projects at the top level instead",
}

# --------------------------------------------------------------------------------------------------
# Small value types


def _check_env_name(value: str | None) -> str | None:
    # The value is never echoed: a user who pastes the secret itself here must not see it in a log.
    if value is None:
        return None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise _fail(
            "is not a valid environment variable name",
            "give the NAME of the variable holding the secret (letters, digits, _), never the secret",
        )
    return value


def _check_secret_file(value: str | None, info: ValidationInfo) -> str | None:
    if value is None:
        return None
    if not value.strip():
        raise _fail("is empty", "give the path of the file holding the secret")
    path = Path(value).expanduser()
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    # Relative paths are relative to the tenant file, not to the working directory: cron and
    # Kubernetes start the crawler in directories nobody thinks about.
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(path)


EnvName = Annotated[str, Strict(), Field(min_length=1)]
SecretFile = Annotated[str, Strict(), Field(min_length=1)]
Name = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=255)]
Glob = Annotated[str, Strict(), StringConstraints(min_length=1, max_length=255)]
ProjectId = Annotated[str, Strict(), StringConstraints(pattern=r"^[0-9a-f]{32}$")]
EnterpriseProjectId = Annotated[
    str,
    Strict(),
    StringConstraints(pattern=r"^(0|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"),
]
Uuid = Annotated[
    str, Strict(), StringConstraints(pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
]
OwnType = Literal["private", "shared", "all_granted"]
BackupStatus = Literal[
    "available",
    "protecting",
    "deleting",
    "restoring",
    "error",
    "waiting_protect",
    "waiting_delete",
    "waiting_restore",
]
ResourceType = Literal[
    "OS::Nova::Server",
    "OS::Cinder::Volume",
    "OS::Ironic::BareMetalServer",
    "OS::Native::Server",
    "OS::Sfs::Turbo",
    "OS::Workspace::DesktopV2",
]
Duration = Annotated[int, Strict(), Field(ge=900, le=86400)]


def _unique(values: Sequence[Any], what: str) -> None:
    seen: set[Any] = set()
    for index, value in enumerate(values):
        if value in seen:
            raise _fail(f"{what} {value!r} is listed twice", "remove the duplicate", at=(index,))
        seen.add(value)


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a tenant came from: the file and the line of every key path (for run-time errors)."""

    file: str | None = None
    lines: Mapping[str, int] = field(default_factory=dict)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------------
# Authentication


class _AuthBase(_Model):
    """Shared plumbing: where the model sits in the file, to name it in run-time secret errors."""

    _key_prefix: str = PrivateAttr(default="auth")
    _origin: _Origin = PrivateAttr(default_factory=_Origin)

    def _bind(self, origin: _Origin, prefix: str) -> None:
        self._origin = origin
        self._key_prefix = prefix

    def _source(self, name: str, env: str | None, file: str | None) -> SecretSource:
        key = f"{self._key_prefix}.{name}_env" if env is not None else f"{self._key_prefix}.{name}_file"
        return SecretSource(name, env, file, key, self._origin.file, self._origin.lines.get(key))

    def secret_sources(self) -> tuple[SecretSource, ...]:
        """Every secret this auth needs, nested source auth included."""
        raise NotImplementedError

    def check_secrets(self, environ: Mapping[str, str] | None = None) -> None:
        """Resolve every secret once; raise :class:`ConfigErrors` naming each unavailable one."""
        errors: list[ConfigError] = []
        for source in self.secret_sources():
            try:
                source.resolve(environ)
            except MissingSecretError as exc:
                errors.append(exc)
        if errors:
            raise ConfigErrors(errors)


def _exactly_one(model: BaseModel, name: str) -> None:
    env, file = getattr(model, f"{name}_env"), getattr(model, f"{name}_file")
    if env is None and file is None:
        raise _fail(
            f"no source for the {name}",
            f"set {name}_env (an environment variable name) or {name}_file (a file path)",
        )
    if env is not None and file is not None:
        raise _fail(f"both {name}_env and {name}_file are set", "keep only one of them", at=(f"{name}_file",))


class TokenAuth(_AuthBase):
    """A static IAM token, sent as ``X-Auth-Token`` as-is (it must fit every project crawled)."""

    mode: Literal["token"] = Field(description="Authentication mode: a static token.")
    token_env: EnvName | None = Field(
        default=None, description="Name of the environment variable holding the token."
    )
    token_file: SecretFile | None = Field(
        default=None, description="Path of a file holding the token (relative to this file)."
    )

    _check_env = field_validator("token_env")(_check_env_name)
    _check_file = field_validator("token_file")(_check_secret_file)

    @model_validator(mode="after")
    def _one_source(self) -> TokenAuth:
        _exactly_one(self, "token")
        return self

    @property
    def token_source(self) -> SecretSource:
        return self._source("token", self.token_env, self.token_file)

    def secret_sources(self) -> tuple[SecretSource, ...]:
        return (self.token_source,)

    def resolve(self, environ: Mapping[str, str] | None = None) -> Secret:
        """The token, read now."""
        return self.token_source.resolve(environ)

    def resolve_token(self, environ: Mapping[str, str] | None = None) -> tuple[Secret, str]:
        """The token and a description of where it came from (for error messages)."""
        return self.resolve(environ), self.token_source.describe()


class PasswordAuth(_AuthBase):
    """IAM user and password: project-scoped tokens per project, a domain-scoped one for EPS."""

    mode: Literal["password"] = Field(description="Authentication mode: IAM user name and password.")
    user: Name = Field(description="IAM user name.")
    domain: Name = Field(description="Account (domain) name the user belongs to.")
    password_env: EnvName | None = Field(
        default=None, description="Name of the environment variable holding the password."
    )
    password_file: SecretFile | None = Field(
        default=None, description="Path of a file holding the password (relative to this file)."
    )

    _check_env = field_validator("password_env")(_check_env_name)
    _check_file = field_validator("password_file")(_check_secret_file)

    @model_validator(mode="after")
    def _one_source(self) -> PasswordAuth:
        _exactly_one(self, "password")
        return self

    @property
    def password_source(self) -> SecretSource:
        return self._source("password", self.password_env, self.password_file)

    def secret_sources(self) -> tuple[SecretSource, ...]:
        return (self.password_source,)

    def resolve(self, environ: Mapping[str, str] | None = None) -> Secret:
        """The password, read now."""
        return self.password_source.resolve(environ)

    def resolve_password(self, environ: Mapping[str, str] | None = None) -> tuple[Secret, str]:
        """The password and a description of where it came from (for error messages)."""
        return self.resolve(environ), self.password_source.describe()


@dataclass(frozen=True, slots=True)
class AkSk:
    """A resolved permanent access key pair (both halves masked in reprs)."""

    access_key: Secret
    secret_key: Secret


class AkskAuth(_AuthBase):
    """A permanent access key pair; every request is signed with SDK-HMAC-SHA256."""

    mode: Literal["aksk"] = Field(description="Authentication mode: permanent AK/SK request signing.")
    access_key_env: EnvName | None = Field(
        default=None, description="Name of the environment variable holding the access key (AK)."
    )
    access_key_file: SecretFile | None = Field(
        default=None, description="Path of a file holding the access key (relative to this file)."
    )
    secret_key_env: EnvName | None = Field(
        default=None, description="Name of the environment variable holding the secret key (SK)."
    )
    secret_key_file: SecretFile | None = Field(
        default=None, description="Path of a file holding the secret key (relative to this file)."
    )

    _check_env = field_validator("access_key_env", "secret_key_env")(_check_env_name)
    _check_file = field_validator("access_key_file", "secret_key_file")(_check_secret_file)

    @model_validator(mode="after")
    def _one_source(self) -> AkskAuth:
        _exactly_one(self, "access_key")
        _exactly_one(self, "secret_key")
        return self

    @property
    def access_key_source(self) -> SecretSource:
        return self._source("access_key", self.access_key_env, self.access_key_file)

    @property
    def secret_key_source(self) -> SecretSource:
        return self._source("secret_key", self.secret_key_env, self.secret_key_file)

    def secret_sources(self) -> tuple[SecretSource, ...]:
        return (self.access_key_source, self.secret_key_source)

    def resolve(self, environ: Mapping[str, str] | None = None) -> AkSk:
        """The key pair, read now."""
        return AkSk(self.access_key_source.resolve(environ), self.secret_key_source.resolve(environ))

    def resolve_keys(self, environ: Mapping[str, str] | None = None) -> tuple[Secret, Secret, str]:
        """AK, SK and a description of where they came from (for error messages)."""
        pair = self.resolve(environ)
        where = f"{self.access_key_source.describe()} and {self.secret_key_source.describe()}"
        return pair.access_key, pair.secret_key, where


TokenSourceAuth = Annotated[Union[PasswordAuth, TokenAuth], Field(discriminator="mode")]  # noqa: UP007
AgencySourceAuth = Annotated[Union[PasswordAuth, AkskAuth, TokenAuth], Field(discriminator="mode")]  # noqa: UP007


class TemporaryAuth(_AuthBase):
    """Temporary AK/SK (with a security token) from IAM ``securitytokens``, renewed before expiry.

    ``source`` is the password or token auth used to ask for them.
    """

    mode: Literal["temporary"] = Field(description="Authentication mode: temporary AK/SK from IAM.")
    source: TokenSourceAuth = Field(description="The auth (password or token) that obtains the keys.")
    duration_seconds: Duration = Field(
        default=3600, description="Lifetime asked for each temporary key pair, 900..86400 seconds."
    )

    def _bind(self, origin: _Origin, prefix: str) -> None:
        super()._bind(origin, prefix)
        self.source._bind(origin, f"{prefix}.source")

    def secret_sources(self) -> tuple[SecretSource, ...]:
        return self.source.secret_sources()


class AgencyAuth(_AuthBase):
    """Account A (``source``) inventories account B (``domain_name``) through B's agency.

    ``credential: token`` gets assume-role tokens; ``temporary_aksk`` gets temporary AK/SK by agency.
    """

    mode: Literal["agency"] = Field(description="Authentication mode: cross-account access via an agency.")
    source: AgencySourceAuth = Field(description="The auth of the trusted account (password, aksk or token).")
    domain_name: Name = Field(description="Name of the account (domain) that created the agency.")
    agency_name: Name = Field(description="Name of the agency in that account.")
    credential: Literal["token", "temporary_aksk"] = Field(
        default="token",
        description="What to obtain through the agency: assume-role tokens or temporary AK/SK.",
    )
    duration_seconds: Duration | None = Field(
        default=None,
        description="Lifetime asked for agency credentials, 900..86400 s (IAM default if unset).",
    )

    def _bind(self, origin: _Origin, prefix: str) -> None:
        super()._bind(origin, prefix)
        self.source._bind(origin, f"{prefix}.source")

    def secret_sources(self) -> tuple[SecretSource, ...]:
        return self.source.secret_sources()


AuthConfig = Annotated[
    Union[TokenAuth, PasswordAuth, AkskAuth, TemporaryAuth, AgencyAuth],  # noqa: UP007
    Field(discriminator="mode"),
]
AUTH_MODES = ("token", "password", "aksk", "temporary", "agency")

# --------------------------------------------------------------------------------------------------
# What to crawl


class ProjectDiscovery(_Model):
    """Find projects by asking IAM; keep those whose name matches (``fnmatch``)."""

    include: tuple[Glob, ...] = Field(
        default=(), description="Project name globs to keep (empty: every project of the regions)."
    )
    exclude: tuple[Glob, ...] = Field(default=(), description="Project name globs to drop.")


class ProjectsConfig(_Model):
    """Explicit project ids, or discovery (the default: every project of the listed regions).

    The billing project ``MOS`` is always skipped: it holds no backups and refuses CBR calls.
    """

    ids: tuple[ProjectId, ...] | None = Field(
        default=None, description="Explicit project ids (32 hex digits)."
    )
    discover: ProjectDiscovery | None = Field(
        default=None, description="Discover projects with IAM, filtered by name globs."
    )

    @field_validator("ids")
    @classmethod
    def _unique_ids(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            if not value:
                raise _fail("is empty", "list project ids, or use discover")
            _unique(value, "project id")
        return value

    @model_validator(mode="before")
    @classmethod
    def _discover_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("ids") is None and data.get("discover") is None:
            return {**data, "discover": {}}
        return data

    @property
    def include(self) -> tuple[str, ...]:
        """Discovery's include globs (empty with explicit ids)."""
        return self.discover.include if self.discover is not None else ()

    @property
    def exclude(self) -> tuple[str, ...]:
        """Discovery's exclude globs (empty with explicit ids)."""
        return self.discover.exclude if self.discover is not None else ()

    @model_validator(mode="after")
    def _one_way(self) -> ProjectsConfig:
        if self.ids is not None and self.discover is not None:
            raise _fail("ids and discover are both set", "keep one of them", at=("discover",))
        return self


class EpNone(_Model):
    """No ``enterprise_project_id`` parameter: the API's default view."""

    mode: Literal["none"] = Field(description="Send no enterprise_project_id parameter.")


class EpIds(_Model):
    """One pass per listed enterprise project id."""

    mode: Literal["ids"] = Field(description="One pass per listed enterprise project.")
    ids: tuple[EnterpriseProjectId, ...] = Field(
        min_length=1, description='Enterprise project ids: UUIDs, or "0" for the default one.'
    )

    @field_validator("ids")
    @classmethod
    def _unique_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        _unique(value, "enterprise project id")
        return value


class EpAllGranted(_Model):
    """One pass with ``enterprise_project_id=all_granted_eps``: every EP the caller may see."""

    mode: Literal["all_granted"] = Field(description="One pass with enterprise_project_id=all_granted_eps.")


class EpDiscover(_Model):
    """Ask EPS for the account's enterprise projects; one pass per match."""

    mode: Literal["discover"] = Field(description="Discover enterprise projects with EPS.")
    include: tuple[Glob, ...] = Field(
        default=(), description="Enterprise project name globs to keep (empty: all)."
    )
    exclude: tuple[Glob, ...] = Field(default=(), description="Enterprise project name globs to drop.")
    # "all" by default: a disabled enterprise project still holds backups that cost money and
    # must be audited; skipping it silently would make the inventory incomplete.
    status: Literal["enabled", "all"] = Field(
        default="all", description="Crawl every enterprise project (all), or only enabled ones."
    )


EnterpriseProjectsConfig = Annotated[
    Union[EpNone, EpIds, EpAllGranted, EpDiscover],  # noqa: UP007
    Field(discriminator="mode"),
]
EP_MODES = ("none", "ids", "all_granted", "discover")

_API_TIME = "%Y-%m-%dT%H:%M:%SZ"


def _api_time(value: Any) -> Any:
    """Accept ``2018-02-01T12:00:00Z`` (or a datetime) and keep the API's exact spelling."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        if value.microsecond:
            raise _fail("has fractions of a second", "write a time like 2018-02-01T12:00:00Z")
        return value.strftime(_API_TIME)
    if isinstance(value, str):
        try:
            dt.datetime.strptime(value, _API_TIME)
        except ValueError:
            raise _fail(
                f"{value!r} is not a UTC time like 2018-02-01T12:00:00Z",
                "use the format YYYY-MM-DDTHH:MM:SSZ",
            ) from None
    return value


ApiTime = Annotated[str, Strict()]


class Filters(_Model):
    """ListBackups filters applied to every scope (paging and scope parameters are the crawler's)."""

    checkpoint_id: Name | None = Field(
        default=None, description="Only backups of this checkpoint (restore point)."
    )
    dec: Annotated[bool, Strict()] | None = Field(
        default=None, description="Dedicated Cloud (DeC) scenario; only meaningful on DeC."
    )
    end_time: ApiTime | None = Field(
        default=None,
        description="Only backups created at or before this UTC time, like 2018-02-01T12:00:00Z.",
    )
    image_type: Literal["backup", "replication"] | None = Field(
        default=None, description="backup (common backups) or replication (cross-region replicas)."
    )
    incremental: Annotated[bool, Strict()] | None = Field(
        default=None, description="true: incremental backups only; false: full backups only."
    )
    member_status: Literal["pending", "accepted", "rejected"] | None = Field(
        default=None,
        description="Sharing status of shared backups (accept/reject are read as accepted/rejected).",
    )
    name: Name | None = Field(default=None, description="Exact backup name (at most 255 characters).")
    parent_id: Uuid | None = Field(default=None, description="Parent backup id (UUID): list its children.")
    resource_az: Name | None = Field(default=None, description="Availability zone of the backed-up resource.")
    resource_id: Uuid | None = Field(default=None, description="Id (UUID) of the backed-up resource.")
    resource_name: Name | None = Field(
        default=None, description="Name of the backed-up resource (at most 255)."
    )
    resource_type: ResourceType | None = Field(default=None, description="Type of the backed-up resource.")
    show_replication: Annotated[bool, Strict()] | None = Field(
        default=None, description="Whether records carry replication_records."
    )
    start_time: ApiTime | None = Field(
        default=None, description="Only backups created at or after this UTC time, like 2018-02-01T12:00:00Z."
    )
    status: tuple[BackupStatus, ...] | None = Field(
        default=None, min_length=1, description="Backup statuses to keep (sent as repeated status=...)."
    )
    used_percent: Annotated[int, Strict(), Field(ge=1, le=100)] | None = Field(
        default=None, description="Only backups whose vault is at least this percent full (1..100)."
    )
    vault_id: Name | None = Field(default=None, description="Only backups of this vault.")

    _times = field_validator("start_time", "end_time", mode="before")(_api_time)

    @field_validator("member_status", mode="before")
    @classmethod
    def _old_spelling(cls, value: Any) -> Any:
        return (
            {"accept": "accepted", "reject": "rejected"}.get(value, value)
            if isinstance(value, str)
            else value
        )

    @field_validator("status")
    @classmethod
    def _unique_status(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            _unique(value, "status")
        return value

    @model_validator(mode="after")
    def _time_order(self) -> Filters:
        # Same format and zone: the strings compare like the times they spell.
        if self.start_time is not None and self.end_time is not None and self.start_time > self.end_time:
            raise _fail("end_time is before start_time", "swap them", at=("end_time",))
        return self

    def to_query(self) -> list[tuple[str, str]]:
        """The filters as ListBackups query pairs: booleans as true/false, status repeated."""
        pairs: list[tuple[str, str]] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool):
                pairs.append((name, "true" if value else "false"))
            elif isinstance(value, tuple):
                pairs.extend((name, str(item)) for item in value)
            else:
                pairs.append((name, str(value)))
        return pairs


# --------------------------------------------------------------------------------------------------
# How to crawl, where to write


class RateLimit(_Model):
    """Request pacing per tenant. The default is far below Huawei's 200/s gateway ceiling per API,
    because an inventory shares that budget with everything else the account runs."""

    # None is 'unlimited' in the file (mapped below, so that a bad number gets one plain error
    # instead of one per member of a union); the schema shows editors what the file may say.
    requests_per_second: Annotated[
        Annotated[float, Strict(), Field(gt=0, le=GATEWAY_CEILING_RPS)] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "number", "exclusiveMinimum": 0, "maximum": GATEWAY_CEILING_RPS},
                    {"const": UNLIMITED},
                ]
            }
        ),
    ] = Field(
        default=10.0,
        description="Steady request rate per credential, service and region (gateway ceiling: 200/s); "
        "'unlimited' only with endpoints.cbr set (a private cloud's own gateway, the emulator): the "
        "pacer then only slows down when the gateway throttles.",
    )

    @field_validator("requests_per_second", mode="before")
    @classmethod
    def _unlimited(cls, value: Any) -> Any:
        if value == UNLIMITED:
            return None
        if value is None:
            raise _fail("is empty", f"write a number of requests per second, or '{UNLIMITED}'")
        return value

    @property
    def rate(self) -> float | None:
        """Requests/s for the limiters; None is unlimited."""
        return self.requests_per_second

    concurrency: Annotated[int, Strict()] = Field(
        default=8, ge=1, le=256, description="Requests in flight at most for this tenant."
    )
    page_size: Annotated[int, Strict()] = Field(
        default=1000, ge=1, le=1000, description="ListBackups limit per page (1..1000)."
    )


class OutputConfig(_Model):
    """Where and how backup records are written."""

    directory: Annotated[str, Strict(), Field(min_length=1)] | None = Field(
        default=None, description="Output root directory (the CLI's --output overrides it)."
    )
    layout: Annotated[str, Strict()] = Field(
        default=DEFAULT_LAYOUT,
        description="Partition directory template below the root; fields: " + ", ".join(LAYOUT_FIELDS) + ".",
    )
    compression: Literal["none", "gzip", "zstd"] = Field(
        default="none", description="Compression of the NDJSON files."
    )

    @field_validator("layout")
    @classmethod
    def _check_layout(cls, value: str) -> str:
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise _fail(
                f"is not a valid template: {exc}", "use {field} placeholders, e.g. " + DEFAULT_LAYOUT
            ) from None
        used: set[str] = set()
        for _literal, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in LAYOUT_FIELDS:
                hint = difflib.get_close_matches(name, LAYOUT_FIELDS, n=1)
                suggestion = f"did you mean {{{hint[0]}}}? " if hint else ""
                raise _fail(f"unknown field {{{name}}}", f"{suggestion}allowed: " + ", ".join(LAYOUT_FIELDS))
            if spec or conversion:
                raise _fail(f"field {{{name}}} has a format spec or conversion", f"write plain {{{name}}}")
            used.add(name)
        if value.startswith("/") or ".." in value.split("/"):
            raise _fail("must be a relative path without '..'", "e.g. " + DEFAULT_LAYOUT)
        # Every run may put several tenants and projects under one root (the CLI's --output), so
        # the directory must tell them apart; own type and EP are in the file name already.
        if "tenant" not in used or not used & {"project_id", "project_name"}:
            raise _fail(
                "must contain {tenant} and {project_id} or {project_name}",
                "otherwise tenants or projects would write to the same files; e.g. " + DEFAULT_LAYOUT,
            )
        return value


def _check_endpoint(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise _fail(f"is not a valid template: {exc}", "e.g. https://cbr.{region}.example.com") from None
    if names - {"region"}:
        raise _fail("only the {region} placeholder is allowed", "e.g. https://cbr.{region}.example.com")
    parts = urlsplit(value.replace("{region}", "region"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _fail("is not an http(s) URL", "e.g. https://cbr.{region}.example.com")
    if parts.query or parts.fragment:
        raise _fail("must not have a query or fragment", "give the scheme, host and optional base path")
    return value.rstrip("/")


EndpointTemplate = Annotated[str, Strict()]


class Endpoints(_Model):
    """URL templates overriding the public endpoints (private clouds, the emulator).

    ``{region}`` is replaced by the region id. Setting this also allows region ids outside
    :data:`KNOWN_REGIONS`.
    """

    iam: EndpointTemplate | None = Field(
        default=None, description="IAM URL template, e.g. https://iam.{region}.example.com."
    )
    eps: EndpointTemplate | None = Field(
        default=None, description="EPS URL template (a global service; {region} optional)."
    )
    cbr: EndpointTemplate | None = Field(
        default=None, description="CBR URL template, e.g. https://cbr.{region}.example.com."
    )

    _check = field_validator("iam", "eps", "cbr")(_check_endpoint)


class Timeouts(_Model):
    """Network timeouts per request, and a deadline per scope, in seconds."""

    connect: Annotated[float, Strict()] = Field(
        default=10.0, gt=0, le=600, description="TCP+TLS connect timeout."
    )
    read: Annotated[float, Strict()] = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Time to wait for an answer (a 1000-record page can be slow).",
    )
    scope: Annotated[float, Strict()] = Field(
        default=3600.0,
        gt=0,
        le=86400,
        description="Deadline for one scope, retries included: past it, no further retry starts and "
        "the scope is reported failed instead of holding the nightly run hostage.",
    )


def default_endpoint(service: str, region: str | None) -> str:
    """Huawei's public endpoint for ``service``; ``region=None`` gives the global IAM/EPS endpoint."""
    # eu-west-101 (Dublin) lives in the .eu domain for IAM and EPS; the SDKs keep .com for its CBR.
    if service == "cbr":
        if region is None:
            raise ValueError("CBR is a regional service: a region is required")
        return f"https://cbr.{region}.myhuaweicloud.com"
    if service == "iam":
        if region is None:
            return "https://iam.myhuaweicloud.com"
        if region == "eu-west-101":
            return "https://iam.eu-west-101.myhuaweicloud.eu"
        return f"https://iam.{region}.myhuaweicloud.com"
    if service == "eps":
        if region == "eu-west-101":
            return "https://eps.eu-west-101.myhuaweicloud.eu"
        return "https://eps.myhuaweicloud.com"
    raise ValueError(f"unknown service {service!r} (known: {', '.join(SERVICES)})")


# --------------------------------------------------------------------------------------------------
# The tenant


TenantName = Annotated[str, Strict(), StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Region = Annotated[str, Strict()]


class TenantConfig(_Model):
    """One tenant: who to be, what to crawl, how fast, and where to write."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        title="cbr-crawler tenant",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    tenant: TenantName = Field(
        description="Tenant slug (lower-case letters, digits, - and _): used in output paths and logs; "
        "unique across the files of a run."
    )
    auth: AuthConfig = Field(description="How to authenticate; secrets only as env-var names or file paths.")
    endpoints: Endpoints | None = Field(
        default=None,
        description="Endpoint overrides (private clouds, the emulator); also allows unknown regions.",
    )
    regions: tuple[Region, ...] = Field(min_length=1, description="Region ids to crawl, e.g. cn-north-4.")
    projects: ProjectsConfig = Field(
        default_factory=ProjectsConfig, description="Projects to crawl (default: discover every project)."
    )
    enterprise_projects: EnterpriseProjectsConfig = Field(
        default_factory=lambda: EpNone(mode="none"),
        description="Enterprise project passes (default: none, no enterprise_project_id parameter).",
    )
    own_types: tuple[OwnType, ...] = Field(
        default=("private",),
        min_length=1,
        description="Ownership views to crawl: private, shared, all_granted (= private + shared).",
    )
    filters: Filters = Field(
        default_factory=Filters, description="ListBackups filters applied to every scope."
    )
    rate_limit: RateLimit = Field(default_factory=RateLimit, description="Request pacing.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Output location and format.")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Network timeouts.")

    _origin: _Origin = PrivateAttr(default_factory=_Origin)

    @field_validator("regions")
    @classmethod
    def _check_regions(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        # Unknown regions are typos on the public cloud; a private cloud (endpoints set) has its own.
        # `endpoints` is declared before `regions` so that it is known here; if it failed
        # validation it is absent, and its own error is the one worth reading.
        public_cloud = info.data.get("endpoints", ...) is None
        for index, region in enumerate(value):
            if not REGION_PATTERN.fullmatch(region):
                raise _fail(f"{region!r} is not a region id", "region ids look like cn-north-4", at=(index,))
            if public_cloud and region not in KNOWN_REGIONS:
                hint = difflib.get_close_matches(region, sorted(KNOWN_REGIONS), n=1)
                fix = f"did you mean {hint[0]}?" if hint else "see KNOWN_REGIONS"
                raise _fail(
                    f"unknown region {region!r}", fix + " (a private cloud must set endpoints)", at=(index,)
                )
        _unique(value, "region")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _unlimited_only_off_the_public_cloud(cls, value: RateLimit, info: ValidationInfo) -> RateLimit:
        # Huawei's public gateway holds every account to 200/s per API; an unlimited crawl there
        # would only trade the other workloads' budget for 429s. A private cloud or the emulator
        # (endpoints.cbr set) has its own gateway, whose throttling the pacer still obeys.
        endpoints = info.data.get("endpoints", ...)
        if endpoints is ...:
            return value  # endpoints failed validation: its own error is the one worth reading
        if value.rate is None and (endpoints is None or endpoints.cbr is None):
            raise _fail(
                "'unlimited' is refused on Huawei's public cloud (its gateway allows 200 requests/s per API)",
                "set a number up to 200, or set endpoints.cbr for a private cloud or the emulator",
                at=("requests_per_second",),
            )
        return value

    @field_validator("own_types")
    @classmethod
    def _unique_own_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        _unique(value, "own type")
        return value

    def model_post_init(self, context: Any, /) -> None:
        self.auth._bind(self._origin, "auth")

    def _set_origin(self, origin: _Origin) -> None:
        self._origin = origin
        self.auth._bind(origin, "auth")

    @property
    def name(self) -> str:
        return self.tenant

    @property
    def source_file(self) -> str | None:
        """The file this tenant was loaded from, if any."""
        return self._origin.file

    @property
    def source(self) -> str:
        """The file this tenant was loaded from, or ``<memory>`` for one built in Python."""
        return self._origin.file or "<memory>"

    def with_endpoints(self, endpoints: Mapping[str, str]) -> TenantConfig:
        """A copy with some endpoint templates replaced (the demo points a tenant at the emulator).

        The copy is validated like a file would be; :class:`ConfigErrors` if an override is wrong.
        """
        data = self.model_dump(mode="python")
        data["endpoints"] = {**(data.get("endpoints") or {}), **endpoints}
        try:
            copy_ = TenantConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigErrors(_convert_errors(exc, data, {}, self.source)) from None
        copy_._set_origin(self._origin)
        return copy_

    def endpoint(self, service: Literal["iam", "eps", "cbr"], region: str | None = None) -> str:
        """Base URL of ``service`` for ``region``, overrides applied, no trailing slash.

        ``region=None`` asks for the global endpoint (IAM for password tokens, EPS). An override
        template that needs a region gets the tenant's first region then.
        """
        template = getattr(self.endpoints, service, None) if self.endpoints is not None else None
        if template is None:
            return default_endpoint(service, region)
        return str(template).replace("{region}", region if region is not None else self.regions[0])

    def secret_sources(self) -> tuple[SecretSource, ...]:
        return self.auth.secret_sources()

    def check_secrets(self, environ: Mapping[str, str] | None = None) -> None:
        """Resolve every secret once (nothing is kept); :class:`ConfigErrors` if any is unavailable."""
        self.auth.check_secrets(environ)


# --------------------------------------------------------------------------------------------------
# YAML with line numbers


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings: ``2018-02-01T12:00:00Z`` is what the API wants."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in copy.deepcopy(yaml.SafeLoader.yaml_implicit_resolvers).items()
}

_MERGE_TAG = "tag:yaml.org,2002:merge"
PathPart = str | int


def _format_path(path: Sequence[PathPart]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _duplicate_keys(root: yaml.Node, file: str) -> list[ConfigError]:
    """Duplicate keys in any mapping (YAML says they are an error; PyYAML silently keeps the last)."""
    errors: list[ConfigError] = []
    visited: set[int] = set()

    def walk(node: yaml.Node, path: tuple[PathPart, ...]) -> None:
        if id(node) in visited:  # aliases: each node once, which also stops recursive documents
            return
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if key.tag == _MERGE_TAG or not isinstance(key, yaml.ScalarNode):
                    continue
                line = key.start_mark.line + 1
                ident = (key.tag, key.value)
                if ident in first_line:
                    errors.append(
                        ConfigError(
                            f"duplicate key {key.value!r} (first at line {first_line[ident]})",
                            file=file,
                            key_path=_format_path((*path, key.value)),
                            line=line,
                            fix="keep only one of them",
                        )
                    )
                else:
                    first_line[ident] = line
                walk(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    walk(root, ())
    return errors


def _line_map(root: yaml.Node, data: Any) -> dict[tuple[PathPart, ...], int]:
    """Key path -> 1-based line of the key (mapping entries) or item (sequence entries)."""
    lines: dict[tuple[PathPart, ...], int] = {(): root.start_mark.line + 1}
    visited: set[int] = set()

    def walk(node: yaml.Node, value: Any, path: tuple[PathPart, ...]) -> None:
        if id(node) in visited:
            return
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode) and isinstance(value, dict):
            # After construction merge keys are flattened into node.value; later entries win,
            # exactly as in the constructed dict.
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = next((k for k in value if str(k) == key_node.value), key_node.value)
                lines[(*path, key)] = key_node.start_mark.line + 1
                walk(value_node, value.get(key), (*path, key))
        elif isinstance(node, yaml.SequenceNode) and isinstance(value, list):
            for index, item in enumerate(node.value):
                lines[(*path, index)] = item.start_mark.line + 1
                walk(item, value[index] if index < len(value) else None, (*path, index))

    walk(root, data, ())
    return lines


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[tuple[PathPart, ...], int], list[ConfigError]]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(
                "the file is empty", file=file, fix="describe one tenant, see config/example-tenant.yaml"
            )
        duplicates = _duplicate_keys(node, file)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        # Built from the parts, not str(exc): that would quote the offending source line, which
        # may hold a secret someone pasted in by mistake.
        mark = exc.problem_mark or exc.context_mark
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        problem = f"YAML syntax error: {what}"
        if mark is not None:
            problem += f" (column {mark.column + 1})"
        raise ConfigError(
            problem, file=file, line=mark.line + 1 if mark is not None else None, fix="fix the YAML syntax"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {type(exc).__name__}", file=file, fix="fix the YAML syntax") from None
    finally:
        loader.dispose()
    return data, _line_map(node, data), duplicates


# --------------------------------------------------------------------------------------------------
# pydantic errors -> ConfigError


def _data_path(loc: Sequence[PathPart], data: Any) -> list[PathPart]:
    """pydantic's ``loc`` as a path through the user's data: union tags are dropped."""
    path: list[PathPart] = []
    current: Any = data
    tag_possible = True
    for part in loc:
        if isinstance(current, dict):
            # A discriminated union puts its tag (the ``mode`` value) into the location, once,
            # before the keys of the chosen member.
            if tag_possible and isinstance(part, str) and current.get("mode") == part:
                tag_possible = False
                continue
            path.append(part)
            current = current.get(part)
        elif isinstance(current, list) and isinstance(part, int):
            path.append(part)
            current = current[part] if 0 <= part < len(current) else None
        else:
            path.append(part)
            current = None
        tag_possible = True
    return path


def _strip_optional(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _type_at(loc: Sequence[PathPart]) -> Any:
    """The declared type of the value at ``loc`` (pydantic's loc, union tags included), or None."""
    tp: Any = TenantConfig
    for part in loc:
        tp = _strip_optional(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            info = tp.model_fields.get(str(part))
            if info is None:
                return None
            tp = info.annotation
        elif origin in (Union, types.UnionType):
            tp = next((m for m in typing.get_args(tp) if part in _mode_tags(m)), None)
            if tp is None:
                return None
        elif origin in (tuple, list):
            tp = typing.get_args(tp)[0]
        else:
            return None
    return _strip_optional(tp)


def _model_at(loc: Sequence[PathPart]) -> type[BaseModel] | None:
    """The model class whose fields live at ``loc``."""
    tp = _type_at(loc)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _union_tags_at(loc: Sequence[PathPart]) -> list[str]:
    """The ``mode`` values accepted by the tagged union at ``loc``."""
    tp = _type_at(loc)
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return []
    return [str(tag) for member in typing.get_args(tp) for tag in _mode_tags(member)]


def _mode_tags(model: Any) -> tuple[Any, ...]:
    if isinstance(model, type) and issubclass(model, BaseModel) and "mode" in model.model_fields:
        return typing.get_args(model.model_fields["mode"].annotation)
    return ()


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    hint = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {hint[0]!r}? " if hint else ""


def _describe(error: ErrorDetails, path: list[PathPart]) -> tuple[str, str | None]:
    """Problem and fix for one pydantic error. Never quotes ``input`` unless it is a key or tag."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    loc = error["loc"]
    if kind == "config":
        return str(ctx["problem"]), ctx.get("fix")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        if key in _INLINE_SECRET_KEYS:
            base = _INLINE_SECRET_KEYS[key]
            return (
                "inline secrets are not allowed",
                f"put the secret in an environment variable or a file and set {base}_env or {base}_file",
            )
        if len(path) >= 2 and path[-2] == "filters" and key in _CRAWLER_PARAMETERS:
            return f"{key} is set by the crawler, not a filter", _CRAWLER_PARAMETERS[key]
        model = _model_at(loc[:-1])
        allowed = list(model.model_fields) if model is not None else []
        mode = f" with mode {loc[-2]}" if len(loc) >= 2 and loc[-2] in _mode_tags(model) else ""
        fix = _did_you_mean(key, allowed) + (f"allowed keys{mode}: {', '.join(allowed)}" if allowed else "")
        return f"unknown key {key!r}", fix or None
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        expected = _union_tags_at(loc)
        if kind == "union_tag_not_found":
            return "mode is missing", "set mode to one of: " + ", ".join(expected)
        tag = str(ctx.get("tag", ""))
        return f"unknown mode {tag!r}", _did_you_mean(tag, expected) + "use one of: " + ", ".join(expected)
    if kind == "literal_error":
        expected_text = str(ctx.get("expected", ""))
        choices = re.findall(r"'([^']*)'", expected_text)
        value = error.get("input")
        hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
        return f"must be one of {', '.join(choices)}", (hint.strip() or None)
    if kind == "missing":
        return "is required", f"add {path[-1]}: ..." if path else None
    if kind in ("model_attributes_type", "model_type", "dict_type"):
        return "must be a mapping of keys", None
    if kind in ("tuple_type", "list_type"):
        return "must be a list", "write [a, b] or one '- item' per line"
    if kind == "string_type":
        return "must be a string", "quote the value in YAML (e.g. '0')"
    if kind == "string_pattern_mismatch":
        return _PATTERN_PROBLEMS.get(str(ctx.get("pattern", "")), ("has an invalid format", None))
    return error["msg"], None


_PATTERN_PROBLEMS: dict[str, tuple[str, str | None]] = {
    r"^[0-9a-f]{32}$": ("is not a project id", "project ids are 32 lower-case hex digits"),
    r"^(0|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$": (
        "is not an enterprise project id",
        'use the EP\'s UUID, or "0" for the default enterprise project',
    ),
    r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$": ("is not a UUID", None),
    r"^[a-z0-9][a-z0-9_-]{0,62}$": (
        "is not a valid tenant slug",
        "use 1-63 lower-case letters, digits, - and _, starting with a letter or digit",
    ),
}


def _line_for(path: Sequence[PathPart], lines: Mapping[tuple[PathPart, ...], int]) -> int | None:
    # A missing key has no line of its own: point at the nearest enclosing key that exists.
    for end in range(len(path), -1, -1):
        line = lines.get(tuple(path[:end]))
        if line is not None:
            return line
    return None


def _convert_errors(
    exc: ValidationError, data: Any, lines: Mapping[tuple[PathPart, ...], int], file: str
) -> list[ConfigError]:
    details = exc.errors(include_url=False)
    failed_items = {error["loc"][:-1] for error in details if error["loc"]}
    errors: list[ConfigError] = []
    for error in details:
        # pydantic adds "at least 1 item after validation, not 0" when the items themselves
        # failed; the item errors say it better.
        if error["type"] == "too_short" and error["loc"] in failed_items:
            continue
        path = _data_path(error["loc"], data)
        ctx = error.get("ctx") or {}
        if error["type"] == "config":
            path.extend(ctx.get("at", ()))
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path.append("mode")
        problem, fix = _describe(error, path)
        errors.append(
            ConfigError(problem, file=file, key_path=_format_path(path), line=_line_for(path, lines), fix=fix)
        )
    return errors


# --------------------------------------------------------------------------------------------------
# Loading


def parse_tenant(
    text: str,
    file: str = "<string>",
    *,
    base_dir: str | Path | None = None,
    check_secrets: bool = False,
    environ: Mapping[str, str] | None = None,
) -> TenantConfig:
    """Validate one tenant document; :class:`ConfigErrors` with every problem found."""
    try:
        data, lines, errors = _parse_yaml(text, file)
    except ConfigError as exc:
        raise ConfigErrors([exc]) from None
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "null"
        raise ConfigErrors(
            [
                ConfigError(
                    f"the top level must be a mapping of keys, not {kind}",
                    file=file,
                    line=lines.get(()),
                    fix="start with 'tenant: <name>' then 'auth:', 'regions:'...",
                )
            ]
        )
    # Top-level keys starting with "x-" are free for YAML anchors to hang off (as in Compose files).
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    context = {"base_dir": str(base_dir)} if base_dir is not None else {}
    tenant: TenantConfig | None = None
    try:
        tenant = TenantConfig.model_validate(data, context=context)
    except ValidationError as exc:
        errors.extend(_convert_errors(exc, data, lines, file))
    if errors:
        raise ConfigErrors(errors)
    assert tenant is not None
    tenant._set_origin(_Origin(file, {_format_path(path): line for path, line in lines.items()}))
    if check_secrets:
        tenant.check_secrets(environ)
    return tenant


def load_tenant(
    path: str | Path, *, check_secrets: bool = False, environ: Mapping[str, str] | None = None
) -> TenantConfig:
    """Read and validate one tenant file."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigErrors(
            [
                ConfigError(
                    f"cannot read: {exc.strerror or type(exc).__name__}", file=file, fix="check the path"
                )
            ]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigErrors(
            [
                ConfigError(
                    f"not UTF-8 text (byte offset {exc.start})", file=file, fix="save the file as UTF-8"
                )
            ]
        ) from None
    return parse_tenant(text, file, base_dir=Path(path).parent, check_secrets=check_secrets, environ=environ)


def tenant_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files named by ``paths``: files as given, directories as their ``*.yaml``/``*.yml`` (sorted,
    not recursive, hidden files skipped). The same file named twice counts once."""
    files: list[Path] = []
    seen: set[Path] = set()
    errors: list[ConfigError] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
            )
            if not found:
                errors.append(
                    ConfigError(
                        "directory holds no *.yaml or *.yml file", file=str(path), fix="check the path"
                    )
                )
        elif path.exists():
            found = [path]
        else:
            errors.append(ConfigError("no such file or directory", file=str(path), fix="check the path"))
            found = []
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                files.append(file)
    if errors:
        raise ConfigErrors(errors)
    return files


def load_tenants(
    paths: Sequence[str | Path], *, check_secrets: bool = False, environ: Mapping[str, str] | None = None
) -> list[TenantConfig]:
    """Load every tenant named by ``paths`` (files and directories), one tenant per file.

    Raises one :class:`ConfigErrors` with every problem of every file, including tenant names used
    twice. Touches no network; reads secrets only with ``check_secrets=True``.
    """
    if not paths:
        raise ConfigErrors(
            [ConfigError("no configuration file given", fix="name tenant files or directories")]
        )
    files = tenant_files(paths)
    tenants: list[TenantConfig] = []
    errors: list[ConfigError] = []
    first_file: dict[str, str] = {}
    for file in files:
        try:
            tenant = load_tenant(file, check_secrets=check_secrets, environ=environ)
        except ConfigError as exc:
            errors.append(exc)
            continue
        if tenant.tenant in first_file:
            errors.append(
                ConfigError(
                    f"tenant name {tenant.tenant!r} is also used by {first_file[tenant.tenant]}",
                    file=str(file),
                    key_path="tenant",
                    line=tenant._origin.lines.get("tenant"),
                    fix="give every tenant its own name",
                )
            )
            continue
        first_file[tenant.tenant] = str(file)
        tenants.append(tenant)
    if errors:
        raise ConfigErrors(errors)
    return tenants


def config_digest(tenants: Iterable[TenantConfig]) -> str:
    """sha256 of the canonical JSON of the validated tenants (order-independent).

    Safe to log: a config holds secret *names* and paths only.
    """
    documents = sorted((t.model_dump(mode="json") for t in tenants), key=lambda d: str(d["tenant"]))
    canonical = json.dumps(documents, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def json_schema() -> dict[str, Any]:
    """JSON Schema of a tenant file, for editors (every field has a title and a description)."""
    schema = TenantConfig.model_json_schema(mode="validation")
    # pydantic drops a field's title when it equals the title of the model it refers to
    # (Filters, Timeouts); editors show titles next to keys, so every field gets its own.
    for model in (schema, *schema.get("$defs", {}).values()):
        for name, prop in model.get("properties", {}).items():
            prop.setdefault("title", name.replace("_", " ").title())
    return schema


__all__ = [
    "AUTH_MODES",
    "DEFAULT_LAYOUT",
    "EP_MODES",
    "KNOWN_REGIONS",
    "LAYOUT_FIELDS",
    "OWN_TYPES",
    "AgencyAuth",
    "AkSk",
    "AkskAuth",
    "AuthConfig",
    "ConfigError",
    "ConfigErrors",
    "Endpoints",
    "EnterpriseProjectsConfig",
    "EpAllGranted",
    "EpDiscover",
    "EpIds",
    "EpNone",
    "Filters",
    "MissingSecretError",
    "OutputConfig",
    "PasswordAuth",
    "ProjectDiscovery",
    "ProjectsConfig",
    "RateLimit",
    "Secret",
    "SecretSource",
    "TemporaryAuth",
    "TenantConfig",
    "Timeouts",
    "TokenAuth",
    "config_digest",
    "default_endpoint",
    "json_schema",
    "load_tenant",
    "load_tenants",
    "parse_tenant",
    "tenant_files",
]
