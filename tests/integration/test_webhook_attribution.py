"""Which operation a provider's event may change, on the real processor and a real store
(SQLite and PostgreSQL): only an attempt of the provider that verified it, and only the
attempt it names. Payments are made with the real domain; deliveries are stored as the
intake stores them."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_configuration
from orchestrator.domain.payment import Cause, Payment, Status, provider_key
from orchestrator.domain.webhook import WebhookDelivery, delivery_id
from orchestrator.ports import WebhookKind
from orchestrator.webhooks.processor import WebhookProcessor

CAUSE = Cause("default", "key-1")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def app(database_url: str) -> Iterator[Payments]:
    # The sandbox route is never called here: only webhooks change these payments.
    payments = build_payments(database_url, load_configuration(None, "http://127.0.0.1:9").router)
    try:
        yield payments
    finally:
        payments.close()


def requested() -> Payment:
    return Payment(
        id=uuid4(),
        amount=1000,
        currency="USD",
        payment_method="pm_card_visa",
        region="US",
        capture_mode="manual",
        reference="order-1",
        metadata={},
        scope="default",
        idempotency_key="key-0",
        caused_by=Cause("default", "key-0").as_data(),
        account="default",
    )


def capture_in_doubt_at_the_sandbox() -> Payment:
    payment = requested()
    payment.start_authorization(provider="sandbox", deadline=NOW, cause=CAUSE)
    payment.record_success(1, provider_reference="sbx_pay_ours", amount=0, caused_by=CAUSE)
    op = payment.start_capture(None, deadline=NOW, cause=CAUSE)
    payment.record_unknown(op.sequence, message="timed out", caused_by=CAUSE)
    return payment


def captured_at_the_sandbox() -> Payment:
    payment = capture_in_doubt_at_the_sandbox()
    payment.record_success(2, provider_reference="sbx_pay_ours", amount=1000, caused_by=CAUSE)
    return payment


def deliver(app: Payments, verified_by: str, kind: WebhookKind, **fields: object) -> str:
    """Stores a verified delivery, runs the processor, returns the effect it recorded."""
    event_id = f"evt_{uuid4().hex[:12]}"
    values: dict[str, object] = {
        "payment_id": "", "provider_reference": "", "operation_key": "",
        "object_reference": "", "amount": 0, "currency": "USD", "decline_code": "",
        "message": "",
    }  # fmt: skip
    values.update(fields)
    app.save(
        WebhookDelivery(
            id=delivery_id(verified_by, event_id),
            provider=verified_by,
            verified_by=verified_by,
            event_id=event_id,
            kind=kind.value,
            body=base64.b64encode(b"{}").decode(),
            received_at=NOW,
            **values,  # type: ignore[arg-type]
        )
    )
    assert WebhookProcessor(app).run_once() == 1
    delivered: WebhookDelivery = app.repository.get(delivery_id(verified_by, event_id))
    assert delivered.outcome == "applied"
    return _last_effect(app, delivered.event_id)


def _last_effect(app: Payments, event_id: str) -> str:
    for _, event in reversed(app.events_after(0, limit=10_000)):
        if isinstance(event, Payment.ProviderEventReceived) and event.event_id == event_id:
            return event.effect
    raise AssertionError(f"no ProviderEventReceived for {event_id}")


def test_a_failure_naming_a_superseded_attempt_at_the_same_provider_changes_nothing(
    app: Payments,
) -> None:
    payment = requested()
    payment.start_authorization(provider="sandbox", deadline=NOW, cause=CAUSE)
    # The first attempt certainly did not charge; the second, at the same provider, is in doubt.
    payment.fail_over(1, provider="sandbox", deadline=NOW, message="not reached", caused_by=CAUSE)
    payment.record_unknown(1, message="timed out", caused_by=CAUSE)
    app.save(payment)
    first_attempt = provider_key(payment.id, 1, payment.operation(1).kind, 1)
    effect = deliver(
        app, "sandbox", WebhookKind.AUTHORIZATION_FAILED, payment_id=str(payment.id),
        operation_key=first_attempt, decline_code="card_declined",
    )  # fmt: skip
    assert effect == "attempt 1 of operation 1 was superseded by attempt 2 at sandbox: unchanged"
    assert app.get_payment(payment.id).status is Status.PROCESSING


def test_a_key_that_names_no_operation_of_the_payment_changes_nothing(app: Payments) -> None:
    payment = requested()
    payment.start_authorization(provider="sandbox", deadline=NOW, cause=CAUSE)
    payment.record_unknown(1, message="timed out", caused_by=CAUSE)
    app.save(payment)
    effect = deliver(
        app, "sandbox", WebhookKind.AUTHORIZATION_FAILED, payment_id=str(payment.id),
        operation_key=f"{payment.id}:7:authorize:1", decline_code="card_declined",
    )  # fmt: skip
    assert effect == f"no operation has the key {payment.id}:7:authorize:1: unchanged"
    assert app.get_payment(payment.id).status is Status.PROCESSING


def test_the_verifying_providers_event_without_a_key_still_resolves_its_attempt(
    app: Payments,
) -> None:
    payment = requested()
    payment.start_authorization(provider="sandbox", deadline=NOW, cause=CAUSE)
    payment.record_unknown(1, message="timed out", caused_by=CAUSE)
    app.save(payment)
    effect = deliver(
        app, "sandbox", WebhookKind.AUTHORIZATION_SUCCEEDED, payment_id=str(payment.id),
        provider_reference="sbx_pay_ours",
    )  # fmt: skip
    assert effect == "resolved operation 1"
    assert app.get_payment(payment.id).status is Status.AUTHORIZED


def test_a_dispute_from_another_provider_changes_nothing(app: Payments) -> None:
    payment = captured_at_the_sandbox()
    app.save(payment)
    effect = deliver(
        app, "stripe-us", WebhookKind.DISPUTE_OPENED, payment_id=str(payment.id),
        provider_reference="pi_someone_elses", object_reference="dp_1", amount=1000,
    )  # fmt: skip
    assert effect == "the payment is at sandbox, not stripe-us: unchanged"
    after = app.get_payment(payment.id)
    assert (after.status, after.disputes) == (Status.CAPTURED, {})


def test_a_capture_event_about_another_payment_at_the_provider_changes_nothing(
    app: Payments,
) -> None:
    payment = capture_in_doubt_at_the_sandbox()
    app.save(payment)
    effect = deliver(
        app, "sandbox", WebhookKind.CAPTURE_SUCCEEDED, payment_id=str(payment.id),
        provider_reference="sbx_pay_another", amount=1000,
    )  # fmt: skip
    assert effect == (
        "provider reference sbx_pay_another is not the payment's (sbx_pay_ours): unchanged"
    )
    after = app.get_payment(payment.id)
    assert (after.status, after.captured_amount) == (Status.PROCESSING, 0)


def test_a_capture_event_about_the_payment_at_its_provider_resolves_the_capture(
    app: Payments,
) -> None:
    payment = capture_in_doubt_at_the_sandbox()
    app.save(payment)
    effect = deliver(
        app, "sandbox", WebhookKind.CAPTURE_SUCCEEDED, payment_id=str(payment.id),
        provider_reference="sbx_pay_ours", amount=1000,
    )  # fmt: skip
    assert effect == "resolved operation 2"
    after = app.get_payment(payment.id)
    assert (after.status, after.captured_amount) == (Status.CAPTURED, 1000)


def refunds_at_the_sandbox() -> Payment:
    """A first refund of 100 that succeeded, then a second one (the rest) in doubt."""
    payment = captured_at_the_sandbox()
    first = payment.start_refund(100, reason="", deadline=NOW, cause=CAUSE)
    payment.record_success(first.sequence, provider_reference="sbx_pay_ours", amount=100,
                           caused_by=CAUSE)  # fmt: skip
    second = payment.start_refund(None, reason="", deadline=NOW, cause=CAUSE)
    payment.record_unknown(second.sequence, message="timed out", caused_by=CAUSE)
    return payment


def test_an_event_without_a_key_does_not_settle_one_of_several_operations_of_its_kind(
    app: Payments,
) -> None:
    """Found by the simulator (seeds 2162, 5114): the late event of the first refund, which
    names no key, "refunded" the second one, which the provider never received. payorch
    reported 1000 refunded where the provider had refunded 100."""
    payment = refunds_at_the_sandbox()
    app.save(payment)
    effect = deliver(
        app, "sandbox", WebhookKind.REFUND_SUCCEEDED, payment_id=str(payment.id),
        provider_reference="sbx_pay_ours", amount=100,
    )  # fmt: skip
    assert effect == "names no attempt, and the payment has 2 refund operations: unchanged"
    after = app.get_payment(payment.id)
    assert (after.status, after.refunded_amount) == (Status.PROCESSING, 100)


def test_an_event_without_a_key_settles_the_only_operation_of_its_kind_in_doubt(
    app: Payments,
) -> None:
    payment = capture_in_doubt_at_the_sandbox()
    app.save(payment)
    effect = deliver(
        app, "sandbox", WebhookKind.CAPTURE_SUCCEEDED, payment_id=str(payment.id),
        provider_reference="sbx_pay_ours", amount=1000,
    )  # fmt: skip
    assert effect == "resolved operation 2"
