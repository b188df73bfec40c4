"""JSON values on their way into jsonb: encoded once, checked for what Postgres refuses."""

from __future__ import annotations

from typing import Any

import orjson

from unidb.errors import InvalidInput, PayloadTooLarge

NUL_MESSAGE = "must not contain the NUL character (U+0000), which Postgres cannot store"


def encode_json(
    value: Any, *, field: str, sort_keys: bool = False, max_bytes: int | None = None
) -> bytes:
    """``value`` as JSON bytes; InvalidInput/PayloadTooLarge naming ``field`` otherwise."""
    try:
        encoded = orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise InvalidInput(f"is not JSON: {exc}", field=field) from exc
    if max_bytes is not None and len(encoded) > max_bytes:
        raise PayloadTooLarge(
            f"is {len(encoded)} bytes, over the limit of {max_bytes}", field=field
        )
    # orjson escapes U+0000 in keys and strings alike, so one scan finds it anywhere
    if b"\\u0000" in encoded:
        raise InvalidInput(NUL_MESSAGE, field=field)
    return encoded
