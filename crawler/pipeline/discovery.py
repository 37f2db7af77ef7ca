"""Discovery: a tenant's projects (IAM) and enterprise projects (EPS), expanded into its scopes.

:func:`discover_tenants` is the entry point: per tenant, its services (credential, endpoints,
limiters), then its scopes: projects x enterprise projects x own_type views. A tenant whose
credential cannot be read or whose discovery fails fails alone (a :class:`TenantFailure`).

Projects and enterprise projects are global questions asked with a domain-scoped credential.
Projects come from ``GET /v3/auth/projects`` (every project the caller can access, all regions, no
paging); a region's projects are the one named exactly after the region and its ``<region>_<name>``
sub-projects. The special ``MOS`` project (billing) is always skipped. With ``regions: all`` or a
glob, the regions are those of the account's projects that match, less the regions without CBR
(not in the SDK's CBR region table, :data:`crawler.config.KNOWN_REGIONS`). Enterprise projects come
from ``GET /v1.0/enterprise-projects``, paged with ``limit``/``offset`` until ``total_count``.

Then the plan (:mod:`crawler.pipeline.passes`): the scopes, or one single pass per project split
into them, whichever costs fewer requests and yields the same partitions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from crawler.config import KNOWN_REGIONS, TenantConfig
from crawler.errors import ApiError, AuthFailedError, BadResponseError, CrawlerError, CredentialRefused
from crawler.pipeline.client import ApiClient, ApiRequest, Authenticator
from crawler.pipeline.engine import TenantCrawl
from crawler.pipeline.listbackups import list_backups_request
from crawler.pipeline.passes import PlanChoice, choose_plan, group_into_passes, refused_plan
from crawler.pipeline.ratelimit import LimiterRegistry, QuotaLimiter
from crawler.pipeline.scope import Scope, TenantFailure
from crawler.pipeline.tenant import TenantServices

log = logging.getLogger(__name__)

EPS_PAGE = 1000
SKIPPED_PROJECTS = frozenset({"MOS"})


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str
    region: str


@dataclass(frozen=True, slots=True)
class EnterpriseProject:
    id: str
    name: str
    status: int


def region_of(project_name: str, regions: Sequence[str]) -> str | None:
    """The region a project belongs to, by Huawei's naming rule, or None.

    ``regions`` may hold globs (``*`` for ``regions: all``): a project's region is then its name up
    to the first ``_``, kept if it matches a glob and CBR exists there.
    """
    for region in regions:
        if not _is_glob(region) and (project_name == region or project_name.startswith(region + "_")):
            return region
    candidate = project_name.partition("_")[0]
    if candidate in KNOWN_REGIONS and any(fnmatch.fnmatchcase(candidate, r) for r in regions if _is_glob(r)):
        return candidate
    return None


def _is_glob(region: str) -> bool:
    return any(c in region for c in "*?[")


def skipped_regions(project_names: Sequence[str], regions: Sequence[str]) -> list[str]:
    """Regions of the account's projects that a glob matches but that have no CBR (not crawled)."""
    skipped = set()
    for name in project_names:
        candidate = name.partition("_")[0]
        if candidate in KNOWN_REGIONS or name in SKIPPED_PROJECTS:
            continue
        if any(fnmatch.fnmatchcase(candidate, r) for r in regions if _is_glob(r)):
            skipped.add(candidate)
    return sorted(skipped)


def matches(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)


