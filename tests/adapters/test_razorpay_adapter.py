"""The Razorpay adapter on the wire, against the Razorpay emulator over loopback HTTP."""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.razorpay import DEFAULT_BASE_URL, RazorpayAdapter, from_config
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)
from orchestrator.secrets import Secret
from tests.emulators.base import Drop, Reply, Request
from tests.emulators.razorpay import (
    APPROVED,
    CUSTOMER,
    DECLINED,
    KEY_ID,
    KEY_SECRET,
    PENDING,
    RazorpayEmulator,
    error_reply,
    na_error_reply,
)

# building an SSL context per client costs ~80 ms; these clients only speak plain HTTP anyway
TLS = ssl.create_default_context()
TIMEOUT = 2.0
BASIC = "Basic " + base64.b64encode(f"{KEY_ID}:{KEY_SECRET}".encode()).decode()


@pytest.fixture
def emulator() -> Iterator[RazorpayEmulator]:
    running = RazorpayEmulator()
    running.start()
    yield running
    running.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(verify=TLS) as client:
        yield client


def make_adapter(url: str, secret: str = KEY_SECRET) -> RazorpayAdapter:
    return RazorpayAdapter(Secret(KEY_ID, "test"), Secret(secret, "test"), base_url=url)


@pytest.fixture
def adapter(emulator: RazorpayEmulator) -> RazorpayAdapter:
    return make_adapter(emulator.url)


def authorize_op(
    token: str = APPROVED, *, attempt: int = 1, payment_id: str = "", **overrides: Any
) -> ProviderOperation:
    payment_id = payment_id or str(uuid.uuid4())
    fields: dict[str, Any] = {
        "kind": OperationKind.AUTHORIZE,
        "payment_id": payment_id,
        "provider_key": f"{payment_id}:1:authorize:{attempt}",
        "amount": 1000,
        "currency": "INR",
        "payment_method": f"{CUSTOMER}:{token}",
        "reference": "order-1",
    }
    fields.update(overrides)
    return ProviderOperation(**fields)


def follow_up(
    kind: OperationKind, auth: ProviderOperation, reference: str, amount: int, sequence: int = 2
) -> ProviderOperation:
    return ProviderOperation(
        kind=kind,
        payment_id=auth.payment_id,
        provider_key=f"{auth.payment_id}:{sequence}:{kind.value}:1",
        amount=amount,
        currency=auth.currency,
        provider_reference=reference,
        reason="requested_by_customer" if kind is OperationKind.REFUND else "",
    )


