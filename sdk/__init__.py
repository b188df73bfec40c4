"""unidb: one Postgres schema for app state, documents and embeddings, searched as one.

>>> import unidb
>>> client = unidb.Client("http://127.0.0.1:8000")          # a running `unidb serve`
>>> client = unidb.Client.embedded("./unidb-data")           # or everything in-process
"""

from ._async_client import AsyncClient
from ._sync_backend import Backend
from ._sync_client import Client
from ._sync_transaction import Transaction
from .errors import (
    BadGateway,
    Conflict,
    Forbidden,
    GatewayTimeout,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServerError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnidbError,
    UnsupportedMediaType,
)
from .models import (
    Collection,
    Document,
    Hit,
    QueryResponse,
    StoredDocument,
    UpsertResult,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Backend",
    "BadGateway",
    "Client",
    "Collection",
    "Conflict",
    "Document",
    "Forbidden",
    "GatewayTimeout",
    "Hit",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "QueryResponse",
    "ServerError",
    "StoredDocument",
    "TooManyRequests",
    "Transaction",
    "Unauthorized",
    "Unavailable",
    "UnidbError",
    "UnsupportedMediaType",
    "UpsertResult",
    "__version__",
]
