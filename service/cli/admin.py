"""``unidb keys`` and ``unidb tenants``: managing who may use the service."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from unidb.service.cli.common import administration, backend_for, with_database


def cmd_keys(args: argparse.Namespace) -> int:
    from unidb.service import auth

    with administration(args) as (engine, conn):
        if args.keys_command == "create":
            key_id, key = auth.create_key(conn, args.tenant, auth.parse_scopes(args.scopes))
            print(key)
            print(
                f"key {key_id} for tenant {args.tenant!r}: shown once, only its hash is kept",
                file=sys.stderr,
            )
        elif args.keys_command == "revoke":
            engine.keys.revoke(conn, args.id)
            print(f"key {args.id} revoked")
        else:
            for info in auth.list_keys(conn):
                state = f"revoked {info.revoked_at:%Y-%m-%d}" if info.revoked_at else "live"
                scopes = ",".join(info.scopes)
                print(f"{info.id}  {info.tenant}  {scopes}  {info.created_at:%Y-%m-%d}  {state}")
    return 0


def cmd_tenants(args: argparse.Namespace) -> int:
    from unidb.service.auth.tenants import grant_sql_role

    with administration(args) as (_, conn):
        grant_sql_role(conn, args.role, args.tenant)
    print(f"role {args.role} now reads tenant {args.tenant!r} only")
    return 0


def cmd_engines(args: argparse.Namespace) -> int:
    backend, owner = backend_for(args)
    try:
        checks = backend.check_engines().engines
    finally:
        owner.close()
    if not checks:
        print("no engine is configured (UNIDB_KV_ENGINES)")
        return 0
    for check in checks:
        found = check.found
        settings = (
            f"{found.algo}, seed {found.seed or 'unset'}, salt {found.salt_style}" if found else "-"
        )
        tokens = {True: "same tokens", False: "OTHER TOKENS", None: "no /tokenize"}
        state = "ok" if check.matches and check.tokenizer_matches is not False else "MISMATCH"
        print(f"{check.name}: {state}: {check.detail} [{settings}; block {check.block_size}; "
              f"{tokens[check.tokenizer_matches]}]")  # fmt: skip
    return 0 if all(c.matches and c.tokenizer_matches is not False for c in checks) else 1


def add_commands(commands: Any) -> None:
    keys = commands.add_parser("keys", help="API keys: create (printed once), list, revoke")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="a new key for a tenant; prints it once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--scopes", default="read,write", help="some of read,write,admin")
    with_database(create, url=False)
    listing = keys_commands.add_parser("list", help="every key: id, tenant, scopes, state")
    with_database(listing, url=False)
    revoke = keys_commands.add_parser("revoke", help="stop a key from working")
    revoke.add_argument("id")
    with_database(revoke, url=False)
    keys.set_defaults(run=cmd_keys)
    engines = commands.add_parser("engines", help="the LLM engines unidb follows")
    engines_commands = engines.add_subparsers(dest="engines_command", required=True)
    check = engines_commands.add_parser(
        "check", help="probe each engine: do unidb's block hashes and tokens match its own?"
    )
    with_database(check)
    engines.set_defaults(run=cmd_engines)
    tenants = commands.add_parser("tenants", help="tenants' SQL roles")
    tenants_commands = tenants.add_subparsers(dest="tenants_command", required=True)
    sql_role = tenants_commands.add_parser(
        "sql-role", help="let an existing Postgres role read one tenant's rows (and no others)"
    )
    sql_role.add_argument("role")
    sql_role.add_argument("--tenant", required=True)
    with_database(sql_role, url=False)
    tenants.set_defaults(run=cmd_tenants)
