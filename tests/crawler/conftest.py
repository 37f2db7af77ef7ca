"""Fixtures for end-to-end crawler tests: an emulator on loopback and tenant files pointing at it."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from crawler.emulator.server import EmulatorThread


def write_tenant(directory: Path, url: str, name: str, domain: str, **overrides: Any) -> Path:
    """A tenant file for ``domain`` of the emulator (user D-admin, password from env CBR_PW_<DOMAIN>)."""
    tenant: dict[str, Any] = {
        "tenant": name,
        "auth": {
            "mode": "password",
            "user": f"{domain}-admin",
            "domain": domain,
            "password_env": f"CBR_PW_{domain.upper()}",
        },
        "endpoints": {"iam": url, "eps": url, "cbr": url},
        "regions": ["cn-north-4", "ap-southeast-1"],
        "projects": {"discover": {}},
        "enterprise_projects": {"mode": "discover"},
        "own_types": ["private", "shared", "all_granted"],
        "rate_limit": {"requests_per_second": 200, "concurrency": 8},
    }
    tenant.update(overrides)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tenant, sort_keys=False))
    return path


def crawler_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for domain in ("acme", "globex", "initech"):
        env[f"CBR_PW_{domain.upper()}"] = f"{domain}-password"
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``cbr-crawler ARGS`` as a user runs it: a real process, its exit code, its stderr."""
    return subprocess.run(
        [sys.executable, "-m", "crawler", *args],
        env=env if env is not None else crawler_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return [orjson.loads(line) for line in data.splitlines() if line]


def scope_ids(output: Path, scope: dict[str, Any]) -> list[str]:
    ids: list[str] = []
    for file in scope["files"]:
        ids.extend(rec["id"] for rec in read_ndjson(output / file["path"]))
    return ids


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., EmulatorThread]]:
    started: list[EmulatorThread] = []

    def start(scenario: Any) -> EmulatorThread:
        emu = EmulatorThread(scenario)
        emu.start()
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()
