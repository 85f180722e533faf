"""Stripe webhooks: the Stripe-Signature scheme against its published vector, every way a
delivery is refused, secret rotation, the event-type table and the adapter's wiring."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from adapters.stripe import StripeAdapter, from_config
from adapters.stripe.webhooks import StripeWebhooks, event_of
from orchestrator.ports import WebhookEvent, WebhookKind, WebhookRejected, WebhookVerifier
from orchestrator.secrets import Secret

# research §1.1, verified against stripe 16.1.0
VECTOR_SECRET = "whsec_test_secret"
VECTOR_BODY = b'{"id":"evt_1","object":"event"}'
VECTOR_HEADER = "t=1700000000,v1=0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd"
VECTOR_TIME = 1_700_000_000

SECRET = "whsec_current_0123456789abcdef"
OLD_SECRET = "whsec_previous_fedcba9876543210"
NOW = 1_750_000_000

PAYMENT_ID = "9f1c4a2e-0000-4000-8000-000000000001"
AUTH_KEY = f"{PAYMENT_ID}:1:authorize:1"
REFUND_KEY = f"{PAYMENT_ID}:3:refund:1"


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """Stripe's v1 value, written out independently of the code under test."""
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signed(body: bytes, *secrets: str, timestamp: int = NOW) -> dict[str, str]:
    v1 = ",".join(f"v1={signature(s, body, timestamp)}" for s in secrets or (SECRET,))
    return {"stripe-signature": f"t={timestamp},{v1}"}


def verifier(*secrets: str, tolerance: float = 300) -> StripeWebhooks:
    chosen = secrets or (SECRET,)
    return StripeWebhooks(
        [Secret(s, f"test secret {i}") for i, s in enumerate(chosen)], tolerance=tolerance
    )


def stripe_event(kind: str, obj: dict[str, Any], event_id: str = "evt_1NtH") -> bytes:
    return json.dumps(
        {"id": event_id, "object": "event", "type": kind, "api_version": "2024-06-20",
         "data": {"object": obj}, "livemode": False, "created": NOW}
    ).encode()  # fmt: skip


BODY = stripe_event("payment_intent.created", {"id": "pi_1"})


def refusal(
    headers: dict[str, str],
    body: bytes = BODY,
    *,
    now: float = NOW,
    by: StripeWebhooks | None = None,
) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        (by or verifier()).verify_webhook(headers, body, now=now)
    return caught.value


# --- the published vector -----------------------------------------------------------------


def test_the_published_vector_is_authentic() -> None:
    verifier(VECTOR_SECRET).authenticate(
        {"stripe-signature": VECTOR_HEADER}, VECTOR_BODY, now=VECTOR_TIME + 5
    )


def test_the_published_vector_fails_only_at_parsing_since_it_has_no_type() -> None:
    refused = refusal(
        {"stripe-signature": VECTOR_HEADER},
        VECTOR_BODY,
        now=VECTOR_TIME,
        by=verifier(VECTOR_SECRET),
    )
    assert (refused.status, refused.reason) == (
        400,
        "malformed event: type is not a non-empty string",
    )


def test_our_test_signer_reproduces_the_published_vector() -> None:
    assert signed(VECTOR_BODY, VECTOR_SECRET, timestamp=VECTOR_TIME) == {
        "stripe-signature": VECTOR_HEADER
    }


def test_a_genuine_delivery_gives_its_event() -> None:
    events = verifier().verify_webhook(signed(BODY), BODY, now=NOW)
    assert events == [WebhookEvent("evt_1NtH", WebhookKind.OTHER)]


# --- refusals -----------------------------------------------------------------------------


def test_a_tampered_body_is_refused() -> None:
    tampered = BODY.replace(b"pi_1", b"pi_2")
    assert refusal(signed(BODY), tampered).status == 401


def test_one_byte_of_trailing_whitespace_is_a_different_body() -> None:
    assert refusal(signed(BODY), BODY + b"\n").status == 401


