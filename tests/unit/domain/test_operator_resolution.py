"""An operator settles an operation in review with what the provider's dashboard shows."""

from __future__ import annotations

import pytest

from orchestrator.domain.errors import TransitionNotAllowed
from orchestrator.domain.payment import (
    OperatorCause,
    OpStatus,
    Payment,
    RecoveryCause,
    Resolution,
    Status,
)
from tests.unit.domain.test_payment import CAUSE, DEADLINE, authorized, captured, requested

BY = OperatorCause("alice", "operator:alice", "resolve-1")


def in_review(payment: Payment) -> Payment:
    op = payment.operations[-1]
    payment.record_unknown(op.sequence, message="timeout", caused_by=CAUSE)
    payment.require_review(op.sequence, message="schedule ran out", caused_by=RecoveryCause())
    assert payment.status is Status.REQUIRES_REVIEW
    return payment


def test_an_authorization_in_review_resolved_as_authorized_is_authorized() -> None:
    payment = in_review(requested())
    payment.resolve_by_operator(
        Resolution.AUTHORIZED, note="dashboard: ch_1", caused_by=BY, provider_reference="ch_1"
    )
    assert payment.status is Status.AUTHORIZED
    assert payment.provider_reference == "ch_1"
    event = payment.collect_events()[-1]
    assert isinstance(event, Payment.ResolvedByOperator)
    assert event.caused_by == {
        "kind": "operator",
        "operator": "alice",
        "scope": "operator:alice",
        "idempotency_key": "resolve-1",
    }
    assert event.note == "dashboard: ch_1"


def test_an_authorization_resolved_as_captured_is_captured_in_full() -> None:
    payment = in_review(requested(1000))
    payment.resolve_by_operator(Resolution.CAPTURED, note="captured", caused_by=BY)
    assert payment.status is Status.CAPTURED
    assert payment.captured_amount == 1000


@pytest.mark.parametrize(
    ("outcome", "status"),
    [(Resolution.DECLINED, Status.DECLINED), (Resolution.NOT_FOUND, Status.FAILED)],
)
def test_an_authorization_declined_or_not_found_moved_no_money(
    outcome: Resolution, status: Status
) -> None:
    payment = in_review(requested())
    payment.resolve_by_operator(outcome, note="nothing there", caused_by=BY)
    assert payment.status is status
    assert payment.captured_amount == 0


def test_a_capture_in_review_found_only_authorized_did_not_capture() -> None:
    payment = authorized(1000)
    payment.start_capture(None, deadline=DEADLINE, cause=CAUSE)
    in_review(payment)
    op = payment.resolve_by_operator(Resolution.AUTHORIZED, note="not captured", caused_by=BY)
    assert op.status is OpStatus.FAILED
    assert payment.status is Status.AUTHORIZED
    assert payment.captured_amount == 0


def test_a_definite_outcome_is_never_contradicted() -> None:
    payment = authorized()
    with pytest.raises(TransitionNotAllowed) as refused:
        payment.resolve_by_operator(Resolution.NOT_FOUND, note="?", caused_by=BY, sequence=1)
    assert refused.value.reason == "OUTCOME_ALREADY_KNOWN"
    assert payment.status is Status.AUTHORIZED


def test_an_operation_still_being_looked_up_is_not_the_operators() -> None:
    payment = requested()
    payment.record_unknown(1, message="timeout", caused_by=CAUSE)
    with pytest.raises(TransitionNotAllowed) as refused:
        payment.resolve_by_operator(Resolution.AUTHORIZED, note="?", caused_by=BY)
    assert refused.value.reason == "NOT_IN_REVIEW"


def test_a_refund_cannot_be_resolved_as_authorized() -> None:
    payment = authorized(1000)
    payment.start_capture(None, deadline=DEADLINE, cause=CAUSE)
    payment.record_success(2, provider_reference="c", amount=1000, caused_by=CAUSE)
    payment.start_refund(None, reason="", deadline=DEADLINE, cause=CAUSE)
    in_review(payment)
    with pytest.raises(TransitionNotAllowed) as refused:
        payment.resolve_by_operator(Resolution.AUTHORIZED, note="?", caused_by=BY)
    assert refused.value.reason == "OUTCOME_NOT_APPLICABLE"


def test_a_resolution_replays_to_the_same_payment() -> None:
    payment = in_review(requested())
    payment.resolve_by_operator(Resolution.CAPTURED, note="ok", caused_by=BY)
    events = payment.collect_events()
    rebuilt: Payment | None = None
    for e in events:
        rebuilt = e.mutate(rebuilt)  # type: ignore[assignment]
    assert rebuilt is not None
    assert rebuilt.status is Status.CAPTURED and rebuilt.captured_amount == 1000


def test_a_cancel_in_review_seen_canceled_cancels_the_payment() -> None:
    payment = authorized(1000)
    payment.start_cancel(deadline=DEADLINE, cause=CAUSE)
    in_review(payment)
    op = payment.resolve_by_operator(Resolution.CANCELED, note="voided", caused_by=BY)
    assert op.status is OpStatus.SUCCEEDED
    assert payment.status is Status.CANCELED
    assert payment.captured_amount == 0


def test_a_cancel_in_review_seen_still_authorized_failed() -> None:
    payment = authorized(1000)
    payment.start_cancel(deadline=DEADLINE, cause=CAUSE)
    in_review(payment)
    op = payment.resolve_by_operator(Resolution.AUTHORIZED, note="not voided", caused_by=BY)
    assert op.status is OpStatus.FAILED
    assert payment.status is Status.AUTHORIZED


def test_a_refund_in_review_seen_refunded_counts_its_amount_once() -> None:
    payment = captured(1000)
    payment.start_refund(400, reason="", deadline=DEADLINE, cause=CAUSE)
    in_review(payment)
    op = payment.resolve_by_operator(
        Resolution.REFUNDED, note="re_1 succeeded", caused_by=BY, provider_reference="re_1"
    )
    assert op.status is OpStatus.SUCCEEDED and op.provider_reference == "re_1"
    assert payment.refunded_amount == 400
    assert payment.status is Status.PARTIALLY_REFUNDED


def test_a_refund_in_review_with_no_such_refund_moved_nothing() -> None:
    payment = captured(1000)
    payment.start_refund(None, reason="", deadline=DEADLINE, cause=CAUSE)
    in_review(payment)
    op = payment.resolve_by_operator(Resolution.NOT_FOUND, note="no refund", caused_by=BY)
    assert op.status is OpStatus.FAILED
    assert payment.refunded_amount == 0
    assert payment.status is Status.CAPTURED


@pytest.mark.parametrize("outcome", [Resolution.CANCELED, Resolution.REFUNDED])
def test_an_authorization_cannot_be_resolved_as_canceled_or_refunded(
    outcome: Resolution,
) -> None:
    payment = in_review(requested())
    with pytest.raises(TransitionNotAllowed) as refused:
        payment.resolve_by_operator(outcome, note="?", caused_by=BY)
    assert refused.value.reason == "OUTCOME_NOT_APPLICABLE"
    assert payment.status is Status.REQUIRES_REVIEW
