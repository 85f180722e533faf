"""The table of what a Razorpay answer means for the money, row by row.

``classify`` is pure: an HTTP status, its headers and Razorpay's parsed error in, a verdict
out. The transport rows (nothing sent, or sent and no answer) are ``ProviderHttp``'s, which
the adapter configures with ``honors_idempotency_keys=False``; they are checked here through
the adapter against real sockets.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.razorpay import RazorpayAdapter
from adapters.razorpay.transformers import (
    Classification,
    RazorpayError,
    Verdict,
    authorization_outcome,
    classify,
    found_capture,
    parse_error,
    refund_outcome,
)
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)
from orchestrator.secrets import Secret
from tests.emulators.razorpay import APPROVED, CUSTOMER, KEY_ID, KEY_SECRET, RazorpayEmulator

VALIDATION = RazorpayError(
    code="BAD_REQUEST_ERROR",
    description="The amount must be an integer.",
    field="amount",
    source="business",
    step="payment_initiation",
    reason="input_validation_failed",
)
DECLINE = RazorpayError(
    code="BAD_REQUEST_ERROR",
    description="Payment failed due to insufficient funds in the account.",
    source="customer",
    step="payment_authorization",
    reason="insufficient_funds",
    payment_id="pay_EDNBKIP31Y4jl8",
    order_id="order_DBJKIP31Y4jl8",
)
BAD_KEY = RazorpayError(
    code="BAD_REQUEST_ERROR",
    description="The api key provided is invalid",
    source="NA",
    step="NA",
    reason="NA",
)
GATEWAY = RazorpayError(code="GATEWAY_ERROR", description="Payment processing failed")
SERVER = RazorpayError(code="SERVER_ERROR", description="The server encountered an error")


@dataclass(frozen=True)
class Row:
    status: int
    error: RazorpayError | None
    expected: Classification
    headers: tuple[tuple[str, str], ...] = ()


def unknown(*, breaker: bool, retry_after: float | None = None) -> Classification:
    return Classification(
        Verdict.UNKNOWN, retry_after=retry_after, breaker_failure=breaker, lookup_first=True
    )


ROWS = {
    "a 2xx answer is read as a success": Row(200, None, Classification(Verdict.SUCCESS)),
    "a validation error is a final failure that moved nothing": Row(
        400, VALIDATION, Classification(Verdict.FAILED)
    ),
    "a failed payment named in the error metadata is a decline with its reason": Row(
        400,
        DECLINE,
        Classification(
            Verdict.DECLINED,
            decline_code="insufficient_funds",
            provider_reference=DECLINE.payment_id,
        ),
    ),
    "a payment refused for invalid input is a failure, not a decline": Row(
        400,
        RazorpayError(
            code="BAD_REQUEST_ERROR", reason="input_validation_failed", payment_id="pay_X"
        ),
        Classification(Verdict.FAILED),
    ),
    "bad credentials (401) are a final failure": Row(401, BAD_KEY, Classification(Verdict.FAILED)),
    "a forbidden request (403) is a final failure": Row(403, None, Classification(Verdict.FAILED)),
    "an unknown path (404) is a final failure": Row(404, None, Classification(Verdict.FAILED)),
    "a key in use (409) is unknown, looked up first, and no breaker failure": Row(
        409, BAD_KEY, unknown(breaker=False)
    ),
    "a key in use (409) passes on Retry-After": Row(
        409, None, unknown(breaker=False, retry_after=2.0), (("Retry-After", "2"),)
    ),
    "rate limiting (429) is not reached, honours Retry-After, and is no breaker failure": Row(
        429, None, Classification(Verdict.NOT_REACHED, retry_after=3.0), (("Retry-After", "3"),)
    ),
    "rate limiting (429) without Retry-After leaves the wait to the core": Row(
        429, BAD_KEY, Classification(Verdict.NOT_REACHED)
    ),
    "SERVER_ERROR (500) is unknown, looked up first, and a breaker failure": Row(
        500, SERVER, unknown(breaker=True)
    ),
    "GATEWAY_ERROR (502) is unknown, looked up first, and a breaker failure": Row(
        502, GATEWAY, unknown(breaker=True)
    ),
    "a 503 without a Razorpay body is unknown and a breaker failure": Row(
        503, None, unknown(breaker=True)
    ),
    "a GATEWAY_ERROR code is unknown whatever its status": Row(400, GATEWAY, unknown(breaker=True)),
    "a SERVER_ERROR code is unknown whatever its status": Row(400, SERVER, unknown(breaker=True)),
    "an undocumented 3xx is unknown": Row(302, None, unknown(breaker=True)),
}


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_classify(row: Row) -> None:
    got = classify(row.status, dict(row.headers), row.error)
    assert (got.verdict, got.retry_after, got.breaker_failure, got.lookup_first) == (
        row.expected.verdict,
        row.expected.retry_after,
        row.expected.breaker_failure,
        row.expected.lookup_first,
    )
    assert (got.decline_code, got.provider_reference) == (
        row.expected.decline_code,
        row.expected.provider_reference,
    )
    if got.verdict is not Verdict.SUCCESS:
        assert got.message.startswith(f"razorpay answered HTTP {row.status}")


def test_a_decline_is_never_a_breaker_failure() -> None:
    assert classify(400, {}, DECLINE).breaker_failure is False


def test_the_message_carries_razorpays_code_description_and_reason() -> None:
    assert classify(400, {}, DECLINE).message == (
        "razorpay answered HTTP 400 BAD_REQUEST_ERROR: Payment failed due to insufficient "
        "funds in the account. (insufficient_funds)"
    )


# --- settling a classification ----------------------------------------------------------


def test_a_decline_settles_as_a_declined_outcome() -> None:
    assert classify(400, {}, DECLINE).settle() == ProviderOutcome(
        OutcomeStatus.DECLINED,
        provider_reference="pay_EDNBKIP31Y4jl8",
        decline_code="insufficient_funds",
        message=classify(400, {}, DECLINE).message,
    )


def test_a_failure_settles_as_a_failed_outcome() -> None:
    assert classify(400, {}, VALIDATION).settle().status is OutcomeStatus.FAILED


def test_not_reached_settles_by_raising_with_its_hints() -> None:
    with pytest.raises(ProviderNotReached) as raised:
        classify(429, {"Retry-After": "4"}, None).settle()
    assert (raised.value.retry_after, raised.value.breaker_failure) == (4.0, False)


def test_unknown_settles_by_raising_lookup_first() -> None:
    with pytest.raises(ProviderOutcomeUnknown) as raised:
        classify(502, {}, GATEWAY).settle()
    assert (raised.value.lookup_first, raised.value.breaker_failure) == (True, True)


def test_a_success_has_no_outcome_of_its_own() -> None:
    with pytest.raises(ValueError, match="read its body"):
        classify(200, {}, None).settle()


# --- parsing Razorpay's error body ------------------------------------------------------


def test_the_documented_error_body_is_parsed_whole() -> None:
    body = {
        "error": {
            "code": "BAD_REQUEST_ERROR",
            "description": "Authentication failed due to incorrect otp",
            "field": None,
            "source": "customer",
            "step": "payment_authentication",
            "reason": "invalid_otp",
            "metadata": {"payment_id": "pay_EDNBKIP31Y4jl8", "order_id": "order_DBJKIP31Y4jl8"},
        }
    }
    assert parse_error(body) == RazorpayError(
        code="BAD_REQUEST_ERROR",
        description="Authentication failed due to incorrect otp",
        source="customer",
        step="payment_authentication",
        reason="invalid_otp",
        payment_id="pay_EDNBKIP31Y4jl8",
        order_id="order_DBJKIP31Y4jl8",
    )


@pytest.mark.parametrize("body", [None, "oops", [], {}, {"error": "text"}, {"message": "x"}])
def test_a_body_without_an_error_object_parses_as_none(body: object) -> None:
    assert parse_error(body) is None


def test_empty_metadata_rendered_as_a_list_is_no_payment() -> None:
    error = parse_error({"error": {"code": "BAD_REQUEST_ERROR", "metadata": []}})
    assert error is not None and error.payment_id == ""


# --- the payment and refund status mappings ---------------------------------------------


def payment(status: str, **fields: Any) -> dict[str, object]:
    return {"id": "pay_1", "amount": 1000, "status": status, **fields}


AUTH_ROWS = {
    "an authorized payment is a succeeded authorization": (
        payment("authorized"), False, ProviderOutcome(OutcomeStatus.SUCCEEDED, "pay_1")
    ),
    "a captured payment reports the capture asked for with it": (
        payment("captured"), True, ProviderOutcome(OutcomeStatus.SUCCEEDED, "pay_1", 1000)
    ),
    "a payment captured later reports no capture of its own": (
        payment("captured"), False, ProviderOutcome(OutcomeStatus.SUCCEEDED, "pay_1", 0)
    ),
    "a refunded payment was captured": (
        payment("refunded"), True, ProviderOutcome(OutcomeStatus.SUCCEEDED, "pay_1", 1000)
    ),
    "a failed payment is a decline with its error_reason": (
        payment("failed", error_code="BAD_REQUEST_ERROR", error_reason="card_declined",
                error_description="declined by the bank"),
        False,
        ProviderOutcome(OutcomeStatus.DECLINED, "pay_1", decline_code="card_declined",
                        message="declined by the bank"),
    ),
    "a failed payment without a reason falls back on error_code": (
        payment("failed", error_code="GATEWAY_ERROR"), False,
        ProviderOutcome(OutcomeStatus.DECLINED, "pay_1", decline_code="GATEWAY_ERROR"),
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("entity", "capture", "expected"), AUTH_ROWS.values(), ids=AUTH_ROWS.keys()
)
def test_authorization_outcome(
    entity: dict[str, object], capture: bool, expected: ProviderOutcome
) -> None:
    assert authorization_outcome(entity, capture=capture) == expected


def test_a_payment_still_created_is_unknown_without_blaming_razorpay() -> None:
    with pytest.raises(ProviderOutcomeUnknown, match="still being processed") as raised:
        authorization_outcome(payment("created"), capture=False)
    assert (raised.value.lookup_first, raised.value.breaker_failure) == (True, False)


def capture_op(amount: int = 1000) -> ProviderOperation:
    return ProviderOperation(OperationKind.CAPTURE, "p", "p:2:capture:1", amount, "INR")


@pytest.mark.parametrize(
    ("status", "amount", "found"),
    [("captured", 1000, True), ("refunded", 1000, True), ("captured", 300, False),
     ("authorized", 1000, False), ("created", 1000, False), ("failed", 1000, False)],
    ids=["captured is our capture", "refunded was captured", "another amount is not ours",
         "authorized was never captured", "created was never captured",
         "failed was never captured"],
)  # fmt: skip
def test_a_capture_is_found_through_its_payment(status: str, amount: int, found: bool) -> None:
    outcome = found_capture(payment(status), capture_op(amount))
    assert (outcome is not None) is found


@pytest.mark.parametrize(
    ("status", "expected"),
    [("processed", OutcomeStatus.SUCCEEDED), ("pending", OutcomeStatus.SUCCEEDED),
     ("created", OutcomeStatus.SUCCEEDED), ("failed", OutcomeStatus.FAILED)],
    ids=["processed refund succeeded", "pending refund is Razorpay's to finish",
         "created refund is Razorpay's to finish", "failed refund moved nothing"],
)  # fmt: skip
def test_refund_outcome(status: str, expected: OutcomeStatus) -> None:
    refund = {"id": "rfnd_1", "amount": 400, "status": status}
    assert refund_outcome(refund).status is expected


# --- the transport rows, through the adapter's own HTTP client --------------------------


@pytest.fixture
def emulator() -> Iterator[RazorpayEmulator]:
    running = RazorpayEmulator().start()
    assert isinstance(running, RazorpayEmulator)
    yield running
    running.stop()


def adapter_at(url: str) -> RazorpayAdapter:
    return RazorpayAdapter(Secret(KEY_ID, "t"), Secret(KEY_SECRET, "t"), base_url=url)


def authorize_op() -> ProviderOperation:
    payment_id = str(uuid.uuid4())
    return ProviderOperation(
        OperationKind.AUTHORIZE, payment_id, f"{payment_id}:1:authorize:1", 1000, "INR",
        payment_method=f"{CUSTOMER}:{APPROVED}",
    )  # fmt: skip


def test_a_connection_not_established_is_not_reached_and_a_breaker_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ProviderNotReached, match="ConnectError") as raised:
        adapter_at(f"http://127.0.0.1:{port}").authorize(authorize_op(), timeout=1.0)
    assert raised.value.breaker_failure is True


def test_a_timeout_after_sending_is_unknown_looked_up_first_and_a_breaker_failure(
    emulator: RazorpayEmulator,
) -> None:
    emulator.hang_next(0.4)
    with pytest.raises(ProviderOutcomeUnknown, match="ReadTimeout") as raised:
        adapter_at(emulator.url).authorize(authorize_op(), timeout=0.2)
    assert (raised.value.lookup_first, raised.value.breaker_failure) == (True, True)


def test_a_reset_after_sending_is_unknown_and_looked_up_first(emulator: RazorpayEmulator) -> None:
    emulator.drop_next_response()
    with pytest.raises(ProviderOutcomeUnknown) as raised:
        adapter_at(emulator.url).authorize(authorize_op(), timeout=1.0)
    assert (raised.value.lookup_first, raised.value.breaker_failure) == (True, True)


def test_the_adapter_says_razorpay_honours_no_idempotency_key() -> None:
    assert adapter_at("http://127.0.0.1:9").honors_idempotency_keys is False


def test_an_error_body_round_trips_through_json() -> None:
    raw = json.dumps({"error": {"code": "SERVER_ERROR", "description": "boom"}})
    assert parse_error(json.loads(raw)) == RazorpayError(code="SERVER_ERROR", description="boom")
