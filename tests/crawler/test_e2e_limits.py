"""Limits (issue 15, item 5): thousands of scopes within a small file-descriptor limit."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import crawler_env, write_tenant

from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import Scenario
from crawler.emulator.server import EmulatorThread

pytestmark = pytest.mark.e2e  # a crawler process against the emulator over real sockets

FD_LIMIT = 128  # far fewer than the scopes: files are open only while their scope is


@pytest.mark.parametrize("plan", ["auto", "per_pass"])
def test_thousands_of_scopes_within_a_small_descriptor_limit(
    plan: str, tmp_path: Path, emulator_factory: Callable[..., EmulatorThread]
) -> None:
    emu = emulator_factory(
        Scenario(
            seed=91,
            estate=EstateSpec(
                seed=91,
                regions=("cn-north-4",),
                domains=(DomainSpec("acme", backups=40_000, subprojects=200, enterprise_projects=4),),
            ),
        )
    )
    config = write_tenant(
        tmp_path, emu.url, "acme-prod", "acme", regions=["cn-north-4"], own_types=["private", "shared"],
        enterprise_projects={"mode": "discover"}, plan=plan,
        rate_limit={"requests_per_second": "unlimited", "concurrency": 16, "page_size": 200},
    )  # fmt: skip

    def limit_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

    out = tmp_path / "out"
    command = [sys.executable, "-m", "crawler", "run", "--config", str(config), "--output", str(out)]
    proc = subprocess.run(
        command, env=crawler_env(), capture_output=True, text=True, timeout=300, check=False,
        preexec_fn=limit_descriptors,
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert len(manifest["scopes"]) == 201 * 5 * 2 > 10 * FD_LIMIT
    assert not list(out.rglob("*.part"))
