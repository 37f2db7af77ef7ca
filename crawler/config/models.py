"""The tenant file's shape: what to crawl, how fast, where to write; :class:`TenantConfig`."""

from __future__ import annotations

import datetime as dt
import difflib
import fnmatch
import os
import re
import string
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import (
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

from crawler.config.auth import AuthConfig
from crawler.config.fields import (
    DEFAULT_LAYOUT,
    GATEWAY_CEILING_RPS,
    KNOWN_REGIONS,
    LAYOUT_FIELDS,
    REGION_PATTERN,
    SERVICES,
    UNLIMITED,
    BackupStatus,
    EnterpriseProjectId,
    Glob,
    Model,
    Name,
    Origin,
    OwnType,
    ProjectId,
    ResourceType,
    Uuid,
    fail,
    unique,
)
from crawler.config.messages import convert_errors
from crawler.config.secrets import SecretSource
from crawler.errors import ConfigErrors

# --------------------------------------------------------------------------------------------------
# What to crawl


class ProjectDiscovery(Model):
    """Find projects by asking IAM; keep those whose name matches (``fnmatch``)."""

    include: tuple[Glob, ...] = Field(
        default=(), description="Project name globs to keep (empty: every project of the regions)."
    )
    exclude: tuple[Glob, ...] = Field(default=(), description="Project name globs to drop.")


class ProjectsConfig(Model):
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
                raise fail("is empty", "list project ids, or use discover")
            unique(value, "project id")
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
            raise fail("ids and discover are both set", "keep one of them", at=("discover",))
        return self


class EpNone(Model):
    """No ``enterprise_project_id`` parameter: the API's default view."""

    mode: Literal["none"] = Field(description="Send no enterprise_project_id parameter.")


class EpIds(Model):
    """One pass per listed enterprise project id."""

    mode: Literal["ids"] = Field(description="One pass per listed enterprise project.")
    ids: tuple[EnterpriseProjectId, ...] = Field(
        min_length=1, description='Enterprise project ids: UUIDs, or "0" for the default one.'
    )

    @field_validator("ids")
    @classmethod
    def _unique_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unique(value, "enterprise project id")
        return value


class EpAllGranted(Model):
    """One pass with ``enterprise_project_id=all_granted_eps``: every EP the caller may see."""

    mode: Literal["all_granted"] = Field(description="One pass with enterprise_project_id=all_granted_eps.")


class EpDiscover(Model):
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
            raise fail("has fractions of a second", "write a time like 2018-02-01T12:00:00Z")
        return value.strftime(_API_TIME)
    if isinstance(value, str):
        try:
            dt.datetime.strptime(value, _API_TIME)
        except ValueError:
            raise fail(
                f"{value!r} is not a UTC time like 2018-02-01T12:00:00Z",
                "use the format YYYY-MM-DDTHH:MM:SSZ",
            ) from None
    return value


ApiTime = Annotated[str, Strict()]


class Filters(Model):
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
            unique(value, "status")
        return value

    @model_validator(mode="after")
    def _time_order(self) -> Filters:
        # Same format and zone: the strings compare like the times they spell.
        if self.start_time is not None and self.end_time is not None and self.start_time > self.end_time:
            raise fail("end_time is before start_time", "swap them", at=("end_time",))
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


class RateLimit(Model):
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
            raise fail("is empty", f"write a number of requests per second, or '{UNLIMITED}'")
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


class OutputConfig(Model):
    """Where and how backup records are written."""

    directory: Annotated[str, Strict(), Field(min_length=1)] | None = Field(
        default=None,
        description="Output root: a directory, or s3://BUCKET/PREFIX (obs://... alike) for object "
        "storage (the CLI's --output overrides it).",
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
            raise fail(
                f"is not a valid template: {exc}", "use {field} placeholders, e.g. " + DEFAULT_LAYOUT
            ) from None
        used: set[str] = set()
        for _literal, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in LAYOUT_FIELDS:
                hint = difflib.get_close_matches(name, LAYOUT_FIELDS, n=1)
                suggestion = f"did you mean {{{hint[0]}}}? " if hint else ""
                raise fail(f"unknown field {{{name}}}", f"{suggestion}allowed: " + ", ".join(LAYOUT_FIELDS))
            if spec or conversion:
                raise fail(f"field {{{name}}} has a format spec or conversion", f"write plain {{{name}}}")
            used.add(name)
        if value.startswith("/") or ".." in value.split("/"):
            raise fail("must be a relative path without '..'", "e.g. " + DEFAULT_LAYOUT)
        # Every run may put several tenants and projects under one root (the CLI's --output), so
        # the directory must tell them apart; own type and EP are in the file name already.
        if "tenant" not in used or not used & {"project_id", "project_name"}:
            raise fail(
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
        raise fail(f"is not a valid template: {exc}", "e.g. https://cbr.{region}.example.com") from None
    if names - {"region"}:
        raise fail("only the {region} placeholder is allowed", "e.g. https://cbr.{region}.example.com")
    parts = urlsplit(value.replace("{region}", "region"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise fail("is not an http(s) URL", "e.g. https://cbr.{region}.example.com")
    if parts.query or parts.fragment:
        raise fail("must not have a query or fragment", "give the scheme, host and optional base path")
    return value.rstrip("/")


EndpointTemplate = Annotated[str, Strict()]


class Endpoints(Model):
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


class TlsConfig(Model):
    """How the tenant's endpoints are trusted."""

    ca_file: Annotated[str, Strict()] | None = Field(
        default=None,
        description="PEM bundle of the CAs that sign the endpoints' certificates (a private cloud), "
        "trusted instead of the system's; relative to the tenant file.",
    )
    verify: Annotated[bool, Strict()] = Field(
        default=True,
        description="false turns certificate verification off: never on the public cloud; logged as "
        "a warning on every run.",
    )


class Timeouts(Model):
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
    request: Annotated[float, Strict()] = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="Deadline for one attempt of one request, its whole answer included (a server "
        "that sends a byte a second never trips the read timeout).",
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
REGION_GLOB_PATTERN = re.compile(r"^[a-z0-9*?\[\]-]+$")
# A global endpoint template that needs a region, with only globs listed, gets this one.
DEFAULT_TEMPLATE_REGION = "cn-north-4"


def is_region_glob(region: str) -> bool:
    return any(c in region for c in "*?[")


class TenantConfig(Model):
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
    regions: tuple[Region, ...] = Field(
        min_length=1,
        description="Region ids to crawl, e.g. cn-north-4; globs (cn-*) or 'all' discover them from "
        "the account's IAM projects (regions without CBR and the MOS project skipped).",
    )
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
    plan: Literal["auto", "per_pass"] = Field(
        default="auto",
        description="auto: the fewest requests (one own_type=all_granted pass per project, split into "
        "the views and enterprise projects asked, where record fields allow); per_pass: one query per "
        "project, enterprise project and view.",
    )
    filters: Filters = Field(
        default_factory=Filters, description="ListBackups filters applied to every scope."
    )
    rate_limit: RateLimit = Field(default_factory=RateLimit, description="Request pacing.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Output location and format.")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Network timeouts.")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="Certificate verification.")
    proxy: Annotated[str, Strict()] | None = Field(
        default=None,
        description="HTTP(S) proxy URL for this tenant's requests; else HTTPS_PROXY / HTTP_PROXY / "
        "NO_PROXY from the environment are honoured.",
    )

    _origin: Origin = PrivateAttr(default_factory=Origin)

    @field_validator("regions", mode="before")
    @classmethod
    def _all_regions(cls, value: Any) -> Any:
        return ("*",) if value == "all" else value  # `regions: all` is the glob matching every region

    @field_validator("regions")
    @classmethod
    def _check_regions(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        # Unknown regions are typos on the public cloud; a private cloud (endpoints set) has its own.
        # `endpoints` is declared before `regions` so that it is known here; if it failed
        # validation it is absent, and its own error is the one worth reading.
        public_cloud = info.data.get("endpoints", ...) is None
        for index, region in enumerate(value):
            if is_region_glob(region):
                if not REGION_GLOB_PATTERN.fullmatch(region):
                    raise fail(
                        f"{region!r} is not a region glob", "use 'all', or globs like cn-* or ap-southeast-?",
                        at=(index,),
                    )  # fmt: skip
                if public_cloud and not any(fnmatch.fnmatchcase(r, region) for r in KNOWN_REGIONS):
                    raise fail(f"{region!r} matches no region with CBR", "see KNOWN_REGIONS", at=(index,))
                continue
            if not REGION_PATTERN.fullmatch(region):
                raise fail(f"{region!r} is not a region id", "region ids look like cn-north-4", at=(index,))
            if public_cloud and region not in KNOWN_REGIONS:
                hint = difflib.get_close_matches(region, sorted(KNOWN_REGIONS), n=1)
                fix = f"did you mean {hint[0]}?" if hint else "see KNOWN_REGIONS"
                raise fail(
                    f"unknown region {region!r}", fix + " (a private cloud must set endpoints)", at=(index,)
                )
        unique(value, "region")
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
            raise fail(
                "'unlimited' is refused on Huawei's public cloud (its gateway allows 200 requests/s per API)",
                "set a number up to 200, or set endpoints.cbr for a private cloud or the emulator",
                at=("requests_per_second",),
            )
        return value

    @field_validator("own_types")
    @classmethod
    def _unique_own_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unique(value, "own type")
        return value

    def model_post_init(self, context: Any, /) -> None:
        self.auth._bind(self._origin, "auth")

    def _set_origin(self, origin: Origin) -> None:
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

    def resolve_path(self, path: str) -> str:
        """``path`` as given, or relative to the tenant file's directory when it is relative."""
        if os.path.isabs(path) or self._origin.file is None:
            return path
        return os.path.join(os.path.dirname(self._origin.file), path)

    def with_endpoints(self, endpoints: Mapping[str, str]) -> TenantConfig:
        """A copy with some endpoint templates replaced (the demo points a tenant at the emulator).

        The copy is validated like a file would be; :class:`ConfigErrors` if an override is wrong.
        """
        data = self.model_dump(mode="python")
        data["endpoints"] = {**(data.get("endpoints") or {}), **endpoints}
        try:
            copy_ = TenantConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigErrors(convert_errors(exc, TenantConfig, data, {}, self.source)) from None
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
        fallback = next((r for r in self.regions if not is_region_glob(r)), DEFAULT_TEMPLATE_REGION)
        return str(template).replace("{region}", region if region is not None else fallback)

    @property
    def region_globs(self) -> bool:
        """True when the regions are discovered (``all`` or a glob), not all listed."""
        return any(is_region_glob(r) for r in self.regions)

    def secret_sources(self) -> tuple[SecretSource, ...]:
        return self.auth.secret_sources()

    def check_secrets(self, environ: Mapping[str, str] | None = None) -> None:
        """Resolve every secret once (nothing is kept); :class:`ConfigErrors` if any is unavailable."""
        self.auth.check_secrets(environ)