def test_a_signature_made_with_another_secret_is_refused() -> None:
    assert refusal(signed(BODY, "whsec_someone_else")).status == 401


def test_the_secret_is_used_whole_not_base64_decoded() -> None:
    assert refusal(signed(BODY, SECRET.removeprefix("whsec_"))).status == 401


@pytest.mark.parametrize("age", [-300, 0, 300])
def test_a_timestamp_within_the_tolerance_passes(age: int) -> None:
    verifier().verify_webhook(signed(BODY, timestamp=NOW - age), BODY, now=NOW)


@pytest.mark.parametrize("age", [301, -301, 86_400, -3_600])
def test_a_stale_or_future_timestamp_is_refused(age: int) -> None:
    refused = refusal(signed(BODY, timestamp=NOW - age))
    assert (refused.status, refused.reason) == (400, "timestamp outside tolerance")


def test_the_tolerance_is_configurable() -> None:
    headers = signed(BODY, timestamp=NOW - 15)
    assert refusal(headers, by=verifier(tolerance=10)).status == 400
    verifier(tolerance=20).verify_webhook(headers, BODY, now=NOW)


def test_one_good_v1_among_bad_ones_passes() -> None:
    good = signature(SECRET, BODY, NOW)
    header = f"t={NOW},v1={'0' * 64},v1=bad_signature,v0={good},v1={good},v1={'f' * 64}"
    verifier().verify_webhook({"stripe-signature": header}, BODY, now=NOW)


def test_only_bad_v1_values_are_refused() -> None:
    header = f"t={NOW},v1={'0' * 64},v1=bad_signature,v1={signature('whsec_x', BODY, NOW)}"
    assert refusal({"stripe-signature": header}).status == 401


def test_a_v1_in_upper_case_hex_still_matches() -> None:
    header = f"t={NOW},v1={signature(SECRET, BODY, NOW).upper()}"
    verifier().verify_webhook({"stripe-signature": header}, BODY, now=NOW)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing stripe-signature header"),
        ({"stripe-signature": ""}, "missing stripe-signature header"),
        ({"stripe-signature": f"t={NOW}"}, "no v1 signature in stripe-signature header"),
        (
            {"stripe-signature": f"t={NOW},v0={'0' * 64}"},
            "no v1 signature in stripe-signature header",
        ),
        (
            {"stripe-signature": f"v1={'0' * 64}"},
            "malformed stripe-signature header: one t= is required",
        ),
        (
            {"stripe-signature": f"t={NOW},t={NOW},v1={'0' * 64}"},
            "malformed stripe-signature header: one t= is required",
        ),
        (
            {"stripe-signature": f"t=yesterday,v1={'0' * 64}"},
            "stripe-signature t is not a Unix timestamp",
        ),
        (
            {"stripe-signature": f"t=-{NOW},v1={'0' * 64}"},
            "stripe-signature t is not a Unix timestamp",
        ),
        ({"stripe-signature": "x" * 9000}, "stripe-signature header too long"),
        ({"stripe-signature": "garbage"}, "malformed stripe-signature header: one t= is required"),
    ],
)
def test_a_missing_or_garbled_header_is_a_bad_request(headers: dict[str, str], reason: str) -> None:
    refused = refusal(headers)
    assert (refused.status, refused.reason) == (400, reason)


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_a_genuine_body_that_is_no_json_object_is_a_bad_request(body: bytes) -> None:
    refused = refusal(signed(body), body)
    assert refused.status == 400


def test_a_genuine_event_without_its_object_is_a_bad_request() -> None:
    body = json.dumps({"id": "evt_1", "type": "payment_intent.succeeded", "data": {}}).encode()
    refused = refusal(signed(body), body)
    assert (refused.status, refused.reason) == (400, "malformed event: object is not an object")


def test_header_names_are_found_whatever_their_case() -> None:
    headers = {"Stripe-Signature": signed(BODY)["stripe-signature"]}
    verifier().verify_webhook(headers, BODY, now=NOW)


