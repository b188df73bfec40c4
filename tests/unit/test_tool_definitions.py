"""Agent tool definitions, built without a server."""

from __future__ import annotations

import json

import pytest

import unidb
from unidb.tools import TOOLS


def test_definitions_in_both_formats() -> None:
    client = unidb.Client("http://127.0.0.1:1")
    openai = client.tools(format="openai")
    anthropic = client.tools(format="anthropic")
    names = [t.name for t in TOOLS]
    assert names == [
        "search",
        "get_document",
        "upsert_documents",
        "delete_document",
        "get_state",
        "put_state",
        "build_context",
    ]
    assert [d["function"]["name"] for d in openai] == names
    assert [d["name"] for d in anthropic] == names
    for definition in openai:
        assert definition["type"] == "function"
        params = definition["function"]["parameters"]
        assert params["type"] == "object" and definition["function"]["description"]
        json.dumps(params)  # plain JSON
    search = {d["name"]: d for d in anthropic}["search"]["input_schema"]
    assert "collection" in search["required"]
    assert {"text", "vector", "k", "mode", "filter"} <= set(search["properties"])
    with pytest.raises(ValueError):
        client.tools(format="langchain")  # type: ignore[arg-type]
