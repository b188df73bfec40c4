"""unidb's agent tools: one definition each, as OpenAI or Anthropic tool schemas.

The argument models extend the same pydantic models the REST API takes, so a tool accepts
exactly what the matching route accepts, plus the collection or state address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .models import (
    CollectionName,
    ContextRequest,
    Document,
    DocumentId,
    QueryRequest,
    StateName,
    StatePut,
)

if TYPE_CHECKING:
    from ._async_backend import AsyncBackend
    from ._sync_backend import Backend

ToolFormat = Literal["openai", "anthropic"]


class SearchArgs(QueryRequest):
    """Search a collection by text (BM25, or meaning with an embedder), by vector, or both."""

    collection: CollectionName


class DocumentAddress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: CollectionName
    id: DocumentId


class UpsertDocumentsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: CollectionName
    documents: list[Document] = Field(min_length=1, max_length=1000)


class StateAddress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    namespace: StateName
    key: StateName


class PutStateArgs(StatePut):
    namespace: StateName
    key: StateName


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    arguments: type[BaseModel]
    # the call on a Backend, or on an AsyncBackend (where it answers an awaitable)
    run: Callable[[Backend | AsyncBackend, Any], Any]
    # the reply when the call raises NotFound, where that is an answer rather than an error
    when_not_found: Any = None

    def reply(self, result: Any) -> Any:
        """The call's result as JSON-ready data."""
        return _dump(result)

    def schema(self) -> dict[str, Any]:
        schema = self.arguments.model_json_schema()
        schema.pop("title", None)
        schema.pop("description", None)
        return schema


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


TOOLS: tuple[Tool, ...] = (
    Tool(
        "search",
        "Search a unidb collection. Give `text` (keywords or a question), a `vector`, or "
        "both; `mode` is hybrid (default), bm25 or vector; `filter` narrows by metadata, "
        'e.g. {"year": {"$gte": 2020}}. Returns the best `k` hits with id, text, metadata.',
        SearchArgs,
        lambda backend, a: backend.query(
            a.collection, QueryRequest.model_validate(a.model_dump(exclude={"collection"}))
        ),
    ),
    Tool(
        "get_document",
        "Read one document (text, metadata, version) by collection and id.",
        DocumentAddress,
        lambda backend, a: backend.get_document(a.collection, a.id),
    ),
    Tool(
        "upsert_documents",
        "Insert or replace documents by id in a collection, all in one transaction.",
        UpsertDocumentsArgs,
        lambda backend, a: backend.upsert_documents(a.collection, a.documents),
    ),
    Tool(
        "delete_document",
        "Delete one document by collection and id; answers whether it existed.",
        DocumentAddress,
        lambda backend, a: backend.delete_document(a.collection, a.id),
        when_not_found={"deleted": False},
    ),
    Tool(
        "get_state",
        "Read a JSON value of application state (an agent's memory, a plan, a cursor) and "
        "its version.",
        StateAddress,
        lambda backend, a: backend.get_state(a.namespace, a.key),
    ),
    Tool(
        "put_state",
        "Store a JSON value of application state. Pass `if_version` (the version you read; "
        "0 for a new key) to write only if nobody changed it since.",
        PutStateArgs,
        lambda backend, a: backend.put_state(
            a.namespace, a.key, StatePut(value=a.value, if_version=a.if_version)
        ),
    ),
    Tool(
        "build_context",
        "Retrieve the best `k` chunks for `query` from a collection and lay them out as an "
        "LLM prompt (system text, chunks, question last) that an engine's prefix cache can "
        "reuse. Use `session` to grow one context across turns. Returns the prompt, its "
        "token ids and the engine's KV block hashes.",
        ContextRequest,
        lambda backend, a: backend.build_context(a),
    ),
)
BY_NAME = {tool.name: tool for tool in TOOLS}


def definitions(format: ToolFormat) -> list[dict[str, Any]]:
    """Every tool as the named framework expects it."""
    if format == "openai":
        return [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.schema(),
                },
            }
            for t in TOOLS
        ]
    if format == "anthropic":
        return [
            {"name": t.name, "description": t.description, "input_schema": t.schema()}
            for t in TOOLS
        ]
    raise ValueError(f"unknown tool format {format!r}; known: openai, anthropic")
