"""The Adyen adapter on the wire, against the Adyen emulator over loopback HTTP."""

from __future__ import annotations

import dataclasses
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.adyen import TEST_BASE_URL, AdyenAdapter, AdyenNotifications, from_config
from adapters.adyen.transformers import hmac_signature, signing_string
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
from tests.emulators import adyen
from tests.emulators.adyen import Account, AdyenEmulator, Running
from tests.emulators.base import Reply

TLS = ssl.create_default_context()  # one per module: building a context costs ~80 ms
TIMEOUT = 2.0
RETURN_URL = "https://shop.example/return"


@pytest.fixture
def env() -> Iterator[Running]:
    yield from adyen.running()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(verify=TLS) as client:
        yield client


def make_adapter(env: Running, *, key: str = adyen.API_KEY, **options: Any) -> AdyenAdapter:
    return AdyenAdapter(
        f"{env.emulator.url}/v71",
        api_key=Secret(key, "test"),
        merchant_account=options.pop("merchant_account", adyen.MERCHANT_ACCOUNT),
        return_url=RETURN_URL,
        notifications=options.pop("notifications", env.notifications),
        **options,
    )


@pytest.fixture
def adapter(env: Running) -> AdyenAdapter:
    return make_adapter(env)


def authorize_op(key: str = "pay_1:1:authorize:1", **overrides: Any) -> ProviderOperation:
    fields: dict[str, Any] = {
        "kind": OperationKind.AUTHORIZE,
        "payment_id": "pay_1",
        "provider_key": key,
        "amount": 1000,
        "currency": "EUR",
        "payment_method": adyen.APPROVED,
    }
    return ProviderOperation(**{**fields, **overrides})


def follow_up(
    kind: OperationKind, reference: str, key: str, amount: int = 0, **overrides: Any
) -> ProviderOperation:
    return ProviderOperation(
        kind=kind, payment_id="pay_1", provider_key=key, amount=amount,
        currency=overrides.pop("currency", "EUR"), provider_reference=reference, **overrides,
    )  # fmt: skip


