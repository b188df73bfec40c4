"""``Client`` and ``AsyncClient`` are one definition: the synchronous modules are what the
generator writes from the asyncio ones today, and the two sides expose the same public
methods with the same signatures (the asyncio ones as coroutines where they do I/O)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import unidb
from unidb import _async_to_sync
from unidb._async_backend import AsyncBackend
from unidb._async_transaction import AsyncTransaction

# the context-manager protocol is part of the surface; other dunders and _names are not
PROTOCOL = {"__init__", "__enter__", "__exit__", "__aenter__", "__aexit__"}

PAIRS = [
    # (asyncio class, sync class, public members that do no I/O, so are plain on both sides)
    (unidb.AsyncClient, unidb.Client, {"__init__", "backend", "tools", "transaction"}),
    (AsyncTransaction, unidb.Transaction, {"__init__", "put_state", "delete_state", "upsert",
                                           "delete", "commit_token"}),
    (AsyncBackend, unidb.Backend, set()),
]  # fmt: skip


def _members(cls: type) -> dict[str, Any]:
    ours = [klass for klass in cls.__mro__ if klass.__module__.startswith("unidb")]
    if getattr(cls, "_is_protocol", False):
        ours = []  # typing gives a Protocol an __init__ of its own
    return {
        name: inspect.getattr_static(cls, name)
        for name in dir(cls)
        if not name.startswith("_") or (name in PROTOCOL and any(name in k.__dict__ for k in ours))
    }


def _function(member: Any) -> Any:
    if isinstance(member, property):
        return member.fget
    if isinstance(member, classmethod | staticmethod):
        return member.__func__
    return member


@pytest.mark.parametrize(
    ("async_cls", "sync_cls", "plain"), PAIRS, ids=["client", "transaction", "backend"]
)
def test_both_sides_have_the_same_methods_and_signatures(
    async_cls: type, sync_cls: type, plain: set[str]
) -> None:
    async_members = {_async_to_sync.rename(name): m for name, m in _members(async_cls).items()}
    sync_members = _members(sync_cls)
    assert sorted(async_members) == sorted(sync_members)
    for name, async_member in async_members.items():
        sync_member = sync_members[name]
        assert type(async_member) is type(sync_member), name  # property, classmethod, function
        async_fn, sync_fn = _function(async_member), _function(sync_member)
        # annotations compared as written, with the asyncio names (httpx.AsyncBaseTransport,
        # AsyncBackend) read as their synchronous twins
        assert _async_to_sync.rename(str(inspect.signature(async_fn))) == str(
            inspect.signature(sync_fn)
        ), name
        assert not inspect.iscoroutinefunction(sync_fn), name
        assert inspect.iscoroutinefunction(async_fn) == (name not in plain), name
        async_doc, sync_doc = inspect.getdoc(async_fn) or "", inspect.getdoc(sync_fn) or ""
        assert sync_doc == _async_to_sync.sync_text(async_doc), name


def test_the_methods_one_side_used_to_lack_are_on_both() -> None:
    for name in ("health", "ingest", "transaction", "tools", "wait_job", "transact", "call_tool"):
        assert callable(getattr(unidb.Client, name)) and callable(getattr(unidb.AsyncClient, name))
    for cls in (unidb.Client, unidb.AsyncClient):
        assert {"backend", "transport"} <= set(inspect.signature(cls).parameters)
    assert callable(unidb.AsyncClient.aclose) and callable(unidb.Client.close)


def test_generated_code_is_current() -> None:
    """Edit the ``_async_*`` source and run ``python sdk/_async_to_sync.py``."""
    for path, text in _async_to_sync.generated().items():
        assert path.read_text() == text, f"{path.name} is stale"


def test_the_generator_turns_asyncio_code_into_its_synchronous_twin() -> None:
    source = (
        '"""A source module."""\n'
        "from ._async_backend import AsyncBackend\n"
        "from ._sync_backend import Backend  # async only\n\n\n"
        "class Thing:\n"
        "    async def __aenter__(self) -> AsyncBackend:\n"
        "        async with self.lock:\n"
        "            return await self.backend.aclose()\n"
    )
    out = _async_to_sync.to_sync(source, "_async_thing.py")
    assert out.startswith('"""Generated from ``_async_thing.py``')
    assert "from ._sync_backend import Backend\n" in out
    assert "    def __enter__(self) -> Backend:\n        with self.lock:\n" in out
    assert "            return self.backend.close()\n" in out
    assert "A source module" not in out and "async only" not in out
    with pytest.raises(ValueError, match="asyncio"):
        _async_to_sync.to_sync("import asyncio\n", "_async_thing.py")
