"""Authentication as Huawei users run it, end to end: `cbr-crawler run` (a real process) signing with
permanent AK/SK, with temporary credentials that expire again and again during the crawl, through an
agency of another account, and failing clearly with a wrong secret."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import crawler_env, run_cli, scope_ids, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import AgencySpec, IdentitySpec, Scenario
from crawler.emulator.server import EmulatorThread

pytestmark = pytest.mark.e2e  # against the emulator over real sockets (pytest -m "not e2e" skips)

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


def truth_ids(emu: EmulatorThread, project_id: str, own_type: str, ep: str | None) -> set[str]:
    """The emulator's ground truth for one view, read on the emulator's loop (no race with its requests)."""
    return emu.call(functools.partial(emu.estate.truth_ids, project_id, own_type, ep))


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
        truth = truth_ids(emu, scope["project_id"], scope["own_type"], scope["enterprise_project_id"])
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
    domain_backups = sum(len(truth_ids(emu, pid, "private", None)) for pid in expected_projects)
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
    # At least one signed request per query (a single pass per project covers its views and EPs).
    assert stats.total("cbr.list_backups", 200) >= manifest["plans"]["acme-prod"]["queries"]
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


def test_agency_token_with_an_aksk_source_is_refused_clearly_before_any_request(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(AGENCY)
    ak, sk = admin_keys(emu, "acme")
    write_tenant(
        tmp_path,
        emu.url,
        "globex-via-acme",
        "globex",
        auth={
            "mode": "agency",
            "source": aksk_auth("acme"),
            "domain_name": "globex",
            "agency_name": "inventory",
        },
    )
    write_tenant(tmp_path, emu.url, "acme-prod", "acme", regions=["cn-north-4"], own_types=["private"])
    out = tmp_path / "out"

    proc = run_cli(
        "run",
        "--config",
        str(tmp_path),
        "--output",
        str(out),
        env=crawler_env(CBR_AK_ACME=ak, CBR_SK_ACME=sk),
    )

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    manifest = load_manifest(out)
    [failure] = manifest["tenant_failures"]
    assert failure["tenant"] == "globex-via-acme"
    assert failure["stage"] == "credentials"
    assert "temporary_aksk" in failure["error"]
    assert {s["status"] for s in manifest["scopes"]} == {"complete"}
    assert {s["tenant"] for s in manifest["scopes"]} == {"acme-prod"}
    assert sk not in proc.stdout + proc.stderr + (out / "manifest.json").read_text()


def test_agency_temporary_aksk_with_an_aksk_source_equals_b_ground_truth(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(AGENCY)
    ak, sk = admin_keys(emu, "acme")
    write_tenant(
        tmp_path,
        emu.url,
        "globex-via-acme",
        "globex",
        auth={
            "mode": "agency",
            "source": aksk_auth("acme"),
            "domain_name": "globex",
            "agency_name": "inventory",
            "credential": "temporary_aksk",
        },
    )
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
    assert_equals_truth(emu, out, load_manifest(out)["scopes"], "globex")
    # A's permanent key signed the securitytokens call; no token was ever asked for.
    assert emu.stats.total("iam.securitytokens", 201) == 1
    assert emu.stats.total("iam.tokens") == 0
    assert sk not in proc.stdout + proc.stderr + (out / "manifest.json").read_text()


# -- 4. wrong secrets -----------------------------------------------------------------------------------


def refusal(stderr: str, tenant: str) -> str:
    """The one error logged for ``tenant``'s refused credential (the summary repeats it once, no more)."""
    lines = [line for line in stderr.splitlines() if f"tenant {tenant}: credential refused" in line]
    logged = [line for line in lines if " ERROR " in line]
    summary = [line for line in lines if line.lstrip().startswith("tenant failure:")]
    assert len(logged) == 1 and len(summary) == 1 and len(lines) == 2, lines
    return logged[0]