def authorized(adapter: AdyenAdapter, **overrides: Any) -> str:
    outcome = adapter.authorize(authorize_op(**overrides), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.SUCCEEDED, outcome
    return outcome.provider_reference


def sent(emulator: AdyenEmulator, index: int = -1) -> tuple[str, dict[str, str], dict[str, Any]]:
    request = emulator.requests[index]
    return request.path, request.headers, json.loads(request.body)


def kinds(emulator: AdyenEmulator) -> list[str]:
    return [m.kind for m in emulator.movements()]


# --- the port and the request -----------------------------------------------------------------


def test_the_adapter_is_a_payment_provider_that_honours_keys(adapter: AdyenAdapter) -> None:
    provider: PaymentProvider = adapter
    assert provider.name == "adyen"
    assert provider.honors_idempotency_keys is True


def test_every_post_carries_the_api_key_and_the_provider_key(
    env: Running, adapter: AdyenAdapter
) -> None:
    reference = authorized(adapter)
    adapter.capture(
        follow_up(OperationKind.CAPTURE, reference, "pay_1:2:capture:1", 1000), timeout=TIMEOUT
    )
    for request in env.emulator.requests:
        assert request.headers["x-api-key"] == adyen.API_KEY
        assert request.headers["content-type"] == "application/json"
    assert [r.headers["idempotency-key"] for r in env.emulator.requests] == [
        "pay_1:1:authorize:1", "pay_1:2:capture:1",
    ]  # fmt: skip


def test_authorize_sends_a_stored_card_payment_held_for_manual_capture(
    env: Running, adapter: AdyenAdapter
) -> None:
    op = authorize_op(
        reference="order-1", metadata={"tenant": "t1", "a_key_longer_than_twenty": "x"}
    )
    adapter.authorize(op, timeout=TIMEOUT)
    path, _, body = sent(env.emulator)
    assert path == "/v71/payments"
    assert body == {
        "amount": {"value": 1000, "currency": "EUR"},
        "reference": "pay_1",
        "merchantAccount": adyen.MERCHANT_ACCOUNT,
        "paymentMethod": {"type": "scheme", "storedPaymentMethodId": "stored_approved"},
        "shopperReference": adyen.SHOPPER,
        "shopperInteraction": "ContAuth",
        "recurringProcessingModel": "CardOnFile",
        "returnUrl": RETURN_URL,
        "additionalData": {"manualCapture": "true"},
        # Adyen takes 20-character keys at most: the longer one stays in our own events only
        "metadata": {"orderReference": "order-1", "tenant": "t1"},
    }
    assert kinds(env.emulator) == ["authorization"]


def test_authorize_with_capture_asks_for_capture_without_delay(
    env: Running, adapter: AdyenAdapter
) -> None:
    outcome = adapter.authorize(authorize_op(capture=True, amount=2500), timeout=TIMEOUT)
    _, _, body = sent(env.emulator)
    assert body["captureDelayHours"] == 0
    assert "additionalData" not in body
    assert outcome.captured_amount == 2500
    assert kinds(env.emulator) == ["authorization", "capture"]


def test_the_recurring_processing_model_is_configurable(env: Running) -> None:
    adapter = make_adapter(env, recurring_model="UnscheduledCardOnFile")
    adapter.authorize(authorize_op(), timeout=TIMEOUT)
    assert sent(env.emulator)[2]["recurringProcessingModel"] == "UnscheduledCardOnFile"
    with pytest.raises(ValueError, match="CardOnFile"):
        make_adapter(env, recurring_model="Sometimes")


def test_a_shopper_reference_may_hold_colons(env: Running, adapter: AdyenAdapter) -> None:
    adapter.authorize(authorize_op(payment_method="tenant:42:stored_approved"), timeout=TIMEOUT)
    _, _, body = sent(env.emulator)
    assert (body["shopperReference"], body["paymentMethod"]["storedPaymentMethodId"]) == (
        "tenant:42", "stored_approved",
    )  # fmt: skip


@pytest.mark.parametrize("method", ["stored_approved", ":stored_approved", "shopper_1:"])
def test_a_payment_method_without_shopper_and_token_is_refused_unsent(
    env: Running, adapter: AdyenAdapter, method: str
) -> None:
    outcome = adapter.authorize(authorize_op(payment_method=method), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "shopperReference" in outcome.message
    assert env.emulator.requests == []


def test_modifications_go_to_the_payment_with_their_own_reference(
    env: Running, adapter: AdyenAdapter
) -> None:
    reference = authorized(adapter)
    capture = adapter.capture(
        follow_up(OperationKind.CAPTURE, reference, "pay_1:2:capture:1", 400), timeout=TIMEOUT
    )
    path, _, body = sent(env.emulator)
    assert path == f"/v71/payments/{reference}/captures"
    assert body == {
        "merchantAccount": adyen.MERCHANT_ACCOUNT,
        "reference": "pay_1:2:capture:1",
        "amount": {"value": 400, "currency": "EUR"},
    }
    assert capture == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=400
    )
    refund = adapter.refund(
        follow_up(OperationKind.REFUND, reference, "pay_1:3:refund:1", 100), timeout=TIMEOUT
    )
    assert sent(env.emulator)[0] == f"/v71/payments/{reference}/refunds"
    assert refund.status is OutcomeStatus.SUCCEEDED
    assert refund.provider_reference not in ("", reference)  # the refund's own pspReference
    assert refund.captured_amount == 100


def test_cancel_sends_no_amount(env: Running, adapter: AdyenAdapter) -> None:
    reference = authorized(adapter)
    outcome = adapter.cancel(
        follow_up(OperationKind.CANCEL, reference, "pay_1:2:cancel:1"), timeout=TIMEOUT
    )
    path, _, body = sent(env.emulator)
    assert path == f"/v71/payments/{reference}/cancels"
    assert body == {"merchantAccount": adyen.MERCHANT_ACCOUNT, "reference": "pay_1:2:cancel:1"}
    assert outcome == ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference=reference)
    assert kinds(env.emulator) == ["authorization", "void"]


