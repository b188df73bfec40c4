"""Tenants: one tenant's key or SQL role never reaches another tenant's rows."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from unidb.service.config import Settings
from unidb.service.engine import Engine

from .test_auth import _bearer, _key, auth_on  # noqa: F401  (auth_on is a fixture)


def _ids(answer: Any) -> set[str]:
    assert answer.status_code == 200, answer.text
    return {hit["id"] for hit in answer.json()["hits"]}


@pytest.mark.usefixtures("auth_on")
def test_tenants_cannot_reach_each_other(
    api: TestClient,
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = (
        _bearer(_key(engine, "tenant-a", "read", "write", "admin")),
        _bearer(_key(engine, "tenant-b", "read", "write", "admin")),
    )
    name = f"shared_{uuid.uuid4().hex[:8]}"  # one name, a collection in each tenant
    base = f"/v1/collections/{name}"
    for headers in (a, b):
        made = api.post("/v1/collections", json={"name": name, "dim": 2}, headers=headers)
        assert made.status_code == 201, made.text
    secret = {"id": "secret", "text": "alpha secret plan", "embedding": [1.0, 0.0]}
    public = {"id": "public", "text": "beta public note", "embedding": [0.0, 1.0]}
    assert api.post(f"{base}/documents", json={"documents": [secret]}, headers=a).status_code == 200
    assert api.post(f"{base}/documents", json={"documents": [public]}, headers=b).status_code == 200

    # documents and search
    assert api.get(f"{base}/documents/secret", headers=b).status_code == 404
    assert api.delete(f"{base}/documents/secret", headers=b).status_code == 404
    assert (
        _ids(api.post(f"{base}/query", json={"text": "secret plan", "mode": "bm25"}, headers=b))
        == set()
    )
    assert _ids(
        api.post(f"{base}/query", json={"vector": [1, 0], "mode": "vector"}, headers=b)
    ) == {"public"}
    assert _ids(
        api.post(f"{base}/query", json={"vector": [1, 0], "mode": "vector"}, headers=a)
    ) == {"secret"}
    listed = api.get("/v1/collections", headers=b).json()["collections"]
    assert [c["documents"] for c in listed if c["name"] == name] == [1]

    # context and prefixes
    body = {"collection": name, "query": "secret plan", "mode": "bm25"}
    in_a = api.post("/v1/context", json=body, headers=a).json()
    in_b = api.post("/v1/context", json=body, headers=b).json()
    assert "alpha secret plan" in in_a["prompt"] and "alpha secret" not in in_b["prompt"]
    assert in_a["cache_salt"] != in_b["cache_salt"]  # per-tenant secret salts
    prefixes_b = api.get("/v1/prefixes", headers=b).json()["prefixes"]
    assert all(c["id"] != "secret" for p in prefixes_b for c in p["chunks"])
    prefixes_a = api.get("/v1/prefixes", headers=a).json()["prefixes"]
    assert any(c["id"] == "secret" for p in prefixes_a for c in p["chunks"])

    # state
    assert api.put("/v1/state/notes/plan", json={"value": "a only"}, headers=a).status_code == 200
    assert api.get("/v1/state/notes/plan", headers=b).status_code == 404
    assert api.put("/v1/state/notes/plan", json={"value": "b's"}, headers=b).status_code == 200
    assert api.get("/v1/state/notes/plan", headers=a).json()["value"] == "a only"
    assert api.get("/v1/state/notes", headers=b).json()["entries"][0]["value"] == "b's"

    # jobs
    job = api.post(f"{base}/index", json={}, headers=a).json()
    assert api.get(f"/v1/jobs/{job['id']}", headers=b).status_code == 404
    assert api.delete(f"/v1/jobs/{job['id']}", headers=b).status_code == 404

    # SQL under tenant A's role: A's rows only, whatever the role sets unidb.tenant to
    role = f"unidb_sql_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(engine.admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    assert settings.database_url
    monkeypatch.setenv("UNIDB_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("UNIDB_DATA_DIR", str(tmp_path))
    from unidb.service.cli.main import main

    assert main(["tenants", "sql-role", role, "--tenant", "tenant-a"]) == 0
    assert "reads tenant 'tenant-a' only" in capsys.readouterr().out
    with psycopg.connect(engine.admin_dsn) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        for claimed in ("tenant-b", "*", ""):
            conn.execute("SELECT set_config('unidb.tenant', %s, false)", (claimed,))
            ids = {r[0] for r in conn.execute("SELECT id FROM unidb.documents").fetchall()}
            assert "public" not in ids and "secret" in ids
            values = conn.execute(
                "SELECT value FROM unidb.state WHERE namespace = 'notes'"
            ).fetchall()
            assert values == [("a only",)]
            found = conn.execute("SELECT id FROM unidb.search_text(%s, 'secret plan')", (name,))
            assert [r[0] for r in found.fetchall()] == ["secret"]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM unidb.state")
        conn.rollback()

    # B dropping its collection leaves A's
    assert api.delete(base, headers=b).status_code == 200
    assert api.get(f"{base}/documents/secret", headers=a).status_code == 200
    assert api.delete(base, headers=a).status_code == 200


@pytest.mark.usefixtures("auth_on")
def test_mcp_tool_calls_run_as_the_keys_tenant(server_url: str, engine: Engine) -> None:
    import anyio
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    a = _key(engine, "tenant-a", "read", "write", "admin")
    b = _key(engine, "tenant-b", "read", "write", "admin")
    name = f"mcp_{uuid.uuid4().hex[:8]}"
    for key in (a, b):
        made = httpx.post(
            f"{server_url}/v1/collections", json={"name": name, "dim": 2}, headers=_bearer(key)
        )
        assert made.status_code == 201, made.text

    async def calls(key: str, *tool_calls: tuple[str, dict[str, Any]]) -> list[Any]:
        async with (
            httpx2.AsyncClient(headers=_bearer(key)) as http,
            streamable_http_client(f"{server_url}/mcp", http_client=http) as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await session.initialize()
            return [await session.call_tool(tool, arguments) for tool, arguments in tool_calls]

    secret = {"id": "secret", "text": "alpha secret plan", "embedding": [1.0, 0.0]}
    wrote, stored = anyio.run(
        calls,
        a,
        ("upsert_documents", {"collection": name, "documents": [secret]}),
        ("put_state", {"namespace": "plans", "key": "next", "value": "a only"}),
    )
    assert not wrote.is_error and not stored.is_error
    read, searched, state, context = anyio.run(
        calls,
        b,
        ("get_document", {"collection": name, "id": "secret"}),
        ("search", {"collection": name, "text": "secret plan", "mode": "bm25"}),
        ("get_state", {"namespace": "plans", "key": "next"}),
        ("build_context", {"collection": name, "query": "secret plan", "mode": "bm25"}),
    )
    assert read.is_error and "secret" not in str(read.structured_content.get("text", ""))
    assert searched.structured_content["hits"] == []
    assert state.is_error
    assert "alpha secret" not in context.structured_content["prompt"]
    # the same calls with A's key see A's rows; the default tenant's collection list has neither
    (own,) = anyio.run(calls, a, ("get_document", {"collection": name, "id": "secret"}))
    assert own.structured_content["text"] == "alpha secret plan"
    assert (
        httpx.get(f"{server_url}/v1/collections/{name}", headers=_bearer(a)).json()["documents"]
        == 1
    )
