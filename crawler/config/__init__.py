"""Tenant configuration: YAML files -> validated, immutable models (a package, one job a module).

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

Modules: :mod:`~crawler.config.fields` (constants, value types, validation helpers),
:mod:`~crawler.config.secrets` (secret sources, masked values), :mod:`~crawler.config.auth` (the
``auth`` section), :mod:`~crawler.config.models` (the rest of a tenant file, :class:`TenantConfig`),
:mod:`~crawler.config.yaml_lines` (YAML with the line of every key),
:mod:`~crawler.config.messages` (validation errors -> messages with file, line, key path and fix),
:mod:`~crawler.config.loading` (files -> tenants, digest, schema). Import from ``crawler.config``.
"""

from crawler.config.auth import (
    AUTH_MODES,
    AgencyAuthConfig,
    AkSk,
    AkSkAuthConfig,
    AuthConfig,
    PasswordAuthConfig,
    TemporaryAuthConfig,
    TokenAuthConfig,
)
from crawler.config.fields import (
    DEFAULT_LAYOUT,
    GATEWAY_CEILING_RPS,
    KNOWN_REGIONS,
    LAYOUT_FIELDS,
    OWN_TYPES,
    UNLIMITED,
)
from crawler.config.loading import (
    config_digest,
    json_schema,
    load_tenant,
    load_tenants,
    parse_tenant,
    tenant_files,
)
from crawler.config.models import (
    EP_MODES,
    Endpoints,
    EnterpriseProjectsConfig,
    EpAllGranted,
    EpDiscover,
    EpIds,
    EpNone,
    Filters,
    OutputConfig,
    ProjectDiscovery,
    ProjectsConfig,
    RateLimit,
    TenantConfig,
    Timeouts,
    default_endpoint,
)
from crawler.config.secrets import Secret, SecretSource
from crawler.errors import ConfigError, ConfigErrors, MissingSecretError

__all__ = [
    "AUTH_MODES",
    "DEFAULT_LAYOUT",
    "EP_MODES",
    "GATEWAY_CEILING_RPS",
    "KNOWN_REGIONS",
    "LAYOUT_FIELDS",
    "OWN_TYPES",
    "UNLIMITED",
    "AgencyAuthConfig",
    "AkSk",
    "AkSkAuthConfig",
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
    "PasswordAuthConfig",
    "ProjectDiscovery",
    "ProjectsConfig",
    "RateLimit",
    "Secret",
    "SecretSource",
    "TemporaryAuthConfig",
    "TenantConfig",
    "Timeouts",
    "TokenAuthConfig",
    "config_digest",
    "default_endpoint",
    "json_schema",
    "load_tenant",
    "load_tenants",
    "parse_tenant",
    "tenant_files",
]
