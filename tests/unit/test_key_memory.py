"""The key checker's memory of failures stays bounded however many callers fail at once."""

from __future__ import annotations

import time

from unidb.service.auth import keys


def test_failure_memory_is_bounded_within_one_window() -> None:
    checker = keys.KeyChecker()
    now = time.monotonic()
    for i in range(keys._MAX_REMEMBERED * 2):  # every one still inside the window
        checker._failed(i.to_bytes(8, "big"), now, f"client:{i}")
    assert len(checker._failures) <= keys._MAX_REMEMBERED
    assert len(checker._refused) <= keys._MAX_REMEMBERED
    assert f"client:{keys._MAX_REMEMBERED * 2 - 1}" in checker._failures  # newest kept
