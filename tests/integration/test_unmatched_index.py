"""Unmatched webhook deliveries, on real stores (an SQLite file and PostgreSQL): the open ones
are kept in their own table next to the log, so the consumer's re-match and the operator's
listing read those and none of the deliveries matched long ago, at start-up or ever; a crash
between the table's rows and its position loses nothing."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import Tracking

from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_configuration
from orchestrator.domain.payment import Cause, Kind, Payment, Status, provider_key
from orchestrator.domain.webhook import WebhookDelivery, delivery_id
from orchestrator.indoubt import InDoubtIndex
from orchestrator.metrics import StateCollector
from orchestrator.ports import WebhookKind
from orchestrator.webhooks.processor import TRACKING_NAME as CONSUMER
from orchestrator.webhooks.processor import WebhookProcessor
from orchestrator.webhooks.unmatched import UnmatchedIndex
from tests.integration.test_positions import Reads, replica

CAUSE = Cause("default", "key-0")
NOW = datetime.now(UTC)
NOWHERE = "http://127.0.0.1:9"  # a provider never called: only webhooks change these payments


@pytest.fixture
def app(database_url: str) -> Iterator[Payments]:
    payments = build_payments(database_url, load_configuration(None, NOWHERE).router)
    try:
        yield payments
    finally:
        payments.close()


def early_delivery(payment_id: UUID) -> WebhookDelivery:
    """A verified delivery about a payment not (yet) known, as the intake stores it."""
    event_id = f"evt_{uuid4().hex[:12]}"
    return WebhookDelivery(
        id=delivery_id("sandbox", event_id), provider="sandbox", verified_by="sandbox",
        event_id=event_id, kind=WebhookKind.AUTHORIZATION_SUCCEEDED.value,
        payment_id=str(payment_id), provider_reference=f"sbx_{payment_id.hex}",
        operation_key=provider_key(payment_id, 1, Kind.AUTHORIZE, 1), object_reference="",
        amount=100_000, currency="USD", decline_code="", message="",
        body=base64.b64encode(b"{}").decode(), received_at=NOW,
    )  # fmt: skip


def authorization_in_doubt(app: Payments, payment_id: UUID) -> Payment:
    payment = Payment(
        id=payment_id, amount=100_000, currency="USD", payment_method="pm_card_visa",
        region="US", capture_mode="manual", reference="order-1", metadata={}, scope="default",
        idempotency_key=f"key-{payment_id.hex}", caused_by=CAUSE.as_data(), account="default",
    )  # fmt: skip
    payment.start_authorization(provider="sandbox", deadline=NOW + timedelta(1), cause=CAUSE)
    app.save(payment)
    return payment


def head(app: Payments) -> int:
    return app.recorder.max_notification_id() or 0


def run_until_quiet(processor: WebhookProcessor) -> None:
    """Passes until one finds nothing recorded since the last (re-matches record events)."""
    for _ in range(5):
        processor.run_once()
        if processor._caught_up_to == head(processor.app):
            return
    raise AssertionError("the consumer never caught up")


def test_an_unmatched_delivery_is_listed_from_the_index_re_matched_then_gone(
    app: Payments,
) -> None:
    processor = WebhookProcessor(app)
    payment_id = uuid4()
    delivered = early_delivery(payment_id)
    app.save(delivered)
    run_until_quiet(processor)
    assert processor.index.delivery_ids() == [delivered.id]
    assert [d.id for d in processor.unmatched()] == [delivered.id]

    authorization_in_doubt(app, payment_id)
    assert processor.run_once() == 1

    assert app.get_payment(payment_id).status is Status.AUTHORIZED
    run_until_quiet(processor)
    assert processor.index.delivery_ids() == []
    assert processor.unmatched() == []


def old_log(app: Payments, matched: int) -> tuple[list[UUID], UUID]:
    """A log written before the index: ``matched`` deliveries that were unmatched and then
    re-matched, one still unmatched, and the consumer's position at the head (all applied)."""
    old = []
    for _ in range(matched):
        payment_id = uuid4()
        delivery = early_delivery(payment_id)
        delivery.unmatched(f"no payment {payment_id}")
        app.save(delivery)
        payment = authorization_in_doubt(app, payment_id)
        delivery.applied(payment_id=payment.id, payment_version=payment.version, effect="test")
        app.save(delivery)
        old.append(delivery.id)
    still = early_delivery(uuid4())
    still.unmatched("no payment")
    app.save(still)
    app.recorder.insert_tracking(Tracking(CONSUMER, head(app)))  # type: ignore[attr-defined]
    return old, still.id


