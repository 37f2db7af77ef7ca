"""The ``auth`` section: one model per authentication mode, secrets only by source."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, Union

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from crawler.config.fields import (
    Duration,
    EnvName,
    Model,
    Name,
    Origin,
    SecretFile,
    check_env_name,
    check_secret_file,
    fail,
)
from crawler.config.secrets import Secret, SecretSource
from crawler.errors import ConfigError, ConfigErrors, MissingSecretError

# --------------------------------------------------------------------------------------------------
# Authentication


class _AuthBase(Model):
    """Shared plumbing: where the model sits in the file, to name it in run-time secret errors."""

    _key_prefix: str = PrivateAttr(default="auth")
    _origin: Origin = PrivateAttr(default_factory=Origin)

    def _bind(self, origin: Origin, prefix: str) -> None:
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
        raise fail(
            f"no source for the {name}",
            f"set {name}_env (an environment variable name) or {name}_file (a file path)",
        )
    if env is not None and file is not None:
        raise fail(f"both {name}_env and {name}_file are set", "keep only one of them", at=(f"{name}_file",))


class TokenAuthConfig(_AuthBase):
    """A static IAM token, sent as ``X-Auth-Token`` as-is (it must fit every project crawled)."""

    mode: Literal["token"] = Field(description="Authentication mode: a static token.")
    token_env: EnvName | None = Field(
        default=None, description="Name of the environment variable holding the token."
    )
    token_file: SecretFile | None = Field(
        default=None, description="Path of a file holding the token (relative to this file)."
    )

    _check_env = field_validator("token_env")(check_env_name)
    _check_file = field_validator("token_file")(check_secret_file)

    @model_validator(mode="after")
    def _one_source(self) -> TokenAuthConfig:
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


class PasswordAuthConfig(_AuthBase):
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

    _check_env = field_validator("password_env")(check_env_name)
    _check_file = field_validator("password_file")(check_secret_file)

    @model_validator(mode="after")
    def _one_source(self) -> PasswordAuthConfig:
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


class AkSkAuthConfig(_AuthBase):
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

    _check_env = field_validator("access_key_env", "secret_key_env")(check_env_name)
    _check_file = field_validator("access_key_file", "secret_key_file")(check_secret_file)

    @model_validator(mode="after")
    def _one_source(self) -> AkSkAuthConfig:
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


TokenSourceAuth = Annotated[
    Union[PasswordAuthConfig, TokenAuthConfig],  # noqa: UP007
    Field(discriminator="mode"),
]
AgencySourceAuth = Annotated[
    Union[PasswordAuthConfig, AkSkAuthConfig, TokenAuthConfig],  # noqa: UP007
    Field(discriminator="mode"),
]


class TemporaryAuthConfig(_AuthBase):
    """Temporary AK/SK (with a security token) from IAM ``securitytokens``, renewed before expiry.

    ``source`` is the password or token auth used to ask for them.
    """

    mode: Literal["temporary"] = Field(description="Authentication mode: temporary AK/SK from IAM.")
    source: TokenSourceAuth = Field(description="The auth (password or token) that obtains the keys.")
    duration_seconds: Duration = Field(
        default=3600, description="Lifetime asked for each temporary key pair, 900..86400 seconds."
    )

    def _bind(self, origin: Origin, prefix: str) -> None:
        super()._bind(origin, prefix)
        self.source._bind(origin, f"{prefix}.source")

    def secret_sources(self) -> tuple[SecretSource, ...]:
        return self.source.secret_sources()


class AgencyAuthConfig(_AuthBase):
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

    def _bind(self, origin: Origin, prefix: str) -> None:
        super()._bind(origin, prefix)
        self.source._bind(origin, f"{prefix}.source")

    def secret_sources(self) -> tuple[SecretSource, ...]:
        return self.source.secret_sources()


AuthConfig = Annotated[
    Union[TokenAuthConfig, PasswordAuthConfig, AkSkAuthConfig, TemporaryAuthConfig, AgencyAuthConfig],  # noqa: UP007
    Field(discriminator="mode"),
]
AUTH_MODES = ("token", "password", "aksk", "temporary", "agency")
