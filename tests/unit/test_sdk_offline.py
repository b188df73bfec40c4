"""The SDK without a server to reach."""

from __future__ import annotations

import pytest

import unidb


def test_unreachable_server_is_unavailable() -> None:
    from tests.conftest import free_port

    with unidb.Client(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        with pytest.raises(unidb.Unavailable):
            client.health()
