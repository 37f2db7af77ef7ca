"""``cbr-crawler emulator`` / ``python -m crawler.emulator``: serve the emulator until interrupted.

Prints the URL, the demo credentials (masked unless ``--print-credentials``) and a curl example.
The credentials are the emulator's own built-in demo users, never real ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from crawler.emulator.scenario import Scenario, apply_overrides, load_scenario
from crawler.emulator.server import EmulatorServer

log = logging.getLogger("crawler.emulator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cbr-crawler emulator",
        description="Serve a local emulator of the Huawei Cloud CBR, IAM and EPS APIs on one port.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8080, help="port to bind, 0 for any free one (default 8080)"
    )
    parser.add_argument("--scenario", metavar="FILE", help="scenario file (YAML or JSON); flags override it")
    parser.add_argument(
        "--seed", type=int, help="seed for the estate, the demo credentials and the fault dice"
    )
    parser.add_argument(
        "--backups", type=int, metavar="N", help="total number of backups, spread over the domains"
    )
    parser.add_argument("--domains", metavar="A,B", help="comma-separated domain (account) names")
    parser.add_argument("--regions", metavar="R1,R2", help="comma-separated region ids")
    parser.add_argument("--token-ttl", type=float, metavar="S", help="IAM token lifetime in seconds")
    parser.add_argument(
        "--security-token-ttl", type=float, metavar="S", help="cap on temporary AK/SK lifetime"
    )
    parser.add_argument("--retry-after", action="store_true", default=None, help="send Retry-After on 429")
    parser.add_argument("--churn-creates", type=float, metavar="PER_S", help="backups created per second")
    parser.add_argument("--churn-deletes", type=float, metavar="PER_S", help="backups deleted per second")
    parser.add_argument(
        "--print-credentials", action="store_true", help="print the demo passwords and secret keys in clear"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _csv(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    if not items:
        raise ValueError("an empty list was given")
    return items


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """The scenario file (or the default scenario) with the command-line flags applied."""
    scenario = load_scenario(args.scenario) if args.scenario else Scenario()
    return apply_overrides(
        scenario,
        seed=args.seed,
        backups=args.backups,
        domains=_csv(args.domains),
        regions=_csv(args.regions),
        token_ttl_seconds=args.token_ttl,
        security_token_ttl_seconds=args.security_token_ttl,
        retry_after=args.retry_after,
        churn_creates=args.churn_creates,
        churn_deletes=args.churn_deletes,
    )


def _mask(secret: str | None) -> str:
    return "-" if not secret else "*" * 10


def describe(server: EmulatorServer, *, show_secrets: bool, out: TextIO) -> None:
    """Print the URL, the credentials (masked unless asked) and a curl example."""
    url = server.url
    print(f"cbr-crawler emulator listening on {url}", file=out)
    print(f"  estate: {server.estate.backup_count} backups, {len(server.estate.projects)} projects", file=out)
    print(f"  endpoints: IAM {url}/v3  EPS {url}/v1.0  CBR {url}/v3/{{project_id}}/backups", file=out)
    print(f"  control:   {url}/_emulator/truth  /_emulator/stats  /_emulator/scenario", file=out)
    print("credentials (user / password / AK / SK):", file=out)
    first = None
    for user in server.identity.credentials():
        principal = user.principal
        password = user.password if show_secrets else _mask(user.password)
        secret = user.secret_key if show_secrets else _mask(user.secret_key)
        ak = user.access_key or "-"
        print(f"  domain {principal.domain.name}: {principal.name} / {password} / {ak} / {secret}", file=out)
        first = first or user
    if not show_secrets:
        print("  (secrets masked; --print-credentials shows these local demo credentials)", file=out)
    if first is None:
        return
    domain = first.principal.domain
    project = next((p for p in server.identity.projects_of(domain.id) if p.name != "MOS"), None)
    # Masked: the shell substitutes $PASSWORD (closing and reopening the single-quoted body).
    password = first.password if show_secrets else "'\"$PASSWORD\"'"
    scope = f'"project":{{"id":"{project.id}"}}' if project else f'"domain":{{"name":"{domain.name}"}}'
    body = (
        '{"auth":{"identity":{"methods":["password"],"password":{"user":{'
        f'"name":"{first.principal.name}","password":"{password}","domain":{{"name":"{domain.name}"}}'
        f'}}}}}},"scope":{{{scope}}}}}}}'
    )
    print("example:" if show_secrets else "example (set PASSWORD to the user's password first):", file=out)
    print(
        f"  TOKEN=$(curl -si -X POST {url}/v3/auth/tokens -H 'Content-Type: application/json' -d '{body}'"
        " | awk -F': ' 'tolower($1)==\"x-subject-token\" {print $2}' | tr -d '\\r')",
        file=out,
    )
    if project is not None:
        print(f'  curl -s -H "X-Auth-Token: $TOKEN" "{url}/v3/{project.id}/backups?limit=2"', file=out)


async def serve(scenario: Scenario, *, host: str, port: int, show_secrets: bool) -> None:
    """Generate the estate, serve until SIGINT/SIGTERM."""
    started = time.perf_counter()
    server = EmulatorServer(scenario, host=host, port=port)
    async with server:
        log.info(
            "estate of %d backups ready in %.1f s", server.estate.backup_count, time.perf_counter() - started
        )
        describe(server, show_secrets=show_secrets, out=sys.stdout)
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for a bad scenario or flags)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        scenario = scenario_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"cbr-crawler emulator: {exc}", file=sys.stderr)
        return 2
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        pass
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(scenario, host=args.host, port=args.port, show_secrets=args.print_credentials))
    except OSError as exc:
        print(f"cbr-crawler emulator: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
