"""How an embedding travels on the wire: JSON floats, or base64 of little-endian float32.

Both halves of the encoding live here: the clients pack embeddings (a third of the JSON,
decoded at once), the server unpacks them. Needs no numpy, so the light client stays light.
"""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from typing import Any

from .errors import InvalidInput


def pack(value: Any) -> Any:
    """``value`` as base64 little-endian float32 when it is a vector; else as it is, for
    the server to say what is wrong with it."""
    if value is None or isinstance(value, str):
        return value
    try:
        if hasattr(value, "astype"):
            raw = value.astype("<f4").tobytes()
        else:
            packed = array("f", value)
            if sys.byteorder == "big":
                packed.byteswap()
            raw = packed.tobytes()
    except (TypeError, ValueError, OverflowError):
        return value
    return base64.b64encode(raw).decode("ascii")


def unpack(text: str, field: str) -> bytes:
    """The little-endian float32 bytes ``text`` encodes, or InvalidInput naming ``field``."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise InvalidInput("is not valid base64", field=field) from exc
    if len(raw) % 4:
        raise InvalidInput("base64 must decode to whole float32 values", field=field)
    return raw
