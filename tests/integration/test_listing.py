"""The listing's projector against the real stores (SQLite and PostgreSQL): payments saved
through the application in memory (no provider), projected, raced and rebuilt."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments
from orchestrator.domain.payment import Cause, Payment, ProviderEventCause
from orchestrator.listing import ListingProjector, PaymentListing, PaymentRow, rebuild, row_of
from orchestrator.routing import Router


@pytest.fixture
def app(database_url: str) -> Iterator[Payments]:
    made = build_payments(database_url, Router({}, {}))
    try:
        yield made
    finally:
        made.close()


def save_payments(app: Payments, count: int, *, captured: bool = True) -> list[Payment]:
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    made = []
    for n in range(count):
        cause = Cause("default", f"k-{uuid4().hex}")
        payment = Payment(
            id=uuid4(), amount=100 + n, currency="USD", payment_method="pm_card_visa",
            region="US", capture_mode="manual", reference=f"order-{n}", metadata={},
            scope="default", idempotency_key=cause.idempotency_key, caused_by=cause.as_data(),
            account="shop",
        )  # fmt: skip
        payment.start_authorization(provider="sandbox", deadline=deadline, cause=cause)
        payment.record_success(1, provider_reference="p", amount=payment.amount, caused_by=cause)
        if captured:
            payment.start_capture(None, deadline=deadline, cause=cause)
        made.append(payment)
    app.save(*made)
    return made


def truth(app: Payments, payments: list[Payment]) -> list[PaymentRow]:
    rows = [row_of(app, app.get_payment(p.id)) for p in payments]
    return sorted(rows, key=lambda r: r.payment_id)


def head(app: Payments) -> int:
    return app.recorder.max_notification_id() or 0


def counted_reads(app: Payments) -> list[str]:
    """The names of the recorder's event reads, in order, from now on."""
    recorder: Any = app.recorder
    reads: list[str] = []

    def counting(name: str) -> Callable[..., Any]:
        method = getattr(recorder, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            reads.append(name)
            return method(*args, **kwargs)

        return counted

    for name in ("select_events", "select_events_after"):
        setattr(recorder, name, counting(name))
    return reads


def test_a_payment_changed_across_passes_is_replayed_from_the_store(app: Payments) -> None:
    payments = save_payments(app, 5, captured=False)
    ListingProjector(app).catch_up(head(app))
    assert app.listing.rows() == truth(app, payments)
    for payment in payments[:3]:  # their next events land in a later pass than their first
        payment.start_capture(None, deadline=datetime.now(UTC), cause=Cause("default", "c"))
    app.save(*payments[:3])
    reads = counted_reads(app)
    ListingProjector(app).catch_up(head(app))
    read_by_the_pass = list(reads)
    rows = app.listing.rows()
    assert rows == truth(app, payments)
    assert sorted(r.version for r in rows) == [3, 3, 4, 4, 4]
    # Their earlier events were read for the three together, in one query.
    assert read_by_the_pass == ["select_events_after"]


def webhook(payment: Payment, n: int) -> None:
    cause = ProviderEventCause("sandbox", f"evt_{n}")
    payment.provider_event_received(
        provider="sandbox", event_id=cause.event_id, kind="payment.authorized",
        effect="unchanged", caused_by=cause,
    )  # fmt: skip


def counted_decodes(app: Payments) -> list[int]:
    """The originator version of every stored event the mapper decodes, from now on."""
    decoded: list[int] = []
    decode = app.mapper.to_domain_event

    def counted(stored: Any) -> Any:
        decoded.append(stored.originator_version)
        return decode(stored)

    app.mapper.to_domain_event = counted  # type: ignore[method-assign]
    return decoded


def test_a_long_payments_next_pass_costs_its_new_events_not_its_history(app: Payments) -> None:
    payment = save_payments(app, 1)[0]
    projector = ListingProjector(app)
    for n in range(120):  # webhook events, a few passes' worth
        webhook(payment, n)
        if n % 40 == 39:
            app.save(payment)
            projector.catch_up(head(app))
    assert payment.version == 124
    webhook(payment, 120)
    app.save(payment)
    reads, decoded = counted_reads(app), counted_decodes(app)
    projector.catch_up(head(app))
    read_by_the_pass, decoded_by_the_pass = list(reads), list(decoded)
    assert app.listing.rows() == truth(app, [payment])
    # The pass moved on the payment as its last pass left it: one event decoded, no read
    # of its 124 earlier ones.
    assert decoded_by_the_pass == [125]
    assert read_by_the_pass == []


def test_a_pass_after_a_failed_one_does_not_build_on_what_it_did_not_record(
    app: Payments, monkeypatch: pytest.MonkeyPatch
) -> None:
    payment = save_payments(app, 1, captured=False)[0]
    projector = ListingProjector(app)
    projector.catch_up(head(app))
    cause = Cause("default", "c")
    payment.start_capture(None, deadline=datetime.now(UTC), cause=cause)
    app.save(payment)
    recorded = PaymentListing.record

    def fail(listing: PaymentListing, rows: Any, reached: Any) -> None:
        raise RuntimeError("the store went away")

    monkeypatch.setattr(PaymentListing, "record", fail)
    with pytest.raises(RuntimeError):
        projector.catch_up(head(app))
    monkeypatch.setattr(PaymentListing, "record", recorded)
    # Its position did not move: the next pass sees the capture's event again, on a payment
    # it already moved past it, and must rebuild the payment instead of applying it twice.
    projector.catch_up(head(app))
    assert app.listing.rows() == truth(app, [payment])


def test_a_rebuild_writes_the_rows_a_stale_pass_skipped_when_it_committed_after_the_clear(
    app: Payments, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = save_payments(app, 10)
    ListingProjector(app).catch_up(head(app))
    second = save_payments(app, 10)
    # A replica's pass over the second batch, computed before the rebuild cleared the table
    # and committed just after it: the position jumps past the first batch's events.
    stale = [row_of(app, app.get_payment(p.id)) for p in second]
    cleared = PaymentListing.clear

    def clear_then_stale_commit(listing: PaymentListing) -> None:
        cleared(listing)
        listing.record(stale, head(app))

    monkeypatch.setattr(PaymentListing, "clear", clear_then_stale_commit)
    rebuild(app)
    assert app.listing.rows() == truth(app, first + second)
    assert app.listing.position() == head(app)


def test_a_row_never_goes_back_to_an_older_version(app: Payments) -> None:
    payments = save_payments(app, 3, captured=False)
    older = [row_of(app, app.get_payment(p.id)) for p in payments]
    for payment in payments:
        payment.start_capture(None, deadline=datetime.now(UTC), cause=Cause("default", "c"))
    app.save(*payments)
    ListingProjector(app).catch_up(head(app))
    app.listing.record(older, None)  # a slower replica's pass, committed last
    assert app.listing.rows() == truth(app, payments)