# --- rotation -----------------------------------------------------------------------------


def test_while_rolling_both_secrets_pass() -> None:
    both = verifier(SECRET, OLD_SECRET)
    both.verify_webhook(signed(BODY, SECRET), BODY, now=NOW)
    both.verify_webhook(signed(BODY, OLD_SECRET), BODY, now=NOW)


def test_stripe_signing_with_both_secrets_passes_a_verifier_that_knows_either() -> None:
    headers = signed(BODY, OLD_SECRET, SECRET)
    verifier(SECRET).verify_webhook(headers, BODY, now=NOW)
    verifier(OLD_SECRET).verify_webhook(headers, BODY, now=NOW)


def test_with_only_the_old_secret_configured_the_new_one_fails() -> None:
    assert refusal(signed(BODY, SECRET), by=verifier(OLD_SECRET)).status == 401


def test_a_verifier_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        StripeWebhooks([])


# --- no reason gives anything away --------------------------------------------------------


def test_no_refusal_repeats_the_secret_the_signature_or_the_body() -> None:
    secret_body = stripe_event("payment_intent.succeeded", {"email": "a@b.com"})
    good = signature(SECRET, secret_body, NOW)
    attempts: list[tuple[dict[str, str], bytes, float]] = [
        ({"stripe-signature": f"t={NOW},v1={good}"}, secret_body + b" ", NOW),
        ({"stripe-signature": f"t={NOW},v1={good}"}, secret_body, NOW + 1000),
        ({"stripe-signature": f"t={NOW},v1={SECRET}"}, secret_body, NOW),
        ({"stripe-signature": f"t={SECRET},v1={good}"}, secret_body, NOW),
        ({"stripe-signature": f"t={NOW},v1={good}"}, secret_body, NOW),
        (signed(b"a@b.com"), b"a@b.com", NOW),
    ]
    for headers, body, now in attempts:
        refused = refusal(headers, body, now=now)
        for leak in (SECRET, good, "a@b.com", body.decode(errors="replace")):
            assert leak not in refused.reason and leak not in str(refused)


def test_a_verifier_does_not_show_its_secrets() -> None:
    assert SECRET not in repr(verifier(SECRET, OLD_SECRET))


# --- the event table ----------------------------------------------------------------------


def intent(**changes: Any) -> dict[str, Any]:
    base = {
        "id": "pi_3Abc", "object": "payment_intent", "amount": 2000, "amount_received": 0,
        "currency": "eur", "capture_method": "manual", "status": "requires_capture",
        "metadata": {"payment_id": PAYMENT_ID, "payorch_key": AUTH_KEY},
        "last_payment_error": None, "cancellation_reason": None,
    }  # fmt: skip
    return {**base, **changes}


def refund(**changes: Any) -> dict[str, Any]:
    base = {
        "id": "re_3Abc", "object": "refund", "amount": 500, "currency": "eur",
        "payment_intent": "pi_3Abc", "charge": "ch_3Abc", "status": "succeeded",
        "metadata": {"payment_id": PAYMENT_ID, "payorch_key": REFUND_KEY},
        "failure_reason": None,
    }  # fmt: skip
    return {**base, **changes}


def charge(**changes: Any) -> dict[str, Any]:
    base = {
        "id": "ch_3Abc", "object": "charge", "amount": 2000, "amount_refunded": 500,
        "currency": "eur", "payment_intent": "pi_3Abc", "refunded": False,
        "metadata": {"payment_id": PAYMENT_ID, "payorch_key": AUTH_KEY},
    }  # fmt: skip
    return {**base, **changes}


def dispute(**changes: Any) -> dict[str, Any]:
    base = {
        "id": "dp_1Abc", "object": "dispute", "amount": 2000, "currency": "eur",
        "charge": "ch_3Abc", "payment_intent": "pi_3Abc", "reason": "fraudulent",
        "status": "needs_response", "metadata": {},
    }  # fmt: skip
    return {**base, **changes}