def test_wrong_secret_key_gives_one_clear_error_and_the_other_tenant_completes(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(Scenario(seed=31, estate=TWO_DOMAINS))
    ak, sk = admin_keys(emu, "acme")
    wrong = "Wr0ngSecretKey" + sk[14:]
    write_tenant(tmp_path, emu.url, "acme-prod", "acme", auth=aksk_auth("acme"))
    write_tenant(tmp_path, emu.url, "globex-prod", "globex")
    out = tmp_path / "out"

    proc = run_cli(
        "run",
        "--config",
        str(tmp_path),
        "--output",
        str(out),
        env=crawler_env(CBR_AK_ACME=ak, CBR_SK_ACME=wrong),
    )

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    manifest = load_manifest(out)
    assert manifest["status"] == "incomplete"
    assert not (out / "_SUCCESS").exists()
    [failure] = manifest["tenant_failures"]
    assert failure["tenant"] == "acme-prod"
    assert failure["error_code"] == "APIGW.0301"
    assert len(failure["request_id"]) == 32
    assert "CBR_SK_ACME" in failure["error"], "names the credential source"
    line = refusal(proc.stderr, "acme-prod")
    assert "CBR_SK_ACME" in line and "APIGW.0301" in line and failure["request_id"] in line
    # One signed request was refused; nothing more was spent on the tenant (and the AK is not locked).
    assert emu.stats.total(status=401) == 1
    assert {s["tenant"] for s in manifest["scopes"]} == {"globex-prod"}
    assert_equals_truth(emu, out, manifest["scopes"], "globex")
    everything = proc.stdout + proc.stderr + (out / "manifest.json").read_text()
    assert wrong not in everything and sk not in everything


def test_wrong_password_of_a_temporary_credential_source_gives_one_clear_error(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(Scenario(seed=31, estate=TWO_DOMAINS))
    write_tenant(
        tmp_path, emu.url, "acme-prod", "acme", auth={"mode": "temporary", "source": password_source("acme")}
    )
    write_tenant(
        tmp_path,
        emu.url,
        "globex-prod",
        "globex",
        auth={"mode": "temporary", "source": password_source("globex")},
    )
    out = tmp_path / "out"
    wrong = "not-the-Acme-passw0rd"

    proc = run_cli("run", "--config", str(tmp_path), "--output", str(out), env=crawler_env(CBR_PW_ACME=wrong))

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    manifest = load_manifest(out)
    [failure] = manifest["tenant_failures"]
    assert failure["tenant"] == "acme-prod"
    assert "CBR_PW_ACME" in failure["error"]
    assert "temporary" in failure["error"]
    assert len(failure["request_id"]) == 32
    line = refusal(proc.stderr, "acme-prod")
    assert failure["request_id"] in line
    assert emu.stats.total("iam.securitytokens") == 1, "only globex got keys"
    assert_equals_truth(emu, out, manifest["scopes"], "globex")
    assert wrong not in proc.stdout + proc.stderr + (out / "manifest.json").read_text()


def test_wrong_secret_key_without_discovery_is_refused_once_not_once_per_request_in_flight(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    """Explicit project ids and no EPS: nothing is discovered, yet the key must not meet 8 parallel
    refusals (and be locked for everyone after 5)."""
    emu = emulator_factory(Scenario(seed=31, estate=TWO_DOMAINS))
    ak, sk = admin_keys(emu, "acme")
    acme = emu.estate.domain_by_name("acme")
    assert acme is not None
    ids = sorted(
        p.id
        for p in emu.estate.projects.values()
        if p.domain_id == acme.id and p.region == "cn-north-4" and p.enabled and p.name != "MOS"
    )
    write_tenant(
        tmp_path,
        emu.url,
        "acme-prod",
        "acme",
        auth=aksk_auth("acme"),
        regions=["cn-north-4"],
        projects={"ids": ids},
        enterprise_projects={"mode": "none"},
        rate_limit={"requests_per_second": 200, "concurrency": 8},
    )
    out = tmp_path / "out"

    proc = run_cli(
        "run",
        "--config",
        str(tmp_path),
        "--output",
        str(out),
        env=crawler_env(CBR_AK_ACME=ak, CBR_SK_ACME="Wr0ngSecretKey" + sk[14:]),
    )

    assert proc.returncode == 1, proc.stderr[-3000:]
    [failure] = load_manifest(out)["tenant_failures"]
    assert failure["error_code"] == "APIGW.0301"
    line = refusal(proc.stderr, "acme-prod")
    assert "verify aksk signature fail" in line and "locked" not in line
    assert emu.stats.total("cbr.list_backups", 401) < 5, "the key was not locked"

    # With the right key the same tenant file crawls everything (and the probe is not in the output).
    proc = run_cli(
        "run",
        "--config",
        str(tmp_path),
        "--output",
        str(out),
        env=crawler_env(CBR_AK_ACME=ak, CBR_SK_ACME=sk),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scopes = load_manifest(out)["scopes"]
    assert {s["project_id"] for s in scopes} == set(ids)
    for scope in scopes:
        assert scope["status"] == "complete"
        assert set(scope_ids(out, scope)) == truth_ids(emu, scope["project_id"], scope["own_type"], None)
