"""The Adyen classification table: every answer Adyen can give, and what it means for money.

Three tables: HTTP answers (``classify``), the ``resultCode`` of a 200 from ``/payments``
(``payment_outcome``), and the transport failures that happen before any answer exists, which
``ProviderHttp.send`` classifies (checked through the adapter over real sockets).
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.adyen import AdyenAdapter, Classification, Verdict, classify
from adapters.adyen.transformers import AdyenError, payment_outcome
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderError,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)
from orchestrator.secrets import Secret
from tests.emulators import adyen
from tests.emulators.adyen import AdyenEmulator


def error(status: int, code: str, message: str = "m", kind: str = "validation") -> AdyenError:
    return AdyenError(status, code, message, kind)


@dataclass(frozen=True)
class Row:
    status: int
    headers: dict[str, str]
    error: AdyenError | None
    verdict: Verdict
    retry_after: float | None = None
    breaker_failure: bool = False
    lookup_first: bool = False


HTTP_ROWS = {
    "a 200 is read from its body, declines included": Row(200, {}, None, Verdict.ANSWER),
    "a 201 received is read from its body": Row(201, {}, None, Verdict.ANSWER),
    "a 429 backs off honouring Retry-After and is no breaker failure": Row(
        429, {"Retry-After": "7"}, error(429, "000", "Too many requests", "security"),
        Verdict.NOT_REACHED, retry_after=7.0,
    ),
    "a 429 without Retry-After still backs off": Row(429, {}, None, Verdict.NOT_REACHED),
    "a 422 with error 704 is a key still in progress: retry later, not a breaker failure": Row(
        422, {}, error(422, "704", "request already processed or in progress"), Verdict.UNKNOWN,
    ),
    "a 409 with error 704 is a key still in progress too": Row(
        409, {"Retry-After": "1"}, error(409, "704", "request already processed or in progress"),
        Verdict.UNKNOWN, retry_after=1.0,
    ),
    "a 409 for concurrent use of a key is retried later, not a breaker failure": Row(
        409, {}, None, Verdict.UNKNOWN,
    ),
    "a 5xx marked transient-error is re-sent with the same key and trips the breaker": Row(
        500, {"transient-error": "true"}, error(500, "000", "NO_CONNECTION_AVAILABLE", "internal"),
        Verdict.UNKNOWN, breaker_failure=True,
    ),
    "the transient-error header is read whatever its case": Row(
        503, {"Transient-Error": "TRUE"}, None, Verdict.UNKNOWN, breaker_failure=True,
    ),
    "a 4xx marked transient-error is re-sent with the same key as well": Row(
        422, {"transient-error": "true"}, error(422, "000", "m"), Verdict.UNKNOWN,
        breaker_failure=True,
    ),
    "a 500 without transient-error is stored for the key, so look it up first": Row(
        500, {}, error(500, "000", "IOEXCEPTION_RECEIVED", "internal"), Verdict.UNKNOWN,
        breaker_failure=True, lookup_first=True,
    ),
    "a 502 from a proxy, without a body, is looked up first": Row(
        502, {}, None, Verdict.UNKNOWN, breaker_failure=True, lookup_first=True,
    ),
    "a 504 is looked up first": Row(
        504, {"transient-error": "false"}, None, Verdict.UNKNOWN, breaker_failure=True,
        lookup_first=True,
    ),
    "a 401 for a wrong API key is final and moved nothing": Row(
        401, {}, error(401, "000", "HTTP Status Response - Unauthorized", "security"),
        Verdict.FAILED,
    ),
    "a 403 for a merchant account the key may not use is final": Row(
        403, {}, error(403, "901", "Invalid Merchant Account", "security"), Verdict.FAILED,
    ),
    "a 422 validation error is final": Row(
        422, {}, error(422, "167", "Original pspReference required for this operation"),
        Verdict.FAILED,
    ),
    "a 400 is final": Row(400, {}, error(400, "000", "Unable to parse message"), Verdict.FAILED),
    "a 404 is final": Row(404, {}, None, Verdict.FAILED),
    "an unexpected 3xx may have moved money: look it up first": Row(
        302, {}, None, Verdict.UNKNOWN, breaker_failure=True, lookup_first=True,
    ),
}  # fmt: skip


@pytest.mark.parametrize("row", HTTP_ROWS.values(), ids=HTTP_ROWS.keys())
def test_http_answer(row: Row) -> None:
    got = classify(row.status, row.headers, row.error)
    assert (got.verdict, got.retry_after, got.breaker_failure, got.lookup_first) == (
        row.verdict, row.retry_after, row.breaker_failure, row.lookup_first,
    )  # fmt: skip


ERRORS: dict[Verdict, type[ProviderError] | None] = {
    Verdict.NOT_REACHED: ProviderNotReached,
    Verdict.UNKNOWN: ProviderOutcomeUnknown,
    Verdict.FAILED: None,
}


@pytest.mark.parametrize(
    "row", [r for r in HTTP_ROWS.values() if r.verdict is not Verdict.ANSWER],
    ids=[k for k, r in HTTP_ROWS.items() if r.verdict is not Verdict.ANSWER],
)  # fmt: skip
def test_settling_raises_the_port_error_with_the_same_attributes(row: Row) -> None:
    got = classify(row.status, row.headers, row.error)
    expected = ERRORS[row.verdict]
    if expected is None:
        outcome = got.settle()
        assert outcome.status is OutcomeStatus.FAILED
        assert str(row.status) in outcome.message
        return
    with pytest.raises(expected) as raised:
        got.settle()
    assert raised.value.retry_after == row.retry_after
    assert raised.value.breaker_failure == row.breaker_failure
    if isinstance(raised.value, ProviderOutcomeUnknown):
        assert raised.value.lookup_first == row.lookup_first


def test_the_message_quotes_adyens_error_code_and_text() -> None:
    got = classify(422, {}, error(422, "167", "Original pspReference required"))
    assert (
        got.reason
        == "Adyen refused the request: HTTP 422 validation 167: Original pspReference required"
    )


def test_a_2xx_is_read_not_settled() -> None:
    with pytest.raises(ValueError):
        Classification(Verdict.ANSWER, "answered").settle()


# --- resultCode of a 200 from /payments -----------------------------------------------------

OP = ProviderOperation(
    OperationKind.AUTHORIZE, "pay_1", "pay_1:1:authorize:1", 1000, "EUR", adyen.APPROVED
)


def answer(code: str, **extra: str) -> dict[str, object]:
    return {"pspReference": "PSP0000000000001", "resultCode": code, **extra}


REFUSED = {"refusalReason": "Refused", "refusalReasonCode": "2"}
RESULT_ROWS: dict[str, tuple[dict[str, object], ProviderOperation, ProviderOutcome]] = {
    "Authorised is a success with nothing captured when capture is manual": (
        answer("Authorised"), OP,
        ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference="PSP0000000000001"),
    ),
    "Authorised with automatic capture captured the whole amount": (
        answer("Authorised"), dataclasses.replace(OP, capture=True),
        ProviderOutcome(OutcomeStatus.SUCCEEDED, "PSP0000000000001", captured_amount=1000),
    ),
    "Refused is a decline coded by refusalReasonCode": (
        answer("Refused", **REFUSED), OP,
        ProviderOutcome(OutcomeStatus.DECLINED, "PSP0000000000001", decline_code="2", message="Refused"),
    ),
    "Refused without a code falls back to the refusalReason": (
        answer("Refused", refusalReason="Not enough balance"), OP,
        ProviderOutcome(OutcomeStatus.DECLINED, "PSP0000000000001", decline_code="Not enough balance", message="Not enough balance"),
    ),
    "Cancelled is a refusal category: a decline": (
        answer("Cancelled", refusalReason="FRAUD-CANCELLED", refusalReasonCode="22"), OP,
        ProviderOutcome(OutcomeStatus.DECLINED, "PSP0000000000001", decline_code="22", message="FRAUD-CANCELLED"),
    ),
    "Error is final and technical: failed": (
        answer("Error", refusalReason="Acquirer Error", refusalReasonCode="4"), OP,
        ProviderOutcome(OutcomeStatus.FAILED, message="Adyen error: Acquirer Error"),
    ),
    "RedirectShopper cannot be completed without the shopper: failed": (
        answer("RedirectShopper"), OP,
        ProviderOutcome(OutcomeStatus.FAILED, message="Adyen asks for the shopper (RedirectShopper); a stored-card payment cannot"),
    ),
}  # fmt: skip


@pytest.mark.parametrize(("body", "op", "expected"), RESULT_ROWS.values(), ids=RESULT_ROWS.keys())
def test_result_code(
    body: dict[str, object], op: ProviderOperation, expected: ProviderOutcome
) -> None:
    assert payment_outcome(body, op) == expected


@pytest.mark.parametrize("code", ["Pending", "Received", "PartiallyAuthorised"])
def test_a_result_code_that_is_not_final_is_unknown_and_looked_up_not_resent(code: str) -> None:
    with pytest.raises(ProviderOutcomeUnknown) as raised:
        payment_outcome(answer(code), OP)
    assert raised.value.lookup_first is True
    assert raised.value.breaker_failure is False  # Adyen answered: it is healthy


# --- before any answer: transport failures, through the adapter -----------------------------


@pytest.fixture
def emulator() -> Iterator[AdyenEmulator]:
    running = AdyenEmulator()
    running.start()
    yield running
    running.stop()


def adapter_at(url: str) -> AdyenAdapter:
    return AdyenAdapter(
        f"{url}/v71", api_key=Secret(adyen.API_KEY, "test"), merchant_account=adyen.MERCHANT_ACCOUNT,
        return_url="https://shop.example/return",
    )  # fmt: skip


def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def connection_refused(emulator: AdyenEmulator) -> tuple[str, float]:
    return closed_port(), 1.0


def timeout_after_sending(emulator: AdyenEmulator) -> tuple[str, float]:
    emulator.hang_next(0.3)
    return emulator.url, 0.1


def reset_after_sending(emulator: AdyenEmulator) -> tuple[str, float]:
    emulator.drop_next_response()
    return emulator.url, 1.0


Setup = Callable[[AdyenEmulator], tuple[str, float]]
TRANSPORT_ROWS: dict[str, tuple[Setup, type[ProviderError], dict[str, Any]]] = {
    "a connection never established is not reached and trips the breaker": (
        connection_refused, ProviderNotReached, {"breaker_failure": True},
    ),
    "a timeout after sending is unknown, re-sent with the same key as Adyen honours keys": (
        timeout_after_sending, ProviderOutcomeUnknown, {"breaker_failure": True, "lookup_first": False},
    ),
    "a reset after sending is unknown, re-sent with the same key as Adyen honours keys": (
        reset_after_sending, ProviderOutcomeUnknown, {"breaker_failure": True, "lookup_first": False},
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "error_type", "attributes"), TRANSPORT_ROWS.values(), ids=TRANSPORT_ROWS.keys()
)
def test_transport_failure(
    emulator: AdyenEmulator,
    setup: Setup,
    error_type: type[ProviderError],
    attributes: dict[str, Any],
) -> None:
    url, timeout = setup(emulator)
    with pytest.raises(error_type) as raised:
        adapter_at(url).authorize(OP, timeout=timeout)
    assert type(raised.value) is error_type
    for name, value in attributes.items():
        assert getattr(raised.value, name) == value
