"""Authentication as Huawei users run it, end to end: `cbr-crawler run` (a real process) signing with
permanent AK/SK, with temporary credentials that expire again and again during the crawl, through an
agency of another account, and failing clearly with a wrong secret."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import crawler_env, run_cli, scope_ids, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import AgencySpec, IdentitySpec, Scenario
from crawler.emulator.server import EmulatorThread

TWO_DOMAINS = EstateSpec(
    seed=31,
    regions=("cn-north-4", "ap-southeast-1"),
    domains=(
        DomainSpec("acme", subprojects=1, enterprise_projects=2, backups=2500, shared_fraction=0.1),
        DomainSpec("globex", subprojects=1, enterprise_projects=2, backups=1500, shared_fraction=0.1),
    ),
)


def admin_keys(emu: EmulatorThread, domain: str) -> tuple[str, str]:
    """The permanent AK/SK the emulator's default identity derives for ``D-admin`` from the seed."""

    def find() -> tuple[str, str]:
        for user in emu.server.identity.credentials():
            if user.principal.name == f"{domain}-admin" and user.principal.domain.name == domain:
                assert user.access_key is not None and user.secret_key is not None
                return user.access_key, user.secret_key
        raise AssertionError(f"no default user for {domain}")

    return emu.call(find)


def aksk_auth(domain: str) -> dict[str, str]:
    return {
        "mode": "aksk",
        "access_key_env": f"CBR_AK_{domain.upper()}",
        "secret_key_env": f"CBR_SK_{domain.upper()}",
    }


def password_source(domain: str) -> dict[str, str]:
    return {
        "mode": "password",
        "user": f"{domain}-admin",
        "domain": domain,
        "password_env": f"CBR_PW_{domain.upper()}",
    }


