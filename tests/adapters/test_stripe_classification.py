"""The Stripe classification table: what each answer means for the operation.

``classify`` is pure and covers every HTTP answer; the rows about transport failures (nothing
came back) are decided by ``adapters._http`` and checked here through the adapter against a
closed port and the Stripe emulator, so the whole table reads in one place.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from adapters.stripe import Classification, StripeAdapter, StripeError, Verdict, classify
from orchestrator.ports import (
    OperationKind,
    ProviderError,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcomeUnknown,
)
from orchestrator.secrets import Secret
from tests.emulators.stripe import SECRET_KEY, StripeEmulator

SUCCESS, DECLINED, FAILED = Verdict.SUCCESS, Verdict.DECLINED, Verdict.FAILED
NOT_REACHED, UNKNOWN = Verdict.NOT_REACHED, Verdict.UNKNOWN

CARD = StripeError(
    type="card_error", code="card_declined", decline_code="insufficient_funds",
    message="Your card has insufficient funds.", payment_intent="pi_1",
)  # fmt: skip
INVALID = StripeError(type="invalid_request_error", message="Missing required param: amount.")
MISSING = StripeError(
    type="invalid_request_error", code="resource_missing", message="No such payment_intent"
)
IDEMPOTENCY = StripeError(type="idempotency_error", message="Keys for idempotent requests ...")
IN_USE = StripeError(type="invalid_request_error", code="idempotency_key_in_use")
RATE_LIMIT = StripeError(type="invalid_request_error", code="rate_limit")
API_ERROR = StripeError(type="api_error", message="An unknown error occurred")
BAD_KEY = StripeError(
    type="invalid_request_error", message="Invalid API Key provided: sk_test_****1234"
)
RETRY = {"Stripe-Should-Retry": "true"}
NO_RETRY = {"Stripe-Should-Retry": "false"}


class Row(NamedTuple):
    status: int
    headers: dict[str, str]
    error: StripeError | None
    expected: Classification


def row(
    status: int, headers: dict[str, str], error: StripeError | None, verdict: Verdict, *,
    decline_code: str = "", retry_after: float | None = None, breaker: bool = False,
    lookup_first: bool = False, id: str,
) -> object:  # fmt: skip
    expected = Classification(
        verdict, decline_code=decline_code, retry_after=retry_after, breaker_failure=breaker,
        lookup_first=lookup_first,
    )  # fmt: skip
    return pytest.param(Row(status, headers, error, expected), id=id)


TABLE = [
    row(200, {}, None, SUCCESS, id="a 200 carries the object"),
    row(201, {}, None, SUCCESS, id="any 2xx carries the object"),
    # declines: final business outcomes, never a breaker failure
    row(402, {}, CARD, DECLINED, decline_code="insufficient_funds",
        id="a card error is declined with its decline code"),
    row(402, {}, StripeError(type="card_error", code="expired_card"), DECLINED,
        decline_code="expired_card", id="a card error without decline code is declined with its code"),
    row(402, RETRY, CARD, DECLINED, decline_code="insufficient_funds",
        id="a decline stays final even when Stripe says retry"),
    # rate limits: not processed, back off, not a breaker failure
    row(429, {"Retry-After": "3"}, RATE_LIMIT, NOT_REACHED, retry_after=3.0,
        id="a 429 is not reached and honours Retry-After"),
    row(429, {}, None, NOT_REACHED, id="a 429 without Retry-After is not reached with no hint"),
    row(429, NO_RETRY, None, NOT_REACHED,
        id="a 429 is not reached even when Stripe says do not retry"),
    row(400, {}, RATE_LIMIT, NOT_REACHED, id="a 400 with code rate_limit is a rate limit"),
    # the idempotency layer
    row(409, {}, IN_USE, UNKNOWN, id="a 409 key in use is retried later and is no breaker failure"),
    row(409, {"Retry-After": "1"}, IN_USE, UNKNOWN, retry_after=1.0,
        id="a 409 honours Retry-After"),
    row(409, NO_RETRY, IN_USE, UNKNOWN, lookup_first=True,
        id="a 409 Stripe says not to retry is looked up first"),
    row(400, {}, IDEMPOTENCY, UNKNOWN, lookup_first=True,
        id="a 400 idempotency error may hide an earlier request so it is looked up"),
    row(404, {}, IDEMPOTENCY, UNKNOWN, lookup_first=True,
        id="a 404 idempotency error is looked up too"),
    # other client errors: final, nothing moved
    row(400, {}, INVALID, FAILED, id="an invalid request is failed"),
    row(404, {}, MISSING, FAILED, id="a missing resource is failed"),
    row(401, {}, BAD_KEY, FAILED, id="a refused key is failed"),
    row(403, {}, StripeError(type="invalid_request_error"), FAILED, id="a 403 is failed"),
    row(400, NO_RETRY, INVALID, FAILED, id="a 400 Stripe says not to retry is failed"),
    row(400, RETRY, INVALID, UNKNOWN,
        id="a 4xx Stripe says to retry is re-sent with the same key"),
    row(422, {}, None, FAILED, id="a 4xx without a body is failed"),
    # server errors: may have moved money, breaker failures
    row(500, {}, API_ERROR, UNKNOWN, breaker=True, lookup_first=True,
        id="a 500 is replayed for the key so it is looked up first"),
    row(500, NO_RETRY, API_ERROR, UNKNOWN, breaker=True, lookup_first=True,
        id="a 500 Stripe says not to retry is looked up first"),
    row(500, RETRY, API_ERROR, UNKNOWN, breaker=True,
        id="a 500 Stripe says to retry is re-sent with the same key"),
    row(502, {}, None, UNKNOWN, breaker=True, id="a 502 is re-sent with the same key"),
    row(503, {"Retry-After": "2"}, None, UNKNOWN, breaker=True, retry_after=2.0,
        id="a 503 is re-sent with the same key after Retry-After"),
    row(504, {}, None, UNKNOWN, breaker=True, id="a 504 is re-sent with the same key"),
    row(503, NO_RETRY, None, UNKNOWN, breaker=True, lookup_first=True,
        id="a 503 Stripe says not to retry is looked up first"),
    row(503, {"stripe-should-retry": "false"}, None, UNKNOWN, breaker=True, lookup_first=True,
        id="header names are case-insensitive"),
    row(503, {"Stripe-Should-Retry": "maybe"}, None, UNKNOWN, breaker=True,
        id="an unknown header value is ignored"),
    # anything else
    row(302, {}, None, UNKNOWN, breaker=True, lookup_first=True,
        id="an answer Stripe does not document is looked up first"),
]  # fmt: skip


@pytest.mark.parametrize("case", TABLE)
def test_classification(case: Row) -> None:
    got = classify(case.status, case.headers, case.error)
    assert (got.verdict, got.decline_code, got.retry_after) == (
        case.expected.verdict, case.expected.decline_code, case.expected.retry_after,
    )  # fmt: skip
    assert (got.breaker_failure, got.lookup_first) == (
        case.expected.breaker_failure, case.expected.lookup_first,
    )  # fmt: skip


def test_a_refused_key_is_never_quoted() -> None:
    got = classify(401, {}, BAD_KEY)
    assert "1234" not in got.reason and "sk_" not in got.reason


def test_reasons_quote_stripes_message_and_code() -> None:
    assert classify(404, {}, MISSING).reason == "No such payment_intent [resource_missing]"
    assert classify(402, {}, CARD).reason == "Your card has insufficient funds."
    assert classify(502, {}, None).reason == "stripe answered HTTP 502"


def test_retry_after_may_be_an_http_date() -> None:
    got = classify(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None)
    assert got.retry_after == 0.0  # in the past: now


# --- transport failures, through the adapter ------------------------------------------------


def op() -> ProviderOperation:
    return ProviderOperation(
        kind=OperationKind.AUTHORIZE, payment_id="pay_t", provider_key="pay_t:1:authorize:1",
        amount=1000, currency="USD", payment_method="pm_card_visa",
    )  # fmt: skip


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    emulator = StripeEmulator()
    emulator.start()
    yield emulator
    emulator.stop()


def adapter_for(url: str) -> StripeAdapter:
    return StripeAdapter(Secret(SECRET_KEY, "test"), base_url=url)


def raised(adapter: StripeAdapter, timeout: float = 2.0) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        adapter.authorize(op(), timeout=timeout)
    return caught.value


def test_connection_not_established_is_retried_with_the_same_key() -> None:
    error = raised(adapter_for(f"http://127.0.0.1:{closed_port()}"))
    assert isinstance(error, ProviderNotReached)
    assert error.breaker_failure


def test_a_timeout_after_sending_is_re_sent_with_the_same_key(emulator: StripeEmulator) -> None:
    emulator.hang_next(0.4)
    error = raised(adapter_for(emulator.url), timeout=0.2)
    assert isinstance(error, ProviderOutcomeUnknown)
    # Stripe honours keys: re-sending is safe, no lookup needed first
    assert (error.breaker_failure, error.lookup_first) == (True, False)


def test_a_reset_after_sending_is_re_sent_with_the_same_key(emulator: StripeEmulator) -> None:
    emulator.drop_next_response()
    error = raised(adapter_for(emulator.url))
    assert isinstance(error, ProviderOutcomeUnknown)
    assert (error.breaker_failure, error.lookup_first) == (True, False)
