"""URL paths of the REST API, each id one segment that no client or proxy can reinterpret."""

from __future__ import annotations

import re
from urllib.parse import quote, urlencode

from .errors import InvalidInput

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def segment(value: str, field: str) -> str:
    """``value`` as one URL path segment that no client or proxy can reinterpret: every
    character outside A-Z a-z 0-9 ``-_~`` is percent-encoded, dots included, so ``.`` and
    ``..`` stay ids instead of becoming dot segments that a URL normaliser removes.

    A control character cannot be matched by the server's routes (nor stored there)."""
    if _CONTROL.search(value):
        raise InvalidInput(
            "must not contain control characters (U+0000-U+001F, U+007F)", field=field
        )
    try:
        return quote(value, safe="").replace(".", "%2E")
    except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form
        raise InvalidInput("is not valid Unicode text", field=field) from exc


def collection_path(name: str) -> str:
    return f"/v1/collections/{segment(name, 'collection')}"


def document_path(collection: str, document_id: str) -> str:
    return f"{collection_path(collection)}/documents/{segment(document_id, 'id')}"


def state_path(namespace: str, key: str | None = None) -> str:
    path = f"/v1/state/{segment(namespace, 'namespace')}"
    return path if key is None else f"{path}/{segment(key, 'key')}"


def state_list_path(namespace: str, prefix: str, after: str | None, limit: int) -> str:
    params = {"prefix": prefix, "limit": str(limit)}
    if after is not None:
        params["after"] = after
    return state_path(namespace) + "?" + urlencode(params)


def state_delete_path(namespace: str, key: str, if_version: int | None) -> str:
    suffix = "" if if_version is None else f"?if_version={if_version}"
    return state_path(namespace, key) + suffix


def prefixes_path(collection: str | None, limit: int) -> str:
    params = {"limit": str(limit)}
    if collection is not None:
        params["collection"] = collection
    return "/v1/prefixes?" + urlencode(params)


def warm_path(prefix_key: str) -> str:
    return f"/v1/prefixes/{segment(prefix_key, 'prefix_key')}/warm"


def job_path(job_id: int) -> str:
    return f"/v1/jobs/{int(job_id)}"