def read(kind: str, obj: dict[str, Any]) -> WebhookEvent:
    return event_of(json.loads(stripe_event(kind, obj)))


INTENT: dict[str, Any] = {
    "payment_id": PAYMENT_ID,
    "provider_reference": "pi_3Abc",
    "currency": "EUR",
}
CARD_ERROR = {
    "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
    "message": "Your card has insufficient funds.",
}  # fmt: skip

TABLE = [
    (
        "payment_intent.amount_capturable_updated", intent(),
        WebhookEvent("evt_1NtH", WebhookKind.AUTHORIZATION_SUCCEEDED, operation_key=AUTH_KEY,
                     amount=2000, **INTENT),
    ),
    (
        "payment_intent.succeeded",
        intent(capture_method="automatic", status="succeeded", amount_received=2000),
        WebhookEvent("evt_1NtH", WebhookKind.AUTHORIZATION_SUCCEEDED, operation_key=AUTH_KEY,
                     amount=2000, **INTENT),
    ),
    (
        "payment_intent.succeeded",
        intent(capture_method="automatic_async", status="succeeded", amount_received=2000),
        WebhookEvent("evt_1NtH", WebhookKind.AUTHORIZATION_SUCCEEDED, operation_key=AUTH_KEY,
                     amount=2000, **INTENT),
    ),
    (
        "payment_intent.succeeded", intent(status="succeeded", amount_received=1500),
        WebhookEvent("evt_1NtH", WebhookKind.CAPTURE_SUCCEEDED, amount=1500, **INTENT),
    ),
    (
        "payment_intent.payment_failed",
        intent(status="requires_payment_method", last_payment_error=CARD_ERROR),
        WebhookEvent("evt_1NtH", WebhookKind.AUTHORIZATION_FAILED, operation_key=AUTH_KEY,
                     amount=2000, decline_code="insufficient_funds",
                     message="Your card has insufficient funds.", **INTENT),
    ),
    (
        "payment_intent.payment_failed",
        intent(status="requires_payment_method",
               last_payment_error={"type": "card_error", "code": "expired_card"}),
        WebhookEvent("evt_1NtH", WebhookKind.AUTHORIZATION_FAILED, operation_key=AUTH_KEY,
                     amount=2000, decline_code="expired_card", **INTENT),
    ),
    (
        "payment_intent.payment_failed",
        intent(status="requires_payment_method",
               last_payment_error={"type": "api_error", "message": "processing error"}),
        WebhookEvent("evt_1NtH", WebhookKind.AUTHORIZATION_FAILED, operation_key=AUTH_KEY,
                     amount=2000, message="processing error", **INTENT),
    ),
    (
        "payment_intent.canceled",
        intent(status="canceled", cancellation_reason="requested_by_customer"),
        WebhookEvent("evt_1NtH", WebhookKind.CANCEL_SUCCEEDED,
                     message="requested_by_customer", **INTENT),
    ),
    (
        "refund.created", refund(),
        WebhookEvent("evt_1NtH", WebhookKind.REFUND_SUCCEEDED, payment_id=PAYMENT_ID,
                     provider_reference="pi_3Abc", operation_key=REFUND_KEY,
                     object_reference="re_3Abc", amount=500, currency="EUR"),
    ),
    (
        "refund.created", refund(status="pending"),
        WebhookEvent("evt_1NtH", WebhookKind.OTHER, payment_id=PAYMENT_ID,
                     provider_reference="pi_3Abc", operation_key=REFUND_KEY,
                     object_reference="re_3Abc", amount=500, currency="EUR"),
    ),
    (
        "refund.updated", refund(),
        WebhookEvent("evt_1NtH", WebhookKind.REFUND_SUCCEEDED, payment_id=PAYMENT_ID,
                     provider_reference="pi_3Abc", operation_key=REFUND_KEY,
                     object_reference="re_3Abc", amount=500, currency="EUR"),
    ),
    (
        "refund.updated", refund(status="failed", failure_reason="expired_or_canceled_card"),
        WebhookEvent("evt_1NtH", WebhookKind.REFUND_FAILED, payment_id=PAYMENT_ID,
                     provider_reference="pi_3Abc", operation_key=REFUND_KEY,
                     object_reference="re_3Abc", amount=500, currency="EUR",
                     message="expired_or_canceled_card"),
    ),
    (
        "refund.updated", refund(status="canceled"),
        WebhookEvent("evt_1NtH", WebhookKind.REFUND_FAILED, payment_id=PAYMENT_ID,
                     provider_reference="pi_3Abc", operation_key=REFUND_KEY,
                     object_reference="re_3Abc", amount=500, currency="EUR"),
    ),
    (
        "refund.failed", refund(status="failed", failure_reason="lost_or_stolen_card"),
        WebhookEvent("evt_1NtH", WebhookKind.REFUND_FAILED, payment_id=PAYMENT_ID,
                     provider_reference="pi_3Abc", operation_key=REFUND_KEY,
                     object_reference="re_3Abc", amount=500, currency="EUR",
                     message="lost_or_stolen_card"),
    ),
    (
        "charge.refund.updated", refund(status="failed"),
        WebhookEvent("evt_1NtH", WebhookKind.REFUND_FAILED, payment_id=PAYMENT_ID,
                     provider_reference="pi_3Abc", operation_key=REFUND_KEY,
                     object_reference="re_3Abc", amount=500, currency="EUR"),
    ),
    (
        # the Charge's payorch_key is its authorization's: never passed off as the refund's
        "charge.refunded", charge(),
        WebhookEvent("evt_1NtH", WebhookKind.REFUND_SUCCEEDED, payment_id=PAYMENT_ID,
                     provider_reference="pi_3Abc", currency="EUR"),
    ),
    (
        "charge.refunded",
        charge(refunds={"object": "list", "data": [
            refund(id="re_old", created=100, metadata={}), refund(created=200)]}),
        WebhookEvent("evt_1NtH", WebhookKind.REFUND_SUCCEEDED, payment_id=PAYMENT_ID,
                     provider_reference="pi_3Abc", operation_key=REFUND_KEY,
                     object_reference="re_3Abc", amount=500, currency="EUR"),
    ),
    (
        "charge.dispute.created", dispute(),
        WebhookEvent("evt_1NtH", WebhookKind.DISPUTE_OPENED, provider_reference="pi_3Abc",
                     object_reference="dp_1Abc", amount=2000, currency="EUR",
                     message="fraudulent"),
    ),
    (
        "charge.dispute.closed", dispute(status="won"),
        WebhookEvent("evt_1NtH", WebhookKind.DISPUTE_WON, provider_reference="pi_3Abc",
                     object_reference="dp_1Abc", amount=2000, currency="EUR",
                     message="fraudulent"),
    ),
    (
        "charge.dispute.closed", dispute(status="lost"),
        WebhookEvent("evt_1NtH", WebhookKind.DISPUTE_LOST, provider_reference="pi_3Abc",
                     object_reference="dp_1Abc", amount=2000, currency="EUR",
                     message="fraudulent"),
    ),
    (
        "charge.dispute.closed", dispute(status="warning_closed"),  # an inquiry, no chargeback
        WebhookEvent("evt_1NtH", WebhookKind.DISPUTE_WON, provider_reference="pi_3Abc",
                     object_reference="dp_1Abc", amount=2000, currency="EUR",
                     message="fraudulent"),
    ),
    ("payment_intent.created", intent(), WebhookEvent("evt_1NtH", WebhookKind.OTHER)),
    ("customer.created", {"id": "cus_1"}, WebhookEvent("evt_1NtH", WebhookKind.OTHER)),
    ("charge.dispute.funds_withdrawn", dispute(), WebhookEvent("evt_1NtH", WebhookKind.OTHER)),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "obj", "expected"), TABLE, ids=[row[0] for row in TABLE])
