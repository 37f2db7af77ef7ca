"""The emulator speaks the real protocol: the official Huawei Cloud SDK (3.1.219) against it, on loopback.

A client nobody here wrote signs, sends and deserialises every request: ``huaweicloudsdkcbr``
``ListBackups`` (paged, filtered, sorted, permanent and temporary AK/SK), ``huaweicloudsdkiam``
(password token, temporary AK/SK, project lists) and ``huaweicloudsdkeps`` (enterprise projects).
Every answer is compared with the estate's ground truth, field by field through the SDK's models.

Without python-dateutil the SDK warns (``ImportWarning``) and keeps timestamps as the strings the
API sent; with it (botocore brings it) it fails to parse the API's ``+00:00`` stamps, warns
(``TypeConversionWarning``, ignored in pyproject.toml) and keeps the string as well. Both warnings are
ignored here; the comparison accepts strings and datetimes.
``tests/conftest.py`` points HOME at a temporary directory before the SDK is imported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import huaweicloudsdkcbr.v1.model as cbr_model  # type: ignore[import-untyped]
import huaweicloudsdkcore.signer.signer as sdk_signer  # type: ignore[import-untyped]
import pytest
from huaweicloudsdkcbr.v1 import CbrClient, ListBackupsRequest
from huaweicloudsdkcore.auth.credentials import BasicCredentials, GlobalCredentials  # type: ignore[import-untyped]
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException  # type: ignore[import-untyped]
from huaweicloudsdkcore.http.http_handler import HttpHandler  # type: ignore[import-untyped]
from huaweicloudsdkcore.region.region import Region  # type: ignore[import-untyped]
from huaweicloudsdkeps.v1 import EpsClient, ListEnterpriseProjectRequest  # type: ignore[import-untyped]
from huaweicloudsdkiam.v3 import (  # type: ignore[import-untyped]
    AgencyAuth,
    AgencyAuthIdentity,
    AuthScope,
    AuthScopeProject,
    CreateTemporaryAccessKeyByAgencyRequest,
    CreateTemporaryAccessKeyByAgencyRequestBody,
    CreateTemporaryAccessKeyByTokenRequest,
    CreateTemporaryAccessKeyByTokenRequestBody,
    IamClient,
    IdentityAssumerole,
    IdentityToken,
    KeystoneCreateUserTokenByPasswordRequest,
    KeystoneCreateUserTokenByPasswordRequestBody,
    KeystoneListAuthProjectsRequest,
    KeystoneListProjectsRequest,
    PwdAuth,
    PwdIdentity,
    PwdPassword,
    PwdPasswordUser,
    PwdPasswordUserDomain,
    TokenAuth,
    TokenAuthIdentity,
)

from crawler.emulator.estate import EnterpriseProject, Project
from crawler.emulator.scenario import Scenario
from crawler.emulator.server import EmulatorThread

# The official SDK against the emulator over real sockets: end-to-end (pytest -m "not e2e" skips).
pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::ImportWarning")]

REGION = "cn-north-4"
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
AUDITOR_AK = "SDKAUDITORAK00000001"
PROBE_AK = "SDKPROBEAK0000000001"
LOCKEE_AK = "SDKLOCKEEAK000000001"

# One region concentrates the backups (and the shares, which stay within a region) in few projects:
# the biggest acme project holds well over one 1000-record page. globex is there to be kept apart.
SCENARIO = Scenario.model_validate(
    {
        "seed": 20240611,
        "estate": {
            "regions": [REGION],
            "domains": [
                {"name": "acme", "backups": 3000, "shared_fraction": 0.3, "enterprise_projects": 3},
                {"name": "globex", "backups": 200, "enterprise_projects": 1},
            ],
        },
        "identity": {
            "agencies": [{"domain": "globex", "name": "cbr-inventory", "trusted_domain": "acme"}],
            "users": [
                # Local test values, not secrets of anything real.
                {
                    "name": "auditor",
                    "domain": "acme",
                    "password": "auditor-test-password",
                    "ak": AUDITOR_AK,
                    "sk": "SdkAuditorSecretKey000000000000000000000",
                    "enterprise_projects": ["default"],
                },
                # Negative tests use their own keys: failed signatures count towards an AK lock-out.
                {
                    "name": "probe",
                    "domain": "acme",
                    "password": "probe-test-password",
                    "ak": PROBE_AK,
                    "sk": "SdkProbeSecretKey00000000000000000000000",
                },
                {
                    "name": "lockee",
                    "domain": "acme",
                    "password": "lockee-test-password",
                    "ak": LOCKEE_AK,
                    "sk": "SdkLockeeSecretKey0000000000000000000000",
                },
            ],
        },
    }
)


@dataclass(frozen=True)
class Keys:
    """A user's login and permanent AK/SK; the secrets stay out of ``repr`` (assertion messages)."""

    user: str
    domain_id: str
    domain_name: str
    ak: str
    sk: str = field(repr=False)
    password: str = field(repr=False)