def load_manifest(out: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return manifest


def assert_equals_truth(emu: EmulatorThread, out: Path, scopes: list[dict[str, Any]], domain: str) -> None:
    """Every scope complete, holding exactly the emulator's ground truth, all of ``domain``'s projects."""
    assert scopes
    dom = emu.estate.domain_by_name(domain)
    assert dom is not None
    crawled_projects = set()
    for scope in scopes:
        assert scope["status"] == "complete", scope
        ids = scope_ids(out, scope)
        assert len(ids) == len(set(ids)), f"duplicates in {scope['key']}"
        truth = emu.call(
            lambda s=scope: emu.estate.truth_ids(s["project_id"], s["own_type"], s["enterprise_project_id"])
        )
        assert set(ids) == truth, scope["key"]
        crawled_projects.add(scope["project_id"])
    regions = set(emu.estate.spec.regions)
    expected_projects = {
        p.id
        for p in emu.estate.projects.values()
        if p.domain_id == dom.id and p.enabled and p.name != "MOS" and p.region in regions
    }
    assert crawled_projects == expected_projects, "discovery found every project of the account"
    private = sum(len(scope_ids(out, s)) for s in scopes if s["own_type"] == "private")
    domain_backups = sum(
        len(emu.call(lambda p=pid: emu.estate.truth_ids(p, "private", None))) for pid in expected_projects
    )
    assert private == domain_backups > 0


# -- 1. permanent AK/SK ---------------------------------------------------------------------------------


def test_permanent_aksk_crawl_equals_ground_truth(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(Scenario(seed=31, estate=TWO_DOMAINS))
    ak, sk = admin_keys(emu, "acme")
    write_tenant(tmp_path, emu.url, "acme-prod", "acme", auth=aksk_auth("acme"))
    out = tmp_path / "out"

    proc = run_cli(
        "run",
        "--config",
        str(tmp_path),
        "--output",
        str(out),
        env=crawler_env(CBR_AK_ACME=ak, CBR_SK_ACME=sk),
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = load_manifest(out)
    assert manifest["status"] == "complete"
    assert len({s["enterprise_project_id"] for s in manifest["scopes"]}) > 1, "EPS discovery signed too"
    assert_equals_truth(emu, out, manifest["scopes"], "acme")
    stats = emu.stats
    # Discovery (IAM projects, EPS) and every page were signed: no token was ever asked for.
    assert stats.total("iam.tokens") == 0
    assert stats.total("iam.auth_projects", 200) >= 1
    assert stats.total("eps.list", 200) >= 1
    assert stats.total("cbr.list_backups", 200) >= len(manifest["scopes"])
    assert stats.total(status=401) == 0
    assert sk not in proc.stdout + proc.stderr + (out / "manifest.json").read_text()


# -- 2. temporary AK/SK -----------------------------------------------------------------------------------


def test_temporary_credentials_crawl_equals_ground_truth(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(Scenario(seed=31, estate=TWO_DOMAINS))
    write_tenant(
        tmp_path,
        emu.url,
        "acme-prod",
        "acme",
        auth={"mode": "temporary", "source": password_source("acme"), "duration_seconds": 900},
    )
    out = tmp_path / "out"

    proc = run_cli("run", "--config", str(tmp_path), "--output", str(out))

    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = load_manifest(out)
    assert manifest["status"] == "complete"
    assert_equals_truth(emu, out, manifest["scopes"], "acme")
    stats = emu.stats
    # One domain-scoped password token buys one temporary key pair, which signs everything else.
    assert stats.total("iam.tokens", 201) == 1
    assert stats.total("iam.securitytokens", 201) == 1
    assert stats.total(status=401) == 0


SHORT_LIVED = Scenario(
    seed=32,
    estate=EstateSpec(
        seed=32,
        regions=("cn-north-4",),
        domains=(DomainSpec("acme", subprojects=1, enterprise_projects=1, backups=2000),),
    ),
    # IAM's minimum lifetime is 900 s; the emulator caps it at 2 s so that the keys die during the crawl.
    identity=IdentitySpec(security_token_ttl_seconds=2.0),
)


def test_temporary_credentials_expiring_every_two_seconds_are_renewed_without_a_failed_scope(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(SHORT_LIVED)
    write_tenant(
        tmp_path,
        emu.url,
        "acme-prod",
        "acme",
        auth={"mode": "temporary", "source": password_source("acme")},
        regions=["cn-north-4"],
        own_types=["private", "shared"],
        # ~55 pages at 6 requests/s: the crawl outlives the keys four times over.
        rate_limit={"requests_per_second": 6, "concurrency": 2, "page_size": 40},
    )
    out = tmp_path / "out"

    proc = run_cli("run", "--config", str(tmp_path), "--output", str(out))

    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = load_manifest(out)
    assert manifest["status"] == "complete"
    assert not manifest["tenant_failures"]
    assert_equals_truth(emu, out, manifest["scopes"], "acme")
    stats = emu.stats
    pages = stats.total("cbr.list_backups", 200)
    renewals = stats.total("iam.securitytokens", 201) - 1
    assert pages >= 50
    assert renewals >= 3, f"{renewals} renewals over {pages} pages"
    # Renewal is proactive, so the source's password token is asked for once, not per renewal.
    assert stats.total("iam.tokens", 201) == 1


# -- 3. agency ------------------------------------------------------------------------------------------

AGENCY = Scenario(
    seed=31,
    estate=TWO_DOMAINS,
    # globex (B) lets users of acme (A) act in it through its agency "inventory".
    identity=IdentitySpec(agencies=(AgencySpec(domain="globex", name="inventory", trusted_domain="acme"),)),
)


@pytest.mark.parametrize("credential", ["token", "temporary_aksk"])
def test_agency_crawl_of_account_b_by_a_user_of_account_a_equals_b_ground_truth(
    credential: str, tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(AGENCY)
    write_tenant(
        tmp_path,
        emu.url,
        "globex-via-acme",
        "globex",
        auth={
            "mode": "agency",
            "source": password_source("acme"),
            "domain_name": "globex",
            "agency_name": "inventory",
            "credential": credential,
        },
    )
    out = tmp_path / "out"

    # Only account A's password is given: B's would let the crawler in without the agency.
    env = crawler_env()
    del env["CBR_PW_GLOBEX"]
    proc = run_cli("run", "--config", str(tmp_path), "--output", str(out), env=env)

    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = load_manifest(out)
    assert manifest["status"] == "complete"
    assert_equals_truth(emu, out, manifest["scopes"], "globex")
    stats = emu.stats
    if credential == "token":
        # A's domain token, then assume_role tokens: one domain-scoped (discovery), one per B project.
        projects = {s["project_id"] for s in manifest["scopes"]}
        assert stats.total("iam.tokens", 201) == 1 + 1 + len(projects)
        assert stats.total("iam.securitytokens") == 0
    else:
        assert stats.total("iam.tokens", 201) == 1
        assert stats.total("iam.securitytokens", 201) == 1
    assert stats.total(status=401) == 0
    assert stats.total(status=403) == 0
