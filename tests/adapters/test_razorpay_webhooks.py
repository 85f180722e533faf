"""Razorpay webhooks: X-Razorpay-Signature against razorpay-python's published vector (its
971-byte mock file, byte for byte), every way a delivery is refused, secret rotation, the
event table and the adapter's wiring."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.razorpay import RazorpayAdapter, from_config
from adapters.razorpay.webhooks import RazorpayWebhooks, event_of
from orchestrator.ports import WebhookEvent, WebhookKind, WebhookRejected, WebhookVerifier
from orchestrator.secrets import Secret

# razorpay/razorpay-python tests/test_client_utility.py::test_verify_webhook_signature
VECTOR_BODY = (
    Path(__file__).parent / "data" / "razorpay_payment_authorized_webhook.json"
).read_bytes()
VECTOR_SECRET = "key_secret"
VECTOR_SIGNATURE = "d60e67fd884556c045e9be7dad57903e33efc7172c17c6e3ef77db42d2b366e9"

SECRET = "rzp-webhook-secret-current"
OLD_SECRET = "rzp-webhook-secret-previous"
NOW = 1_750_000_000.0
PAYMENT_ID = "9f1c4a2e-0000-4000-8000-000000000003"
AUTH_KEY = f"{PAYMENT_ID}:1:authorize:1"
REFUND_KEY = f"{PAYMENT_ID}:3:refund:1"


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signed(body: bytes, secret: str = SECRET, event_id: str = "evt_Razor1") -> dict[str, str]:
    return {"x-razorpay-signature": signature(secret, body), "x-razorpay-event-id": event_id}


def verifier(*secrets: str) -> RazorpayWebhooks:
    chosen = secrets or (SECRET,)
    return RazorpayWebhooks([Secret(s, f"test secret {i}") for i, s in enumerate(chosen)])


def refusal(
    headers: dict[str, str], body: bytes = VECTOR_BODY, *, by: RazorpayWebhooks | None = None
) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        (by or verifier()).verify_webhook(headers, body, now=NOW)
    return caught.value


# --- the published vector -----------------------------------------------------------------


def test_the_vector_file_is_the_exact_971_bytes() -> None:
    assert len(VECTOR_BODY) == 971
    assert VECTOR_BODY.endswith(b"}\n")


def test_the_published_vector_is_authentic_and_read() -> None:
    headers = {"x-razorpay-signature": VECTOR_SIGNATURE, "x-razorpay-event-id": "evt_V"}
    [event] = verifier(VECTOR_SECRET).verify_webhook(headers, VECTOR_BODY, now=NOW)
    # its notes are not ours, so neither our payment nor our key is named
    assert event == WebhookEvent(
        "evt_V", WebhookKind.AUTHORIZATION_SUCCEEDED, provider_reference="pay_6koWN7bvxujzxM",
        amount=1_000_000, currency="INR",
    )  # fmt: skip


def test_the_published_vector_without_its_trailing_newline_fails() -> None:
    headers = {"x-razorpay-signature": VECTOR_SIGNATURE, "x-razorpay-event-id": "evt_V"}
    refused = refusal(headers, VECTOR_BODY.rstrip(b"\n"), by=verifier(VECTOR_SECRET))
    assert refused.status == 401


def test_the_published_vector_re_serialised_fails() -> None:
    reformatted = json.dumps(json.loads(VECTOR_BODY)).encode()
    headers = {"x-razorpay-signature": VECTOR_SIGNATURE, "x-razorpay-event-id": "evt_V"}
    assert refusal(headers, reformatted, by=verifier(VECTOR_SECRET)).status == 401


def test_the_api_key_secret_is_not_the_webhook_secret() -> None:
    headers = {"x-razorpay-signature": VECTOR_SIGNATURE, "x-razorpay-event-id": "evt_V"}
    assert refusal(headers, by=verifier("rzp_test_key_secret")).status == 401


# --- refusals -----------------------------------------------------------------------------


def test_a_tampered_body_is_refused() -> None:
    tampered = VECTOR_BODY.replace(b"1000000", b"1000001")
    assert refusal(signed(VECTOR_BODY), tampered).status == 401


def test_a_signature_made_with_another_secret_is_refused() -> None:
    assert refusal(signed(VECTOR_BODY, "someone-else")).status == 401


def test_an_upper_case_signature_still_matches() -> None:
    headers = signed(VECTOR_BODY)
    headers["x-razorpay-signature"] = headers["x-razorpay-signature"].upper()
    verifier().verify_webhook(headers, VECTOR_BODY, now=NOW)


def test_no_timestamp_is_checked_since_razorpay_signs_none() -> None:
    verifier().verify_webhook(signed(VECTOR_BODY), VECTOR_BODY, now=0)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"x-razorpay-event-id": "evt_1"}, "missing x-razorpay-signature header"),
        (
            {"x-razorpay-signature": signature(SECRET, VECTOR_BODY)},
            "missing x-razorpay-event-id header",
        ),
        (
            {"x-razorpay-signature": "", "x-razorpay-event-id": "evt_1"},
            "missing x-razorpay-signature header",
        ),
        (
            {"x-razorpay-signature": "test_signature", "x-razorpay-event-id": "evt_1"},
            "malformed x-razorpay-signature header",
        ),
        (
            {"x-razorpay-signature": "z" * 64, "x-razorpay-event-id": "evt_1"},
            "malformed x-razorpay-signature header",
        ),
        (
            {"x-razorpay-signature": "x" * 9000, "x-razorpay-event-id": "evt_1"},
            "x-razorpay-signature header too long",
        ),
    ],
)
def test_a_missing_or_garbled_header_is_a_bad_request(headers: dict[str, str], reason: str) -> None:
    refused = refusal(headers)
    assert (refused.status, refused.reason) == (400, reason)


@pytest.mark.parametrize("body", [b"{not json", b"[]", b"\xff", b""])
def test_a_genuine_body_that_is_no_json_object_is_a_bad_request(body: bytes) -> None:
    assert refusal(signed(body), body).status == 400


def test_header_names_are_found_whatever_their_case() -> None:
    headers = {k.title(): v for k, v in signed(VECTOR_BODY).items()}
    verifier().verify_webhook(headers, VECTOR_BODY, now=NOW)


# --- rotation -----------------------------------------------------------------------------


def test_while_rotating_both_secrets_pass() -> None:
    both = verifier(SECRET, OLD_SECRET)
    both.verify_webhook(signed(VECTOR_BODY, SECRET), VECTOR_BODY, now=NOW)
    both.verify_webhook(signed(VECTOR_BODY, OLD_SECRET), VECTOR_BODY, now=NOW)


def test_with_only_the_old_secret_configured_the_new_one_fails() -> None:
    assert refusal(signed(VECTOR_BODY, SECRET), by=verifier(OLD_SECRET)).status == 401


# --- no reason gives anything away --------------------------------------------------------


def test_no_refusal_repeats_the_secret_the_signature_or_the_body() -> None:
    good = signature(SECRET, VECTOR_BODY)
    attempts = [
        ({"x-razorpay-signature": good, "x-razorpay-event-id": "e"}, VECTOR_BODY + b" "),
        ({"x-razorpay-signature": SECRET, "x-razorpay-event-id": "e"}, VECTOR_BODY),
        ({"x-razorpay-signature": good}, VECTOR_BODY),
        (signed(b"a@b.com"), b"a@b.com"),
    ]
    for headers, body in attempts:
        refused = refusal(headers, body)
        for leak in (SECRET, good, "a@b.com", "+919999999999"):
            assert leak not in refused.reason and leak not in str(refused)


def test_a_verifier_does_not_show_its_secrets() -> None:
    assert SECRET not in repr(verifier(SECRET, OLD_SECRET))


# --- the event table ----------------------------------------------------------------------


def payment(**changes: Any) -> dict[str, Any]:
    base = {
        "id": "pay_29QQoUBi66xm2f", "entity": "payment", "amount": 50000, "currency": "INR",
        "status": "authorized", "order_id": "order_9A33XWu170gUtm", "method": "card",
        "captured": False, "email": "gaurav.kumar@example.com", "contact": "+919876543210",
        "notes": {"payorch_payment_id": PAYMENT_ID, "payorch_provider_key": AUTH_KEY},
        "error_code": None, "error_description": None, "error_reason": None,
        "created_at": 1567674599,
    }  # fmt: skip
    return {**base, **changes}


def refund(**changes: Any) -> dict[str, Any]:
    base = {
        "id": "rfnd_DfjjhJC6eDvUAi", "entity": "refund", "amount": 20000, "currency": "INR",
        "payment_id": "pay_29QQoUBi66xm2f", "status": "processed",
        "notes": {"payorch_payment_id": PAYMENT_ID, "payorch_provider_key": REFUND_KEY},
        "created_at": 1567675000,
    }  # fmt: skip
    return {**base, **changes}


def dispute(**changes: Any) -> dict[str, Any]:
    base = {
        "id": "disp_Esz7KAitoYM7PJ", "entity": "dispute", "payment_id": "pay_29QQoUBi66xm2f",
        "amount": 50000, "currency": "INR", "amount_deducted": 0,
        "reason_code": "pre_arbitration",
        "reason_description": "The customer has raised a pre-arbitration.",
        "status": "open", "phase": "pre_arbitration", "created_at": 1590604800,
    }  # fmt: skip
    return {**base, **changes}


def razorpay_event(name: str, **payload: dict[str, Any]) -> bytes:
    return json.dumps(
        {"entity": "event", "account_id": "acc_BFQ7uQEaa7j2z7", "event": name,
         "contains": list(payload),
         "payload": {key: {"entity": value} for key, value in payload.items()},
         "created_at": 1567674606}
    ).encode()  # fmt: skip


def read(body: bytes) -> WebhookEvent:
    return event_of("evt_R", json.loads(body))


OURS: dict[str, Any] = {
    "payment_id": PAYMENT_ID,
    "provider_reference": "pay_29QQoUBi66xm2f",
    "currency": "INR",
}
FAILED = payment(
    status="failed", error_code="BAD_REQUEST_ERROR", error_reason="payment_failed",
    error_description="Payment failed due to insufficient balance.",
)  # fmt: skip

TABLE = [
    (
        razorpay_event("payment.authorized", payment=payment()),
        WebhookEvent("evt_R", WebhookKind.AUTHORIZATION_SUCCEEDED, operation_key=AUTH_KEY,
                     amount=50000, **OURS),
    ),
    (
        razorpay_event("payment.failed", payment=FAILED),
        WebhookEvent("evt_R", WebhookKind.AUTHORIZATION_FAILED, operation_key=AUTH_KEY,
                     amount=50000, decline_code="payment_failed",
                     message="Payment failed due to insufficient balance.", **OURS),
    ),
    (
        razorpay_event("payment.failed", payment={**FAILED, "error_reason": None}),
        WebhookEvent("evt_R", WebhookKind.AUTHORIZATION_FAILED, operation_key=AUTH_KEY,
                     amount=50000, decline_code="BAD_REQUEST_ERROR",
                     message="Payment failed due to insufficient balance.", **OURS),
    ),
    (
        # the payment's key is its authorization's, never passed off as the capture's
        razorpay_event("payment.captured", payment=payment(status="captured", captured=True)),
        WebhookEvent("evt_R", WebhookKind.CAPTURE_SUCCEEDED, amount=50000, **OURS),
    ),
    (
        razorpay_event("refund.processed", refund=refund(), payment=payment(status="refunded")),
        WebhookEvent("evt_R", WebhookKind.REFUND_SUCCEEDED, operation_key=REFUND_KEY,
                     object_reference="rfnd_DfjjhJC6eDvUAi", amount=20000, **OURS),
    ),
    (
        razorpay_event("refund.failed", refund=refund(status="failed"), payment=payment()),
        WebhookEvent("evt_R", WebhookKind.REFUND_FAILED, operation_key=REFUND_KEY,
                     object_reference="rfnd_DfjjhJC6eDvUAi", amount=20000, **OURS),
    ),
    (
        razorpay_event("payment.dispute.created", payment=payment(), dispute=dispute()),
        WebhookEvent("evt_R", WebhookKind.DISPUTE_OPENED, object_reference="disp_Esz7KAitoYM7PJ",
                     amount=50000, message="The customer has raised a pre-arbitration.", **OURS),
    ),
    (
        razorpay_event("payment.dispute.won", payment=payment(), dispute=dispute(status="won")),
        WebhookEvent("evt_R", WebhookKind.DISPUTE_WON, object_reference="disp_Esz7KAitoYM7PJ",
                     amount=50000, message="The customer has raised a pre-arbitration.", **OURS),
    ),
    (
        razorpay_event("payment.dispute.lost", payment=payment(), dispute=dispute(status="lost")),
        WebhookEvent("evt_R", WebhookKind.DISPUTE_LOST, object_reference="disp_Esz7KAitoYM7PJ",
                     amount=50000, message="The customer has raised a pre-arbitration.", **OURS),
    ),
    (
        razorpay_event("payment.dispute.closed", payment=payment(), dispute=dispute()),
        WebhookEvent("evt_R", WebhookKind.OTHER),
    ),
    (
        razorpay_event("refund.created", refund=refund(status="pending"), payment=payment()),
        WebhookEvent("evt_R", WebhookKind.OTHER),
    ),
    (
        razorpay_event("order.paid", payment=payment(), order={"id": "order_1", "receipt": "x"}),
        WebhookEvent("evt_R", WebhookKind.OTHER),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "expected"), TABLE, ids=[json.loads(row[0])["event"] for row in TABLE]
)
def test_each_event_maps_to_its_kind(body: bytes, expected: WebhookEvent) -> None:
    assert read(body) == expected


def test_the_table_holds_end_to_end_through_the_signature() -> None:
    body = razorpay_event("refund.processed", refund=refund(), payment=payment())
    [event] = verifier().verify_webhook(signed(body, event_id="evt_Q"), body, now=NOW)
    assert (event.event_id, event.kind) == ("evt_Q", WebhookKind.REFUND_SUCCEEDED)


def test_without_our_notes_the_payment_comes_from_the_order_receipt() -> None:
    body = razorpay_event(
        "payment.authorized",
        payment=payment(notes=[]),  # Razorpay renders empty notes as a list
        order={"id": "order_9A33XWu170gUtm", "entity": "order", "receipt": PAYMENT_ID},
    )
    event = read(body)
    assert (event.payment_id, event.operation_key) == (PAYMENT_ID, "")


def test_a_refund_without_our_notes_takes_the_payment_from_the_payments_notes() -> None:
    event = read(razorpay_event("refund.processed", refund=refund(notes=[]), payment=payment()))
    assert (event.payment_id, event.operation_key) == (PAYMENT_ID, "")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            json.dumps({"event": "payment.authorized"}).encode(),
            "malformed event: payload is not an object",
        ),
        (razorpay_event("payment.authorized"), "malformed event: payment is not an object"),
        (
            razorpay_event("refund.processed", payment=payment()),
            "malformed event: refund is not an object",
        ),
        (
            razorpay_event("payment.captured", payment=payment(amount=None)),
            "malformed event: amount is not an integer",
        ),
        (json.dumps({"payload": {}}).encode(), "malformed event: event is not a non-empty string"),
    ],
)
def test_a_known_event_missing_what_it_needs_is_a_bad_request(body: bytes, reason: str) -> None:
    refused = refusal(signed(body), body)
    assert (refused.status, refused.reason) == (400, reason)


# --- the adapter --------------------------------------------------------------------------


def adapter(**kw: Any) -> RazorpayAdapter:
    return RazorpayAdapter(Secret("rzp_test_id", "test"), Secret("rzp_test_secret", "test"), **kw)


def test_the_adapter_without_a_webhook_secret_refuses_every_delivery() -> None:
    verifying: WebhookVerifier = adapter()
    with pytest.raises(WebhookRejected) as caught:
        verifying.verify_webhook(signed(VECTOR_BODY), VECTOR_BODY, now=NOW)
    assert (caught.value.status, caught.value.reason) == (401, "no webhook secret configured")


def test_the_adapter_verifies_with_its_secrets() -> None:
    verifying: WebhookVerifier = adapter(webhook_secrets=[Secret(VECTOR_SECRET, "test")])
    headers = {"x-razorpay-signature": VECTOR_SIGNATURE, "x-razorpay-event-id": "evt_V"}
    assert verifying.verify_webhook(headers, VECTOR_BODY, now=NOW)[0].event_id == "evt_V"


def test_the_configuration_reads_both_webhook_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in (("RZP_ID", "rzp_test_id"), ("RZP_SECRET", "x"), ("RZP_WH", SECRET)):
        monkeypatch.setenv(name, value)
    old = tmp_path / "old-webhook-secret"
    old.write_text(OLD_SECRET)
    configured = from_config(
        "razorpay-in",
        {"key_id_env": "RZP_ID", "key_secret_env": "RZP_SECRET", "webhook_secret_env": "RZP_WH",
         "webhook_secret_previous_file": str(old)},
    )  # fmt: skip
    configured.verify_webhook(signed(VECTOR_BODY, SECRET), VECTOR_BODY, now=NOW)
    configured.verify_webhook(signed(VECTOR_BODY, OLD_SECRET), VECTOR_BODY, now=NOW)


def test_the_configuration_refuses_an_inline_webhook_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RZP_ID", "rzp_test_id")
    monkeypatch.setenv("RZP_SECRET", "x")
    with pytest.raises(ValueError, match="must not be written") as caught:
        from_config(
            "razorpay-in",
            {"key_id_env": "RZP_ID", "key_secret_env": "RZP_SECRET", "webhook_secret": SECRET},
        )
    assert SECRET not in str(caught.value)
