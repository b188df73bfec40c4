"""API keys: 401 without a known key, 403 without the scope, hashes only at rest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import unidb
from unidb.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from unidb.service import auth
from unidb.service.config import Settings
from unidb.service.engine import Engine

from .conftest import snapshot


@pytest.fixture
def auth_on(engine: Engine) -> Iterator[None]:
    """The session's engine with API keys required, as for a non-loopback bind."""
    plain = engine.settings
    engine.settings = plain.model_copy(update={"auth": "on"})
    try:
        yield
    finally:
        engine.settings = plain


def _key(engine: Engine, tenant: str, *scopes: auth.Scope) -> str:
    with engine.transaction() as conn:
        return auth.create_key(conn, tenant, list(scopes))[1]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.usefixtures("auth_on")
def test_keys_and_scopes(api: TestClient, engine: Engine, collection: str) -> None:
    reader, writer, admin = (
        _key(engine, "default", "read"),
        _key(engine, "default", "read", "write"),
        _key(engine, "default", "admin"),
    )
    before = snapshot(engine)
    missing = api.post("/v1/collections", json={"name": collection, "dim": 2})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["field"] == "authorization"
    key_id = reader.split("_")[1]
    for wrong in ("nonsense", f"unidb_{key_id}_{'x' * 43}", reader + "x", "Basic abc"):
        headers = {"Authorization": wrong} if wrong.startswith("Basic") else _bearer(wrong)
        assert api.get("/v1/collections", headers=headers).status_code == 401
    refused = api.post(
        "/v1/collections", json={"name": collection, "dim": 2}, headers=_bearer(reader)
    )
    assert refused.status_code == 403 and "'admin' scope" in refused.json()["error"]["message"]
    assert snapshot(engine) == before  # refused requests changed nothing

    created = api.post(
        "/v1/collections", json={"name": collection, "dim": 2}, headers=_bearer(admin)
    )
    assert created.status_code == 201
    document = {"documents": [{"id": "a", "text": "hello", "embedding": [1.0, 0.0]}]}
    path = f"/v1/collections/{collection}/documents"
    assert api.post(path, json=document, headers=_bearer(reader)).status_code == 403
    assert api.post(path, json=document, headers=_bearer(writer)).status_code == 200
    assert api.get(f"{path}/a", headers=_bearer(reader)).status_code == 200
    assert api.get(f"{path}/a", headers=_bearer(admin)).status_code == 403  # scopes are exact
    assert api.put("/v1/state/ns/k", json={"value": 1}, headers=_bearer(reader)).status_code == 403
    # /metrics names every tenant's collections: no tenant key reads it, even an admin's
    assert api.get("/metrics", headers=_bearer(reader)).status_code == 403
    assert api.get("/metrics", headers=_bearer(admin)).status_code == 403
    assert api.get("/healthz").status_code == 200  # probes need no key
    assert api.post("/mcp", json={}).status_code == 401
    assert api.post("/mcp", json={}, headers=_bearer(reader)).status_code == 403

    with engine.transaction() as conn:
        engine.keys.revoke(conn, key_id)
        with pytest.raises(NotFound):
            engine.keys.revoke(conn, key_id)
    assert api.get("/v1/collections", headers=_bearer(reader)).status_code == 401

    with engine.transaction() as conn:
        stored = conn.execute("SELECT string_agg(secret_hash, ' ') FROM unidb.api_keys").fetchone()
    assert stored is not None and stored[0].count("$argon2id$") >= 3
    assert writer.split("_", 2)[2] not in stored[0]


@pytest.mark.usefixtures("auth_on")
def test_sdk_sends_the_key(
    server_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNIDB_API_KEY", raising=False)
    with pytest.raises(Unauthorized):
        unidb.Client(server_url).list_collections()
    key = _key(engine, "acme", "read")
    assert isinstance(unidb.Client(server_url, api_key=key).list_collections(), list)
    monkeypatch.setenv("UNIDB_API_KEY", key)
    assert isinstance(unidb.Client(server_url).list_collections(), list)
    with pytest.raises(Forbidden):
        unidb.Client(server_url).create_collection("never_made", dim=2)


def test_bad_key_requests_are_refused(engine: Engine) -> None:
    with pytest.raises(InvalidInput):
        auth.parse_scopes("read,superuser")
    with pytest.raises(InvalidInput):
        auth.parse_scopes("")
    with engine.transaction() as conn, pytest.raises(InvalidInput):
        auth.create_key(conn, "tenant with spaces", ["read"])


def test_cli_keys(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    engine: Engine,
) -> None:
    from unidb.service.cli.main import main

    assert settings.database_url
    monkeypatch.setenv("UNIDB_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("UNIDB_DATA_DIR", str(tmp_path))
    assert main(["keys", "create", "--tenant", "cli-tenant", "--scopes", "read,admin"]) == 0
    printed = capsys.readouterr()
    key = printed.out.strip()
    assert key.startswith("unidb_") and "shown once" in printed.err
    principal = engine.keys.check(engine.pool.connection, key)
    assert principal is not None and principal.tenant == "cli-tenant"
    assert principal.scopes == {"read", "admin"}
    key_id = key.split("_")[1]
    assert main(["keys", "list"]) == 0
    assert f"{key_id}  cli-tenant  read,admin" in capsys.readouterr().out
    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "revoke", key_id]) == 2
    assert main(["keys", "create", "--tenant", "x", "--scopes", "root"]) == 2
