"""The unit tier runs without a database: any test here that asks for Postgres, directly or
through a fixture built on it (``settings``, ``engine``, ``api``, ``server_url``,
``collection``…), fails at once instead of starting one."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def database_url() -> str:
    pytest.fail("tests/unit runs without Postgres: move this test out of tests/unit")
