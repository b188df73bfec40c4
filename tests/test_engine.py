"""The engine as a facade: constructing one starts nothing; starting is explicit."""

from __future__ import annotations

import threading

from unidb.service.engine import Engine


def test_constructing_an_engine_starts_no_thread(engine: Engine) -> None:
    before = {thread.ident for thread in threading.enumerate()}
    own = Engine(
        engine.settings,
        engine.pool,
        engine.dsn,
        background_pool=engine.background_pool,
        take_over_jobs=False,
    )
    try:
        started = {thread.name for thread in threading.enumerate() if thread.ident not in before}
        assert started == set()
        own.start_background()
        names = {thread.name for thread in threading.enumerate() if thread.ident not in before}
        assert {"unidb-tailer", "unidb-prefixes"} <= names
    finally:
        own.jobs.close()
        own.context.close()
        own.text_indexes.close()
        own.outbound.close()
