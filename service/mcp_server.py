"""`unidb mcp`: unidb's agent tools over the Model Context Protocol (official `mcp` SDK).

The tools, their input schemas and their behaviour are the SDK's (`unidb.tools`): an MCP
client sees exactly what `client.tools()` describes, and each call runs as `client.call_tool()`
runs it, on the engine itself (or a server over HTTP) rather than through a client.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

import unidb
from unidb import Backend
from unidb._sync_tool_calls import call_tool as run_tool_call
from unidb.service.auth.tenancy import current_tenant
from unidb.tools import TOOLS


def build_server(
    backend: Callable[[], Backend], tenant_of: Callable[[Any], str] | None = None
) -> Server[Any]:
    """An MCP server whose tool calls run on the backend ``backend()`` returns (an engine).

    With ``tenant_of`` each tool call runs as the tenant it names for the call's request
    context (over HTTP: the tenant of the API key on the request that carried the call)."""

    async def list_tools(
        context: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=t.name, description=t.description, input_schema=t.schema())
                for t in TOOLS
            ]
        )

    async def call_tool(context: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        tenant = tenant_of(context) if tenant_of is not None else None

        def run() -> Any:
            arguments = dict(params.arguments or {})
            if tenant is None:
                return run_tool_call(backend(), params.name, arguments)
            token = current_tenant.set(tenant)
            try:
                return run_tool_call(backend(), params.name, arguments)
            finally:
                current_tenant.reset(token)

        # the engine is synchronous: run the call off the event loop
        result = await anyio.to_thread.run_sync(run)
        failed = isinstance(result, dict) and set(result) == {"error"}
        structured = result if isinstance(result, dict) else {"result": result}
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(result))],
            structured_content=structured,
            is_error=failed,
        )

    return Server(
        "unidb",
        version=unidb.__version__,
        instructions="Search documents, read and write them, and keep state in unidb.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def serve_stdio(backend: Backend) -> None:
    server = build_server(lambda: backend)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())
