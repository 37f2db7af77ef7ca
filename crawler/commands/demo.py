"""``cbr-crawler demo``: the main job, end to end, on the built-in emulator.

Starts the emulator on a free loopback port with a sample estate, points ``config/demo.yaml`` at
it, crawls, prints the summary and checks every complete scope against the emulator's ground
truth, so that a new user sees in one command what a nightly run produces.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from crawler.commands.run import print_summary
from crawler.config import TenantConfig, load_tenants
from crawler.emulator.estate import DomainSpec, EstateSpec
from crawler.emulator.scenario import Scenario
from crawler.pipeline.runner import RunOptions, RunOutcome, run_crawl
from crawler.support.aio import run_async
from crawler.support.logs import setup_logging

DEMO_PASSWORD_ENV = "CBR_DEMO_PASSWORD"
DEMO_PASSWORD = "acme-password"  # the emulator's built-in demo user acme-admin; not a real secret


def demo_config_path() -> Path:
    """config/demo.yaml from the checkout, or the copy packaged with the wheel."""
    here = Path(__file__).resolve().parents[1]  # the crawler package
    for candidate in (here.parent / "config" / "demo.yaml", here / "_data" / "demo.yaml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("config/demo.yaml is neither in the checkout nor in the package")


def demo_scenario(backups: int) -> Scenario:
    estate = EstateSpec(
        seed=7,
        regions=("cn-north-4", "ap-southeast-1"),
        domains=(
            DomainSpec("acme", subprojects=2, enterprise_projects=3, backups=backups, empty_projects=1),
        ),
    )
    return Scenario(seed=7, estate=estate)


def point_at(tenant: TenantConfig, url: str) -> TenantConfig:
    """The tenant with every endpoint replaced by the emulator's URL."""
    return tenant.with_endpoints({"iam": url, "eps": url, "cbr": url})


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo", help="start the built-in emulator, crawl it with config/demo.yaml, print a summary"
    )
    demo.add_argument("--output", "-o", default="out/demo", help="output directory (default out/demo)")
    demo.add_argument("--backups", type=int, default=20000, help="backups in the demo estate (default 20000)")
    demo.add_argument("--config", "-c", help="tenant file (default: the packaged config/demo.yaml)")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging("info")
    return run_demo(args)


def run_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault(DEMO_PASSWORD_ENV, DEMO_PASSWORD)
    config_path = Path(args.config) if args.config else demo_config_path()
    tenants = load_tenants([config_path])
    output = Path(args.output)

    # Imported here: every other command (a nightly run) would pay for the emulator's server at start.
    from crawler.emulator.server import EmulatorServer

    async def crawl() -> tuple[RunOutcome, dict[str, int]]:
        async with EmulatorServer(demo_scenario(args.backups)) as emulator:
            print(f"emulator: {emulator.estate.backup_count} backups at {emulator.url}", file=sys.stderr)
            pointed = [point_at(t, emulator.url) for t in tenants]
            outcome = await run_crawl(pointed, RunOptions(output=str(output)))
            truth = {
                s["key"]: len(
                    emulator.estate.truth_ids(s["project_id"], s["own_type"], s["enterprise_project_id"])
                )
                for s in outcome.manifest["scopes"]
            }
            return outcome, truth

    outcome, truth = run_async(crawl)
    print_summary(outcome.manifest, outcome.manifest_path)
    mismatched = [
        s["key"]
        for s in outcome.manifest["scopes"]
        if s["status"] == "complete" and truth[s["key"]] != s["records_written"]
    ]
    checked = sum(1 for s in outcome.manifest["scopes"] if s["status"] == "complete")
    if mismatched:
        print(
            f"  ground truth: {len(mismatched)} scope(s) differ from the emulator: {mismatched[:5]}",
            file=sys.stderr,
        )
        return 1
    print(f"  ground truth: all {checked} complete scopes match the emulator's backups", file=sys.stderr)
    print(f"  files: {output.resolve()}", file=sys.stderr)
    return outcome.exit_code
