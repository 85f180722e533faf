"""Payments read together (``Payments.get_payments``, the webhook consumer's page): one query
for them all, each exactly as ``get_payment`` reads it, whatever the aggregate cache holds, on
SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from uuid import uuid4

import pytest

from orchestrator.application import Payments
from orchestrator.audit import chain
from orchestrator.bootstrap import build_payments
from orchestrator.domain.payment import Cause, Payment
from orchestrator.routing import Router
from tests.integration.test_group_commit import intent

pytestmark = pytest.mark.timeout(60)
CAUSE = Cause("default", "key-0")


@contextlib.contextmanager
def replicas(url: str) -> Iterator[tuple[Payments, Payments]]:
    """Two replicas of one store: each has its own aggregate cache."""
    first = build_payments(url, Router({}, {}))
    second = build_payments(url, Router({}, {}))
    try:
        yield first, second
    finally:
        first.close()
        second.close()


@pytest.fixture
def apps(database_url: str) -> Iterator[tuple[Payments, Payments]]:
    with replicas(database_url) as both:
        yield both


def as_read(payment: Payment) -> tuple[object, ...]:
    return (
        payment.id,
        payment.version,
        payment.status,
        payment.operations,
        payment.amount,
        payment.provider_reference,
    )


def test_payments_read_together_are_each_as_read_alone(
    apps: tuple[Payments, Payments], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, other = apps
    payments = [intent() for _ in range(5)]
    for payment in payments:
        app.save(payment)
    for payment in payments:
        app.get_payment(payment.id)  # now in this replica's cache, at version 2
    # Another replica moves two of them on: this one's cache is behind for those.
    for payment in payments[:2]:
        moved = other.get_payment(payment.id)
        op = moved.operations[-1]
        moved.record_success(op.sequence, provider_reference="sbx", amount=0, caused_by=CAUSE)
        other.save(moved)
    monkeypatch.setattr(chain, "AFTER_PAGE", 2)  # several queries: pages of two
    not_payments = {uuid4()}  # an id nothing has

    together = app.get_payments([p.id for p in payments] + list(not_payments))

    assert sorted(together) == sorted(p.id for p in payments)
    fresh = [other.get_payment(p.id) for p in payments]
    assert [as_read(together[p.id]) for p in payments] == [as_read(p) for p in fresh]
    assert [together[p.id].version for p in payments] == [3, 3, 2, 2, 2]


def test_no_payments_asked_reads_nothing(apps: tuple[Payments, Payments]) -> None:
    app, _ = apps
    assert app.get_payments([]) == {}


@pytest.mark.postgres
def test_postgres_reads_each_payment_by_its_index_even_before_any_statistics(
    postgres_url: str,
) -> None:
    """On a table the planner knows nothing about yet (a new or restored database, before
    autovacuum's first analyze), the page's read is one index range per payment, never a
    scan of the whole log; and a plan estimated at any cost is not JIT-compiled (payorch's
    connections have JIT off)."""
    app = build_payments(postgres_url, Router({}, {}))
    try:
        recorder = app.recorder
        payments = [intent() for _ in range(10_000)]
        app.save(*payments)
        ids = [p.id for p in payments[:200]]
        with recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            assert conn.execute("SHOW jit").fetchone()["jit"] == "off"
            plan = "\n".join(
                row["QUERY PLAN"]
                for row in conn.execute(
                    b"EXPLAIN " + recorder.events_after.as_bytes(conn),  # type: ignore[attr-defined]
                    (ids, [0] * len(ids)),
                    binary=True,
                )
            )
        assert "Seq Scan" not in plan, plan
        assert "Index" in plan, plan
    finally:
        app.close()
