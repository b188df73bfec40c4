"""Generated from ``_async_tool_calls.py`` by ``python sdk/_async_to_sync.py``: edit that file,
not this one, then regenerate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ._client import tool_arguments, tool_error
from ._sync_backend import Backend
from .errors import InvalidInput, NotFound, UnidbError
from .tools import BY_NAME


def call_tool(backend: Backend, name: str, arguments: Mapping[str, Any] | str | None) -> Any:
    """The tool's JSON-ready result, or ``{"error": {"code", "message", "field"}}``."""
    tool = BY_NAME.get(name)
    if tool is None:
        known = ", ".join(BY_NAME)
        return InvalidInput(f"unknown tool {name!r}; known: {known}", field="name").to_dict()
    try:
        parsed = tool.arguments.model_validate(tool_arguments(arguments))
        return tool.reply(tool.run(backend, parsed))
    except ValidationError as exc:
        return tool_error(exc)
    except NotFound as exc:
        if tool.when_not_found is not None:
            return tool.when_not_found
        return exc.to_dict()
    except UnidbError as exc:
        return exc.to_dict()
