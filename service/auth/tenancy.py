"""Which tenant the current request acts for.

The API sets it from the caller's key; `Engine.transaction` hands it to Postgres, whose
row-level security shows and accepts only that tenant's rows. Work that is not a request
(the tailer, index builds, outbox followers) uses the pool directly, where the session
setting ``*`` lets the service see every tenant.
"""

from __future__ import annotations

from contextvars import ContextVar

DEFAULT_TENANT = "default"
SERVICE_WIDE = "*"
SERVICE_ROLE = "unidb_service"

current_tenant: ContextVar[str] = ContextVar("unidb_tenant", default=DEFAULT_TENANT)
