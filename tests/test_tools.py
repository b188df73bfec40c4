"""Agent tool schemas: every tool defined for OpenAI and Anthropic, and every one round-trips."""

from __future__ import annotations

import json
import uuid

import unidb


def test_every_tool_round_trips(server_url: str, collection: str) -> None:
    namespace = f"tools_{uuid.uuid4().hex[:8]}"
    with unidb.Client(server_url) as client:
        client.create_collection(collection, dim=2)
        # arguments as a model would send them: JSON text
        written = client.call_tool("upsert_documents", json.dumps({
            "collection": collection,
            "documents": [{"id": "t1", "text": "tools talk to unidb", "metadata": {"n": 1}, "embedding": [1, 0]},
                          {"id": "t2", "text": "agents keep state", "metadata": {"n": 2}, "embedding": [0, 1]}],
        }))  # fmt: skip
        assert written == {"written": 2, "unchanged": 0}
        found = client.call_tool("search", {"collection": collection, "text": "agents", "k": 5})
        assert [h["id"] for h in found["hits"]] == ["t2"]
        by_vector = client.call_tool(
            "search", {"collection": collection, "vector": [1, 0], "mode": "vector", "k": 1}
        )
        assert by_vector["hits"][0]["id"] == "t1"
        document = client.call_tool("get_document", {"collection": collection, "id": "t1"})
        assert document["text"] == "tools talk to unidb" and document["version"] == 1
        assert client.call_tool("delete_document", {"collection": collection, "id": "t1"}) == {
            "deleted": True
        }
        assert client.call_tool("delete_document", {"collection": collection, "id": "t1"}) == {
            "deleted": False
        }

        stored = client.call_tool(
            "put_state",
            {"namespace": namespace, "key": "goal", "value": {"step": 1}, "if_version": 0},
        )
        assert stored["version"] == 1
        assert client.call_tool("get_state", {"namespace": namespace, "key": "goal"})["value"] == {
            "step": 1
        }
        conflict = client.call_tool(
            "put_state", {"namespace": namespace, "key": "goal", "value": 2, "if_version": 0}
        )
        assert (
            conflict["error"]["code"] == "conflict" and conflict["error"]["field"] == "if_version"
        )

        context = client.call_tool(
            "build_context", {"collection": collection, "query": "what do agents keep?", "k": 2}
        )
        assert [s["id"] for s in context["segments"]] == ["t2"]
        assert context["prompt"].endswith("Question: what do agents keep?\nAnswer:")
        assert len(context["block_hashes"]) == len(context["token_ids"]) // 16
        bad_context = client.call_tool(
            "build_context", {"collection": collection, "query": "x", "block_size": 0}
        )
        assert bad_context["error"]["field"] == "block_size"

        bad = client.call_tool("search", {"collection": collection, "k": 0, "text": "x"})
        assert bad["error"]["field"] == "k"
        assert client.call_tool("search", "{not json")["error"]["field"] == "arguments"
        missing = client.call_tool("get_document", {"collection": collection, "id": "zzz"})
        assert missing["error"]["code"] == "not_found"
        client.delete_state(namespace, "goal")
