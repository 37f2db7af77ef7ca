"""The emulator's aiohttp application: IAM, EPS, CBR and the ``/_emulator/*`` control routes.

One application serves every service, as one loopback port stands for all endpoints. The
gateway middleware (:mod:`crawler.emulator.gateway`) wraps every route: request ids, throttling,
faults, counters. Handlers authenticate through :class:`crawler.emulator.identity.Identity`.

Routes (names are what throttle and fault selectors match):

=====================  ======================================  ======================
name                   route                                   auth
=====================  ======================================  ======================
iam.tokens             POST /v3/auth/tokens                    body (password), token (assume_role)
iam.auth_projects      GET  /v3/auth/projects                  token or AK/SK
iam.projects           GET  /v3/projects                       token or AK/SK
iam.auth_domains       GET  /v3/auth/domains                   token or AK/SK
iam.securitytokens     POST /v3.0/OS-CREDENTIAL/securitytokens token (header, or token.id in body)
eps.list               GET  /v1.0/enterprise-projects          domain-scoped token or AK/SK
cbr.list_backups       GET  /v3/{project_id}/backups           project-scoped token or AK/SK
emulator.truth         GET  /_emulator/truth                   none (NDJSON ground truth)
emulator.stats         GET  /_emulator/stats                   none
emulator.scenario      GET  /_emulator/scenario                none (secrets masked)
=====================  ======================================  ======================

Unknown project on the CBR route: with a token it is "a token of another project" (the
``wrong_project_token_status`` switch: 401 APIGW.0307 or 403 APIGW.0302); with AK/SK the project
must belong to the key's domain, else 401 APIGW.0301. A disabled project gives 403 APIGW.0310.
A domain-scoped token on the CBR route counts as a token of another project.

In ``/_emulator/stats`` a connection reset by the ``reset`` fault is counted as status 499.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from crawler.emulator.estate import EnterpriseProject, Estate, Project
from crawler.emulator.gateway import Gateway, GatewayError, add_request_id_on_prepare, json_response
from crawler.emulator.identity import Caller, Identity, KeystoneError, Principal, RequestView
from crawler.emulator.query import ALL_GRANTED_EPS, Behaviour, QueryError, parse_list_backups_query
from crawler.emulator.scenario import Scenario

MSG_EP_FORBIDDEN = (
    "The IAM user is not authorized to access the API: no permission on enterprise project {ep}."
)

log = logging.getLogger(__name__)

_TRUTH_CHUNK = 256 * 1024


@dataclass
class EmulatorState:
    """Everything the handlers share; one per application."""

    scenario: Scenario
    estate: Estate
    identity: Identity
    gateway: Gateway
    behaviour: Behaviour
    # Held while churn mutates the estate and while the truth is streamed, so that the truth
    # export is a snapshot of one instant.
    estate_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


STATE_KEY = web.AppKey("emulator_state", EmulatorState)


def create_app(
    scenario: Scenario | None = None,
    *,
    estate: Estate | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    """Build the application. ``clock`` (wall time) drives token/signature expiry, ``monotonic`` throttles."""
    scenario = scenario or Scenario()
    estate = estate or Estate.generate(scenario.estate)
    identity = Identity(
        estate,
        scenario.identity,
        seed=scenario.seed,
        wrong_project_token_status=scenario.behaviour.wrong_project_token_status,
        clock=clock,
    )
    gateway = Gateway.build(
        scenario.throttle,
        scenario.faults,
        seed=scenario.seed,
        retry_after_header=scenario.behaviour.retry_after,
        user_of=lambda request: identity.user_of(request.headers),
        clock=monotonic,
    )
    state = EmulatorState(scenario, estate, identity, gateway, scenario.behaviour.query_behaviour())
    app = web.Application(middlewares=[gateway.middleware()])
    app[STATE_KEY] = state
    app.on_response_prepare.append(add_request_id_on_prepare)
    app.cleanup_ctx.append(_churn_ctx)
    router = app.router
    router.add_post("/v3/auth/tokens", _issue_token, name="iam.tokens")
    router.add_get("/v3/auth/projects", _auth_projects, name="iam.auth_projects")
    router.add_get("/v3/projects", _list_projects, name="iam.projects")
    router.add_get("/v3/auth/domains", _auth_domains, name="iam.auth_domains")
    router.add_post("/v3.0/OS-CREDENTIAL/securitytokens", _security_token, name="iam.securitytokens")
    router.add_get("/v1.0/enterprise-projects", _list_enterprise_projects, name="eps.list")
    router.add_get("/v3/{project_id}/backups", _list_backups, name="cbr.list_backups")
    router.add_get("/_emulator/truth", _truth, name="emulator.truth")
    router.add_get("/_emulator/stats", _stats, name="emulator.stats")
    router.add_get("/_emulator/scenario", _scenario, name="emulator.scenario")
    return app


def _state(request: web.Request) -> EmulatorState:
    return request.app[STATE_KEY]


async def _view(request: web.Request) -> RequestView:
    body = await request.read() if request.can_read_body else b""
    return RequestView(
        method=request.method,
        path=request.rel_url.raw_path,
        query_string=request.rel_url.raw_query_string,
        headers=request.headers,
        body=body,
    )


def _keystone(exc: KeystoneError) -> web.Response:
    return json_response(exc.status, exc.body())


# -- IAM ---------------------------------------------------------------------------------------------


async def _issue_token(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    try:
        token, body = state.identity.issue_token(await request.read(), request.headers.get("X-Auth-Token"))
    except KeystoneError as exc:
        return _keystone(exc)
    return json_response(201, body, {"X-Subject-Token": token.value})


async def _security_token(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    token = request.headers.get("X-Auth-Token")
    signed_by = None
    if token is None and "Authorization" in request.headers:
        # AK/SK-signed (what the SDK does): the gateway verifies the signature first.
        signed_by = state.identity.authenticate(await _view(request)).principal
    try:
        body = state.identity.issue_security_token(await request.read(), token, signed_by)
    except KeystoneError as exc:
        return _keystone(exc)
    return json_response(201, body)


async def _iam_principal(request: web.Request) -> Principal:
    """IAM read APIs take a token (Keystone errors) or an AK/SK signature (gateway errors)."""
    identity = _state(request).identity
    if "X-Auth-Token" in request.headers:
        return identity.token_principal(request.headers["X-Auth-Token"])
    return identity.authenticate(await _view(request)).principal


def _project_body(base: str, project: Project) -> dict[str, Any]:
    return {
        "id": project.id,
        "name": project.name,
        "domain_id": project.domain_id,
        "parent_id": project.parent_id,
        "enabled": project.enabled,
        "is_domain": False,
        "description": "",
        "links": {"self": f"{base}/v3/projects/{project.id}"},
    }


async def _auth_projects(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    try:
        principal = await _iam_principal(request)
    except KeystoneError as exc:
        return _keystone(exc)
    base = str(request.url.origin())
    projects = [_project_body(base, p) for p in state.identity.projects_of(principal.domain.id)]
    return json_response(200, {"links": {"self": f"{base}/v3/auth/projects"}, "projects": projects})


async def _auth_domains(request: web.Request) -> web.StreamResponse:
    """The caller's own domain; the official SDK asks this to fill in a missing domain id."""
    try:
        principal = await _iam_principal(request)
    except KeystoneError as exc:
        return _keystone(exc)
    base = str(request.url.origin())
    domain = principal.domain
    body = {
        "id": domain.id,
        "name": domain.name,
        "enabled": True,
        "description": "",
        "links": {"self": f"{base}/v3/domains/{domain.id}"},
    }
    return json_response(200, {"domains": [body], "links": {"self": f"{base}/v3/auth/domains"}})


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise KeystoneError(400, f"Invalid input for field '{name}': {raw!r} is not an integer.") from None
    if not low <= value <= high:
        raise KeystoneError(400, f"Invalid input for field '{name}': must be between {low} and {high}.")
    return value