async def discover_projects(
    client: ApiClient,
    auth: Authenticator,
    iam_base_url: str,
    limiter: QuotaLimiter | None,
    regions: Sequence[str],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> tuple[list[Project], list[str]]:
    """The tenant's enabled projects in ``regions`` matching the name patterns, sorted by region, name;
    and the regions a glob matched that have no CBR (skipped)."""
    request = ApiRequest(service="iam", method="GET", base_url=iam_base_url, path="/v3/auth/projects")
    response = await client.send(request, auth, limiter)
    data = response.data
    if not isinstance(data, dict) or not isinstance(data.get("projects"), list):
        raise BadResponseError("IAM projects answer has no 'projects' list", request_id=response.request_id)
    found: list[Project] = []
    names: list[str] = []
    for item in data["projects"]:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("id"), str)
            or not isinstance(item.get("name"), str)
        ):
            raise BadResponseError("IAM project entry without id or name", request_id=response.request_id)
        name = item["name"]
        if name in SKIPPED_PROJECTS or item.get("enabled") is False:
            continue
        names.append(name)
        region = region_of(name, regions)
        if region is None or not matches(name, include, exclude):
            continue
        found.append(Project(item["id"], name, region))
    skipped = skipped_regions(names, regions)
    if skipped:
        log.info("regions without CBR skipped: %s", ", ".join(skipped))
    order = {r: i for i, r in enumerate(regions)}  # listed regions first, then discovered ones
    found.sort(key=lambda p: (order.get(p.region, len(order)), p.region, p.name))
    return found, skipped


async def discover_enterprise_projects(
    client: ApiClient,
    auth: Authenticator,
    eps_base_url: str,
    limiter: QuotaLimiter | None,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    enabled_only: bool = True,
) -> list[EnterpriseProject]:
    """Every enterprise project of the account (the default one, id "0", included)."""
    found: list[EnterpriseProject] = []
    offset = 0
    while True:
        query = [("limit", str(EPS_PAGE)), ("offset", str(offset))]
        if enabled_only:
            query.append(("status", "1"))
        request = ApiRequest(
            service="eps", method="GET", base_url=eps_base_url, path="/v1.0/enterprise-projects", query=query
        )
        response = await client.send(request, auth, limiter)
        data = response.data
        items = data.get("enterprise_projects") if isinstance(data, dict) else None
        total = data.get("total_count") if isinstance(data, dict) else None
        if not isinstance(items, list) or not isinstance(total, int):
            raise BadResponseError(
                "EPS answer has no 'enterprise_projects' list or 'total_count'",
                request_id=response.request_id,
            )
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise BadResponseError("enterprise project without an id", request_id=response.request_id)
            name = str(item.get("name", ""))
            if matches(name, include, exclude):
                found.append(EnterpriseProject(item["id"], name, int(item.get("status", 1))))
        offset += len(items)
        if not items or offset >= total:
            break
    return found


@dataclass(frozen=True, slots=True)
class Discovered:
    """A tenant's scopes to fetch (single passes or plain scopes), the plan, and the regions."""

    scopes: list[Scope]
    plan: PlanChoice
    regions: tuple[str, ...]
    regions_skipped: tuple[str, ...] = ()  # matched by a glob, but without CBR
    requests: int = 0  # what discovery cost: IAM, EPS, probes, the credential check


async def _projects(services: TenantServices) -> tuple[list[tuple[str, str, str]], list[str], int]:
    """(region, id, name) of the projects to crawl, the regions skipped without CBR, requests made."""
    cfg = services.config
    client, auth = services.client, services.auth
    regions = list(cfg.regions)
    if cfg.projects.ids:
        if len(regions) == 1 and not cfg.region_globs:
            return [(regions[0], pid, pid) for pid in cfg.projects.ids], [], 0
        # Explicit ids across several regions: ask IAM which region each id is in.
        found, skipped = await discover_projects(
            client, auth, services.iam.base_url, services.iam.limiter, regions
        )
        by_id = {p.id: p for p in found}
        missing = [pid for pid in cfg.projects.ids if pid not in by_id]
        if missing:
            raise CrawlerError(f"project ids not found in regions {regions}: {', '.join(missing)}")
        return [(by_id[pid].region, pid, by_id[pid].name) for pid in cfg.projects.ids], skipped, 1
    found, skipped = await discover_projects(
        client,
        auth,
        services.iam.base_url,
        services.iam.limiter,
        regions,
        include=list(cfg.projects.include),
        exclude=list(cfg.projects.exclude),
    )
    return [(p.region, p.id, p.name) for p in found], skipped, 1


