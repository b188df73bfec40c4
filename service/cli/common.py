"""What the ``unidb`` commands share: settings from the flags, the engine or a server to talk
to, and the database flags every command takes."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unidb import Backend, Client
from unidb.service.config import Settings


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "data_dir", "workers"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def backend_for(args: argparse.Namespace) -> tuple[Backend, Any]:
    """A backend for one-shot commands: a server at --url, else the database directly."""
    if args.url:
        client = Client(args.url)
        return client.backend, client
    from unidb.service.engine import Engine

    engine = Engine.start(settings_from(args), take_over_jobs=False)
    return engine, engine


@contextmanager
def administration(args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """The engine and one service-wide transaction, for commands that manage the service."""
    from unidb.service.engine import Engine

    engine = Engine.start(settings_from(args), take_over_jobs=False)
    try:
        with engine.transaction(service_wide=True) as conn:
            yield engine, conn
    finally:
        engine.close()


def with_database(sub: argparse.ArgumentParser, *, url: bool = True) -> None:
    """The flags that say which database (or server) a command works on."""
    sub.add_argument("--data-dir", type=Path, help="embedded Postgres lives here (UNIDB_DATA_DIR)")
    if url:
        sub.add_argument("--url", help="talk to a running unidb server instead of the database")