def test_each_event_type_maps_to_its_kind(
    kind: str, obj: dict[str, Any], expected: WebhookEvent
) -> None:
    assert read(kind, obj) == expected


def test_the_table_holds_end_to_end_through_the_signature() -> None:
    body = stripe_event("charge.dispute.closed", dispute(status="lost"), event_id="evt_X")
    [event] = verifier().verify_webhook(signed(body), body, now=NOW)
    assert (event.event_id, event.kind) == ("evt_X", WebhookKind.DISPUTE_LOST)


def test_amounts_come_back_in_iso_minor_units() -> None:
    # ISK is zero-decimal in ISO 4217 but two-decimal at Stripe: 50000 at Stripe is 500 ISK
    event = read("payment_intent.amount_capturable_updated", intent(amount=50_000, currency="isk"))
    assert (event.amount, event.currency) == (500, "ISK")


def test_an_expanded_payment_intent_is_read_by_its_id() -> None:
    event = read("charge.dispute.created", dispute(payment_intent={"id": "pi_9", "object": "x"}))
    assert event.provider_reference == "pi_9"


def test_a_known_event_missing_what_it_needs_is_a_bad_request() -> None:
    with pytest.raises(WebhookRejected) as caught:
        read("refund.updated", refund(status=None))
    assert (caught.value.status, caught.value.reason) == (
        400,
        "malformed event: status is not a non-empty string",
    )


