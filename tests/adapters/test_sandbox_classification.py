"""The sandbox adapter's classification of every kind of answer, as a table."""

from __future__ import annotations

import httpx
import pytest

from adapters._http import Answer
from adapters.sandbox import _authorized, _interpret
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcomeUnknown,
)

OP = ProviderOperation(
    kind=OperationKind.AUTHORIZE, payment_id="p", provider_key="p:1:authorize:1",
    amount=100, currency="USD", payment_method="pm_card_visa",
)  # fmt: skip
PAYMENT = {"id": "sbx_pay_1", "status": "authorized", "amount_captured": 0}


def answer(status: int, body: object = None, headers: dict[str, str] | None = None) -> Answer:
    return Answer.of_json(status, body if body is not None else {}, headers)


OUTCOMES = [
    ("200 authorized", answer(200, PAYMENT), OutcomeStatus.SUCCEEDED, ""),
    ("402 card_error is a decline", answer(402, {"error": {"type": "card_error", "decline_code": "insufficient_funds"}}), OutcomeStatus.DECLINED, "insufficient_funds"),
    ("400 invalid_request_error is final", answer(400, {"error": {"type": "invalid_request_error"}}), OutcomeStatus.FAILED, ""),
    ("404 resource_missing is final", answer(404, {"error": {"type": "invalid_request_error", "code": "resource_missing"}}), OutcomeStatus.FAILED, ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("response", "status", "decline"), [o[1:] for o in OUTCOMES], ids=[o[0] for o in OUTCOMES]
)
def test_definite_answers_are_outcomes(
    response: Answer, status: OutcomeStatus, decline: str
) -> None:
    outcome = _interpret(response, OP, _authorized)
    assert outcome.status is status
    assert outcome.decline_code == decline


ERRORS = [
    # (row, answer, error class, breaker failure, lookup first, retry_after)
    ("500 api_error is documented as not processed", answer(500, {"error": {"type": "api_error"}}), ProviderNotReached, True, None, None),
    ("other 500 may have moved money", answer(500, {"error": {"type": "other"}}), ProviderOutcomeUnknown, True, False, None),
    ("502 may have moved money", answer(502), ProviderOutcomeUnknown, True, False, None),
    ("503 may have moved money", answer(503), ProviderOutcomeUnknown, True, False, None),
    ("429 backs off with Retry-After", answer(429, headers={"Retry-After": "2"}), ProviderNotReached, False, None, 2.0),
    ("409 key in flight: retry later", answer(409, {"error": {"type": "idempotency_error", "code": "request_in_progress"}}), ProviderOutcomeUnknown, False, False, None),
    ("400 idempotency_error: never guess", answer(400, {"error": {"type": "idempotency_error"}}), ProviderOutcomeUnknown, True, False, None),
    ("200 with a body we cannot read", Answer(200, {}, b"not json"), ProviderOutcomeUnknown, True, False, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("response", "error", "breaker_failure", "lookup_first", "retry_after"),
    [e[1:] for e in ERRORS],
    ids=[e[0] for e in ERRORS],
)
def test_uncertain_answers_raise_the_right_error(
    response: Answer, error: type[Exception], breaker_failure: bool,
    lookup_first: bool | None, retry_after: float | None,
) -> None:  # fmt: skip
    with pytest.raises(error) as raised:
        _interpret(response, OP, _authorized)
    assert type(raised.value) is error
    assert raised.value.breaker_failure is breaker_failure  # type: ignore[attr-defined]
    if lookup_first is not None:
        assert raised.value.lookup_first is lookup_first  # type: ignore[attr-defined]
    assert raised.value.retry_after == retry_after  # type: ignore[attr-defined]


@pytest.mark.parametrize("honors", [True, False])
def test_a_timeout_after_sending_asks_for_a_lookup_only_where_keys_are_not_honoured(
    honors: bool,
) -> None:
    from adapters.sandbox import SandboxAdapter, start_sandbox

    with start_sandbox("127.0.0.1:0") as server:
        httpx.put(f"{server.url}/_sandbox/faults", json={"timeout_rate": 1, "hang_ms": 400})
        adapter = SandboxAdapter(server.url, honors_idempotency_keys=honors)
        with pytest.raises(ProviderOutcomeUnknown) as raised:
            adapter.authorize(OP, timeout=0.1)
        adapter.close()
    assert raised.value.lookup_first is (not honors)
    assert raised.value.breaker_failure is True


def test_a_closed_port_is_not_reached_and_counts_against_the_breaker() -> None:
    import socket

    from adapters.sandbox import SandboxAdapter

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = SandboxAdapter(f"http://127.0.0.1:{port}")
    with pytest.raises(ProviderNotReached) as raised:
        adapter.authorize(OP, timeout=0.5)
    adapter.close()
    assert raised.value.breaker_failure is True