async def _enterprise_project_ids(services: TenantServices) -> tuple[list[str | None], int]:
    """The enterprise project partitions asked (None: no EP parameter), and the requests made."""
    ep_cfg = services.config.enterprise_projects
    if ep_cfg.mode == "none":
        return [None], 0
    if ep_cfg.mode == "ids":
        return list(ep_cfg.ids), 0
    if ep_cfg.mode == "all_granted":
        return ["all_granted_eps"], 0
    found_eps = await discover_enterprise_projects(
        services.client,
        services.auth,
        services.eps_endpoint(),
        services.eps_limiter(),
        include=list(ep_cfg.include),
        exclude=list(ep_cfg.exclude),
        enabled_only=ep_cfg.status == "enabled",
    )
    # Pages (counted on the EPs kept: a lower bound when name filters drop some).
    return [ep.id for ep in found_eps], max(1, -(-len(found_eps) // EPS_PAGE))


async def discover_scopes(services: TenantServices) -> Discovered:
    """The tenant's scopes: projects x enterprise projects x own_type views, in a stable order,
    fetched one query each or as single passes per project (:mod:`crawler.pipeline.passes`)."""
    cfg = services.config
    ep_cfg = cfg.enterprise_projects
    # One after the other, not at once: a refused credential then costs one refused request, not
    # two (AK/SK keys lock after five bad signatures).
    projects, skipped, requests = await _projects(services)
    eps, eps_requests = await _enterprise_project_ids(services)
    requests += eps_requests
    regions = list(cfg.regions)
    single_region = len(regions) == 1 and not cfg.region_globs

    asked_iam_or_eps = not (cfg.projects.ids and single_region) or ep_cfg.mode == "discover"
    if not asked_iam_or_eps and projects:
        requests += 1
        await _check_credential(services, projects[0][0], projects[0][1])

    filters = tuple(cfg.filters.to_query())
    scopes = [
        Scope(services.name, region, pid, name, ep, own_type, filters)
        for region, pid, name in projects
        for ep in eps
        for own_type in cfg.own_types
    ]
    plan = choose_plan(cfg.plan, cfg.own_types, ep_cfg.mode, len(eps), filters)
    if plan.single_pass and ep_cfg.mode in ("ids", "discover") and projects:
        probed = await _probe_enterprise_projects(services, projects[0][0], projects[0][1], eps)
        plan = probed if isinstance(probed, PlanChoice) else dataclasses.replace(plan, probes=probed)
    if plan.single_pass:
        scopes = group_into_passes(scopes, ep_cfg.mode)
    crawled = tuple(dict.fromkeys(region for region, _, _ in projects))
    crawled_regions = crawled if cfg.region_globs else tuple(cfg.regions)
    return Discovered(scopes, plan, crawled_regions, tuple(skipped), requests + plan.probes)


async def _probe_enterprise_projects(
    services: TenantServices, region: str, project_id: str, eps: Sequence[str | None]
) -> PlanChoice | int:
    """Before a single pass over ``all_granted_eps``: is every enterprise project asked granted?

    ``all_granted_eps`` returns the EPs the caller is granted and says nothing of the others, so a
    refused EP would come out empty and "complete". One ``limit=1`` query per EP, all at once (EP
    grants are the user's, not a project's, so one project tells) finds a refusal; the plan then
    falls back to one query per scope, which reports it scope by scope. An int: every EP answered
    (that many probes).
    """
    asked = [ep for ep in eps if ep is not None]

    async def probe(ep: str) -> PlanChoice | None:
        query = [("own_type", "all_granted"), ("enterprise_project_id", ep), ("limit", "1")]
        request = list_backups_request(services.cbr_endpoint(region), project_id, query)
        try:
            await services.client.send(request, services.auth, services.cbr_limiter(region))
        except AuthFailedError:
            raise
        except ApiError as exc:
            if exc.status in (401, 403):
                return refused_plan(ep, f"{exc.code or exc.status}, request id {exc.request_id}", len(asked))
            return PlanChoice(
                False, f"could not check enterprise project {ep} ({exc}): one query per scope", len(asked)
            )
        except CrawlerError as exc:
            return PlanChoice(
                False, f"could not check enterprise project {ep} ({exc}): one query per scope", len(asked)
            )
        return None

    answers = await asyncio.gather(*(probe(ep) for ep in asked))
    return next((a for a in answers if a is not None), len(asked))


async def _check_credential(services: TenantServices, region: str, project_id: str) -> None:
    """One small ListBackups call before the scopes fan out, when discovery asked nothing.

    Without it a refused credential would be refused once per request in flight: as many
    errors, and with AK/SK as many signature failures, which lock the key for everyone after
    five. Only a refused credential (:class:`AuthFailedError`) stops the tenant; any other
    error is left for the scopes to meet and report.
    """
    request = list_backups_request(services.cbr_endpoint(region), project_id, [("limit", "1")])
    try:
        await services.client.send(request, services.auth, services.cbr_limiter(region))
    except AuthFailedError:
        raise
    except CrawlerError as exc:
        log.debug("tenant %s: credential check inconclusive: %s", services.name, exc)


async def discover_tenant(
    config: TenantConfig, client: ApiClient, limiters: LimiterRegistry
) -> TenantCrawl | TenantFailure:
    """One tenant's crawl (its services and scopes), or why it cannot be crawled at all."""
    name = config.name
    try:
        services = TenantServices(config, client, limiters)
    except CrawlerError as exc:  # a secret that can't be read fails its tenant only
        log.error("tenant %s: %s", name, exc)
        return TenantFailure(name, "credentials", str(exc))
    try:
        discovered = await discover_scopes(services)
    except AuthFailedError as exc:
        error = CredentialRefused(name, services.auth.description, exc)
        log.error("%s", error)
        return TenantFailure(name, "discovery", str(error), exc.code, exc.request_id)
    except CrawlerError as exc:
        log.error("tenant %s: discovery failed: %s", name, exc)
        return TenantFailure(
            name,
            "discovery",
            f"tenant {name}: discovery failed: {exc}",
            getattr(exc, "code", None),
            getattr(exc, "request_id", None),
        )
    scopes = discovered.scopes
    partitions = sum(len(s.members) for s in scopes)
    log.info(
        "tenant %s: %d scopes to crawl in %d queries (%s: %s); regions %s",
        name,
        partitions,
        len(scopes),
        discovered.plan.name,
        discovered.plan.reason,
        ", ".join(discovered.regions),
    )
    return TenantCrawl(
        name=name,
        auth=services.auth,
        scopes=scopes,
        plan=discovered.plan,
        regions=discovered.regions,
        regions_skipped=discovered.regions_skipped,
        discovery_requests=discovered.requests,
        client=services.client,
        cbr_endpoint=services.cbr_endpoint,
        cbr_limiter=services.cbr_limiter,
        concurrency=config.rate_limit.concurrency,
        page_size=config.rate_limit.page_size,
        layout=config.output.layout,
        compression=config.output.compression,
        scope_deadline=config.timeouts.scope,
    )


async def discover_tenants(
    tenants: Sequence[TenantConfig], client: ApiClient, limiters: LimiterRegistry
) -> tuple[list[TenantCrawl], list[TenantFailure]]:
    """Discover every tenant concurrently; a tenant that fails discovery fails alone."""
    outcomes = await asyncio.gather(*(discover_tenant(cfg, client, limiters) for cfg in tenants))
    crawls = sorted((o for o in outcomes if isinstance(o, TenantCrawl)), key=lambda c: c.name)
    return crawls, [o for o in outcomes if isinstance(o, TenantFailure)]