async def _list_projects(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    try:
        principal = await _iam_principal(request)
        page = _int_param(request, "page", 1, 1, 1_000_000)
        per_page = _int_param(request, "per_page", 5000, 1, 5000)
    except KeystoneError as exc:
        return _keystone(exc)
    query = request.query
    projects = state.identity.projects_of(principal.domain.id)
    if "domain_id" in query and query["domain_id"] != principal.domain.id:
        projects = []
    if "name" in query:
        projects = [p for p in projects if p.name == query["name"]]
    if "parent_id" in query:
        projects = [p for p in projects if p.parent_id == query["parent_id"]]
    if "enabled" in query:
        enabled = query["enabled"].lower() == "true"
        projects = [p for p in projects if p.enabled == enabled]
    paged = "page" in query or "per_page" in query
    start = (page - 1) * per_page if paged else 0
    selected = projects[start : start + per_page] if paged else projects
    base = str(request.url.origin())
    self_url = str(request.url)
    links: dict[str, str | None] = {"self": self_url, "previous": None, "next": None}
    if paged:
        url = request.url
        if page > 1:
            links["previous"] = str(url.update_query(page=page - 1, per_page=per_page))
        if start + per_page < len(projects):
            links["next"] = str(url.update_query(page=page + 1, per_page=per_page))
    return json_response(200, {"links": links, "projects": [_project_body(base, p) for p in selected]})


# -- EPS ---------------------------------------------------------------------------------------------


def _eps_error(message: str) -> GatewayError:
    return GatewayError(400, "EPS.0004", message, with_request_id=False)


def _ep_body(ep: EnterpriseProject) -> dict[str, Any]:
    return {
        "id": ep.id,
        "name": ep.name,
        "description": ep.description,
        "status": ep.status,
        "type": ep.type,
        "created_at": ep.created_at,
        "updated_at": ep.updated_at,
    }


def _eps_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _eps_error(f"Invalid parameter {name}: {raw!r}") from None
    if not low <= value <= high:
        raise _eps_error(f"Invalid parameter {name}: must be between {low} and {high}")
    return value


async def _list_enterprise_projects(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    caller: Caller = state.identity.authenticate(await _view(request), domain_scope=True)
    limit = _eps_int(request, "limit", 1000, 1, 1000)
    offset = _eps_int(request, "offset", 0, 0, 1 << 31)
    query = request.query
    eps = list(state.estate.enterprise_projects.get(caller.domain.id, []))
    if caller.granted_eps is not None:
        eps = [ep for ep in eps if ep.id in caller.granted_eps]
    if "status" in query:
        status = _eps_int(request, "status", 1, 1, 2)
        eps = [ep for ep in eps if ep.status == status]
    if "id" in query:
        eps = [ep for ep in eps if ep.id == query["id"]]
    if "type" in query:
        eps = [ep for ep in eps if ep.type == query["type"]]
    if query.get("name"):
        needle = query["name"].lower()
        eps = [ep for ep in eps if needle in ep.name.lower()]  # fuzzy: substring, case-insensitive
    sort_key = query.get("sort_key", "created_at")
    sort_dir = query.get("sort_dir", "desc")
    if sort_key not in ("created_at", "name") or sort_dir not in ("asc", "desc"):
        raise _eps_error("Invalid parameter sort_key/sort_dir")
    eps.sort(key=lambda ep: (getattr(ep, sort_key), ep.id), reverse=sort_dir == "desc")
    page = eps[offset : offset + limit]
    return json_response(200, {"enterprise_projects": [_ep_body(ep) for ep in page], "total_count": len(eps)})


# -- CBR ---------------------------------------------------------------------------------------------


async def _list_backups(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    project_id = request.match_info["project_id"]
    caller = state.identity.authenticate(await _view(request), project_id=project_id)
    try:
        query = parse_list_backups_query(request.query, behaviour=state.behaviour)
        ep = query.enterprise_project_id
        if (
            caller.granted_eps is not None
            and ep not in (None, ALL_GRANTED_EPS)
            and ep not in caller.granted_eps
        ):
            # An IAM policy that grants some enterprise projects only: naming another one is a
            # permission failure, not an empty result.
            raise GatewayError(403, "APIGW.0302", MSG_EP_FORBIDDEN.format(ep=ep))
        # A bad marker (or a rejected limit) is only found against the data.
        body = state.estate.list_backups(
            project_id, query, granted_eps=caller.granted_eps, behaviour=state.behaviour
        )
    except QueryError as exc:
        raise GatewayError(400, "BackupService.9900", exc.message, with_request_id=False) from None
    return web.Response(body=body, content_type="application/json")


# -- control -----------------------------------------------------------------------------------------


async def _truth(request: web.Request) -> web.StreamResponse:
    """NDJSON of the estate's ground truth, optionally filtered; a snapshot (churn waits)."""
    state = _state(request)
    filters = {
        k: request.query[k] for k in ("project_id", "own_type", "enterprise_project_id") if k in request.query
    }
    response = web.StreamResponse(status=200)
    response.content_type = "application/x-ndjson"
    await response.prepare(request)
    async with state.estate_lock:
        buffer = bytearray()
        for line in state.estate.export_truth():
            if filters:
                record = orjson.loads(line)
                if any(str(record.get(k)) != v for k, v in filters.items()):
                    continue
            buffer += line if line.endswith(b"\n") else line + b"\n"
            if len(buffer) >= _TRUTH_CHUNK:
                await response.write(bytes(buffer))
                buffer.clear()
        if buffer:
            await response.write(bytes(buffer))
    await response.write_eof()
    return response


async def _stats(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    body = state.gateway.stats.to_dict()
    body["backup_count"] = state.estate.backup_count
    return json_response(200, body)


async def _scenario(request: web.Request) -> web.StreamResponse:
    return json_response(200, _state(request).scenario.masked())


# -- churn -------------------------------------------------------------------------------------------


async def _churn_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE_KEY]
    task = asyncio.create_task(_churn_loop(state)) if state.scenario.churn.active else None
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _churn_loop(state: EmulatorState) -> None:
    """Create and delete backups at the configured rates; fractions carry over between ticks."""
    spec = state.scenario.churn
    loop = asyncio.get_running_loop()
    last = loop.time()
    due_creates = due_deletes = 0.0
    while True:
        await asyncio.sleep(spec.tick_seconds)
        now = loop.time()
        elapsed, last = now - last, now
        due_creates += spec.creates_per_second * elapsed
        due_deletes += spec.deletes_per_second * elapsed
        creates, deletes = int(due_creates), int(due_deletes)
        due_creates -= creates
        due_deletes -= deletes
        if creates or deletes:
            async with state.estate_lock:
                state.estate.churn(creates, deletes)
            state.gateway.stats.churn_created += creates
            state.gateway.stats.churn_deleted += deletes


__all__ = ["STATE_KEY", "EmulatorState", "create_app"]
