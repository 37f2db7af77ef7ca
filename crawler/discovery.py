"""Discovery: the projects (IAM) and enterprise projects (EPS) of a tenant.

Both are global questions asked with a domain-scoped credential. Projects come from
``GET /v3/auth/projects`` (every project the caller can access, all regions, no paging); a region's
projects are the one named exactly after the region and its ``<region>_<name>`` sub-projects. The
special ``MOS`` project (billing) is always skipped. Enterprise projects come from
``GET /v1.0/enterprise-projects``, paged with ``limit``/``offset`` until ``total_count``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from crawler.client import ApiClient, ApiRequest, Authenticator
from crawler.errors import BadResponseError
from crawler.ratelimit import QuotaLimiter

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
    """The region a project belongs to, by Huawei's naming rule, or None."""
    for region in regions:
        if project_name == region or project_name.startswith(region + "_"):
            return region
    return None


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
) -> list[Project]:
    """The tenant's enabled projects in ``regions`` matching the name patterns, sorted by region, name."""
    request = ApiRequest(service="iam", method="GET", base_url=iam_base_url, path="/v3/auth/projects")
    response = await client.send(request, auth, limiter)
    data = response.data
    if not isinstance(data, dict) or not isinstance(data.get("projects"), list):
        raise BadResponseError("IAM projects answer has no 'projects' list", request_id=response.request_id)
    found: list[Project] = []
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
        region = region_of(name, regions)
        if region is None or not matches(name, include, exclude):
            continue
        found.append(Project(item["id"], name, region))
    found.sort(key=lambda p: (regions.index(p.region), p.name))
    return found


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
