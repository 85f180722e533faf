"""The payment's state machine: every transition, allowed and refused, on the aggregate alone."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from orchestrator.domain.errors import OperationInProgress, TransitionNotAllowed
from orchestrator.domain.payment import (
    Cause,
    Kind,
    OpStatus,
    Payment,
    ProviderEventCause,
    Status,
    provider_key,
)

DEADLINE = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=3)
CAUSE = Cause("default", "key-1")


def requested(amount: int = 1000, capture_mode: str = "manual") -> Payment:
    payment = Payment(
        id=uuid4(),
        amount=amount,
        currency="USD",
        payment_method="pm_card_visa",
        region="US",
        capture_mode=capture_mode,
        reference="order-1",
        metadata={"cart": "42"},
        scope="default",
        idempotency_key="key-0",
        caused_by=Cause("default", "key-0").as_data(),
        account="default",
    )
    payment.start_authorization(provider="sandbox", deadline=DEADLINE, cause=CAUSE)
    return payment


def authorized(amount: int = 1000) -> Payment:
    payment = requested(amount)
    payment.record_success(1, provider_reference="sbx_pay_1", amount=0, caused_by=CAUSE)
    return payment


def captured(amount: int = 1000, capture: int | None = None) -> Payment:
    payment = authorized(amount)
    op = payment.start_capture(capture, deadline=DEADLINE, cause=CAUSE)
    payment.record_success(
        op.sequence, provider_reference="sbx_cap", amount=op.amount, caused_by=CAUSE
    )
    return payment


def refunded(amount: int, refund: int | None) -> Payment:
    payment = captured(amount)
    op = payment.start_refund(refund, reason="", deadline=DEADLINE, cause=CAUSE)
    payment.record_success(
        op.sequence, provider_reference="sbx_re", amount=op.amount, caused_by=CAUSE
    )
    return payment


def event_names(payment: Payment) -> list[str]:
    return [type(e).__name__ for e in payment.collect_events()]


def test_intent_is_recorded_before_any_outcome_and_the_payment_is_processing() -> None:
    payment = requested()
    assert payment.status is Status.PROCESSING
    assert event_names(payment) == ["Requested", "OperationStarted"]
    op = payment.operations[0]
    assert op.kind is Kind.AUTHORIZE
    assert op.status is OpStatus.PENDING
    assert op.provider_key == f"{payment.id}:1:authorize:1"


def test_provider_key_is_derived_from_payment_operation_and_attempt() -> None:
    pid = uuid4()
    assert provider_key(pid, 2, Kind.CAPTURE, 1) == provider_key(pid, 2, Kind.CAPTURE, 1)
    assert provider_key(pid, 2, Kind.CAPTURE, 1) != provider_key(pid, 2, Kind.CAPTURE, 2)
    assert len(provider_key(pid, 99, Kind.AUTHORIZE, 99)) <= 64


def test_manual_authorization_succeeds_as_authorized_with_nothing_captured() -> None:
    payment = authorized()
    assert payment.status is Status.AUTHORIZED
    assert payment.captured_amount == 0
    assert payment.provider == "sandbox"
    assert payment.provider_reference == "sbx_pay_1"


def test_automatic_capture_authorizes_and_captures_in_one_operation() -> None:
    payment = requested(capture_mode="automatic")
    payment.record_success(1, provider_reference="sbx_pay_1", amount=1000, caused_by=CAUSE)
    assert payment.status is Status.CAPTURED
    assert payment.captured_amount == 1000


def test_decline_is_a_final_business_outcome_with_its_code() -> None:
    payment = requested()
    payment.record_decline(
        1, decline_code="insufficient_funds", message="no money", caused_by=CAUSE
    )
    assert payment.status is Status.DECLINED
    assert payment.decline_code == "insufficient_funds"


def test_certain_failure_of_the_authorization_fails_the_payment() -> None:
    payment = requested()
    payment.record_failure(1, message="provider unreachable", caused_by=CAUSE)
    assert payment.status is Status.FAILED
    assert payment.failure_message == "provider unreachable"


def test_unknown_outcome_keeps_the_payment_processing_with_its_attempt() -> None:
    payment = requested()
    payment.record_unknown(1, message="read timeout", caused_by=CAUSE)
    assert payment.status is Status.PROCESSING
    assert payment.operations[0].status is OpStatus.UNKNOWN
    assert event_names(payment)[-1] == "OutcomeUnknown"


def test_an_unknown_outcome_can_still_be_resolved_later() -> None:
    payment = requested()
    payment.record_unknown(1, message="read timeout", caused_by=CAUSE)
    payment.record_success(1, provider_reference="sbx_pay_1", amount=0, caused_by=CAUSE)
    assert payment.status is Status.AUTHORIZED


def test_a_resolved_operation_is_never_resolved_again() -> None:
    payment = authorized()
    with pytest.raises(TransitionNotAllowed):
        payment.record_decline(1, decline_code="x", message="late", caused_by=CAUSE)
    assert payment.status is Status.AUTHORIZED


def test_partial_captures_add_up_to_the_authorized_amount() -> None:
    payment = captured(1000, 300)
    assert payment.status is Status.CAPTURED
    op = payment.start_capture(700, deadline=DEADLINE, cause=CAUSE)
    payment.record_success(op.sequence, provider_reference="sbx_cap2", amount=700, caused_by=CAUSE)
    assert payment.captured_amount == 1000
    assert payment.capturable_amount == 0


def test_capture_without_amount_takes_all_that_remains() -> None:
    payment = captured(1000, 250)
    op = payment.start_capture(None, deadline=DEADLINE, cause=CAUSE)
    assert op.amount == 750


def test_capture_more_than_authorized_is_refused() -> None:
    payment = authorized(1000)
    with pytest.raises(TransitionNotAllowed) as refused:
        payment.start_capture(1001, deadline=DEADLINE, cause=CAUSE)
    assert refused.value.reason == "AMOUNT_EXCEEDS_CAPTURABLE"


def test_capture_beyond_what_remains_after_partial_captures_is_refused() -> None:
    payment = captured(1000, 600)
    with pytest.raises(TransitionNotAllowed):
        payment.start_capture(401, deadline=DEADLINE, cause=CAUSE)


def test_capture_when_everything_is_captured_is_refused() -> None:
    payment = captured(1000)
    with pytest.raises(TransitionNotAllowed):
        payment.start_capture(None, deadline=DEADLINE, cause=CAUSE)


def test_cancel_voids_an_uncaptured_authorization() -> None:
    payment = authorized()
    op = payment.start_cancel(deadline=DEADLINE, cause=CAUSE)
    payment.record_success(op.sequence, provider_reference="sbx_void", amount=0, caused_by=CAUSE)
    assert payment.status is Status.CANCELED


def test_capture_after_cancel_is_refused() -> None:
    payment = authorized()
    op = payment.start_cancel(deadline=DEADLINE, cause=CAUSE)
    payment.record_success(op.sequence, provider_reference="sbx_void", amount=0, caused_by=CAUSE)
    with pytest.raises(TransitionNotAllowed):
        payment.start_capture(None, deadline=DEADLINE, cause=CAUSE)


def test_cancel_after_capture_is_refused() -> None:
    with pytest.raises(TransitionNotAllowed):
        captured(1000, 100).start_cancel(deadline=DEADLINE, cause=CAUSE)


def test_refunds_add_up_to_what_was_captured() -> None:
    payment = refunded(1000, 400)
    assert payment.status is Status.PARTIALLY_REFUNDED
    op = payment.start_refund(600, reason="", deadline=DEADLINE, cause=CAUSE)
    payment.record_success(op.sequence, provider_reference="sbx_re2", amount=600, caused_by=CAUSE)
    assert payment.status is Status.REFUNDED
    assert payment.refunded_amount == 1000


def test_refund_more_than_captured_is_refused() -> None:
    payment = captured(1000, 500)
    with pytest.raises(TransitionNotAllowed) as refused:
        payment.start_refund(501, reason="", deadline=DEADLINE, cause=CAUSE)
    assert refused.value.reason == "AMOUNT_EXCEEDS_REFUNDABLE"


def test_refund_of_an_uncaptured_authorization_is_refused() -> None:
    with pytest.raises(TransitionNotAllowed):
        authorized().start_refund(None, reason="", deadline=DEADLINE, cause=CAUSE)


def test_capture_after_a_refund_is_refused() -> None:
    payment = captured(1000, 500)
    op = payment.start_refund(100, reason="", deadline=DEADLINE, cause=CAUSE)
    payment.record_success(op.sequence, provider_reference="sbx_re", amount=100, caused_by=CAUSE)
    with pytest.raises(TransitionNotAllowed):
        payment.start_capture(None, deadline=DEADLINE, cause=CAUSE)


def _declined() -> Payment:
    payment = requested()
    payment.record_decline(1, decline_code="card_declined", message="", caused_by=CAUSE)
    return payment


def _failed() -> Payment:
    payment = requested()
    payment.record_failure(1, message="bad request", caused_by=CAUSE)
    return payment


def _canceled() -> Payment:
    payment = authorized()
    op = payment.start_cancel(deadline=DEADLINE, cause=CAUSE)
    payment.record_success(op.sequence, provider_reference="v", amount=0, caused_by=CAUSE)
    return payment


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_declined, id="declined"),
        pytest.param(_failed, id="failed"),
        pytest.param(_canceled, id="canceled"),
        pytest.param(lambda: refunded(1000, None), id="refunded"),
    ],
)
def test_terminal_payments_accept_no_operation(make: object) -> None:
    payment = make()  # type: ignore[operator]
    status = payment.status
    for start in (
        lambda: payment.start_capture(None, deadline=DEADLINE, cause=CAUSE),
        lambda: payment.start_cancel(deadline=DEADLINE, cause=CAUSE),
        lambda: payment.start_refund(None, reason="", deadline=DEADLINE, cause=CAUSE),
    ):
        with pytest.raises(TransitionNotAllowed):
            start()
    assert payment.status is status


def test_no_second_operation_while_one_is_in_doubt() -> None:
    payment = authorized()
    op = payment.start_capture(500, deadline=DEADLINE, cause=CAUSE)
    payment.record_unknown(op.sequence, message="timeout", caused_by=CAUSE)
    assert payment.status is Status.PROCESSING
    with pytest.raises(OperationInProgress):
        payment.start_refund(None, reason="", deadline=DEADLINE, cause=CAUSE)
    with pytest.raises(OperationInProgress):
        payment.start_capture(100, deadline=DEADLINE, cause=CAUSE)


def test_a_failed_capture_leaves_the_authorization_capturable() -> None:
    payment = authorized()
    op = payment.start_capture(500, deadline=DEADLINE, cause=CAUSE)
    payment.record_failure(op.sequence, message="expired", caused_by=CAUSE)
    assert payment.status is Status.AUTHORIZED
    assert payment.captured_amount == 0
    assert payment.operations[-1].status is OpStatus.FAILED


def test_authorization_cannot_start_twice() -> None:
    with pytest.raises(TransitionNotAllowed):
        requested().start_authorization(provider="sandbox", deadline=DEADLINE, cause=CAUSE)


def test_replaying_the_events_rebuilds_the_same_payment() -> None:
    payment = captured(1000, 400)
    events = payment.collect_events()
    rebuilt = None
    for e in events:
        rebuilt = e.mutate(rebuilt)
    assert rebuilt is not None
    assert vars(rebuilt) == vars(payment)


def test_every_event_records_what_caused_it() -> None:
    payment = captured(1000)
    webhook = ProviderEventCause("sandbox", "evt_1")
    payment.open_dispute("dp_1", amount=1000, reason="fraudulent", caused_by=webhook)
    events = payment.collect_events()
    assert all(e.caused_by for e in events)  # type: ignore[attr-defined]
    assert events[0].caused_by == {  # type: ignore[attr-defined]
        "kind": "command",
        "scope": "default",
        "idempotency_key": "key-0",
    }
    assert events[-1].caused_by == {  # type: ignore[attr-defined]
        "kind": "provider_event",
        "provider": "sandbox",
        "event_id": "evt_1",
    }


def test_a_copy_of_a_payment_shares_its_immutable_operations_and_changes_alone() -> None:
    # What the aggregate cache hands out: a copy that a failed command may change freely.
    payment = authorized()
    clone = copy.deepcopy(payment)

    assert clone.operations[0] is payment.operations[0]
    clone.start_capture(None, deadline=DEADLINE, cause=CAUSE)
    assert len(clone.operations) == 2
    assert len(payment.operations) == 1
