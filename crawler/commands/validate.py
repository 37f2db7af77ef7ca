"""``cbr-crawler validate`` and ``schema``: tenant files checked, and described, without a network."""

from __future__ import annotations

import argparse
import sys

import orjson

from crawler.config import json_schema, load_tenants


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    validate = sub.add_parser("validate", help="check tenant files without touching the network")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=cmd_validate)

    schema = sub.add_parser("schema", help="print the JSON Schema of tenant files (for editors)")
    schema.set_defaults(func=cmd_schema)


def cmd_validate(args: argparse.Namespace) -> int:
    for tenant in load_tenants(args.files):
        print(f"ok: {tenant.source}: tenant {tenant.name}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.buffer.write(
        orjson.dumps(json_schema(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    )
    return 0