# --- the adapter --------------------------------------------------------------------------


def test_the_adapter_without_a_webhook_secret_refuses_every_delivery() -> None:
    adapter: WebhookVerifier = StripeAdapter(Secret("sk_test_x", "test"))
    with pytest.raises(WebhookRejected) as caught:
        adapter.verify_webhook(signed(BODY), BODY, now=NOW)
    assert (caught.value.status, caught.value.reason) == (401, "no webhook secret configured")


def test_the_adapter_verifies_with_its_secrets() -> None:
    adapter: WebhookVerifier = StripeAdapter(
        Secret("sk_test_x", "test"), webhook_secrets=[Secret(SECRET, "test")]
    )
    assert adapter.verify_webhook(signed(BODY), BODY, now=NOW)[0].event_id == "evt_1NtH"


def test_the_configuration_reads_both_webhook_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SK", "sk_test_x")
    monkeypatch.setenv("WHSEC", SECRET)
    monkeypatch.setenv("WHSEC_OLD", OLD_SECRET)
    adapter = from_config(
        "stripe-eu",
        {"secret_key_env": "SK", "webhook_secret_env": "WHSEC",
         "webhook_secret_previous_env": "WHSEC_OLD"},
    )  # fmt: skip
    adapter.verify_webhook(signed(BODY, SECRET), BODY, now=NOW)
    adapter.verify_webhook(signed(BODY, OLD_SECRET), BODY, now=NOW)


def test_the_configuration_without_webhook_secrets_takes_no_webhooks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SK", "sk_test_x")
    adapter = from_config("stripe-eu", {"secret_key_env": "SK"})
    with pytest.raises(WebhookRejected) as caught:
        adapter.verify_webhook(signed(BODY), BODY, now=NOW)
    assert caught.value.status == 401


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"webhook_secret": SECRET}, "must not be written in the configuration"),
        ({"webhook_secret_env": "UNSET_VARIABLE_FOR_TEST"}, "is not set"),
        ({"webhook_secret_previous_env": "WHSEC"}, "webhook_secret_previous needs"),
    ],
)
def test_the_configuration_refuses_webhook_secrets_given_wrong(
    monkeypatch: pytest.MonkeyPatch, spec: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("SK", "sk_test_x")
    monkeypatch.setenv("WHSEC", SECRET)
    monkeypatch.delenv("UNSET_VARIABLE_FOR_TEST", raising=False)
    with pytest.raises(ValueError, match=message) as caught:
        from_config("stripe-eu", {"secret_key_env": "SK", **spec})
    assert SECRET not in str(caught.value)