def authorized(adapter: RazorpayAdapter, *, capture: bool = False) -> tuple[ProviderOperation, str]:
    op = authorize_op(capture=capture)
    outcome = adapter.authorize(op, timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.SUCCEEDED, outcome
    return op, outcome.provider_reference


def captured(adapter: RazorpayAdapter) -> tuple[ProviderOperation, str]:
    return authorized(adapter, capture=True)


def sent(emulator: RazorpayEmulator, method: str, path: str) -> list[Request]:
    return [r for r in emulator.requests if r.method == method and re.fullmatch(path, r.path)]


def body_of(request: Request) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(request.body)
    return body


def kinds(emulator: RazorpayEmulator) -> list[str]:
    return [m.kind for m in emulator.movements()]


def wait_for(condition: Callable[[], bool], within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- auth and encoding --------------------------------------------------------------------


def test_every_request_carries_basic_auth_of_key_id_and_secret(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op, reference = captured(adapter)
    adapter.refund(follow_up(OperationKind.REFUND, op, reference, 500), timeout=TIMEOUT)
    adapter.lookup(op, timeout=TIMEOUT)
    assert len(emulator.requests) >= 6
    assert {r.headers.get("authorization") for r in emulator.requests} == {BASIC}


def test_authorize_makes_an_order_with_our_payment_id_as_receipt(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op = authorize_op()
    adapter.authorize(op, timeout=TIMEOUT)
    [create] = sent(emulator, "POST", "/v1/orders")
    assert create.headers["content-type"] == "application/json"
    assert body_of(create) == {
        "amount": 1000,
        "currency": "INR",
        "receipt": op.payment_id,
        "notes": {
            "payorch_payment_id": op.payment_id,
            "payorch_provider_key": op.provider_key,
            "payorch_reference": "order-1",
        },
        "payment_capture": False,
    }
    assert len(op.payment_id) <= 40  # Razorpay's limit for a receipt


def test_authorize_charges_the_saved_token_server_side_and_reads_the_payment_back(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op = authorize_op()
    outcome = adapter.authorize(op, timeout=TIMEOUT)
    [order] = emulator.orders_with_receipt(op.payment_id)
    [charge] = sent(emulator, "POST", "/v1/payments/create/recurring")
    assert body_of(charge) == {
        "amount": 1000,
        "currency": "INR",
        "order_id": order["id"],
        "customer_id": CUSTOMER,
        "token": APPROVED,
        "recurring": True,
        "notes": {
            "payorch_payment_id": op.payment_id,
            "payorch_provider_key": op.provider_key,
            "payorch_reference": "order-1",
        },
    }
    assert sent(emulator, "GET", f"/v1/payments/{outcome.provider_reference}")
    assert outcome == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=outcome.provider_reference
    )
    assert emulator.payments[outcome.provider_reference]["status"] == "authorized"


def test_the_payers_contact_details_come_from_the_payment_metadata(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    metadata = {"email": "gaurav.kumar@example.com", "contact": "+919876543210", "x": "y"}
    adapter.authorize(authorize_op(metadata=metadata), timeout=TIMEOUT)
    [charge] = sent(emulator, "POST", "/v1/payments/create/recurring")
    assert (body_of(charge)["email"], body_of(charge)["contact"]) == (
        "gaurav.kumar@example.com",
        "+919876543210",
    )
    assert "x" not in body_of(charge)


def test_authorize_with_capture_asks_the_order_to_capture_automatically(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    outcome = adapter.authorize(authorize_op(capture=True, amount=2500), timeout=TIMEOUT)
    [create] = sent(emulator, "POST", "/v1/orders")
    assert body_of(create)["payment_capture"] is True
    assert outcome.captured_amount == 2500
    assert kinds(emulator) == ["authorization", "capture"]


def test_capture_sends_the_amount_and_currency(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op, reference = authorized(adapter)
    outcome = adapter.capture(follow_up(OperationKind.CAPTURE, op, reference, 1000), timeout=2)
    [capture] = sent(emulator, "POST", f"/v1/payments/{reference}/capture")
    assert body_of(capture) == {"amount": 1000, "currency": "INR"}
    assert outcome == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=1000
    )


def test_refund_carries_our_ids_and_reason_in_its_notes(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op, reference = captured(adapter)
    refund_op = follow_up(OperationKind.REFUND, op, reference, 400, sequence=3)
    outcome = adapter.refund(refund_op, timeout=TIMEOUT)
    [refund] = sent(emulator, "POST", f"/v1/payments/{reference}/refund")
    assert body_of(refund) == {
        "amount": 400,
        "notes": {
            "payorch_payment_id": op.payment_id,
            "payorch_provider_key": refund_op.provider_key,
            "payorch_reason": "requested_by_customer",
        },
    }
    [stored] = emulator.refunds[reference]
    assert outcome == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=stored["id"], captured_amount=400
    )


# --- idempotency: none on payments, X-Refund-Idempotency on refunds ------------------------


def test_no_request_but_a_refund_carries_an_idempotency_header(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op, reference = authorized(adapter)
    adapter.capture(follow_up(OperationKind.CAPTURE, op, reference, 1000), timeout=TIMEOUT)
    for request in emulator.requests:
        assert not {"idempotency-key", "x-refund-idempotency"} & set(request.headers)


def test_razorpay_charges_again_for_a_payment_sent_twice(
    emulator: RazorpayEmulator, http: httpx.Client
) -> None:
    """The emulator honours no key on payments, as Razorpay: a blind re-send charges twice."""
    headers = {"Authorization": BASIC}
    order = http.post(
        f"{emulator.url}/v1/orders", headers=headers,
        json={"amount": 1000, "currency": "INR", "receipt": "r1", "payment_capture": False},
    ).json()  # fmt: skip
    charge = {
        "amount": 1000, "currency": "INR", "order_id": order["id"], "customer_id": CUSTOMER,
        "token": APPROVED, "recurring": True,
    }  # fmt: skip
    for _ in range(2):
        answer = http.post(
            f"{emulator.url}/v1/payments/create/recurring", headers=headers, json=charge
        )
        assert answer.status_code == 200
        assert answer.json()["razorpay_payment_id"].startswith("pay_")
    assert kinds(emulator) == ["authorization", "authorization"]


def test_authorize_sent_again_under_the_same_key_finds_the_earlier_payment(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op = authorize_op()
    first = adapter.authorize(op, timeout=TIMEOUT)
    second = adapter.authorize(op, timeout=TIMEOUT)
    assert first == second
    assert kinds(emulator) == ["authorization"]
    assert len(sent(emulator, "POST", "/v1/payments/create/recurring")) == 1


def test_a_new_attempt_charges_the_order_of_the_attempt_that_did_not_get_through(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    first = authorize_op()
    emulator.fail_next(na_error_reply(429, "Too many requests"))
    with pytest.raises(ProviderNotReached):
        adapter.authorize(first, timeout=TIMEOUT)
    second = authorize_op(attempt=2, payment_id=first.payment_id)
    assert adapter.authorize(second, timeout=TIMEOUT).status is OutcomeStatus.SUCCEEDED
    assert len(emulator.orders_with_receipt(first.payment_id)) == 1
    assert kinds(emulator) == ["authorization"]


def test_refund_sends_a_derived_x_refund_idempotency_key_identical_on_a_resend(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op, reference = captured(adapter)
    refund_op = follow_up(OperationKind.REFUND, op, reference, 300, sequence=3)
    first = adapter.refund(refund_op, timeout=TIMEOUT)
    again = adapter.refund(refund_op, timeout=TIMEOUT)
    keys = [r.headers["x-refund-idempotency"] for r in sent(emulator, "POST", r"/v1/.*/refund")]
    assert len(keys) == 2 and keys[0] == keys[1]
    # Razorpay's rule: at least 10 characters of letters, digits, '-' and '_'
    assert re.fullmatch(r"[A-Za-z0-9_-]{10,}", keys[0])
    assert first == again
    assert [m.amount for m in emulator.movements() if m.kind == "refund"] == [300]


def test_refunds_under_different_keys_get_different_idempotency_keys(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op, reference = captured(adapter)
    for sequence in (3, 4):
        adapter.refund(follow_up(OperationKind.REFUND, op, reference, 100, sequence), timeout=2)
    keys = {r.headers["x-refund-idempotency"] for r in sent(emulator, "POST", r"/v1/.*/refund")}
    assert len(keys) == 2


# --- amounts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "amount"),
    [("INR", 1000), ("JPY", 295), ("KWD", 295990)],
    ids=["INR paise go as they are", "JPY yen go as they are", "KWD fils go as they are"],
)
def test_amounts_go_in_the_currencys_smallest_unit_unchanged(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator, currency: str, amount: int
) -> None:
    outcome = adapter.authorize(authorize_op(currency=currency, amount=amount), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.SUCCEEDED
    [create] = sent(emulator, "POST", "/v1/orders")
    assert (body_of(create)["amount"], body_of(create)["currency"]) == (amount, currency)
    assert emulator.movements()[0].amount == amount


def test_a_three_decimal_amount_not_ending_in_zero_is_refused_before_sending(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    outcome = adapter.authorize(authorize_op(currency="KWD", amount=295991), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "last decimal of 0" in outcome.message
    assert emulator.requests == []


@pytest.mark.parametrize(
    "method", ["token_approved", "cust_1:pm_card_visa", "card_1:token_1", f"{CUSTOMER}:"]
)
def test_a_payment_method_not_naming_customer_and_token_fails_before_sending(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator, method: str
) -> None:
    outcome = adapter.authorize(authorize_op(payment_method=method), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "<customer_id>:<token_id>" in outcome.message
    assert emulator.requests == []


# --- declines, refusals, and what Razorpay cannot do -------------------------------------


def test_a_decline_is_an_outcome_naming_the_failed_payment(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    outcome = adapter.authorize(authorize_op(DECLINED), timeout=TIMEOUT)
    [payment] = emulator.payments.values()
    assert outcome.status is OutcomeStatus.DECLINED
    assert outcome.decline_code == "insufficient_funds"
    assert outcome.provider_reference == payment["id"]
    assert payment["status"] == "failed"
    assert emulator.movements() == []


def test_a_declined_payment_is_found_declined(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op = authorize_op(DECLINED)
    declined = adapter.authorize(op, timeout=TIMEOUT)
    found = adapter.lookup(op, timeout=TIMEOUT)
    assert found is not None
    assert (found.status, found.decline_code, found.provider_reference) == (
        OutcomeStatus.DECLINED,
        "insufficient_funds",
        declined.provider_reference,
    )


def test_cancel_is_refused_without_sending_anything(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op, reference = authorized(adapter)
    before = len(emulator.requests)
    outcome = adapter.cancel(follow_up(OperationKind.CANCEL, op, reference, 0), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "no cancel API" in outcome.message
    assert len(emulator.requests) == before


def test_a_partial_capture_is_refused_as_razorpay_documents(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op, reference = authorized(adapter)
    outcome = adapter.capture(follow_up(OperationKind.CAPTURE, op, reference, 400), timeout=2)
    assert outcome.status is OutcomeStatus.FAILED
    assert "Capture amount must be equal to the amount authorized" in outcome.message
    assert kinds(emulator) == ["authorization"]


def test_capturing_twice_is_refused(adapter: RazorpayAdapter, emulator: RazorpayEmulator) -> None:
    op, reference = captured(adapter)
    outcome = adapter.capture(follow_up(OperationKind.CAPTURE, op, reference, 1000), timeout=2)
    assert outcome.status is OutcomeStatus.FAILED
    assert "already been captured" in outcome.message


def test_refunding_more_than_captured_is_refused(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op, reference = captured(adapter)
    outcome = adapter.refund(follow_up(OperationKind.REFUND, op, reference, 1001), timeout=2)
    assert outcome.status is OutcomeStatus.FAILED
    assert "greater than amount captured" in outcome.message
    assert "refund" not in kinds(emulator)


def test_refunding_an_uncaptured_payment_is_refused(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op, reference = authorized(adapter)
    outcome = adapter.refund(follow_up(OperationKind.REFUND, op, reference, 500), timeout=2)
    assert outcome.status is OutcomeStatus.FAILED


def test_follow_ups_without_a_provider_reference_fail_without_sending(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op = authorize_op()
    for kind in (OperationKind.CAPTURE, OperationKind.REFUND):
        call = adapter.capture if kind is OperationKind.CAPTURE else adapter.refund
        assert call(follow_up(kind, op, "", 100), timeout=TIMEOUT).status is OutcomeStatus.FAILED
        assert adapter.lookup(follow_up(kind, op, "", 100), timeout=TIMEOUT) is None
    assert emulator.requests == []


def test_wrong_credentials_get_razorpays_401_and_fail(emulator: RazorpayEmulator) -> None:
    adapter = make_adapter(emulator.url, secret="not-the-secret")
    outcome = adapter.authorize(authorize_op(), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert outcome.message == (
        "razorpay answered HTTP 401 BAD_REQUEST_ERROR: The api key provided is invalid"
    )
    assert emulator.orders == {}


# --- error mapping through real answers ----------------------------------------------------

ANSWERS = {
    "a validation error fails": (
        error_reply(400, "The amount must be an integer.", field="amount"), OutcomeStatus.FAILED
    ),
    "a decline naming its payment is declined": (
        error_reply(400, "Payment failed", source="issuer_bank", step="payment_authorization",
                    reason="card_declined", metadata={"payment_id": "pay_X", "order_id": "o"}),
        OutcomeStatus.DECLINED,
    ),
    "bad credentials fail": (na_error_reply(401, "The api key provided is invalid"),
                             OutcomeStatus.FAILED),
    "an unknown url fails": (na_error_reply(400, "The requested URL was not found on the server"),
                             OutcomeStatus.FAILED),
}  # fmt: skip


@pytest.mark.parametrize(("reply", "status"), ANSWERS.values(), ids=ANSWERS.keys())
def test_final_answers_to_a_charge(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator, reply: Reply, status: OutcomeStatus
) -> None:
    emulator.fail_next(reply)
    outcome = adapter.authorize(authorize_op(), timeout=TIMEOUT)
    assert outcome.status is status
    if status is OutcomeStatus.DECLINED:
        assert (outcome.decline_code, outcome.provider_reference) == ("card_declined", "pay_X")
    assert emulator.movements() == []


ERRORS = {
    "rate limiting is not reached and honours Retry-After": (
        na_error_reply(429, "Too many requests"), {"Retry-After": "2"},
        ProviderNotReached, 2.0, False, None,
    ),
    "a key in use is unknown and no breaker failure": (
        na_error_reply(409, "Another request with the same idempotency key is still in progress."),
        {}, ProviderOutcomeUnknown, None, False, True,
    ),
    "SERVER_ERROR is unknown and looked up first": (
        na_error_reply(500, "The server encountered an error", code="SERVER_ERROR"), {},
        ProviderOutcomeUnknown, None, True, True,
    ),
    "GATEWAY_ERROR is unknown and looked up first": (
        na_error_reply(502, "Payment processing failed due to error at bank or wallet gateway",
                       code="GATEWAY_ERROR"), {}, ProviderOutcomeUnknown, None, True, True,
    ),
    "a 503 page from a proxy is unknown": (
        Reply(503, b"<html>Service Unavailable</html>", content_type="text/html"), {},
        ProviderOutcomeUnknown, None, True, True,
    ),
}  # fmt: skip


@pytest.mark.parametrize("target", ["charge", "capture", "refund"])
@pytest.mark.parametrize(
    ("reply", "headers", "error", "retry_after", "breaker", "lookup_first"),
    ERRORS.values(),
    ids=ERRORS.keys(),
)
def test_unclear_answers_raise_what_they_mean(
    adapter: RazorpayAdapter,
    emulator: RazorpayEmulator,
    target: str,
    reply: Reply,
    headers: dict[str, str],
    error: type[Exception],
    retry_after: float | None,
    breaker: bool,
    lookup_first: bool | None,
) -> None:
    reply = Reply(reply.status, reply.body, headers, reply.content_type)
    send = _prepared(adapter, target)
    emulator.fail_next(reply)
    with pytest.raises(error) as raised:
        send()
    assert getattr(raised.value, "retry_after") == retry_after  # noqa: B009
    assert getattr(raised.value, "breaker_failure") is breaker  # noqa: B009
    if lookup_first is not None:
        assert getattr(raised.value, "lookup_first") is lookup_first  # noqa: B009


def _prepared(adapter: RazorpayAdapter, target: str) -> Callable[[], ProviderOutcome]:
    """The call to make for ``target``, with what it needs already done."""
    if target == "charge":
        return lambda: adapter.authorize(authorize_op(), timeout=TIMEOUT)
    if target == "capture":
        op, reference = authorized(adapter)
        capture = follow_up(OperationKind.CAPTURE, op, reference, 1000)
        return lambda: adapter.capture(capture, timeout=TIMEOUT)
    op, reference = captured(adapter)
    refund = follow_up(OperationKind.REFUND, op, reference, 1000)
    return lambda: adapter.refund(refund, timeout=TIMEOUT)


# --- unknown outcomes and the lookups that resolve them -----------------------------------


def test_a_timeout_is_unknown_and_the_lookup_finds_the_authorization(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op = authorize_op(capture=True)
    emulator.hang_next(0.4)
    # the emulator answers after 0.4 s, so raising at all shows the timeout is applied
    with pytest.raises(ProviderOutcomeUnknown, match="ReadTimeout") as raised:
        adapter.authorize(op, timeout=0.2)
    assert raised.value.lookup_first is True
    wait_for(lambda: kinds(emulator) == ["authorization", "capture"])
    found = adapter.lookup(op, timeout=TIMEOUT)
    [payment] = emulator.payments.values()
    assert found == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=payment["id"], captured_amount=1000
    )


def test_a_lost_capture_answer_is_found_through_the_payment(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op, reference = authorized(adapter)
    capture = follow_up(OperationKind.CAPTURE, op, reference, 1000)
    emulator.drop_next_response()
    with pytest.raises(ProviderOutcomeUnknown):
        adapter.capture(capture, timeout=TIMEOUT)
    assert adapter.lookup(capture, timeout=TIMEOUT) == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=1000
    )
    assert kinds(emulator) == ["authorization", "capture"]


def test_a_capture_never_made_is_not_found(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op, reference = authorized(adapter)
    assert adapter.lookup(follow_up(OperationKind.CAPTURE, op, reference, 1000), timeout=2) is None


def test_a_refund_never_made_is_not_found(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op, reference = captured(adapter)
    assert adapter.lookup(follow_up(OperationKind.REFUND, op, reference, 100), timeout=2) is None


def test_a_pending_payment_is_unknown_until_the_bank_answers(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op = authorize_op(PENDING)
    with pytest.raises(ProviderOutcomeUnknown, match="still being processed") as raised:
        adapter.authorize(op, timeout=TIMEOUT)
    assert (raised.value.breaker_failure, raised.value.lookup_first) == (False, True)
    with pytest.raises(ProviderOutcomeUnknown, match="still being processed"):
        adapter.lookup(op, timeout=TIMEOUT)
    emulator.complete_pending()
    found = adapter.lookup(op, timeout=TIMEOUT)
    assert found is not None and found.status is OutcomeStatus.SUCCEEDED
    assert kinds(emulator) == ["authorization"]


def test_a_lookup_refused_by_razorpay_is_unknown(
    adapter: RazorpayAdapter, emulator: RazorpayEmulator
) -> None:
    op = follow_up(OperationKind.CAPTURE, authorize_op(), "pay_DoesNotExist01", 1000)
    with pytest.raises(ProviderOutcomeUnknown, match="The id provided does not exist") as raised:
        adapter.lookup(op, timeout=TIMEOUT)
    assert raised.value.breaker_failure is False


class _Flaky(RazorpayEmulator):
    """Answers the first GET whose path matches ``pattern`` with ``reply``."""

    def __init__(self, pattern: str, reply: Reply) -> None:
        super().__init__()
        self.pattern, self.reply, self.tripped = pattern, reply, False

    def handle(self, request: Request) -> Reply | Drop:
        if (
            request.method == "GET"
            and not self.tripped
            and re.fullmatch(self.pattern, request.path)
        ):
            self.tripped = True
            return self.reply
        return super().handle(request)


def test_a_payment_made_but_not_read_back_is_unknown_never_not_reached() -> None:
    emulator = _Flaky(r"/v1/payments/pay_\w+", error_reply(429, "Too many requests"))
    emulator.start()
    try:
        with pytest.raises(ProviderOutcomeUnknown, match="could not tell its state") as raised:
            make_adapter(emulator.url).authorize(authorize_op(), timeout=TIMEOUT)
        assert raised.value.lookup_first is True
        assert kinds(emulator) == ["authorization"]
    finally:
        emulator.stop()


def test_an_unclear_answer_before_the_charge_is_not_reached() -> None:
    emulator = _Flaky(r"/v1/orders", error_reply(502, "bad gateway", code="GATEWAY_ERROR"))
    emulator.start()
    try:
        with pytest.raises(ProviderNotReached, match="before any payment was attempted"):
            make_adapter(emulator.url).authorize(authorize_op(), timeout=TIMEOUT)
        assert sent(emulator, "POST", "/v1/payments/create/recurring") == []
    finally:
        emulator.stop()


def test_a_closed_port_is_not_reached() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = make_adapter(f"http://127.0.0.1:{port}")
    with pytest.raises(ProviderNotReached, match="ConnectError") as raised:
        adapter.authorize(authorize_op(), timeout=TIMEOUT)
    assert raised.value.retry_after is None
    with pytest.raises(ProviderNotReached):
        adapter.lookup(authorize_op(), timeout=TIMEOUT)


# --- configuration and credentials -------------------------------------------------------


def test_from_config_reads_credentials_from_the_environment(
    emulator: RazorpayEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RZP_KEY_ID", KEY_ID)
    monkeypatch.setenv("RZP_KEY_SECRET", KEY_SECRET)
    spec = {"key_id_env": "RZP_KEY_ID", "key_secret_env": "RZP_KEY_SECRET",
            "base_url": emulator.url, "connect_timeout": 0.5}  # fmt: skip
    with from_config("razorpay-in", spec) as adapter:
        assert adapter.name == "razorpay-in"
        assert adapter.honors_idempotency_keys is False
        assert adapter.authorize(authorize_op(), timeout=TIMEOUT).status is OutcomeStatus.SUCCEEDED


def test_from_config_reads_credentials_from_files(
    emulator: RazorpayEmulator, tmp_path: Path
) -> None:
    (tmp_path / "id").write_text(KEY_ID + "\n")
    (tmp_path / "secret").write_text(KEY_SECRET + "\n")
    spec = {"key_id_file": str(tmp_path / "id"), "key_secret_file": str(tmp_path / "secret"),
            "base_url": emulator.url}  # fmt: skip
    with from_config("razorpay", spec) as adapter:
        assert adapter.authorize(authorize_op(), timeout=TIMEOUT).status is OutcomeStatus.SUCCEEDED


@pytest.mark.parametrize("inline", ["key_id", "key_secret"])
def test_from_config_refuses_credentials_written_inline(
    inline: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RZP_ANY", "value")
    spec: dict[str, Any] = {"key_id_env": "RZP_ANY", "key_secret_env": "RZP_ANY"}
    spec[inline] = "rzp_live_oops"
    del spec[f"{inline}_env"]
    with pytest.raises(ValueError, match=f"{inline} must not be written in the configuration"):
        from_config("razorpay", spec)


def test_from_config_defaults_to_razorpays_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RZP_ANY", "value")
    with from_config("razorpay", {"key_id_env": "RZP_ANY", "key_secret_env": "RZP_ANY"}) as a:
        assert DEFAULT_BASE_URL == "https://api.razorpay.com"
        assert repr(a) == "RazorpayAdapter(name='razorpay', base_url='https://api.razorpay.com')"


def test_logs_never_contain_the_credentials(
    adapter: RazorpayAdapter,
    emulator: RazorpayEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    op, reference = captured(adapter)
    adapter.refund(follow_up(OperationKind.REFUND, op, reference, 100), timeout=TIMEOUT)
    adapter.lookup(op, timeout=TIMEOUT)
    emulator.fail_next(error_reply(500, "boom", code="SERVER_ERROR"))
    with pytest.raises(ProviderOutcomeUnknown):
        adapter.authorize(authorize_op(), timeout=TIMEOUT)
    make_adapter(emulator.url, secret="wrong-secret-123").authorize(authorize_op(), timeout=2)
    logged = caplog.text + repr(adapter)
    assert "razorpay" in caplog.text  # the adapter did log
    for secret in (KEY_SECRET, "wrong-secret-123", BASIC.split()[1]):
        assert secret not in logged
