"""The `unidb` command line: serve, ingest, query, migrate, keys, tenants, index, eval, tune,
mcp, quickstart. Each command group lives in its own module and adds its own parsers."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from unidb.errors import UnidbError
from unidb.service.cli import admin, data, server, tours
from unidb.service.logs import configure


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unidb")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _add_log_flags(parser: argparse.ArgumentParser) -> None:
    """``--log-level``/``--log-format`` on every subcommand, nested ones too (``unidb keys
    create --log-level debug``); SUPPRESS keeps a subcommand from overwriting the flag given
    before it (``unidb --log-level debug serve``)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for command in action.choices.values():
            command.add_argument(
                "--log-level",
                default=argparse.SUPPRESS,
                choices=["debug", "info", "warning", "error"],
                help="unidb's own lines (default info); debug lets every library speak",
            )
            command.add_argument(
                "--log-format",
                default=argparse.SUPPRESS,
                choices=["text", "json"],
                help="json: one JSON object per line",
            )
            _add_log_flags(command)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unidb", description=__doc__)
    parser.add_argument("--version", action="version", version=f"unidb {_version()}")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="unidb's own lines (default info, or UNIDB_LOG_LEVEL); debug also lets every "
        "library speak",
    )
    parser.add_argument(
        "--log-format",
        default=None,
        choices=["text", "json"],
        help="json: one JSON object per line, for a log collector (default text, or "
        "UNIDB_LOG_FORMAT)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (server, admin, data, tours):
        group.add_commands(commands)
    _add_log_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.log_level = args.log_level or os.environ.get("UNIDB_LOG_LEVEL", "info").lower()
        args.log_format = args.log_format or os.environ.get("UNIDB_LOG_FORMAT", "text").lower()
        configure(args.log_level, args.log_format)
    except UnidbError as exc:
        print(f"unidb: {exc}", file=sys.stderr)
        return 2
    try:
        code: int = args.run(args)
        return code
    except UnidbError as exc:
        print(f"unidb: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        if exc.title != "Settings":
            raise
        # a setting out of its bounds: one line naming it, not a traceback
        for error in exc.errors():
            name = "UNIDB_" + "_".join(str(part) for part in error["loc"][:1]).upper()
            # the value itself is not echoed: it may be a key or a URL with a password
            print(f"unidb: {name}: {error['msg']}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
