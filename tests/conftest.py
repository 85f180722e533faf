"""Shared fixtures: real event stores (SQLite files and fresh PostgreSQL databases), a real
sandbox provider over HTTP, and a real gRPC server on a loopback port."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from adapters.sandbox import SandboxServer, start_sandbox

POSTGRES_URL = os.environ.get(
    "PAYORCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("PAYORCH_REQUIRE_POSTGRES", "") not in ("", "0", "false")

_postgres_problem: str | None = None
_postgres_checked = False


def _postgres_unavailable() -> str | None:
    global _postgres_checked, _postgres_problem
    if not _postgres_checked:
        _postgres_checked = True
        try:
            with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as e:
            _postgres_problem = f"PostgreSQL not reachable at {POSTGRES_URL}: {e}".strip()
    return _postgres_problem


def require_postgres() -> None:
    problem = _postgres_unavailable()
    if problem is None:
        return
    if REQUIRE_POSTGRES:
        pytest.fail(f"{problem} (PAYORCH_REQUIRE_POSTGRES is set, so this fails)")
    pytest.skip(f"{problem}; PostgreSQL tests skipped (set PAYORCH_TEST_POSTGRES_URL)")


def _admin_url() -> str:
    return POSTGRES_URL


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    require_postgres()
    name = f"payorch_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_admin_url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(_admin_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'payorch.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs twice: on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    server = start_sandbox("127.0.0.1:0")
    try:
        yield server
    finally:
        server.stop()