def test_a_follow_up_without_provider_reference_is_refused_unsent(
    env: Running, adapter: AdyenAdapter
) -> None:
    outcome = adapter.cancel(follow_up(OperationKind.CANCEL, "", "k"), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert env.emulator.requests == []


def test_a_provider_key_longer_than_adyens_64_characters_is_refused_unsent(
    env: Running, adapter: AdyenAdapter
) -> None:
    outcome = adapter.authorize(authorize_op(key="k" * 65), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "64" in outcome.message
    assert env.emulator.requests == []


# --- amounts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "ours", "adyens"),
    [("EUR", 1050, 1050), ("JPY", 500, 500), ("KWD", 1500, 1500),
     ("ISK", 10, 1000), ("CLP", 990, 99000), ("IDR", 150000, 1500), ("CVE", 2500, 25)],
)  # fmt: skip
def test_amounts_are_sent_in_adyens_minor_units(
    env: Running, adapter: AdyenAdapter, currency: str, ours: int, adyens: int
) -> None:
    reference = authorized(adapter, amount=ours, currency=currency)
    assert sent(env.emulator)[2]["amount"] == {"value": adyens, "currency": currency}
    op = follow_up(OperationKind.CAPTURE, reference, "c", ours, currency=currency)
    outcome = adapter.capture(op, timeout=TIMEOUT)
    assert outcome.captured_amount == ours  # converted back from Adyen's units
    assert [m.amount for m in env.emulator.movements()] == [adyens, adyens]


def test_an_amount_adyen_cannot_express_is_refused_unsent(
    env: Running, adapter: AdyenAdapter
) -> None:
    # 1.50 IDR: Adyen takes IDR without decimals
    outcome = adapter.authorize(authorize_op(amount=150, currency="IDR"), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "IDR" in outcome.message
    assert env.emulator.requests == []


# --- idempotency ------------------------------------------------------------------------------


def test_a_re_send_carries_the_same_key_and_gets_the_first_answer(
    env: Running, adapter: AdyenAdapter
) -> None:
    first = adapter.authorize(authorize_op(capture=True), timeout=TIMEOUT)
    second = adapter.authorize(authorize_op(capture=True), timeout=TIMEOUT)
    assert first == second
    assert [r.headers["idempotency-key"] for r in env.emulator.requests] == [
        "pay_1:1:authorize:1"
    ] * 2
    assert kinds(env.emulator) == ["authorization", "capture"]


def test_the_emulator_echoes_the_key_and_replays_whatever_the_body(
    env: Running, http: httpx.Client
) -> None:
    url = f"{env.emulator.url}/v71/payments"
    headers = {"X-API-Key": adyen.API_KEY, "Idempotency-Key": "k-1"}
    body = {"amount": {"value": 5, "currency": "EUR"}, "reference": "p", "merchantAccount": adyen.MERCHANT_ACCOUNT,
            "paymentMethod": {"type": "scheme", "storedPaymentMethodId": "stored_approved"},
            "shopperReference": adyen.SHOPPER, "returnUrl": RETURN_URL}  # fmt: skip
    first = http.post(url, json=body, headers=headers)
    again = http.post(
        url, json={**body, "amount": {"value": 6, "currency": "EUR"}}, headers=headers
    )
    assert first.headers["idempotency-key"] == "k-1"
    assert again.json() == first.json()
    assert kinds(env.emulator) == ["authorization", "capture"]


def test_keys_are_scoped_to_the_company_account() -> None:
    other = Account("AQEother-key", "OtherCompany", frozenset({"OtherMerchant"}))
    emulator = AdyenEmulator(
        accounts=[Account(adyen.API_KEY, adyen.COMPANY, frozenset({adyen.MERCHANT_ACCOUNT})), other]
    )
    emulator.start()
    try:
        ours = AdyenAdapter(
            f"{emulator.url}/v71",
            api_key=Secret(adyen.API_KEY, "t"),
            merchant_account=adyen.MERCHANT_ACCOUNT,
            return_url=RETURN_URL,
        )
        theirs = AdyenAdapter(f"{emulator.url}/v71", api_key=Secret(other.api_key, "t"),
                              merchant_account="OtherMerchant", return_url=RETURN_URL)  # fmt: skip
        a = ours.authorize(authorize_op("same-key"), timeout=TIMEOUT)
        b = theirs.authorize(authorize_op("same-key"), timeout=TIMEOUT)
        assert a.provider_reference != b.provider_reference
        assert kinds(emulator) == ["authorization", "authorization"]
    finally:
        emulator.stop()


def test_a_key_still_in_flight_is_unknown_busy_not_unhealthy(
    env: Running, adapter: AdyenAdapter
) -> None:
    env.emulator.slow_next(0.4)
    first: list[ProviderOutcome] = []
    holder = threading.Thread(
        target=lambda: first.append(adapter.authorize(authorize_op(), timeout=TIMEOUT))
    )
    holder.start()
    time.sleep(0.15)
    with pytest.raises(ProviderOutcomeUnknown, match="704") as raised:
        adapter.authorize(authorize_op(), timeout=TIMEOUT)
    assert (raised.value.breaker_failure, raised.value.lookup_first) == (False, False)
    holder.join()
    assert adapter.authorize(authorize_op(), timeout=TIMEOUT) == first[0]
    assert kinds(env.emulator) == ["authorization"]


def test_a_transient_error_is_forgotten_so_the_same_key_is_processed_afresh(
    env: Running, adapter: AdyenAdapter
) -> None:
    with pytest.raises(ProviderOutcomeUnknown, match="transient") as raised:
        adapter.authorize(authorize_op(payment_method=adyen.NO_CONNECTION), timeout=TIMEOUT)
    assert (raised.value.breaker_failure, raised.value.lookup_first) == (True, False)
    assert adapter.authorize(authorize_op(), timeout=TIMEOUT).status is OutcomeStatus.SUCCEEDED


def test_a_non_transient_error_is_stored_for_the_key_so_it_is_looked_up_first(
    env: Running, adapter: AdyenAdapter
) -> None:
    with pytest.raises(ProviderOutcomeUnknown) as raised:
        adapter.authorize(authorize_op(payment_method=adyen.IOEXCEPTION), timeout=TIMEOUT)
    assert (raised.value.breaker_failure, raised.value.lookup_first) == (True, True)
    with pytest.raises(ProviderOutcomeUnknown, match="IOEXCEPTION_RECEIVED"):
        adapter.authorize(authorize_op(), timeout=TIMEOUT)  # the stored error, replayed
    assert kinds(env.emulator) == []


# --- answers ----------------------------------------------------------------------------------


def test_a_refusal_is_a_decline_with_adyens_code(env: Running, adapter: AdyenAdapter) -> None:
    outcome = adapter.authorize(authorize_op(payment_method=adyen.REFUSED), timeout=TIMEOUT)
    assert (outcome.status, outcome.decline_code, outcome.message) == (
        OutcomeStatus.DECLINED,
        "2",
        "Refused",
    )
    assert outcome.provider_reference
    assert kinds(env.emulator) == []


def test_an_error_result_is_failed(adapter: AdyenAdapter) -> None:
    outcome = adapter.authorize(authorize_op(payment_method=adyen.ERROR), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "Acquirer Error" in outcome.message


def test_a_pending_result_is_unknown_until_its_webhook(adapter: AdyenAdapter) -> None:
    with pytest.raises(ProviderOutcomeUnknown, match="Pending") as raised:
        adapter.authorize(authorize_op(payment_method=adyen.PENDING), timeout=TIMEOUT)
    assert (raised.value.breaker_failure, raised.value.lookup_first) == (False, True)


def test_an_unknown_stored_token_is_failed(adapter: AdyenAdapter) -> None:
    outcome = adapter.authorize(authorize_op(payment_method="shopper_1:nope"), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "800: Contract not found" in outcome.message


def test_over_capture_refused_in_its_webhook_is_failed(env: Running, adapter: AdyenAdapter) -> None:
    reference = authorized(adapter)
    outcome = adapter.capture(
        follow_up(OperationKind.CAPTURE, reference, "c", 1001), timeout=TIMEOUT
    )
    assert outcome == ProviderOutcome(
        OutcomeStatus.FAILED, message="Adyen: Insufficient balance on payment"
    )
    assert kinds(env.emulator) == ["authorization"]


def test_a_received_modification_is_a_success_until_a_webhook_says_otherwise(env: Running) -> None:
    # without webhooks (none recorded yet), "received" is all there is to go on
    adapter = make_adapter(env, notifications=AdyenNotifications())
    reference = authorized(adapter)
    outcome = adapter.capture(
        follow_up(OperationKind.CAPTURE, reference, "c", 1001), timeout=TIMEOUT
    )
    assert outcome.status is OutcomeStatus.SUCCEEDED


def test_over_refund_and_cancel_after_capture_are_failed(
    env: Running, adapter: AdyenAdapter
) -> None:
    reference = authorized(adapter, capture=True)
    refund = adapter.refund(follow_up(OperationKind.REFUND, reference, "r", 1001), timeout=TIMEOUT)
    cancel = adapter.cancel(follow_up(OperationKind.CANCEL, reference, "v"), timeout=TIMEOUT)
    assert (refund.status, cancel.status) == (OutcomeStatus.FAILED, OutcomeStatus.FAILED)
    assert kinds(env.emulator) == ["authorization", "capture"]


def test_a_capture_of_an_unknown_payment_is_failed(adapter: AdyenAdapter) -> None:
    outcome = adapter.capture(
        follow_up(OperationKind.CAPTURE, "0000000000000000", "c", 10), timeout=TIMEOUT
    )
    assert outcome.status is OutcomeStatus.FAILED
    assert "167" in outcome.message


# --- errors through real answers --------------------------------------------------------------


def test_a_wrong_api_key_is_failed(env: Running) -> None:
    outcome = make_adapter(env, key="wrong").authorize(authorize_op(), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "401 security 000: HTTP Status Response - Unauthorized" in outcome.message


def test_a_merchant_account_the_key_may_not_use_is_failed(env: Running) -> None:
    adapter = make_adapter(env, merchant_account="SomeoneElse")
    outcome = adapter.authorize(authorize_op(), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "901: Invalid Merchant Account" in outcome.message


def error_body(status: int, code: str, message: str, kind: str = "internal") -> bytes:
    return json.dumps(
        {"status": status, "errorCode": code, "message": message, "errorType": kind}
    ).encode()


@pytest.mark.parametrize(
    ("reply", "error_type", "attributes"),
    [
        (Reply(429, error_body(429, "000", "Too many requests", "security"), {"Retry-After": "3"}),
         ProviderNotReached, {"retry_after": 3.0, "breaker_failure": False}),
        (Reply(500, error_body(500, "000", "boom"), {"transient-error": "true"}),
         ProviderOutcomeUnknown, {"breaker_failure": True, "lookup_first": False}),
        (Reply(503, error_body(503, "000", "boom")),
         ProviderOutcomeUnknown, {"breaker_failure": True, "lookup_first": True}),
        (Reply(409, error_body(409, "704", "request already processed or in progress", "validation")),
         ProviderOutcomeUnknown, {"breaker_failure": False, "lookup_first": False}),
        (Reply(502, b"<html>bad gateway</html>", content_type="text/html"),
         ProviderOutcomeUnknown, {"breaker_failure": True, "lookup_first": True}),
        (Reply(200, b'{"resultCode": "Authorised"}'),  # no pspReference
         ProviderOutcomeUnknown, {"lookup_first": True}),
        (Reply(200, b"not json"), ProviderOutcomeUnknown, {"lookup_first": True}),
    ],
    ids=[
        "a 429 backs off honouring Retry-After",
        "a transient 500 is re-sent with the same key",
        "a 503 without transient-error is looked up first",
        "a 409 with 704 is retried later",
        "a proxy's HTML 502 is looked up first",
        "an Authorised answer without pspReference is looked up first",
        "an answer that is not JSON is looked up first",
    ],
)  # fmt: skip
def test_error_answer(
    env: Running,
    adapter: AdyenAdapter,
    reply: Reply,
    error_type: type[Exception],
    attributes: dict[str, Any],
) -> None:
    env.emulator.fail_next(reply)
    with pytest.raises(error_type) as raised:
        adapter.authorize(authorize_op(), timeout=TIMEOUT)
    for name, value in attributes.items():
        assert getattr(raised.value, name) == value


def test_a_4xx_answer_is_failed(env: Running, adapter: AdyenAdapter) -> None:
    env.emulator.fail_next(
        Reply(422, error_body(422, "14_030", "Return URL is missing.", "validation"))
    )
    outcome = adapter.authorize(authorize_op(), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "14_030" in outcome.message


def test_a_timeout_is_unknown_and_a_re_send_with_the_key_settles_it(
    env: Running, adapter: AdyenAdapter
) -> None:
    env.emulator.hang_next(0.3)
    with pytest.raises(ProviderOutcomeUnknown, match="ReadTimeout") as raised:
        adapter.authorize(authorize_op(), timeout=0.1)
    assert raised.value.lookup_first is False
    deadline = time.monotonic() + 1
    while kinds(env.emulator) != ["authorization"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert adapter.authorize(authorize_op(), timeout=TIMEOUT).status is OutcomeStatus.SUCCEEDED
    assert kinds(env.emulator) == ["authorization"]


def test_a_closed_port_is_not_reached() -> None:
    adapter = AdyenAdapter("http://127.0.0.1:9/v71", api_key=Secret("k", "t"), merchant_account="m",
                           return_url=RETURN_URL)  # fmt: skip
    with pytest.raises(ProviderNotReached, match="ConnectError") as raised:
        adapter.authorize(authorize_op(), timeout=TIMEOUT)
    assert raised.value.breaker_failure is True


# --- lookup: webhooks, never a request --------------------------------------------------------


def test_lookup_sends_nothing(env: Running, adapter: AdyenAdapter) -> None:
    assert adapter.lookup(authorize_op(), timeout=TIMEOUT) is None
    assert env.emulator.requests == []


def test_lookup_finds_a_decline_whose_answer_was_lost(env: Running, adapter: AdyenAdapter) -> None:
    op = authorize_op(payment_method=adyen.REFUSED)
    env.emulator.drop_next_response()
    with pytest.raises(ProviderOutcomeUnknown):
        adapter.authorize(op, timeout=TIMEOUT)
    found = adapter.lookup(op, timeout=TIMEOUT)
    assert found is not None
    assert (found.status, found.decline_code, found.message) == (
        OutcomeStatus.DECLINED,
        "2",
        "Refused",
    )


def test_lookup_finds_a_capture_with_automatic_capture_amount(
    env: Running, adapter: AdyenAdapter
) -> None:
    op = authorize_op(capture=True)
    env.emulator.drop_next_response()
    with pytest.raises(ProviderOutcomeUnknown):
        adapter.authorize(op, timeout=TIMEOUT)
    found = adapter.lookup(op, timeout=TIMEOUT)
    assert found is not None and found.captured_amount == 1000


def test_lookup_finds_a_capture_and_a_cancel_whose_answers_were_lost(
    env: Running, adapter: AdyenAdapter
) -> None:
    reference = authorized(adapter)
    capture = follow_up(OperationKind.CAPTURE, reference, "pay_1:2:capture:1", 300)
    env.emulator.drop_next_response()
    with pytest.raises(ProviderOutcomeUnknown):
        adapter.capture(capture, timeout=TIMEOUT)
    assert adapter.lookup(capture, timeout=TIMEOUT) == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=300
    )
    over = follow_up(OperationKind.CAPTURE, reference, "pay_1:3:capture:1", 5000)
    env.emulator.drop_next_response()
    with pytest.raises(ProviderOutcomeUnknown):
        adapter.capture(over, timeout=TIMEOUT)
    found = adapter.lookup(over, timeout=TIMEOUT)
    assert found is not None and found.status is OutcomeStatus.FAILED
    # another operation of the same payment is not mistaken for this one
    assert (
        adapter.lookup(
            follow_up(OperationKind.CAPTURE, reference, "pay_1:4:capture:1", 300), timeout=TIMEOUT
        )
        is None
    )


def test_lookup_without_webhooks_knows_nothing(env: Running) -> None:
    adapter = make_adapter(env, notifications=AdyenNotifications())
    op = authorize_op()
    env.emulator.drop_next_response()
    with pytest.raises(ProviderOutcomeUnknown):
        adapter.authorize(op, timeout=TIMEOUT)
    assert adapter.lookup(op, timeout=TIMEOUT) is None  # no evidence: the core keeps it in doubt


# --- webhooks ---------------------------------------------------------------------------------

# Adyen/adyen-python-api-library test/UtilTest.py, the official vector
VECTOR = {
    "pspReference": "7914073381342284",
    "merchantAccountCode": "TestMerchant",
    "merchantReference": "TestPayment-1407325143704",
    "amount": {"value": 1130, "currency": "EUR"},
    "eventCode": "AUTHORISATION",
    "success": "true",
}


def test_the_hmac_signature_matches_adyens_test_vector() -> None:
    assert (
        signing_string(VECTOR)
        == "7914073381342284::TestMerchant:TestPayment-1407325143704:1130:EUR:AUTHORISATION:true"
    )
    assert hmac_signature(VECTOR, adyen.HMAC_KEY) == "coqCmt/IZ4E3CzPvMY8zTjQVL5hYJUiBRg8UU+iCWo0="


def webhook(*items: dict[str, Any]) -> bytes:
    return json.dumps(
        {"live": "false", "notificationItems": [{"NotificationRequestItem": i} for i in items]}
    ).encode()


def test_only_signed_webhooks_are_recorded_and_each_once() -> None:
    notifications = AdyenNotifications()
    signed = {**VECTOR, "additionalData": {"hmacSignature": hmac_signature(VECTOR, adyen.HMAC_KEY)}}
    forged = {**signed, "amount": {"value": 999999, "currency": "EUR"}}
    with pytest.raises(ValueError, match="HMAC"):
        notifications.accept(webhook(signed, forged), adyen.HMAC_KEY)
    assert notifications.items() == []
    assert notifications.accept(webhook(signed), adyen.HMAC_KEY) == 1
    assert notifications.accept(webhook(signed), adyen.HMAC_KEY) == 0  # Adyen retries
    assert notifications.items() == [signed]


def test_the_receiver_refuses_a_forged_webhook(env: Running, http: httpx.Client) -> None:
    forged = {**VECTOR, "additionalData": {"hmacSignature": "AAAA"}}
    answer = http.post(env.receiver.url, content=webhook(forged))
    assert answer.status_code == 401
    assert env.notifications.items() == []


def test_the_store_keeps_the_newest_items() -> None:
    notifications = AdyenNotifications(keep=2)
    for psp in ("A", "B", "C"):
        notifications.record({**VECTOR, "pspReference": psp})
    assert [i["pspReference"] for i in notifications.items()] == ["B", "C"]
    assert notifications.record({**VECTOR, "pspReference": "A"}) is True  # forgotten, so new


# --- configuration and secrets ----------------------------------------------------------------

SPEC = {"merchant_account": "M", "return_url": RETURN_URL}


def test_from_config_reads_the_api_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: Running
) -> None:
    monkeypatch.setenv("ADYEN_TEST_KEY", adyen.API_KEY)
    adapter = from_config("adyen-eu", {**SPEC, "api_key_env": "ADYEN_TEST_KEY", "base_url": f"{env.emulator.url}/v71",
                                        "merchant_account": adyen.MERCHANT_ACCOUNT, "connect_timeout": 0.5})  # fmt: skip
    with adapter:
        assert adapter.name == "adyen-eu"
        assert adapter.authorize(authorize_op(), timeout=TIMEOUT).status is OutcomeStatus.SUCCEEDED
    assert env.emulator.requests[-1].headers["x-api-key"] == adyen.API_KEY


def test_from_config_reads_the_api_key_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "adyen_api_key"
    secret.write_text("from-file\n")
    adapter = from_config("adyen", {**SPEC, "api_key_file": str(secret)})
    assert adapter._api_key.reveal() == "from-file"
    assert adapter._http.base_url == TEST_BASE_URL
    assert "from-file" not in repr(adapter._api_key)
    adapter.close()


def test_from_config_builds_the_live_url_from_the_prefix(tmp_path: Path) -> None:
    secret = tmp_path / "k"
    secret.write_text("k")
    adapter = from_config(
        "adyen",
        {**SPEC, "api_key_file": str(secret), "live_endpoint_prefix": "1797a841fbb37ca7-AdyenDemo"},
    )
    assert (
        adapter._http.base_url
        == "https://1797a841fbb37ca7-AdyenDemo-checkout-live.adyenpayments.com/checkout/v71"
    )
    adapter.close()


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({**SPEC, "api_key": "AQE-inline"}, "must not be written in the configuration"),
        (SPEC, "api_key_env or api_key_file is required"),
        ({"return_url": RETURN_URL, "api_key_env": "ADYEN_SET"}, "merchant_account is required"),
        ({"merchant_account": "M", "api_key_env": "ADYEN_SET"}, "return_url is required"),
        ({**SPEC, "api_key_env": "ADYEN_SET", "recurring_processing_model": "x"}, "recurring_processing_model"),
        ({**SPEC, "api_key_env": "ADYEN_UNSET"}, "ADYEN_UNSET"),
    ],
    ids=["an inline key", "no key", "no merchant account", "no return url", "an unknown model", "an unset variable"],
)  # fmt: skip
def test_from_config_refuses(
    monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any], complaint: str
) -> None:
    monkeypatch.setenv("ADYEN_SET", "k")
    monkeypatch.delenv("ADYEN_UNSET", raising=False)
    with pytest.raises(ValueError, match=complaint) as raised:
        from_config("adyen", spec)
    assert "AQE-inline" not in str(raised.value)


def test_logs_never_contain_the_api_key(
    env: Running, adapter: AdyenAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reference = authorized(adapter)
    adapter.capture(follow_up(OperationKind.CAPTURE, reference, "c", 10), timeout=TIMEOUT)
    env.emulator.fail_next(Reply(500, error_body(500, "000", "boom")))
    with pytest.raises(ProviderOutcomeUnknown):
        adapter.authorize(authorize_op("k2"), timeout=TIMEOUT)
    env.emulator.hang_next(0.3)
    with pytest.raises(ProviderOutcomeUnknown):
        adapter.authorize(authorize_op("k3"), timeout=0.1)
    assert caplog.records  # something was logged...
    assert adyen.API_KEY not in caplog.text  # ...but never the key
    assert all(adyen.API_KEY not in str(r.args) for r in caplog.records)


def test_the_operation_is_unchanged_by_the_adapter(adapter: AdyenAdapter) -> None:
    op = authorize_op(metadata={"a": "b"})
    before = dataclasses.asdict(op)
    adapter.authorize(op, timeout=TIMEOUT)
    assert dataclasses.asdict(op) == before
