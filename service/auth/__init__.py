"""Who a request acts for: API keys (``keys``), the tenant of a request and of the service's
own work (``tenancy``), and tenants' SQL roles (``tenants``)."""

from unidb.service.auth.keys import (
    CACHE_S,
    SCOPES,
    KeyChecker,
    KeyInfo,
    Principal,
    Scope,
    check_tenant,
    create_key,
    list_keys,
    parse_scopes,
)

__all__ = [
    "CACHE_S",
    "SCOPES",
    "KeyChecker",
    "KeyInfo",
    "Principal",
    "Scope",
    "check_tenant",
    "create_key",
    "list_keys",
    "parse_scopes",
]
