"""Generated from ``_async_transaction.py`` by ``python sdk/_async_to_sync.py``: edit that file,
not this one, then regenerate."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from ._client import Writes
from ._sync_backend import Backend


class Transaction(Writes):
    """Writes collected by ``Client.transaction()``, applied together on leaving the block."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self._backend = backend

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        request = self._request(exc_type)
        if request is not None:
            self.result = self._backend.transact(request)
