"""The Stripe adapter against the Stripe emulator over loopback HTTP: what goes on the wire,
how every kind of answer maps onto the port, lookups, and configuration."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

import adapters.stripe as stripe_module
from adapters.stripe import DEFAULT_API_VERSION, StripeAdapter, from_config
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    PaymentProvider,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)
from orchestrator.secrets import Secret
from tests.emulators.base import Reply, Request
from tests.emulators.stripe import SECRET_KEY, StripeEmulator, error_reply

TLS = ssl.create_default_context()
TIMEOUT = 2.0
Unknown = ProviderOutcomeUnknown


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    emulator = StripeEmulator()
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(verify=TLS) as client:
        yield client


def make(url: str, key: str = SECRET_KEY, **settings: Any) -> StripeAdapter:
    return StripeAdapter(Secret(key, "test"), base_url=url, **settings)


@pytest.fixture
def adapter(emulator: StripeEmulator) -> StripeAdapter:
    return make(emulator.url)


@pytest.fixture
def multi(emulator: StripeEmulator) -> StripeAdapter:
    return make(emulator.url, multicapture=True)


def auth_op(key: str = "key-a", **overrides: Any) -> ProviderOperation:
    fields: dict[str, Any] = {
        "kind": OperationKind.AUTHORIZE,
        "payment_id": "pay_1",
        "provider_key": key,
        "amount": 1000,
        "currency": "USD",
        "payment_method": "pm_card_visa",
        "reference": "order-1",
        "metadata": {"tenant": "t1"},
    }
    fields.update(overrides)
    return ProviderOperation(**fields)


def follow(
    kind: OperationKind, reference: str, key: str, amount: int = 0, **overrides: Any
) -> ProviderOperation:
    fields: dict[str, Any] = {
        "kind": kind, "payment_id": "pay_1", "provider_key": key, "amount": amount,
        "currency": "USD", "provider_reference": reference,
    }  # fmt: skip
    fields.update(overrides)
    return ProviderOperation(**fields)


def authorized(adapter: StripeAdapter, key: str = "key-a", **overrides: Any) -> str:
    outcome = adapter.authorize(auth_op(key, **overrides), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.SUCCEEDED, outcome
    return outcome.provider_reference


def posts(emulator: StripeEmulator) -> list[Request]:
    return [r for r in emulator.requests if r.method == "POST"]


def form(request: Request) -> dict[str, str]:
    return dict(parse_qsl(request.body.decode(), keep_blank_values=True))


def kinds(emulator: StripeEmulator) -> list[str]:
    return [m.kind for m in emulator.movements()]


def wait_for(condition: Callable[[], bool], within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def card_error(decline_code: str) -> Reply:
    return error_reply(
        402, "Your card was declined.", type="card_error", code="card_declined",
        decline_code=decline_code, payment_intent={"id": "pi_injected"},
    )  # fmt: skip


# --- the port and the wire ------------------------------------------------------------------


def test_adapter_is_a_payment_provider_that_honours_keys(adapter: StripeAdapter) -> None:
    provider: PaymentProvider = adapter
    assert (provider.name, provider.honors_idempotency_keys) == ("stripe", True)


def test_authorize_creates_then_confirms_a_payment_intent(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    outcome = adapter.authorize(auth_op(), timeout=TIMEOUT)
    [intent] = emulator.intents()
    assert outcome == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=intent["id"], captured_amount=0
    )
    create, confirm = posts(emulator)
    assert (create.path, confirm.path) == (
        "/v1/payment_intents", f"/v1/payment_intents/{intent['id']}/confirm",
    )  # fmt: skip
    assert form(create) == {
        "amount": "1000",
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "capture_method": "manual",
        "automatic_payment_methods[enabled]": "true",
        "automatic_payment_methods[allow_redirects]": "never",
        "metadata[tenant]": "t1",
        "metadata[order_reference]": "order-1",
        "metadata[payment_id]": "pay_1",
        "metadata[payorch_key]": "key-a",
    }
    assert confirm.body == b""
    assert (intent["status"], intent["amount_capturable"]) == ("requires_capture", 1000)
    assert emulator.movements()[0].kind == "authorization"


def test_posts_are_form_encoded_with_readable_brackets(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    adapter.authorize(auth_op(metadata={"note": "a&b=c [x]"}), timeout=TIMEOUT)
    create = posts(emulator)[0]
    assert create.headers["content-type"] == "application/x-www-form-urlencoded"
    assert b"metadata[payment_id]=pay_1" in create.body
    assert form(create)["metadata[note]"] == "a&b=c [x]"


def test_every_request_carries_the_bearer_key_and_the_api_version(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    adapter.authorize(auth_op(), timeout=TIMEOUT)
    adapter.lookup(auth_op(), timeout=TIMEOUT)
    assert len(emulator.requests) == 3
    for request in emulator.requests:
        assert request.headers["authorization"] == f"Bearer {SECRET_KEY}"
        assert request.headers["stripe-version"] == DEFAULT_API_VERSION


def test_an_empty_api_version_leaves_the_accounts_default(emulator: StripeEmulator) -> None:
    make(emulator.url, api_version="").authorize(auth_op(), timeout=TIMEOUT)
    assert all("stripe-version" not in r.headers for r in emulator.requests)


def test_each_post_has_its_own_key_and_a_re_send_repeats_them(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    first = adapter.authorize(auth_op("key-a"), timeout=TIMEOUT)
    second = adapter.authorize(auth_op("key-a"), timeout=TIMEOUT)
    assert first == second
    keys = [r.headers["idempotency-key"] for r in posts(emulator)]
    assert keys == ["key-a", "key-a:confirm", "key-a", "key-a:confirm"]
    assert len(emulator.intents()) == 1
    assert kinds(emulator) == ["authorization"]
    lookups = [r for r in emulator.requests if r.method == "GET"]
    assert lookups == []


def test_stripe_replays_a_re_sent_request(emulator: StripeEmulator, http: httpx.Client) -> None:
    headers = {"Authorization": f"Bearer {SECRET_KEY}", "Idempotency-Key": "raw-1"}
    body = {"amount": "500", "currency": "usd"}
    first = http.post(f"{emulator.url}/v1/payment_intents", data=body, headers=headers)
    again = http.post(f"{emulator.url}/v1/payment_intents", data=body, headers=headers)
    assert again.json() == first.json()
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    other = http.post(
        f"{emulator.url}/v1/payment_intents", data={**body, "amount": "501"}, headers=headers
    )
    assert other.status_code == 400
    assert other.json()["error"]["type"] == "idempotency_error"


def test_overlong_keys_are_shortened_the_same_way_every_time(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    key = "k" * 300
    adapter.authorize(auth_op(key), timeout=TIMEOUT)
    adapter.authorize(auth_op(key), timeout=TIMEOUT)
    keys = [r.headers["idempotency-key"] for r in posts(emulator)]
    assert all(len(k) <= 255 for k in keys)
    assert keys[0] != keys[1] and keys[:2] == keys[2:]
    assert kinds(emulator) == ["authorization"]


def test_authorize_with_capture_is_captured_automatically(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    outcome = adapter.authorize(auth_op(capture=True, amount=2500), timeout=TIMEOUT)
    assert (outcome.status, outcome.captured_amount) == (OutcomeStatus.SUCCEEDED, 2500)
    assert form(posts(emulator)[0])["capture_method"] == "automatic"
    assert kinds(emulator) == ["authorization", "capture"]


def test_authorize_without_order_reference_or_metadata(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    adapter.authorize(auth_op(reference="", metadata={}), timeout=TIMEOUT)
    assert emulator.intents()[0]["metadata"] == {"payment_id": "pay_1", "payorch_key": "key-a"}


# --- amounts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "ours", "stripes"),
    [
        ("USD", 1050, 1050),  # cents both
        ("JPY", 500, 500),  # zero-decimal both
        ("KWD", 1230, 1230),  # three-decimal, last digit 0
        ("ISK", 5, 500),  # zero-decimal in ISO 4217, two-decimal at Stripe
        ("MGA", 1000, 10),  # two-decimal in ISO 4217, zero-decimal at Stripe
    ],
)
def test_amounts_are_converted_to_stripes_units_and_back(
    adapter: StripeAdapter, emulator: StripeEmulator, currency: str, ours: int, stripes: int
) -> None:
    outcome = adapter.authorize(
        auth_op(currency=currency, amount=ours, capture=True), timeout=TIMEOUT
    )
    intent = emulator.intents()[0]
    assert (intent["amount"], intent["currency"]) == (stripes, currency.lower())
    assert outcome.captured_amount == ours


@pytest.mark.parametrize(("currency", "amount"), [("KWD", 1235), ("MGA", 1050)])
def test_an_amount_stripe_cannot_take_is_failed_without_sending(
    adapter: StripeAdapter, emulator: StripeEmulator, currency: str, amount: int
) -> None:
    outcome = adapter.authorize(auth_op(currency=currency, amount=amount), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert currency in outcome.message
    assert emulator.requests == []


def test_refund_amounts_are_converted(adapter: StripeAdapter, emulator: StripeEmulator) -> None:
    reference = authorized(adapter, currency="ISK", amount=50, capture=True)
    op = follow(OperationKind.REFUND, reference, "key-r", 20, currency="ISK")
    outcome = adapter.refund(op, timeout=TIMEOUT)
    assert outcome.captured_amount == 20
    assert emulator.refunds()[0]["amount"] == 2000


# --- declines and refusals ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "code", "message"),
    [
        ("pm_card_chargeDeclined", "generic_decline", "Your card was declined."),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds", "insufficient funds"),
    ],
)
def test_a_decline_is_an_outcome_with_stripes_decline_code(
    adapter: StripeAdapter, emulator: StripeEmulator, token: str, code: str, message: str
) -> None:
    outcome = adapter.authorize(auth_op(payment_method=token), timeout=TIMEOUT)
    [intent] = emulator.intents()
    assert outcome.status is OutcomeStatus.DECLINED
    assert (outcome.decline_code, outcome.provider_reference) == (code, intent["id"])
    assert message in outcome.message
    assert intent["status"] == "requires_payment_method"
    assert emulator.movements() == []


def test_a_card_asking_for_authentication_is_failed(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    outcome = adapter.authorize(
        auth_op(payment_method="pm_card_authenticationRequired"), timeout=TIMEOUT
    )
    assert outcome.status is OutcomeStatus.FAILED
    assert "requires_action" in outcome.message
    assert outcome.provider_reference == emulator.intents()[0]["id"]
    assert emulator.movements() == []


def test_an_unknown_payment_method_is_failed_and_creates_nothing(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    outcome = adapter.authorize(auth_op(payment_method="pm_nope"), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "No such PaymentMethod" in outcome.message and "resource_missing" in outcome.message
    assert emulator.intents() == []


# --- captures, cancels, refunds -------------------------------------------------------------


def test_partial_captures_with_multicapture(multi: StripeAdapter, emulator: StripeEmulator) -> None:
    reference = authorized(multi)
    assert form(posts(emulator)[0])["payment_method_options[card][request_multicapture]"] == (
        "if_available"
    )
    first = multi.capture(follow(OperationKind.CAPTURE, reference, "key-c1", 400), timeout=2)
    assert emulator.intent(reference)["status"] == "requires_capture"
    second = multi.capture(follow(OperationKind.CAPTURE, reference, "key-c2", 600), timeout=2)
    assert first == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=400
    )
    assert second.captured_amount == 600
    capture = posts(emulator)[2]
    assert form(capture)["final_capture"] == "false"
    assert form(capture)["amount_to_capture"] == "400"
    intent = emulator.intent(reference)
    assert (intent["status"], intent["amount_received"]) == ("succeeded", 1000)


def test_without_multicapture_a_partial_capture_releases_the_rest(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    reference = authorized(adapter)
    first = adapter.capture(follow(OperationKind.CAPTURE, reference, "key-c1", 400), timeout=2)
    assert first.captured_amount == 400
    assert "final_capture" not in form(posts(emulator)[2])
    second = adapter.capture(follow(OperationKind.CAPTURE, reference, "key-c2", 600), timeout=2)
    assert second.status is OutcomeStatus.FAILED
    assert "payment_intent_unexpected_state" in second.message
    assert [(m.kind, m.amount) for m in emulator.movements()] == [
        ("authorization", 1000), ("capture", 400), ("void", 600),
    ]  # fmt: skip


def test_capturing_more_than_authorized_is_failed(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    reference = authorized(adapter)
    outcome = adapter.capture(follow(OperationKind.CAPTURE, reference, "key-c", 1001), timeout=2)
    assert outcome.status is OutcomeStatus.FAILED
    assert "amount_too_large" in outcome.message
    assert kinds(emulator) == ["authorization"]


def test_capture_of_an_unknown_payment_intent_is_failed(adapter: StripeAdapter) -> None:
    outcome = adapter.capture(follow(OperationKind.CAPTURE, "pi_missing", "key-c", 5), timeout=2)
    assert outcome.status is OutcomeStatus.FAILED
    assert "No such payment_intent" in outcome.message


@pytest.mark.parametrize(
    "kind", [OperationKind.CAPTURE, OperationKind.CANCEL, OperationKind.REFUND]
)
def test_a_follow_up_without_provider_reference_sends_nothing(
    adapter: StripeAdapter, emulator: StripeEmulator, kind: OperationKind
) -> None:
    call = getattr(adapter, kind.value)
    outcome = call(follow(kind, "", "key-x", 10), timeout=TIMEOUT)
    assert outcome == ProviderOutcome(OutcomeStatus.FAILED, message="no provider reference")
    assert adapter.lookup(follow(kind, "", "key-x", 10), timeout=TIMEOUT) is None
    assert emulator.requests == []


def test_cancel(adapter: StripeAdapter, emulator: StripeEmulator) -> None:
    reference = authorized(adapter)
    outcome = adapter.cancel(follow(OperationKind.CANCEL, reference, "key-v"), timeout=2)
    assert outcome == ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference=reference)
    assert posts(emulator)[-1].path == f"/v1/payment_intents/{reference}/cancel"
    assert kinds(emulator) == ["authorization", "void"]


def test_cancel_after_capture_is_failed(adapter: StripeAdapter) -> None:
    reference = authorized(adapter, capture=True)
    outcome = adapter.cancel(follow(OperationKind.CANCEL, reference, "key-v"), timeout=2)
    assert outcome.status is OutcomeStatus.FAILED
    assert "status of succeeded" in outcome.message


def test_refund(adapter: StripeAdapter, emulator: StripeEmulator) -> None:
    reference = authorized(adapter, capture=True)
    op = follow(OperationKind.REFUND, reference, "key-r", 300, reason="requested_by_customer")
    outcome = adapter.refund(op, timeout=TIMEOUT)
    [refund] = emulator.refunds()
    assert outcome == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=refund["id"], captured_amount=300
    )
    assert refund["id"].startswith("re_")
    assert (refund["payment_intent"], refund["reason"]) == (reference, "requested_by_customer")
    assert refund["metadata"] == {"payment_id": "pay_1", "payorch_key": "key-r"}
    assert posts(emulator)[-1].headers["idempotency-key"] == "key-r"


def test_a_refund_reason_stripe_does_not_know_goes_into_metadata(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    reference = authorized(adapter, capture=True)
    op = follow(OperationKind.REFUND, reference, "key-r", 300, reason="damaged in transit")
    assert adapter.refund(op, timeout=TIMEOUT).status is OutcomeStatus.SUCCEEDED
    [refund] = emulator.refunds()
    assert (refund["reason"], refund["metadata"]["reason"]) == (None, "damaged in transit")


def test_refunding_more_than_captured_is_failed(adapter: StripeAdapter) -> None:
    reference = authorized(adapter, capture=True)
    op = follow(OperationKind.REFUND, reference, "key-r", 1001)
    outcome = adapter.refund(op, timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "greater than unrefunded amount" in outcome.message


# --- errors through real HTTP answers -------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "error", "attributes"),
    [
        (error_reply(429, "Too many requests", code="rate_limit", headers={"Retry-After": "2"}),
         ProviderNotReached, {"retry_after": 2.0, "breaker_failure": False}),
        (error_reply(400, "Too many requests", code="rate_limit"),
         ProviderNotReached, {"retry_after": None, "breaker_failure": False}),
        (error_reply(409, "in progress", code="idempotency_key_in_use"),
         Unknown, {"breaker_failure": False, "lookup_first": False}),
        (error_reply(400, "Keys for idempotent requests ...", type="idempotency_error"),
         Unknown, {"breaker_failure": False, "lookup_first": True}),
        (error_reply(500, "An unknown error occurred", type="api_error"),
         Unknown, {"breaker_failure": True, "lookup_first": True}),
        (error_reply(500, "lock timeout", type="api_error",
                     headers={"Stripe-Should-Retry": "true"}),
         Unknown, {"breaker_failure": True, "lookup_first": False}),
        (Reply(502, b"<html>bad gateway</html>", content_type="text/html"),
         Unknown, {"breaker_failure": True, "lookup_first": False}),
        (Reply(503, b"", headers={"Retry-After": "1"}),
         Unknown, {"breaker_failure": True, "lookup_first": False, "retry_after": 1.0}),
        (Reply(503, b"", headers={"Stripe-Should-Retry": "false"}),
         Unknown, {"breaker_failure": True, "lookup_first": True}),
        (Reply(504, b""), Unknown, {"breaker_failure": True, "lookup_first": False}),
        (error_reply(400, "try again", headers={"Stripe-Should-Retry": "true"}),
         Unknown, {"breaker_failure": False, "lookup_first": False}),
        (Reply(302, b"", headers={"Location": "/elsewhere"}),
         Unknown, {"breaker_failure": True, "lookup_first": True}),
        (Reply(200, b"<html>not json</html>"), Unknown, {"lookup_first": True}),
        (Reply(200, b"[]"), Unknown, {"lookup_first": True}),
        (Reply(200, b'{"object": "payment_intent"}'), Unknown, {"lookup_first": True}),
        (Reply(200, json.dumps({"id": "pi_x", "status": "processing"}).encode()),
         Unknown, {"breaker_failure": False, "lookup_first": True}),
    ],
    ids=[
        "429 backs off with Retry-After", "400 rate_limit backs off", "409 key in use",
        "400 idempotency_error", "500 looked up first", "500 Stripe says retry",
        "502 re-sent", "503 re-sent after Retry-After", "503 Stripe says do not retry",
        "504 re-sent", "400 Stripe says retry", "302 looked up first", "200 not JSON",
        "200 not an object", "200 without status", "200 processing",
    ],
)  # fmt: skip
def test_answers_that_leave_the_outcome_open(
    adapter: StripeAdapter, emulator: StripeEmulator, reply: Reply,
    error: type[Exception], attributes: dict[str, Any],
) -> None:  # fmt: skip
    emulator.fail_next(reply)  # the confirm: the create moves no money
    with pytest.raises(error) as raised:
        adapter.authorize(auth_op(), timeout=TIMEOUT)
    for name, value in attributes.items():
        assert getattr(raised.value, name) == value, name
    assert emulator.movements() == []


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        (card_error("do_not_honor"), OutcomeStatus.DECLINED, "do_not_honor"),
        (error_reply(402, "Your card has expired.", type="card_error", code="expired_card"),
         OutcomeStatus.DECLINED, "expired_card"),
        (error_reply(400, "Invalid integer: abc", param="amount"), OutcomeStatus.FAILED, ""),
        (error_reply(403, "The provided key does not have access"), OutcomeStatus.FAILED, ""),
        (error_reply(400, "bad", headers={"Stripe-Should-Retry": "false"}),
         OutcomeStatus.FAILED, ""),
        (Reply(404, b"not found", content_type="text/plain"), OutcomeStatus.FAILED, ""),
    ],
    ids=["402 decline code", "402 code only", "400 invalid", "403", "400 do not retry",
         "404 without JSON"],
)  # fmt: skip
def test_answers_that_are_final(
    adapter: StripeAdapter, emulator: StripeEmulator, reply: Reply, status: OutcomeStatus,
    code: str,
) -> None:  # fmt: skip
    emulator.fail_next(reply)
    outcome = adapter.authorize(auth_op(), timeout=TIMEOUT)
    assert (outcome.status, outcome.decline_code) == (status, code)
    # the PaymentIntent the card error names, else the one we created
    expected = "pi_injected" if b"pi_injected" in reply.body else emulator.intents()[0]["id"]
    assert outcome.provider_reference == expected
    assert emulator.movements() == []


def test_a_wrong_key_is_failed_and_never_quoted(
    emulator: StripeEmulator, http: httpx.Client
) -> None:
    wrong = "sk_test_51WrongKey000000000000000000000009876"
    outcome = make(emulator.url, key=wrong).authorize(auth_op(), timeout=TIMEOUT)
    assert outcome == ProviderOutcome(
        OutcomeStatus.FAILED, message="stripe refused the secret key (HTTP 401)"
    )
    # Stripe's own answer quotes the key masked; the adapter does not even repeat that
    raw = http.post(
        f"{emulator.url}/v1/payment_intents", headers={"Authorization": f"Bearer {wrong}"}
    )
    message = raw.json()["error"]["message"]
    assert message.startswith("Invalid API Key provided: sk_test_") and message.endswith("9876")
    assert wrong not in message
    assert emulator.intents() == []


def test_a_missing_key_gets_stripes_401(emulator: StripeEmulator, http: httpx.Client) -> None:
    raw = http.get(f"{emulator.url}/v1/payment_intents/pi_1")
    assert raw.status_code == 401
    error = raw.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("You did not provide an API key.")


def test_a_stored_500_is_replayed_so_it_is_looked_up(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    emulator.fail_next_stored(error_reply(500, "An unknown error occurred", type="api_error"))
    with pytest.raises(Unknown) as first:
        adapter.authorize(auth_op(), timeout=TIMEOUT)
    assert first.value.lookup_first
    with pytest.raises(Unknown):
        adapter.authorize(auth_op(), timeout=TIMEOUT)  # Stripe answers the same 500 again
    assert emulator.movements() == []
    # the confirm never ran: nothing was authorized, and the lookup says so
    found = adapter.lookup(auth_op(), timeout=TIMEOUT)
    assert found is not None and found.status is OutcomeStatus.FAILED
    assert "never confirmed" in found.message


def test_a_timeout_is_outcome_unknown_and_found_later(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    emulator.hang_next(0.3)
    with pytest.raises(Unknown, match="ReadTimeout"):
        adapter.authorize(auth_op("key-slow"), timeout=0.2)
    wait_for(lambda: kinds(emulator) == ["authorization"])
    found = adapter.lookup(auth_op("key-slow"), timeout=TIMEOUT)
    assert found is not None and found.status is OutcomeStatus.SUCCEEDED


def test_a_key_in_flight_is_busy_then_replayed(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    emulator.stall_next(0.4)  # the create of the first call
    with pytest.raises(Unknown, match="ReadTimeout"):
        adapter.authorize(auth_op("key-busy"), timeout=0.2)
    with pytest.raises(Unknown, match="idempotency_key_in_use") as busy:
        adapter.authorize(auth_op("key-busy"), timeout=TIMEOUT)
    assert (busy.value.breaker_failure, busy.value.lookup_first) == (False, False)
    wait_for(lambda: len(emulator.intents()) == 1)
    time.sleep(0.05)  # let the stalled create store its answer
    outcome = adapter.authorize(auth_op("key-busy"), timeout=TIMEOUT)
    assert outcome.provider_reference == emulator.intents()[0]["id"]
    assert kinds(emulator) == ["authorization"]


def test_a_dropped_answer_is_outcome_unknown_and_a_re_send_is_replayed(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    emulator.drop_next_response()
    with pytest.raises(Unknown, match="RemoteProtocolError"):
        adapter.authorize(auth_op(capture=True), timeout=TIMEOUT)
    retried = adapter.authorize(auth_op(capture=True), timeout=TIMEOUT)
    assert retried.captured_amount == 1000
    assert kinds(emulator) == ["authorization", "capture"]


def test_a_key_reused_for_another_request_is_looked_up(adapter: StripeAdapter) -> None:
    reference = authorized(adapter, "key-shared")
    with pytest.raises(Unknown, match="idempotent") as raised:
        op = follow(OperationKind.CAPTURE, reference, "key-shared:confirm", 5)
        adapter.capture(op, timeout=TIMEOUT)
    assert raised.value.lookup_first


def test_a_closed_port_is_not_reached() -> None:
    adapter = make(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ProviderNotReached, match="ConnectError"):
        adapter.authorize(auth_op(), timeout=TIMEOUT)
    with pytest.raises(ProviderNotReached):
        adapter.lookup(auth_op(), timeout=TIMEOUT)


def test_no_time_left_for_the_confirm_is_not_reached(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    emulator.stall_next(0.36)  # the create answers with less than 50 ms of the budget left
    with pytest.raises(ProviderNotReached, match="no time left") as raised:
        adapter.authorize(auth_op(), timeout=0.4)
    assert not raised.value.breaker_failure
    assert len(posts(emulator)) == 1 and emulator.movements() == []


# --- lookup ---------------------------------------------------------------------------------


def test_lookup_of_an_authorization_searches_our_payment_id(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    reference = authorized(adapter, "key-a")
    adapter.capture(follow(OperationKind.CAPTURE, reference, "key-c", 100), timeout=TIMEOUT)
    found = adapter.lookup(auth_op("key-a"), timeout=TIMEOUT)
    # the later manual capture is another operation, not part of the authorization
    assert found == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=0
    )
    [search] = [r for r in emulator.requests if r.path.endswith("/search")]
    assert search.query == {"query": ["metadata['payment_id']:'pay_1'"], "limit": ["100"]}
    assert "idempotency-key" not in search.headers


def test_lookup_escapes_quotes_in_the_search_query(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    reference = authorized(adapter, "key-q", payment_id="pay_'odd\\")
    found = adapter.lookup(auth_op("key-q", payment_id="pay_'odd\\"), timeout=TIMEOUT)
    assert found is not None and found.provider_reference == reference
    [search] = [r for r in emulator.requests if r.path.endswith("/search")]
    assert search.query["query"] == ["metadata['payment_id']:'pay_\\'odd\\\\'"]


def test_lookup_finds_the_attempt_by_its_key(adapter: StripeAdapter) -> None:
    first = authorized(adapter, "key-1")
    second = authorized(adapter, "key-2")
    assert first != second
    found = adapter.lookup(auth_op("key-1"), timeout=TIMEOUT)
    assert found is not None and found.provider_reference == first


def test_lookup_of_an_automatic_capture_reports_what_it_captured(adapter: StripeAdapter) -> None:
    reference = authorized(adapter, capture=True, amount=700)
    assert adapter.lookup(auth_op(capture=True, amount=700), timeout=TIMEOUT) == (
        ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=700)
    )


def test_lookup_of_a_declined_authorization(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    op = auth_op("key-d", payment_method="pm_card_chargeDeclinedInsufficientFunds")
    adapter.authorize(op, timeout=TIMEOUT)
    found = adapter.lookup(op, timeout=TIMEOUT)
    assert found == ProviderOutcome(
        OutcomeStatus.DECLINED, provider_reference=emulator.intents()[0]["id"],
        decline_code="insufficient_funds", message="Your card has insufficient funds.",
    )  # fmt: skip


def test_lookup_of_a_voided_authorization_still_succeeded(adapter: StripeAdapter) -> None:
    reference = authorized(adapter, "key-a")
    adapter.cancel(follow(OperationKind.CANCEL, reference, "key-v"), timeout=TIMEOUT)
    found = adapter.lookup(auth_op("key-a"), timeout=TIMEOUT)
    assert found == ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference=reference)


def test_lookup_of_a_payment_intent_canceled_before_confirming_failed(
    adapter: StripeAdapter, emulator: StripeEmulator
) -> None:
    emulator.fail_next_stored(error_reply(500, "An unknown error occurred", type="api_error"))
    with pytest.raises(Unknown):
        adapter.authorize(auth_op("key-a"), timeout=TIMEOUT)
    reference = emulator.intents()[0]["id"]
    adapter.cancel(follow(OperationKind.CANCEL, reference, "key-v"), timeout=TIMEOUT)
    found = adapter.lookup(auth_op("key-a"), timeout=TIMEOUT)
    assert found is not None
    assert (found.status, found.message) == (OutcomeStatus.FAILED, "canceled before authorizing")


def test_lookup_of_a_card_asking_for_authentication_failed(adapter: StripeAdapter) -> None:
    op = auth_op("key-3ds", payment_method="pm_card_authenticationRequired")
    adapter.authorize(op, timeout=TIMEOUT)
    found = adapter.lookup(op, timeout=TIMEOUT)
    assert found is not None and found.status is OutcomeStatus.FAILED


def test_lookup_only_searches_our_payment(adapter: StripeAdapter) -> None:
    authorized(adapter, "key-a", payment_id="pay_other")
    assert adapter.lookup(auth_op("key-a", payment_id="pay_1"), timeout=TIMEOUT) is None


def test_lookup_of_a_capture_finds_its_marker(
    multi: StripeAdapter, emulator: StripeEmulator
) -> None:
    reference = authorized(multi)
    for key, amount in (("key-c1", 300), ("key-c2", 200)):
        multi.capture(follow(OperationKind.CAPTURE, reference, key, amount), timeout=TIMEOUT)
    found = multi.lookup(follow(OperationKind.CAPTURE, reference, "key-c2", 200), timeout=2)
    assert found == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=200
    )
    markers = {k: v for k, v in emulator.intent(reference)["metadata"].items() if "capture" in k}
    assert sorted(markers.values()) == ["200", "300"]
    assert all(len(k) <= 40 for k in markers)
    assert multi.lookup(follow(OperationKind.CAPTURE, reference, "key-c3", 1), timeout=2) is None


def test_lookup_of_a_lost_capture(adapter: StripeAdapter, emulator: StripeEmulator) -> None:
    reference = authorized(adapter)
    op = follow(OperationKind.CAPTURE, reference, "key-c", 1000)
    emulator.drop_next_response()
    with pytest.raises(Unknown):
        adapter.capture(op, timeout=TIMEOUT)
    assert adapter.lookup(op, timeout=TIMEOUT) == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=1000
    )


def test_lookup_of_a_failed_capture_is_none(adapter: StripeAdapter) -> None:
    reference = authorized(adapter)
    op = follow(OperationKind.CAPTURE, reference, "key-c", 5000)
    assert adapter.capture(op, timeout=TIMEOUT).status is OutcomeStatus.FAILED
    assert adapter.lookup(op, timeout=TIMEOUT) is None


def test_lookup_of_a_cancel(adapter: StripeAdapter) -> None:
    reference = authorized(adapter)
    op = follow(OperationKind.CANCEL, reference, "key-v")
    assert adapter.lookup(op, timeout=TIMEOUT) is None
    adapter.cancel(op, timeout=TIMEOUT)
    assert adapter.lookup(op, timeout=TIMEOUT) == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference
    )


def test_lookup_of_a_refund(adapter: StripeAdapter, emulator: StripeEmulator) -> None:
    reference = authorized(adapter, capture=True)
    for key in ("key-r1", "key-r2"):
        adapter.refund(follow(OperationKind.REFUND, reference, key, 100), timeout=TIMEOUT)
    found = adapter.lookup(follow(OperationKind.REFUND, reference, "key-r1", 100), timeout=2)
    first_refund = emulator.refunds()[0]
    assert found == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=first_refund["id"], captured_amount=100
    )
    [listing] = [r for r in emulator.requests if r.path == "/v1/refunds" and r.method == "GET"]
    assert listing.query == {"payment_intent": [reference], "limit": ["100"]}


def test_lookup_pages_through_search_results_and_refunds(
    adapter: StripeAdapter, emulator: StripeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stripe_module, "PAGE_SIZE", 2)
    for n in range(5):
        authorized(adapter, f"key-a{n}")
    reference = authorized(adapter, "key-cap", capture=True)
    for n in range(5):
        adapter.refund(follow(OperationKind.REFUND, reference, f"key-r{n}", 10), timeout=2)
    oldest = adapter.lookup(auth_op("key-a0"), timeout=TIMEOUT)
    assert oldest is not None and oldest.provider_reference == emulator.intents()[0]["id"]
    found = adapter.lookup(follow(OperationKind.REFUND, reference, "key-r0", 10), timeout=2)
    assert found is not None and found.provider_reference == emulator.refunds()[0]["id"]
    searches = [r for r in emulator.requests if r.path.endswith("/search")]
    assert [s.query.get("page") for s in searches] == [None, ["page_2"], ["page_4"]]


@pytest.mark.parametrize(
    "kind", [OperationKind.AUTHORIZE, OperationKind.CAPTURE, OperationKind.REFUND]
)
def test_lookup_of_an_unknown_key_is_none(adapter: StripeAdapter, kind: OperationKind) -> None:
    reference = authorized(adapter, "key-a", capture=True)
    adapter.refund(follow(OperationKind.REFUND, reference, "key-r", 10), timeout=TIMEOUT)
    assert adapter.lookup(follow(kind, reference, "key-unknown"), timeout=TIMEOUT) is None


@pytest.mark.parametrize("kind", [OperationKind.CAPTURE, OperationKind.CANCEL])
def test_lookup_on_a_payment_intent_stripe_does_not_know_is_none(
    adapter: StripeAdapter, kind: OperationKind
) -> None:
    assert adapter.lookup(follow(kind, "pi_missing", "key-x"), timeout=TIMEOUT) is None


# --- lookup errors, from a server that answers whatever a test says ------------------------


class _CannedServer(ThreadingHTTPServer):
    daemon_threads = True
    answer: tuple[int, dict[str, str], bytes] = (200, {}, b"{}")


class _CannedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _CannedServer

    def do_GET(self) -> None:
        status, headers, body = self.server.answer
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[Callable[..., StripeAdapter]]:
    """``canned(status, body, headers)`` -> an adapter whose Stripe always says that."""
    httpd = _CannedServer(("127.0.0.1", 0), _CannedHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()

    def answering(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
        httpd.answer = (status, headers or {}, body)
        return make(f"http://127.0.0.1:{httpd.server_address[1]}")

    yield answering
    httpd.shutdown()
    thread.join()
    httpd.server_close()


SEARCH_HIT = json.dumps(
    {"data": [{"id": "pi_1", "status": "weird", "metadata": {"payorch_key": "key-a"}}]}
).encode()


@pytest.mark.parametrize(
    ("status", "body", "headers", "error"),
    [
        (500, b'{"error": {"type": "api_error"}}', {}, Unknown),
        (503, b"", {}, Unknown),
        (401, b'{"error": {"message": "Invalid API Key provided: sk_test_****1234"}}', {},
         Unknown),
        (404, b'{"error": {"message": "Unrecognized request URL"}}', {}, Unknown),
        (429, b"", {"Retry-After": "4"}, ProviderNotReached),
        (200, b"not json", {}, Unknown),
        (200, b'{"data": {}}', {}, Unknown),
        (200, b'{"data": [{"id": "pi_1"}]}', {}, Unknown),
        (200, SEARCH_HIT, {}, Unknown),
        (200, b'{"data": [], "has_more": true}', {}, Unknown),
    ],
    ids=["500", "503", "401", "404 without resource_missing", "429", "not JSON",
         "data not a list", "no metadata", "unknown status", "has_more without next_page"],
)  # fmt: skip
def test_lookup_errors_leave_the_operation_in_doubt(
    canned: Callable[..., StripeAdapter], status: int, body: bytes, headers: dict[str, str],
    error: type[Exception],
) -> None:  # fmt: skip
    with pytest.raises(error) as raised:
        canned(status, body, headers).lookup(auth_op("key-a"), timeout=TIMEOUT)
    assert "sk_test" not in str(raised.value)
    if status == 429:
        assert raised.value.retry_after == 4.0  # type: ignore[attr-defined]


# --- configuration --------------------------------------------------------------------------


def test_from_config_reads_the_key_from_the_environment(
    emulator: StripeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_TEST_SECRET", SECRET_KEY)
    with from_config(
        "stripe-eu", {"type": "stripe", "secret_key_env": "STRIPE_TEST_SECRET",
                      "base_url": emulator.url, "timeout": 2.0, "multicapture": True},
    ) as adapter:  # fmt: skip
        assert adapter.name == "stripe-eu"
        reference = authorized(adapter)
        two = adapter.capture(follow(OperationKind.CAPTURE, reference, "key-c", 2), timeout=2)
        assert two.status is OutcomeStatus.SUCCEEDED
    assert form(posts(emulator)[2])["final_capture"] == "false"


def test_from_config_reads_the_key_from_a_file(emulator: StripeEmulator, tmp_path: Path) -> None:
    (tmp_path / "stripe.key").write_text(SECRET_KEY + "\n")
    spec = {"secret_key_file": str(tmp_path / "stripe.key"), "base_url": emulator.url,
            "api_version": "2023-10-16", "connect_timeout": 0.5}  # fmt: skip
    with from_config("stripe", spec) as adapter:
        assert authorized(adapter)
    assert emulator.requests[0].headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert emulator.requests[0].headers["stripe-version"] == "2023-10-16"


def test_from_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_TEST_SECRET", SECRET_KEY)
    with from_config("stripe", {"secret_key_env": "STRIPE_TEST_SECRET"}) as adapter:
        assert adapter._http.base_url == "https://api.stripe.com"
        assert adapter._http.connect_timeout == 1.0
        assert adapter._api_version == DEFAULT_API_VERSION
        assert adapter._multicapture is False


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({"secret_key": "sk_live_oops"}, "must not be written"),
        ({}, "secret_key_env or secret_key_file is required"),
        ({"secret_key_env": "PAYORCH_NO_SUCH_VARIABLE"}, "is not set"),
        ({"secret_key_file": "/nonexistent/stripe.key"}, "cannot read"),
        ({"secret_key_env": "STRIPE_TEST_SECRET", "multicapture": "yes"}, "true or false"),
    ],
    ids=["inline key", "no key", "unset variable", "unreadable file", "multicapture not bool"],
)
def test_from_config_refuses(
    spec: dict[str, Any], complaint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_TEST_SECRET", SECRET_KEY)
    with pytest.raises(ValueError, match=complaint) as raised:
        from_config("stripe", spec)
    assert "sk_live_oops" not in str(raised.value)


# --- housekeeping ---------------------------------------------------------------------------


def test_logs_never_contain_the_key_or_the_card(
    emulator: StripeEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    adapter = make(emulator.url)
    wrong = make(emulator.url, key="sk_test_51WrongKey000000000000000000000009876")
    with caplog.at_level(logging.DEBUG):
        reference = authorized(adapter, "key-log")
        adapter.capture(follow(OperationKind.CAPTURE, reference, "key-c", 10), timeout=TIMEOUT)
        adapter.lookup(auth_op("key-log"), timeout=TIMEOUT)
        outcome = wrong.authorize(auth_op("key-wrong"), timeout=TIMEOUT)
        emulator.fail_next(error_reply(500, "boom", type="api_error"))
        with pytest.raises(Unknown) as raised:
            adapter.capture(follow(OperationKind.CAPTURE, reference, "key-c2", 1), timeout=2)
    ours = [r.getMessage() for r in caplog.records if r.name == "payorch.adapters.stripe"]
    assert any("authorize:create key=key-log -> 200" in m for m in ours)
    assert any("authorize:confirm key=key-log:confirm -> 200" in m for m in ours)
    assert any("lookup:authorize key=key-log -> 200" in m for m in ours)
    for secret in (SECRET_KEY, "WrongKey", "9876"):
        assert secret not in caplog.text
        assert secret not in outcome.message and secret not in str(raised.value)
    assert "pm_card_visa" not in caplog.text
    assert "order-1" not in caplog.text
    assert SECRET_KEY not in repr(adapter._secret)


def test_close_closes_only_an_owned_client(emulator: StripeEmulator, http: httpx.Client) -> None:
    make(emulator.url).close()
    assert not http.is_closed
    with StripeAdapter(Secret(SECRET_KEY, "test"), base_url=emulator.url) as owned:
        assert authorized(owned)
    with pytest.raises(RuntimeError, match="closed"):
        owned.authorize(auth_op(), timeout=TIMEOUT)
