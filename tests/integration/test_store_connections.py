"""PostgreSQL connections the pool hands out are checked without a round trip: only one whose
socket has something to read while idle (a terminated backend's goodbye, EOF) is pinged and
replaced. The store keeps working when every backend of its database is terminated, as after
a database restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool
import pytest

from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments
from orchestrator.routing import Router
from tests.integration.test_group_commit import intent

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


@pytest.fixture
def app(postgres_url: str, pings: list[Any]) -> Iterator[Payments]:
    """Built once pings are counted: the pool's check is the counted one."""
    payments = build_payments(postgres_url, Router({}, {}))
    pings.clear()  # start-up's, before the recorder puts its own check in place
    try:
        yield payments
    finally:
        payments.close()


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The connections pinged (an empty query: a round trip) by the pool's check."""
    pinged: list[Any] = []
    ping = psycopg_pool.ConnectionPool.check_connection

    def counted(conn: Any) -> None:
        pinged.append(conn)
        ping(conn)

    monkeypatch.setattr(psycopg_pool.ConnectionPool, "check_connection", staticmethod(counted))
    return pinged


def terminate_every_backend(postgres_url: str) -> int:
    """As a restart would: every other session of the database ends (waited for)."""
    others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(pg_terminate_backend(pid)) {others}").fetchone()
        deadline = time.monotonic() + 10
        while (left := conn.execute(f"SELECT count(*) {others}").fetchone()) and left[0]:
            assert time.monotonic() < deadline, "backends still there"
            time.sleep(0.02)
        return int(row[0]) if row else 0


def test_healthy_connections_are_handed_out_without_a_ping(app: Payments, pings: list[Any]) -> None:
    for _ in range(5):
        payment = intent()
        app.save(payment)
        assert app.get_payment(payment.id).id == payment.id
    assert pings == []


def test_the_store_works_on_after_every_backend_is_terminated(
    app: Payments, postgres_url: str, pings: list[Any]
) -> None:
    first = intent()
    app.save(first)
    assert terminate_every_backend(postgres_url) >= 1

    second = intent()
    started = time.monotonic()
    app.save(second)  # not retried by anyone: a connection handed out must work
    # The whole pool was replaced at once, not one dead connection per back-off (1, 2, 4 s...)
    assert time.monotonic() - started < 3

    assert [app.get_payment(p.id).id for p in (first, second)] == [first.id, second.id]
    assert pings, "a dead connection was handed out without a check"
