"""The threaded counterparts of ``_async_compat``, under the same names."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from ._client import open_embedded
from ._sync_backend import Backend

T = TypeVar("T")

sleep = time.sleep

__all__ = ["Pipeline", "from_engine", "open_embedded", "sleep"]


def from_engine(backend: Backend) -> Backend:
    return backend


class Pipeline(Generic[T]):
    """Calls running in ``depth`` worker threads, answered in the order sent; leaving the
    block cancels those not yet started and waits for the rest."""

    def __init__(self, depth: int) -> None:
        self._depth = depth
        self._pending: deque[Future[T]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=depth, thread_name_prefix="unidb-ingest")

    @property
    def full(self) -> bool:
        return len(self._pending) >= self._depth

    def __bool__(self) -> bool:
        return bool(self._pending)

    def send(self, call: Callable[..., T], *args: Any) -> None:
        self._pending.append(self._pool.submit(call, *args))

    def receive(self) -> T:
        return self._pending.popleft().result()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)
