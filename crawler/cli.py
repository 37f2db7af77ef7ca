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
import os
import sys
from collections.abc import Mapping, Sequence

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


UMASK_ENV = "CBR_CRAWLER_UMASK"
DEFAULT_UMASK = 0o077  # files 0600, directories 0700: the inventory and the run state are sensitive


def output_umask(environ: Mapping[str, str]) -> int:
    """The umask every file and directory the crawler creates gets: $CBR_CRAWLER_UMASK (octal, e.g.
    022 when node_exporter or a downstream reader runs as another user), else 077."""
    text = environ.get(UMASK_ENV, "").strip()
    if not text:
        return DEFAULT_UMASK
    try:
        value = int(text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777:
        raise UsageError(f"{UMASK_ENV}={text!r}: give an octal umask such as 077 or 022")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        # The emulator has its own parser (also `python -m crawler.emulator`); hand it every flag.
        from crawler.emulator.__main__ import main as emulator_main

        return emulator_main(argv[1:])
    args = build_parser().parse_args(argv)
    previous_umask: int | None = None
    try:
        # Outputs, run state, reports and metrics private (0600/0700) unless asked otherwise.
        previous_umask = os.umask(output_umask(os.environ))
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
    finally:
        if previous_umask is not None:
            os.umask(previous_umask)  # as it was, for a caller that goes on (tests call main())


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