@dataclass(frozen=True)
class World:
    """What the tests need to know about the running emulator, read once on its own loop."""

    url: str
    keys: Mapping[str, Keys]  # by user name
    projects: Mapping[str, Project]
    eps: Mapping[str, Sequence[EnterpriseProject]]  # by domain id
    big: Project  # the acme project with the most private backups
    truth: Mapping[str, list[dict[str, Any]]]  # own_type -> records of `big`, default order
    emu: EmulatorThread = field(repr=False)

    def truth_ids(self, own_type: str, ep: str | None = None) -> set[str]:
        pid = self.big.id
        return self.emu.call(lambda: self.emu.estate.truth_ids(pid, own_type, ep))


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with EmulatorThread(SCENARIO) as emu:

        def snapshot() -> World:
            estate, identity = emu.estate, emu.server.identity
            keys = {}
            for record in identity.credentials():
                principal = record.principal
                assert record.access_key is not None and record.secret_key is not None
                keys[principal.name] = Keys(
                    principal.name,
                    principal.domain.id,
                    principal.domain.name,
                    record.access_key,
                    record.secret_key,
                    record.password,
                )
            acme = estate.domain_by_name("acme")
            assert acme is not None
            big = max(
                (p for p in estate.projects.values() if p.domain_id == acme.id),
                key=lambda p: len(estate.truth_ids(p.id)),
            )
            truth = {kind: estate.truth(big.id, kind) for kind in ("private", "shared", "all_granted")}
            return World(
                emu.url,
                keys,
                dict(estate.projects),
                {d: list(eps) for d, eps in estate.enterprise_projects.items()},
                big,
                truth,
                emu,
            )

        yield emu.call(snapshot)


# --- SDK helpers -------------------------------------------------------------------------------------


def cbr_client(world: World, ak: str, sk: str, project_id: str, security_token: str | None = None) -> Any:
    credentials = BasicCredentials(ak, sk, project_id)
    if security_token is not None:
        credentials = credentials.with_security_token(security_token)
    return CbrClient.new_builder().with_credentials(credentials).with_endpoints([world.url]).build()


def client_for(world: World, user: str, project_id: str | None = None) -> Any:
    keys = world.keys[user]
    return cbr_client(world, keys.ak, keys.sk, project_id or world.big.id)


def global_credentials(keys: Keys) -> Any:
    return GlobalCredentials(keys.ak, keys.sk, keys.domain_id)


def iam_client(world: World, keys: Keys) -> Any:
    return (
        IamClient.new_builder().with_credentials(global_credentials(keys)).with_endpoints([world.url]).build()
    )


def list_all(client: Any, limit: int, **params: Any) -> tuple[list[Any], int]:
    """Page ListBackups with limit/offset until a short page, as the Terraform provider does.

    ``count`` is the total number of matches on every page, so it must not change between pages.
    """
    backups: list[Any] = []
    counts: set[int] = set()
    offset = 0
    while True:
        response = client.list_backups(ListBackupsRequest(limit=limit, offset=offset, **params))
        assert isinstance(response, cbr_model.ListBackupsResponse)
        counts.add(response.count)
        backups.extend(response.backups)
        if len(response.backups) < limit:
            break
        offset += limit
    assert len(counts) == 1, f"count changed between pages: {counts}"
    return backups, counts.pop()


def instant(value: str) -> datetime:
    """A record's timestamp (naive ISO means UTC, or with an offset) as an aware datetime."""
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def mismatches(sdk_value: Any, raw: Any, type_name: str, path: str) -> list[str]:
    """Where the SDK's deserialised value differs from the raw JSON value, walking the SDK's own schema.

    ``type_name`` is the SDK's type string (``str``, ``list[BackupResp]``, ``datetime``...). Keys the
    SDK model lacks are not compared (the SDK drops them); keys the JSON lacks must be ``None``.
    """
    if raw is None or sdk_value is None:
        return [] if raw is None and sdk_value is None else [f"{path}: sdk {sdk_value!r} != api {raw!r}"]
    if type_name.startswith("list["):
        inner = type_name[5:-1]
        if not isinstance(sdk_value, list) or len(sdk_value) != len(raw):
            return [f"{path}: sdk list {sdk_value!r} != api list of {len(raw)}"]
        out: list[str] = []
        for k, (item, raw_item) in enumerate(zip(sdk_value, raw, strict=True)):
            out += mismatches(item, raw_item, inner, f"{path}[{k}]")
        return out
    if type_name in ("datetime", "date"):
        # Without python-dateutil the SDK keeps the string; with it, a datetime (or a date).
        if isinstance(sdk_value, str):
            same = sdk_value == raw
        elif isinstance(sdk_value, datetime):
            same = sdk_value == instant(raw)
        else:
            same = isinstance(sdk_value, date) and sdk_value == instant(raw).date()
        return [] if same else [f"{path}: sdk {sdk_value!r} != api {raw!r}"]
    if type_name in ("str", "int", "bool"):
        kind = {"str": str, "int": int, "bool": bool}[type_name]
        ok = type(sdk_value) is kind and sdk_value == raw
        return [] if ok else [f"{path}: sdk {sdk_value!r} != api {raw!r}"]
    klass = getattr(cbr_model, type_name)
    if not isinstance(sdk_value, klass) or not isinstance(raw, dict):
        return [f"{path}: sdk {type(sdk_value).__name__} for api {type(raw).__name__}, wanted {type_name}"]
    out = []
    for attr, attr_type in klass.openapi_types.items():
        out += mismatches(
            getattr(sdk_value, attr), raw.get(klass.attribute_map[attr]), attr_type, f"{path}.{attr}"
        )
    return out


