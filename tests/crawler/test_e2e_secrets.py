"""No secret is ever written: every byte a run leaves behind, searched for recognisable secrets.

Crawls with a password, a permanent AK/SK and temporary credentials, at ``--log-level debug`` and
``--log-json``, a nightly report, a diff and a metrics file; and failing ones (a wrong password: 401
from IAM; a wrong secret key: a failed signature). Then stdout, stderr and every file under the
outputs (manifest, report, diff, metrics, ``state.sqlite``) are searched for the password, the
secret key, and every token, temporary secret key and security token the emulator issued.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import crawler_env, run_cli, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import IdentitySpec, Scenario, UserSpec
from crawler.emulator.server import EmulatorThread

pytestmark = pytest.mark.e2e  # against the emulator over real sockets (pytest -m "not e2e" skips)

PASSWORD = "Pw-CANARY-7f3a9c-never-print-me"
ACCESS_KEY = "AKCANARY00000000001Q"
SECRET_KEY = "SkCanary0123456789abcdefABCDEFxyzXYZ0123"
WRONG_PASSWORD = "Pw-WRONG-CANARY-52e1d0"
WRONG_SECRET = "SkWrongCanary9876543210zyxwvuZYXWVU98765"

SCENARIO = Scenario(
    seed=71,
    estate=EstateSpec(seed=71, regions=("cn-north-4",), domains=(DomainSpec("acme", backups=400),)),
    identity=IdentitySpec(
        users=(UserSpec(name="bot", domain="acme", password=PASSWORD, ak=ACCESS_KEY, sk=SECRET_KEY),),
        security_token_ttl_seconds=2.0,  # renewed during the crawl: several security tokens issued
    ),
)

PASSWORD_AUTH = {"mode": "password", "user": "bot", "domain": "acme", "password_env": "BOT_PW"}
AKSK_AUTH = {"mode": "aksk", "access_key_env": "BOT_AK", "secret_key_env": "BOT_SK"}


def _issued(emu: EmulatorThread) -> set[str]:
    """Every token and temporary secret the emulator handed out."""

    def collect() -> set[str]:
        identity: Any = emu.server.identity
        values = set(identity._tokens)
        for credential in identity._temporary.values():
            values |= {credential.secret_key, credential.security_token}
        return values

    return emu.call(collect)


def test_no_secret_reaches_any_output_log_or_state(
    tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(SCENARIO)
    env = crawler_env(BOT_PW=PASSWORD, BOT_AK=ACCESS_KEY, BOT_SK=SECRET_KEY)
    settings: dict[str, Any] = {
        "regions": ["cn-north-4"],
        "own_types": ["private", "shared"],
        "enterprise_projects": {"mode": "discover"},
        "rate_limit": {"requests_per_second": 200, "concurrency": 4, "page_size": 50},
    }
    outputs = tmp_path / "outputs"
    loud = ["--log-level", "debug"]
    runs: list[tuple[str, Any]] = []

    def run(name: str, auth: dict[str, Any], *extra: str, env: dict[str, str] = env) -> Any:
        config = write_tenant(
            tmp_path / "tenants" / name, emu.url, "acme-prod", "acme", auth=auth, **settings
        )
        proc = run_cli(
            "run", "--config", str(config), "--output", str(outputs / name),
            "--metrics-file", str(outputs / "metrics" / f"{name}.prom"), *extra, env=env,
        )  # fmt: skip
        runs.append((name, proc))
        return proc

    (tmp_path / "tenants").mkdir()
    for name in (
        "password",
        "password-json",
        "aksk",
        "temporary",
        "wrong-password",
        "wrong-secret",
        "agency",
    ):
        (tmp_path / "tenants" / name).mkdir()
    assert run("password", PASSWORD_AUTH, *loud).returncode == 0
    assert run("password-json", PASSWORD_AUTH, *loud, "--log-json", "--diff-against", "auto").returncode == 0
    assert run("aksk", AKSK_AUTH, *loud, "--log-json").returncode == 0
    temporary = {"mode": "temporary", "source": PASSWORD_AUTH, "duration_seconds": 900}
    assert run("temporary", temporary, *loud).returncode == 0
    refused = run("wrong-password", PASSWORD_AUTH, *loud, env={**env, "BOT_PW": WRONG_PASSWORD})
    assert refused.returncode == 1 and "401" in refused.stderr
    unsigned = run("wrong-secret", AKSK_AUTH, *loud, "--log-json", env={**env, "BOT_SK": WRONG_SECRET})
    assert unsigned.returncode == 1 and "APIGW.0301" in unsigned.stderr
    # A 403 from IAM: the password token is issued, the agency it asks for is refused.
    agency = {"mode": "agency", "source": PASSWORD_AUTH, "domain_name": "acme", "agency_name": "no-such"}
    forbidden = run("agency", agency, *loud)
    assert forbidden.returncode == 1 and "403" in forbidden.stderr

    issued = _issued(emu)
    assert len(issued) >= 5, "tokens and temporary credentials must have been issued to mean anything"
    secrets = {PASSWORD, SECRET_KEY, WRONG_PASSWORD, WRONG_SECRET, *issued}
    # Long values are also searched by a distinctive slice: a log line cut short still leaks.
    needles = {s.encode() for s in secrets} | {s[8:40].encode() for s in secrets if len(s) >= 40}

    written = [(f"{name}: stdout+stderr", (proc.stdout + proc.stderr).encode()) for name, proc in runs]
    files = [p for p in outputs.rglob("*") if p.is_file()]
    assert any(p.name == "state.sqlite" for p in files) and any(p.suffix == ".prom" for p in files)
    assert any(p.name == "report.json" for p in files) and any(p.name == "diff.json" for p in files)
    written += [(str(p.relative_to(tmp_path)), p.read_bytes()) for p in files]
    # (The needles themselves are never shown: a failure names where, and the secret's first bytes.)
    leaks = [(where, needle[:6]) for where, data in written for needle in needles if needle in data]
    assert not leaks, f"secrets written: {leaks}"
    # The debug logs did say what happened (the test would prove little otherwise).
    assert "DEBUG" in runs[0][1].stderr and "debug" in runs[2][1].stderr.lower()
