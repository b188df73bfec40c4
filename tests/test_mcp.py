"""`unidb mcp` over stdio, driven by the official MCP client."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

import unidb
from unidb.tools import TOOLS

pytestmark = pytest.mark.slow


def test_stdio_server_lists_and_runs_tools(
    database_url: str, collection: str, tmp_path: Path, engine: object
) -> None:
    unidb.Client(backend=engine).create_collection(collection, dim=2)  # type: ignore[arg-type]
    parameters = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "unidb.service.cli",
            "--log-level",
            "warning",
            "mcp",
            "--data-dir",
            str(tmp_path),
        ],
        env={**os.environ, "UNIDB_DATABASE_URL": database_url},
    )

    async def scenario() -> None:
        async with stdio_client(parameters) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            listed = await session.list_tools()
            assert [t.name for t in listed.tools] == [t.name for t in TOOLS]
            search = next(t for t in listed.tools if t.name == "search")
            assert "collection" in search.input_schema["required"]

            written = await session.call_tool("upsert_documents", {
                "collection": collection,
                "documents": [{"id": "m1", "text": "protocol tools work", "embedding": [1, 0]}],
            })  # fmt: skip
            assert not written.is_error
            assert json.loads(written.content[0].text) == {"written": 1, "unchanged": 0}
            found = await session.call_tool(
                "search", {"collection": collection, "text": "protocol"}
            )
            assert [h["id"] for h in found.structured_content["hits"]] == ["m1"]
            context = await session.call_tool(
                "build_context", {"collection": collection, "query": "do protocol tools work?"}
            )
            assert not context.is_error
            assert [s["id"] for s in context.structured_content["segments"]] == ["m1"]
            state = await session.call_tool(
                "put_state", {"namespace": collection, "key": "k", "value": 3, "if_version": 0}
            )
            assert state.structured_content["version"] == 1
            clash = await session.call_tool(
                "put_state", {"namespace": collection, "key": "k", "value": 4, "if_version": 0}
            )
            assert clash.is_error and clash.structured_content["error"]["code"] == "conflict"
            bad = await session.call_tool("get_document", {"collection": collection})
            assert bad.is_error and bad.structured_content["error"]["field"] == "id"

    anyio.run(scenario)
    unidb.Client(backend=engine).delete_state(collection, "k")  # type: ignore[arg-type]


def test_streamable_http_at_mcp(server_url: str, collection: str, engine: object) -> None:
    from mcp.client.streamable_http import streamable_http_client

    unidb.Client(backend=engine).create_collection(collection, dim=2)  # type: ignore[arg-type]

    async def scenario() -> None:
        async with streamable_http_client(f"{server_url}/mcp") as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                listed = await session.list_tools()
                assert {t.name for t in listed.tools} == {t.name for t in TOOLS}
                written = await session.call_tool("upsert_documents", {
                    "collection": collection,
                    "documents": [{"id": "h1", "text": "streamed over http", "embedding": [0, 1]}],
                })  # fmt: skip
                assert written.structured_content == {"written": 1, "unchanged": 0}
                found = await session.call_tool(
                    "get_document", {"collection": collection, "id": "h1"}
                )
                assert found.structured_content["text"] == "streamed over http"
                context = await session.call_tool(
                    "build_context", {"collection": collection, "query": "streamed", "k": 1}
                )
                assert context.structured_content["segments"][0]["id"] == "h1"

    anyio.run(scenario)
