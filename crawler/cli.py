"""Command line: the sub-commands' parsers, and the exception tree mapped to exit codes.

Each sub-command lives in :mod:`crawler.commands` (its parser and its function); this module only
gathers them and turns what escapes them into a message and an exit code (documented in the
README):

    0   complete: every scope of every tenant
    1   some scope partial or failed (the manifest says which and why)
    2   bad configuration or usage
    130 interrupted by SIGINT or SIGTERM
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from crawler import __version__
from crawler.commands import demo, diff, merge, plan, report, run, validate
from crawler.errors import ConfigError, CrawlerError, UsageError
from crawler.pipeline.runner import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_USAGE

# Each sub-command is a module of crawler.commands with add_parser(sub) and its cmd_* function.
COMMANDS = (run, plan, validate, demo, merge, diff, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cbr-crawler",
        description="A complete, trustworthy inventory of Huawei Cloud CBR backups.",
    )
    parser.add_argument("--version", action="version", version=f"cbr-crawler {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    # Listed for --help only: main() hands `emulator ...` to the emulator's own parser.
    sub.add_parser("emulator", help="serve the CBR/IAM/EPS emulator on loopback (see: emulator --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        # The emulator has its own parser (also `python -m crawler.emulator`); hand it every flag.
        from crawler.emulator.__main__ import main as emulator_main

        return emulator_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"cbr-crawler: configuration error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"cbr-crawler: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CrawlerError as exc:
        print(f"cbr-crawler: {exc}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except OSError as exc:
        # The manifest or the lock could not be written (full disk, read-only mount...).
        print(
            f"cbr-crawler: cannot write {exc.filename or 'the output'}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