# --- 1. ListBackups paged to the end, against the truth filtered the same way -----------------------

Record = dict[str, Any]


@dataclass(frozen=True)
class Case:
    """One ListBackups scenario: SDK request parameters and the same selection in Python."""

    params: dict[str, Any]
    keep: Callable[[Record], bool]
    limit: int = 1000
    user: str = "acme-admin"
    # The order the API must return: keys (field, descending), ``id`` tie-break added as the API does.
    order: tuple[tuple[str, bool], ...] | None = None


def expected_order(records: list[Record], spec: tuple[tuple[str, bool], ...]) -> list[str]:
    """Ids in the order ``sort=spec`` asks for: stable sorts from the least significant key.

    Ties are broken by ``id`` in the direction of the last key; a null sorts first ascending and
    last descending (the emulator's documented choice).
    """
    if all(name != "id" for name, _ in spec):
        spec = (*spec, ("id", spec[-1][1]))
    ordered = list(records)
    for name, descending in reversed(spec):

        def key(record: Record, name: str = name) -> tuple[bool, Any]:
            value = record[name]
            if value is not None and name.endswith("_at"):
                value = instant(value)
            return (value is not None, value)

        ordered.sort(key=key, reverse=descending)
    return [r["id"] for r in ordered]


def _second(value: str) -> str:
    return instant(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_cases(world: World) -> dict[str, tuple[str, Case]]:
    """Cases by name: (own_type, case). Values (EPs, times, names) come from the generated estate."""
    private = world.truth["private"]
    eps_seen = sorted({r["enterprise_project_id"] for r in private if r["enterprise_project_id"] != "0"})
    ep = eps_seen[0]
    by_time = sorted(private, key=lambda r: instant(r["created_at"]))
    start, end = (
        _second(by_time[len(by_time) // 4]["created_at"]),
        _second(by_time[len(by_time) // 2]["created_at"]),
    )
    lo, hi = instant(start), instant(end)
    non_ascii = next(r["name"] for r in private if not r["name"].isascii())
    sample = private[len(private) // 3]
    vault, az = sample["vault_id"], sample["resource_az"]
    resource, checkpoint = private[7]["resource_id"], private[7]["checkpoint_id"]
    vault_pct = world.emu.call(lambda: {v.id: v.used_percent for v in world.emu.estate.vaults.values()})

    def between(r: Record) -> bool:
        return lo <= instant(r["created_at"]) <= hi

    return {
        "private": ("private", Case({}, lambda r: True, order=(("created_at", True),))),
        "shared": ("shared", Case({"own_type": "shared"}, lambda r: True, limit=50)),
        "all_granted": ("all_granted", Case({"own_type": "all_granted"}, lambda r: True)),
        "status_list": (
            "private",
            Case({"status": ["available", "error"]}, lambda r: r["status"] in ("available", "error")),
        ),
        "resource_type": (
            "private",
            Case(
                {"resource_type": "OS::Cinder::Volume"},
                lambda r: r["resource_type"] == "OS::Cinder::Volume",
                limit=200,
            ),
        ),
        "image_type": (
            "all_granted",
            Case(
                {"own_type": "all_granted", "image_type": "replication"},
                lambda r: r["image_type"] == "replication",
                limit=20,
            ),
        ),
        "time_window": ("private", Case({"start_time": start, "end_time": end}, between, limit=250)),
        "sort_name_asc": (
            "private",
            Case({"sort": "name:asc"}, lambda r: True, limit=500, order=(("name", False),)),
        ),
        "sort_multi": (
            "all_granted",
            Case(
                {"own_type": "all_granted", "sort": "status:asc,protected_at:desc"},
                lambda r: True,
                order=(("status", False), ("protected_at", True)),
            ),
        ),
        "enterprise_project": (
            "private",
            Case({"enterprise_project_id": ep}, lambda r: r["enterprise_project_id"] == ep, limit=200),
        ),
        "default_ep": (
            "private",
            Case({"enterprise_project_id": "0"}, lambda r: r["enterprise_project_id"] == "0", limit=300),
        ),
        "all_granted_eps_admin": (
            "all_granted",
            Case({"own_type": "all_granted", "enterprise_project_id": "all_granted_eps"}, lambda r: True),
        ),
        "all_granted_eps_auditor": (
            "all_granted",
            Case(
                {"own_type": "all_granted", "enterprise_project_id": "all_granted_eps"},
                lambda r: r["enterprise_project_id"] == "0",
                user="auditor",
            ),
        ),
        "show_replication_false": ("private", Case({"show_replication": False}, lambda r: True)),
        "non_ascii_name": ("private", Case({"name": non_ascii}, lambda r: r["name"] == non_ascii, limit=10)),
        "incremental_used_percent": (
            "private",
            Case(
                {"incremental": False, "used_percent": "50"},
                lambda r: r["incremental"] is False and vault_pct[r["vault_id"]] >= 50,
                limit=300,
            ),
        ),
        "vault_and_az": (
            "private",
            Case(
                {"vault_id": vault, "resource_az": az},
                lambda r: r["vault_id"] == vault and r["resource_az"] == az,
                limit=100,
            ),
        ),
        "resource_and_checkpoint": (
            "private",
            Case(
                {"resource_id": resource, "checkpoint_id": checkpoint},
                lambda r: r["resource_id"] == resource and r["checkpoint_id"] == checkpoint,
            ),
        ),
        "combined": (
            "all_granted",
            Case(
                {
                    "own_type": "all_granted",
                    "status": ["available", "error"],
                    "resource_type": "OS::Nova::Server",
                    "start_time": start,
                    "enterprise_project_id": "all_granted_eps",
                    "sort": "created_at:asc",
                },
                lambda r: (
                    r["status"] in ("available", "error")
                    and r["resource_type"] == "OS::Nova::Server"
                    and instant(r["created_at"]) >= lo
                    and r["enterprise_project_id"] == "0"
                ),
                limit=100,
                user="auditor",
                order=(("created_at", False),),
            ),
        ),
    }


CASE_NAMES = [
    "private",
    "shared",
    "all_granted",
    "status_list",
    "resource_type",
    "image_type",
    "time_window",
    "sort_name_asc",
    "sort_multi",
    "enterprise_project",
    "default_ep",
    "all_granted_eps_admin",
    "all_granted_eps_auditor",
    "show_replication_false",
    "non_ascii_name",
    "incremental_used_percent",
    "vault_and_az",
    "resource_and_checkpoint",
    "combined",
]


@pytest.fixture(scope="module")
def cases(world: World) -> dict[str, tuple[str, Case]]:
    built = build_cases(world)
    assert sorted(built) == sorted(CASE_NAMES)
    return built


@pytest.mark.parametrize("name", CASE_NAMES)
def test_list_backups_paged_matches_truth(
    world: World, cases: dict[str, tuple[str, Case]], name: str
) -> None:
    """Paged with limit/offset to the end, the SDK gets exactly the truth, every record field-equal."""
    own_type, case = cases[name]
    truth = world.truth[own_type]
    expected = [r for r in truth if case.keep(r)]
    assert expected, f"case {name} selects nothing: it would prove little"

    backups, count = list_all(client_for(world, case.user), case.limit, **case.params)

    ids = [b.id for b in backups]
    assert len(ids) == len(set(ids)), "a record came twice"
    assert set(ids) == {r["id"] for r in expected}
    assert count == len(expected)
    if case.order is not None:
        assert ids == expected_order(expected, case.order)
    by_id = {r["id"]: r for r in truth}
    show_replication = case.params.get("show_replication", True)
    problems: list[str] = []
    for backup in backups:
        raw = dict(by_id[backup.id])
        if not show_replication:
            raw.pop("replication_records", None)
        problems += mismatches(backup, raw, "BackupResp", backup.id)
    assert problems == []


def test_truth_views_cover_pages_and_shares(world: World) -> None:
    """The estate chosen makes the paging tests meaningful: several pages, shares, several EPs."""
    assert len(world.truth["private"]) > 1000
    assert len(world.truth["shared"]) > 50
    assert world.truth_ids("all_granted") == world.truth_ids("private") | world.truth_ids("shared")
    assert len({r["enterprise_project_id"] for r in world.truth["private"]}) >= 2


def test_offset_past_the_end_and_count_is_the_total(world: World) -> None:
    client = client_for(world, "acme-admin")
    total = len(world.truth["private"])
    response = client.list_backups(ListBackupsRequest(limit=7, offset=3))
    assert response.count == total and [b.id for b in response.backups] == [
        r["id"] for r in world.truth["private"][3:10]
    ]
    response = client.list_backups(ListBackupsRequest(limit=1000, offset=total + 5))
    assert response.backups == [] and response.count == total
    # The published examples carry neither offset nor limit (the emulator's default behaviour).
    assert response.offset is None and response.limit is None


def list_by_marker(client: Any, limit: int, **params: Any) -> list[str]:
    """Page ListBackups with ``marker`` = id of the last record of the previous page."""
    ids: list[str] = []
    while True:
        marker = {"marker": ids[-1]} if ids else {}
        response = client.list_backups(ListBackupsRequest(limit=limit, **marker, **params))
        ids += [b.id for b in response.backups]
        if len(response.backups) < limit:
            return ids


@pytest.mark.parametrize(
    ("params", "keep", "order"),
    [
        ({}, lambda r: True, (("created_at", True),)),
        (
            {"sort": "name:asc", "status": ["available", "error"]},
            lambda r: r["status"] in ("available", "error"),
            (("name", False),),
        ),
    ],
    ids=["default-order", "filtered-by-name"],
)
def test_marker_paging_matches_truth(
    world: World, params: dict[str, Any], keep: Callable[[Record], bool], order: tuple[tuple[str, bool], ...]
) -> None:
    expected = expected_order([r for r in world.truth["private"] if keep(r)], order)
    assert list_by_marker(client_for(world, "acme-admin"), 400, **params) == expected


def test_children_of_a_server_backup(world: World) -> None:
    """``parent_id`` lists the disk backups nested in a server backup, as BackupResp models."""
    parent = next(r for r in world.truth["private"] if len(r["children"]) >= 2)
    backups, count = list_all(client_for(world, "acme-admin"), 1000, parent_id=parent["id"])
    children = {c["id"]: c for c in parent["children"]}
    assert count == len(children) and sorted(b.id for b in backups) == sorted(children)
    problems: list[str] = []
    for backup in backups:
        assert backup.parent_id == parent["id"]
        problems += mismatches(backup, children[backup.id], "BackupResp", backup.id)
    assert problems == []


def test_limit_over_1000_is_clamped_and_wire_details(world: World) -> None:
    """limit=5000 gives a 1000-record page (the default ``clamp`` switch); every answer has an X-Request-Id
    and the SDK's repeated ``status`` reaches the wire as ``status=available&status=error``."""
    seen: list[Any] = []
    keys = world.keys["acme-admin"]
    client = (
        CbrClient.new_builder()
        .with_credentials(BasicCredentials(keys.ak, keys.sk, world.big.id))
        .with_endpoints([world.url])
        .with_http_handler(HttpHandler().add_response_handler(lambda **kw: seen.append(kw["response"])))
        .build()
    )
    response = client.list_backups(ListBackupsRequest(limit=5000))
    assert len(response.backups) == 1000 and response.count == len(world.truth["private"])
    client.list_backups(ListBackupsRequest(limit=1, status=["error", "available"]))
    assert len(seen) == 2
    assert all(REQUEST_ID.match(r.headers.get("X-Request-Id", "")) for r in seen)
    assert "limit=1&status=available&status=error" in seen[1].request.url


def test_bad_parameter_is_a_cbr_error(world: World) -> None:
    client = client_for(world, "acme-admin")
    with pytest.raises(ClientRequestException) as caught:
        client.list_backups(ListBackupsRequest(sort="size:asc"))
    assert caught.value.status_code == 400
    assert caught.value.error_code == "BackupService.9900"
    assert REQUEST_ID.match(caught.value.request_id or "")


def test_auditor_naming_an_ungranted_ep_is_forbidden(world: World) -> None:
    other = next(ep.id for ep in world.eps[world.big.domain_id] if ep.id != "0")
    with pytest.raises(ClientRequestException) as caught:
        client_for(world, "auditor").list_backups(ListBackupsRequest(enterprise_project_id=other))
    assert (caught.value.status_code, caught.value.error_code) == (403, "APIGW.0302")


# --- 2. Every BackupResp field through the SDK's models ------------------------------------------------


ALWAYS_PRESENT = (
    "id",
    "checkpoint_id",
    "name",
    "project_id",
    "vault_id",
    "resource_id",
    "resource_name",
    "resource_az",
    "resource_type",
    "resource_size",
    "image_type",
    "status",
    "created_at",
    "updated_at",
    "provider_id",
    "extend_info",
)


def test_backup_resp_models_hold_every_field(world: World) -> None:
    """All records of the biggest view, deserialised by the SDK: nested models, nulls, odd timestamps."""
    backups, _ = list_all(client_for(world, "acme-admin"), 1000, own_type="all_granted")
    by_id = {r["id"]: r for r in world.truth["all_granted"]}
    assert {b.id for b in backups} == set(by_id)

    first = backups[0]
    assert isinstance(first, cbr_model.BackupResp)
    assert isinstance(first.extend_info, cbr_model.BackupExtendInfo)
    with_children = [b for b in backups if b.children]
    with_replication = [b for b in backups if b.replication_records]
    assert with_children and with_replication
    child = with_children[0].children[0]
    assert isinstance(child, cbr_model.BackupResp) and child.parent_id == with_children[0].id
    assert isinstance(child.extend_info, cbr_model.BackupExtendInfo)
    record = with_replication[0].replication_records[0]
    assert isinstance(record, cbr_model.ReplicationRecordGet)
    assert isinstance(record.extra_info, cbr_model.ReplicationRecordsExtraInfo)
    assert any(b.extend_info.os_images_data for b in backups)
    assert isinstance(
        next(b for b in backups if b.extend_info.os_images_data).extend_info.os_images_data[0],
        cbr_model.ImageData,
    )
    # The sample covers the awkward shapes: null description/expiry/protection, "+00:00" stamps,
    # non-ASCII names, every image type.
    raw = list(by_id.values())
    assert any(r["description"] is None for r in raw)
    assert any(r["expired_at"] is None for r in raw)
    assert any(r["protected_at"] is None for r in raw)
    assert any(r["created_at"].endswith("+00:00") for r in raw)
    assert any(not r["name"].isascii() for r in raw)
    assert {r["image_type"] for r in raw} == {"backup", "replication"}

    problems: list[str] = []
    for backup in backups:
        problems += mismatches(backup, by_id[backup.id], "BackupResp", backup.id)
        # The reference page's always-present, non-nullable fields, whatever the truth says.
        problems += [
            f"{backup.id}.{name} is missing" for name in ALWAYS_PRESENT if getattr(backup, name) is None
        ]
    assert problems == []


# --- 3. Signature failures -------------------------------------------------------------------------


def _assert_gateway_401(caught: pytest.ExceptionInfo[ClientRequestException]) -> None:
    error = caught.value
    assert error.status_code == 401
    assert error.error_code == "APIGW.0301"
    assert REQUEST_ID.match(error.request_id or ""), error.request_id


def test_tampered_signature_is_rejected(world: World) -> None:
    keys = world.keys["probe"]
    wrong = cbr_client(world, keys.ak, keys.sk[:-1] + ("A" if keys.sk[-1] != "A" else "B"), world.big.id)
    with pytest.raises(ClientRequestException) as caught:
        wrong.list_backups(ListBackupsRequest(limit=1))
    _assert_gateway_401(caught)
    assert "signature" in caught.value.error_msg
    # An unknown AK, and a project of another account, are refused the same way.
    with pytest.raises(ClientRequestException) as caught:
        cbr_client(world, "NOSUCHAK000000000000", keys.sk, world.big.id).list_backups(
            ListBackupsRequest(limit=1)
        )
    _assert_gateway_401(caught)
    globex = next(p for p in world.projects.values() if p.domain_id == world.keys["globex-admin"].domain_id)
    with pytest.raises(ClientRequestException) as caught:
        client_for(world, "probe", globex.id).list_backups(ListBackupsRequest(limit=1))
    _assert_gateway_401(caught)
    # The right key still works afterwards.
    assert client_for(world, "probe").list_backups(ListBackupsRequest(limit=1)).count == len(
        world.truth["private"]
    )


def skewed_datetime(skew: timedelta) -> type[datetime]:
    """A ``datetime`` whose ``utcnow()`` is off by ``skew``: put in the SDK signer's module, it makes
    the SDK sign with a stale (or future) ``X-Sdk-Date``."""

    class Skewed(datetime):
        @classmethod
        def utcnow(cls) -> Skewed:
            return cls.now(UTC).replace(tzinfo=None) + skew

    return Skewed


@pytest.mark.parametrize(
    ("minutes", "accepted"), [(-20, False), (20, False), (-5, True)], ids=["stale", "future", "within-window"]
)
def test_x_sdk_date_outside_the_skew_window_is_rejected(
    world: World, monkeypatch: pytest.MonkeyPatch, minutes: int, accepted: bool
) -> None:
    monkeypatch.setattr(sdk_signer, "datetime", skewed_datetime(timedelta(minutes=minutes)))
    client = client_for(world, "probe")
    if accepted:
        assert client.list_backups(ListBackupsRequest(limit=1)).count == len(world.truth["private"])
        return
    with pytest.raises(ClientRequestException) as caught:
        client.list_backups(ListBackupsRequest(limit=1))
    _assert_gateway_401(caught)
    assert "X-Sdk-Date" in caught.value.error_msg


def test_repeated_bad_signatures_lock_the_access_key(world: World) -> None:
    keys = world.keys["lockee"]
    wrong = cbr_client(world, keys.ak, keys.sk.swapcase(), world.big.id)
    for _ in range(5):
        with pytest.raises(ClientRequestException) as caught:
            wrong.list_backups(ListBackupsRequest(limit=1))
        _assert_gateway_401(caught)
    # Locked: even the right secret key is refused now.
    with pytest.raises(ClientRequestException) as caught:
        client_for(world, "lockee").list_backups(ListBackupsRequest(limit=1))
    _assert_gateway_401(caught)
    assert "locked" in caught.value.error_msg


# --- 4 and 5. IAM: password token, temporary AK/SK, projects; EPS ------------------------------------


def password_token(world: World, keys: Keys, project_id: str) -> Any:
    body = KeystoneCreateUserTokenByPasswordRequestBody(
        auth=PwdAuth(
            identity=PwdIdentity(
                methods=["password"],
                password=PwdPassword(
                    user=PwdPasswordUser(
                        domain=PwdPasswordUserDomain(name=keys.domain_name),
                        name=keys.user,
                        password=keys.password,
                    )
                ),
            ),
            scope=AuthScope(project=AuthScopeProject(id=project_id)),
        )
    )
    return iam_client(world, keys).keystone_create_user_token_by_password(
        KeystoneCreateUserTokenByPasswordRequest(body=body)
    )


def test_iam_password_token_is_project_scoped(world: World) -> None:
    keys = world.keys["acme-admin"]
    response = password_token(world, keys, world.big.id)
    # Lengths only: a failing assertion must not print the token.
    token_length = len(response.x_subject_token or "")
    assert token_length >= 1000  # real ones are several KB
    token = response.token
    assert token.project.id == world.big.id and token.project.name == world.big.name
    assert token.user.name == "acme-admin" and token.user.domain.id == keys.domain_id
    assert token.methods == ["password"]
    issued, expires = instant(token.issued_at.rstrip("Z")), instant(token.expires_at.rstrip("Z"))
    assert expires - issued == timedelta(hours=24)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", token.expires_at)

    wrong = Keys(keys.user, keys.domain_id, keys.domain_name, keys.ak, keys.sk, "not-the-password")
    with pytest.raises(ClientRequestException) as caught:
        password_token(world, wrong, world.big.id)
    assert caught.value.status_code == 401


def test_temporary_credentials_from_iam_sdk_list_backups(world: World) -> None:
    keys = world.keys["acme-admin"]
    token = password_token(world, keys, world.big.id).x_subject_token
    body = CreateTemporaryAccessKeyByTokenRequestBody(
        auth=TokenAuth(
            identity=TokenAuthIdentity(methods=["token"], token=IdentityToken(id=token, duration_seconds=900))
        )
    )
    credential = (
        iam_client(world, keys)
        .create_temporary_access_key_by_token(CreateTemporaryAccessKeyByTokenRequest(body=body))
        .credential
    )
    assert credential.access != keys.ak
    secret_lengths = (len(credential.secret or ""), len(credential.securitytoken or ""))
    assert secret_lengths[0] == 40 and secret_lengths[1] > 100
    # duration_seconds=900 asked for; the scenario's cap (a day) does not shorten it.
    lifetime = instant(credential.expires_at.rstrip("Z")) - datetime.now(UTC)
    assert timedelta(minutes=13) < lifetime <= timedelta(minutes=15)

    temporary = cbr_client(
        world, credential.access, credential.secret, world.big.id, credential.securitytoken
    )
    backups, count = list_all(temporary, 1000)
    assert {b.id for b in backups} == world.truth_ids("private")
    assert count == len(world.truth["private"])
    # The security token is part of the signature: without it, or with another one, the key is refused.
    for security_token in (None, "X" + credential.securitytoken[1:]):
        bad = cbr_client(world, credential.access, credential.secret, world.big.id, security_token)
        with pytest.raises(ClientRequestException) as caught:
            bad.list_backups(ListBackupsRequest(limit=1))
        _assert_gateway_401(caught)


def list_with_temporary_credentials(world: World, credential: Any, project: Project) -> int:
    client = cbr_client(world, credential.access, credential.secret, project.id, credential.securitytoken)
    return int(client.list_backups(ListBackupsRequest(limit=1)).count)


def test_temporary_credentials_by_agency_signed_with_aksk(world: World) -> None:
    """acme assumes globex's agency with the IAM SDK (AK/SK-signed) and lists a globex project's backups."""
    body = CreateTemporaryAccessKeyByAgencyRequestBody(
        auth=AgencyAuth(
            identity=AgencyAuthIdentity(
                methods=["assume_role"],
                assume_role=IdentityAssumerole(
                    domain_name="globex", agency_name="cbr-inventory", duration_seconds=900
                ),
            )
        )
    )
    credential = (
        iam_client(world, world.keys["acme-admin"])
        .create_temporary_access_key_by_agency(CreateTemporaryAccessKeyByAgencyRequest(body=body))
        .credential
    )
    globex = next(
        p
        for p in world.projects.values()
        if p.domain_id == world.keys["globex-admin"].domain_id and p.name == REGION
    )
    truth = world.emu.call(lambda: world.emu.estate.truth_ids(globex.id))
    assert list_with_temporary_credentials(world, credential, globex) == len(truth)


def test_temporary_credentials_by_token_api_signed_with_aksk_only(world: World) -> None:
    body = CreateTemporaryAccessKeyByTokenRequestBody(
        auth=TokenAuth(
            identity=TokenAuthIdentity(methods=["token"], token=IdentityToken(duration_seconds=900))
        )
    )
    credential = (
        iam_client(world, world.keys["acme-admin"])
        .create_temporary_access_key_by_token(CreateTemporaryAccessKeyByTokenRequest(body=body))
        .credential
    )
    assert list_with_temporary_credentials(world, credential, world.big) == len(world.truth["private"])


def test_iam_project_lists(world: World) -> None:
    keys = world.keys["acme-admin"]
    client = iam_client(world, keys)
    mine = {p.id: p for p in world.projects.values() if p.domain_id == keys.domain_id}

    listed = client.keystone_list_auth_projects(KeystoneListAuthProjectsRequest()).projects
    assert {p.id for p in listed} == set(mine)
    for project in listed:
        truth = mine[project.id]
        assert (project.name, project.domain_id, project.parent_id, project.enabled) == (
            truth.name,
            truth.domain_id,
            truth.parent_id,
            truth.enabled,
        )
    assert "MOS" in {p.name for p in listed}  # listed by IAM; crawlers must skip it

    by_name = client.keystone_list_projects(KeystoneListProjectsRequest(name=REGION)).projects
    assert [p.id for p in by_name] == [p.id for p in mine.values() if p.name == REGION]


def test_sdk_resolves_the_project_id_through_iam(world: World) -> None:
    """Without a project id the SDK asks IAM (GET /v3/projects?name=<region>) before calling CBR."""
    keys = world.keys["acme-admin"]
    credentials = BasicCredentials(keys.ak, keys.sk).with_iam_endpoint(world.url)
    client = (
        CbrClient.new_builder().with_credentials(credentials).with_region(Region(REGION, world.url)).build()
    )
    response = client.list_backups(ListBackupsRequest(limit=1))
    default = next(p for p in world.projects.values() if p.domain_id == keys.domain_id and p.name == REGION)
    assert credentials.project_id == default.id
    truth = world.emu.call(lambda: world.emu.estate.truth_ids(default.id))
    assert response.count == len(truth)


@pytest.mark.parametrize("user", ["acme-admin", "globex-admin", "auditor"])
def test_eps_lists_the_domains_enterprise_projects(world: World, user: str) -> None:
    keys = world.keys[user]
    client = (
        EpsClient.new_builder().with_credentials(global_credentials(keys)).with_endpoints([world.url]).build()
    )
    eps = world.eps[keys.domain_id]
    if user == "auditor":
        eps = [ep for ep in eps if ep.name == "default"]

    response = client.list_enterprise_project(ListEnterpriseProjectRequest())
    assert response.total_count == len(eps)
    assert {ep.id for ep in response.enterprise_projects} == {ep.id for ep in eps}
    truth = {ep.id: ep for ep in eps}
    for ep in response.enterprise_projects:
        assert (ep.name, ep.status, ep.description, ep.type) == (
            truth[ep.id].name,
            truth[ep.id].status,
            truth[ep.id].description,
            truth[ep.id].type,
        )
    # Paged one by one, sorted by name: the same set, in name order.
    paged: list[str] = []
    for offset in range(len(eps) + 1):
        page = client.list_enterprise_project(
            ListEnterpriseProjectRequest(limit=1, offset=offset, sort_key="name", sort_dir="asc")
        )
        assert page.total_count == len(eps)
        paged += [ep.name for ep in page.enterprise_projects]
    assert paged == sorted(ep.name for ep in eps)
    disabled = client.list_enterprise_project(ListEnterpriseProjectRequest(status=2))
    assert {ep.id for ep in disabled.enterprise_projects} == {ep.id for ep in eps if ep.status == 2}
