"""The few things the asyncio client does differently from the threaded one.

``_sync_compat`` has the same names; the generated client imports those instead.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast

from . import _client
from ._async_backend import AsyncBackend
from ._sync_backend import Backend

T = TypeVar("T")

sleep = asyncio.sleep


async def open_embedded(path: str | Path, **settings: Any) -> Backend:
    # starting Postgres takes seconds: not on the event loop
    return await asyncio.to_thread(_client.open_embedded, path, **settings)


def from_engine(backend: Backend) -> AsyncBackend:
    """An engine in this process as an ``AsyncBackend``: each call in a worker thread (the
    engine is synchronous), with the caller's context variables."""
    return cast(AsyncBackend, _InThread(backend))


class _InThread:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        call = getattr(self._backend, name)

        async def in_thread(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(call, *args, **kwargs)

        return in_thread

    async def aclose(self) -> None:
        await asyncio.to_thread(self._backend.close)


class Pipeline(Generic[T]):
    """Calls running concurrently, at most ``depth`` at once, answered in the order sent;
    leaving the block cancels those not yet answered."""

    def __init__(self, depth: int) -> None:
        self._depth = depth
        self._pending: deque[asyncio.Task[T]] = deque()

    @property
    def full(self) -> bool:
        return len(self._pending) >= self._depth

    def __bool__(self) -> bool:
        return bool(self._pending)

    def send(self, call: Callable[..., Awaitable[T]], *args: Any) -> None:
        self._pending.append(asyncio.ensure_future(call(*args)))

    async def receive(self) -> T:
        return await self._pending.popleft()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._pending:
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        self._pending.clear()