def test_a_first_start_over_old_matched_deliveries_reads_none_of_them(app: Payments) -> None:
    old, still = old_log(app, matched=25)
    reads = Reads(app.recorder)

    WebhookProcessor(app).run_once()  # builds the index: the log once, by two topics

    assert still in reads.aggregates  # the one it re-tried (and the payment it names)
    assert not set(old) & set(reads.aggregates)  # and none of those matched long ago
    assert UnmatchedIndex(app.recorder).delivery_ids() == [still]


def test_a_restarted_consumer_reads_only_the_open_deliveries(database_url: str) -> None:
    first = replica(database_url)
    try:
        old, still = old_log(first, matched=25)
        run_until_quiet(WebhookProcessor(first))
    finally:
        first.close()
    restarted = replica(database_url)
    try:
        reads = Reads(restarted.recorder)
        processor = WebhookProcessor(restarted)

        assert processor.run_once() == 0

        assert still in reads.aggregates
        assert not set(old) & set(reads.aggregates)
        assert reads.notifications <= 1  # at most the first payment known, never a delivery
        reads.aggregates.clear()
        assert [d.id for d in processor.unmatched()] == [still]  # what an operator lists
        assert reads.aggregates == [still]
    finally:
        restarted.close()


def test_a_crash_between_the_rows_and_the_position_loses_nothing(app: Payments) -> None:
    delivery = early_delivery(uuid4())
    delivery.unmatched("no payment")
    app.save(delivery)
    index = UnmatchedIndex(app.recorder)
    written = index._write

    def crash_after_writing(cursor: Any, page: Any) -> None:
        written(cursor, page)
        raise RuntimeError("the process died before its commit")

    index._write = crash_after_writing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        index.catch_up(head(app))
    assert index.position() == 0
    assert index.delivery_ids() == []

    del index._write  # the restarted process: the same table and position
    assert index.catch_up(head(app)) == head(app)
    assert index.delivery_ids() == [delivery.id]


def test_a_replica_whose_pass_conflicts_takes_the_rows_of_the_one_that_won(
    database_url: str,
) -> None:
    first, second = replica(database_url), replica(database_url)
    try:
        delivery = early_delivery(uuid4())
        delivery.unmatched("no payment")
        first.save(delivery)
        late = UnmatchedIndex(second.recorder)
        stale = [0]  # the position the late one read before the first one's commit
        real = late.position
        late.position = lambda: stale.pop() if stale else real()  # type: ignore[method-assign]
        assert UnmatchedIndex(first.recorder).catch_up(head(first)) == head(first)

        assert late.catch_up(head(second)) == head(first)  # IntegrityError: the first's page

        assert late.delivery_ids() == [delivery.id]
        assert WebhookProcessor(second).unmatched()[0].id == delivery.id
    finally:
        second.close()
        first.close()


def test_the_unmatched_gauge_counts_the_open_deliveries(app: Payments) -> None:
    processor = WebhookProcessor(app)
    gauge = StateCollector(
        list, list, in_doubt=int, requiring_review=int, unmatched=processor.index.count,
        webhook_lag=int, listing_lag=int,
    )  # fmt: skip
    payment_id = uuid4()
    app.save(early_delivery(payment_id), early_delivery(uuid4()))
    run_until_quiet(processor)
    assert scraped(gauge, "payorch_webhooks_unmatched") == 2

    authorization_in_doubt(app, payment_id)
    run_until_quiet(processor)

    assert scraped(gauge, "payorch_webhooks_unmatched") == 1


def scraped(collector: StateCollector, name: str) -> float:
    return next(m.samples[0].value for m in collector.collect() if m.name == name)


@pytest.mark.postgres
def test_on_postgres_a_page_of_index_rows_is_one_statement_not_one_per_row(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg's executemany is a statement per row, each result read in Python: the consumer
    spent half its time deleting, one by one, index rows of deliveries matched at once."""
    app = build_payments(postgres_url, load_configuration(None, NOWHERE).router)
    try:
        old, still = old_log(app, matched=25)
        per_row: list[str] = []
        executemany = psycopg.Cursor.executemany

        def counted(cursor: Any, query: Any, params_seq: Any, **kwargs: Any) -> Any:
            text = query if isinstance(query, str) else repr(query)
            if "_unmatched" in text or "_in_doubt" in text:
                per_row.append(text)
            return executemany(cursor, query, params_seq, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "executemany", counted)
        WebhookProcessor(app).run_once()  # the unmatched index: 25 rows out, 1 in
        InDoubtIndex(app.recorder).catch_up(head(app))  # 25 payments in doubt

        assert per_row == []
        assert UnmatchedIndex(app.recorder).delivery_ids() == [still]
        assert len(InDoubtIndex(app.recorder).payment_ids()) == len(old)
    finally:
        app.close()
