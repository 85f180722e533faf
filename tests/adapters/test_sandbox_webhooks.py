"""Sandbox webhooks: Standard Webhooks signing and verification against the spec's published
vector, every way a delivery is refused, secret rotation, the sandbox's event table and the
adapter's wiring."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from adapters.sandbox import SandboxAdapter, from_config
from adapters.sandbox.webhooks import (
    SandboxWebhooks,
    event_of,
    new_webhook_secret,
    sign_standard_webhook,
    signing_key,
)
from orchestrator.ports import WebhookEvent, WebhookKind, WebhookRejected, WebhookVerifier
from orchestrator.secrets import Secret

# standard-webhooks libraries/python/tests/test_webhooks.py::test_sign_function
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIME = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
VECTOR_HEADERS = {
    "webhook-id": VECTOR_ID,
    "webhook-timestamp": str(VECTOR_TIME),
    "webhook-signature": VECTOR_SIGNATURE,
}

SECRET = "whsec_" + base64.b64encode(b"current secret, 32 bytes long!!!").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"previous secret, also 32 bytes!!").decode()
NOW = 1_750_000_000
PAYMENT_ID = "9f1c4a2e-0000-4000-8000-000000000002"


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """A v1 signature written out independently of the code under test."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed(
    body: bytes, *secrets: str, msg_id: str = "evt_abc", timestamp: int = NOW
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            signature(s, msg_id, timestamp, body) for s in secrets or (SECRET,)
        ),
    }


def verifier(*secrets: str, tolerance: float = 300) -> SandboxWebhooks:
    chosen = secrets or (SECRET,)
    return SandboxWebhooks(
        [Secret(s, f"test secret {i}") for i, s in enumerate(chosen)], tolerance=tolerance
    )


def payment(**changes: Any) -> dict[str, Any]:
    base = {
        "id": "sbx_pay_1", "object": "payment", "status": "authorized", "amount": 2500,
        "currency": "EUR", "amount_captured": 0, "amount_refunded": 0,
        "payment_method": "pm_card_visa", "reference": PAYMENT_ID, "metadata": {},
        "idempotency_key": f"{PAYMENT_ID}:1:authorize:1", "decline_code": None,
        "captures": [], "refunds": [], "void": None, "created": NOW,
    }  # fmt: skip
    return {**base, **changes}


def sandbox_event(kind: str, data: dict[str, Any]) -> bytes:
    # the sandbox server's own encoding: compact JSON
    event = {"id": "evt_abc", "type": kind, "created": NOW, "data": data}
    return json.dumps(event, separators=(",", ":")).encode()


BODY = sandbox_event("payment.authorized", {"payment": payment()})


def refusal(
    headers: dict[str, str],
    body: bytes = BODY,
    *,
    now: float = NOW,
    by: SandboxWebhooks | None = None,
) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        (by or verifier()).verify_webhook(headers, body, now=now)
    return caught.value


# --- the published vector -----------------------------------------------------------------


def test_the_signer_reproduces_the_published_vector() -> None:
    assert sign_standard_webhook(VECTOR_SECRET, VECTOR_ID, VECTOR_TIME, VECTOR_BODY) == (
        VECTOR_SIGNATURE
    )


def test_the_published_vector_is_authentic() -> None:
    msg_id = verifier(VECTOR_SECRET).authenticate(VECTOR_HEADERS, VECTOR_BODY, now=VECTOR_TIME)
    assert msg_id == VECTOR_ID


def test_the_published_vector_fails_only_at_parsing_since_it_is_no_sandbox_event() -> None:
    refused = refusal(VECTOR_HEADERS, VECTOR_BODY, now=VECTOR_TIME + 60, by=verifier(VECTOR_SECRET))
    assert (refused.status, refused.reason) == (
        400,
        "malformed event: type is not a non-empty string",
    )


def test_a_secret_without_prefix_or_padding_gives_the_same_key() -> None:
    key = signing_key(VECTOR_SECRET)
    assert signing_key(VECTOR_SECRET.removeprefix("whsec_")) == key
    assert len(key) == 24
    unpadded = "whsec_" + base64.b64encode(bytes(32)).decode().rstrip("=")
    assert signing_key(unpadded) == bytes(32)


def test_new_secrets_are_32_random_bytes_in_the_standard_format() -> None:
    first, second = new_webhook_secret(), new_webhook_secret()
    assert first.startswith("whsec_") and first != second
    assert len(signing_key(first)) == 32
    SandboxWebhooks([Secret(first, "generated")])  # accepted as it is


def test_a_genuine_delivery_gives_its_event_under_the_webhook_id() -> None:
    [event] = verifier().verify_webhook(signed(BODY, msg_id="msg_42"), BODY, now=NOW)
    assert event.event_id == "msg_42"
    assert event.kind is WebhookKind.AUTHORIZATION_SUCCEEDED


# --- refusals -----------------------------------------------------------------------------


def test_a_tampered_body_is_refused() -> None:
    assert refusal(signed(BODY), BODY.replace(b"2500", b"2501")).status == 401


def test_a_tampered_webhook_id_is_refused() -> None:
    headers = {**signed(BODY), "webhook-id": "evt_other"}
    assert refusal(headers).status == 401


def test_a_tampered_timestamp_is_refused() -> None:
    headers = {**signed(BODY), "webhook-timestamp": str(NOW + 1)}
    assert refusal(headers).status == 401


def test_a_signature_made_with_another_secret_is_refused() -> None:
    assert refusal(signed(BODY, new_webhook_secret())).status == 401


@pytest.mark.parametrize("age", [-300, 0, 300])
def test_a_timestamp_within_the_tolerance_passes(age: int) -> None:
    verifier().verify_webhook(signed(BODY, timestamp=NOW - age), BODY, now=NOW)


@pytest.mark.parametrize("age", [301, -301, 86_400])
def test_a_stale_or_future_timestamp_is_refused(age: int) -> None:
    refused = refusal(signed(BODY, timestamp=NOW - age))
    assert (refused.status, refused.reason) == (400, "timestamp outside tolerance")


def test_one_good_v1_among_bad_and_other_versions_passes() -> None:
    good = signature(SECRET, "evt_abc", NOW, BODY)
    header = " ".join(
        ["v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=", "v1a,AAAA", f"v2,{good[3:]}",
         "v1,not*base64", good]
    )  # fmt: skip
    verifier().verify_webhook({**signed(BODY), "webhook-signature": header}, BODY, now=NOW)


def test_only_bad_v1_values_are_refused() -> None:
    header = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1,not*base64"
    assert refusal({**signed(BODY), "webhook-signature": header}).status == 401


def test_a_good_signature_under_another_version_is_not_taken() -> None:
    good = signature(SECRET, "evt_abc", NOW, BODY)
    refused = refusal({**signed(BODY), "webhook-signature": "v2," + good[3:]})
    assert (refused.status, refused.reason) == (400, "no v1 signature in webhook-signature header")


@pytest.mark.parametrize(
    ("drop", "change", "reason"),
    [
        ("webhook-id", {}, "missing webhook-id header"),
        ("webhook-timestamp", {}, "missing webhook-timestamp header"),
        ("webhook-signature", {}, "missing webhook-signature header"),
        ("", {"webhook-signature": "   "}, "missing webhook-signature header"),
        ("", {"webhook-timestamp": "hello"}, "webhook-timestamp is not a Unix timestamp"),
        ("", {"webhook-timestamp": "1e9"}, "webhook-timestamp is not a Unix timestamp"),
        ("", {"webhook-signature": "v1"}, "malformed webhook-signature header"),
        ("", {"webhook-signature": "x" * 9000}, "webhook-signature header too long"),
    ],
)
def test_a_missing_or_garbled_header_is_a_bad_request(
    drop: str, change: dict[str, str], reason: str
) -> None:
    headers = {k: v for k, v in signed(BODY).items() if k != drop} | change
    refused = refusal(headers)
    assert (refused.status, refused.reason) == (400, reason)


@pytest.mark.parametrize("body", [b"{not json", b'"a string"', b"\xff", b""])
def test_a_genuine_body_that_is_no_json_object_is_a_bad_request(body: bytes) -> None:
    assert refusal(signed(body), body).status == 400


# --- rotation -----------------------------------------------------------------------------


def test_while_rotating_both_secrets_pass() -> None:
    both = verifier(SECRET, OLD_SECRET)
    both.verify_webhook(signed(BODY, SECRET), BODY, now=NOW)
    both.verify_webhook(signed(BODY, OLD_SECRET), BODY, now=NOW)


def test_a_delivery_signed_with_both_passes_a_verifier_that_knows_either() -> None:
    headers = signed(BODY, OLD_SECRET, SECRET)
    verifier(SECRET).verify_webhook(headers, BODY, now=NOW)
    verifier(OLD_SECRET).verify_webhook(headers, BODY, now=NOW)


def test_with_only_the_old_secret_configured_the_new_one_fails() -> None:
    assert refusal(signed(BODY, SECRET), by=verifier(OLD_SECRET)).status == 401


@pytest.mark.parametrize("bad", ["whsec_not*base64!", "whsec_", ""])
def test_a_secret_that_is_not_base64_is_refused_at_construction(bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        SandboxWebhooks([Secret(bad, "the test")])
    assert "not*base64" not in str(caught.value)


# --- no reason gives anything away --------------------------------------------------------


def test_no_refusal_repeats_the_secret_the_signature_or_the_body() -> None:
    body = sandbox_event("payment.authorized", {"payment": payment(metadata={"email": "a@b.c"})})
    good = signature(SECRET, "evt_abc", NOW, body)
    attempts = [
        (signed(body), body + b" ", NOW),
        (signed(body), body, NOW + 1000),
        ({**signed(body), "webhook-signature": f"v1,{SECRET}"}, body, NOW),
        ({**signed(body), "webhook-timestamp": SECRET}, body, NOW),
        ({**signed(body), "webhook-signature": good.replace("v1,", "v1 ")}, body, NOW),
        (signed(b"a@b.c"), b"a@b.c", NOW),
    ]
    for headers, sent, now in attempts:
        refused = refusal(headers, sent, now=now)
        for leak in (SECRET, SECRET[6:], good, "a@b.c"):
            assert leak not in refused.reason and leak not in str(refused)


def test_a_verifier_does_not_show_its_secrets() -> None:
    assert SECRET[6:] not in repr(verifier(SECRET, OLD_SECRET))


# --- the event table ----------------------------------------------------------------------

CAPTURE = {"id": "sbx_cap_1", "amount": 1000, "idempotency_key": f"{PAYMENT_ID}:2:capture:1",
           "created": NOW}  # fmt: skip
REFUND = {
    "id": "sbx_re_1", "object": "refund", "payment": "sbx_pay_1", "amount": 400,
    "currency": "EUR", "status": "succeeded", "reason": "", "created": NOW,
    "idempotency_key": f"{PAYMENT_ID}:3:refund:1",
}  # fmt: skip
DISPUTE = {
    "id": "sbx_dp_1", "object": "dispute", "payment": "sbx_pay_1", "amount": 900,
    "currency": "EUR", "reason": "fraudulent", "status": "open", "created": NOW,
}  # fmt: skip
VOID = {"id": "sbx_void_1", "idempotency_key": f"{PAYMENT_ID}:2:cancel:1", "created": NOW}
OURS: dict[str, Any] = {
    "payment_id": PAYMENT_ID,
    "provider_reference": "sbx_pay_1",
    "currency": "EUR",
}

TABLE = [
    (
        "payment.authorized", {"payment": payment()},
        WebhookEvent("msg_1", WebhookKind.AUTHORIZATION_SUCCEEDED, amount=2500,
                     operation_key=f"{PAYMENT_ID}:1:authorize:1", **OURS),
    ),
    (
        "payment.declined",
        {"payment": payment(status="declined", decline_code="insufficient_funds")},
        WebhookEvent("msg_1", WebhookKind.AUTHORIZATION_FAILED, amount=2500,
                     operation_key=f"{PAYMENT_ID}:1:authorize:1",
                     decline_code="insufficient_funds", **OURS),
    ),
    (
        "payment.captured", {"payment": payment(status="captured"), "capture": CAPTURE},
        WebhookEvent("msg_1", WebhookKind.CAPTURE_SUCCEEDED, amount=1000,
                     operation_key=f"{PAYMENT_ID}:2:capture:1", object_reference="sbx_cap_1",
                     **OURS),
    ),
    (
        "payment.voided", {"payment": payment(status="voided", void=VOID)},
        WebhookEvent("msg_1", WebhookKind.CANCEL_SUCCEEDED,
                     operation_key=f"{PAYMENT_ID}:2:cancel:1", **OURS),
    ),
    (
        "refund.succeeded", {"payment": payment(status="captured"), "refund": REFUND},
        WebhookEvent("msg_1", WebhookKind.REFUND_SUCCEEDED, amount=400,
                     operation_key=f"{PAYMENT_ID}:3:refund:1", object_reference="sbx_re_1",
                     **OURS),
    ),
    (
        "refund.failed",
        {"payment": payment(status="captured"), "refund": {**REFUND, "status": "failed"}},
        WebhookEvent("msg_1", WebhookKind.REFUND_FAILED, amount=400,
                     operation_key=f"{PAYMENT_ID}:3:refund:1", object_reference="sbx_re_1",
                     **OURS),
    ),
    (
        "dispute.opened", {"payment": payment(status="captured"), "dispute": DISPUTE},
        WebhookEvent("msg_1", WebhookKind.DISPUTE_OPENED, amount=900,
                     object_reference="sbx_dp_1", message="fraudulent", **OURS),
    ),
    (
        "dispute.closed",
        {"payment": payment(status="captured"), "dispute": {**DISPUTE, "status": "won"}},
        WebhookEvent("msg_1", WebhookKind.DISPUTE_WON, amount=900,
                     object_reference="sbx_dp_1", message="fraudulent", **OURS),
    ),
    (
        "dispute.closed",
        {"payment": payment(status="captured"), "dispute": {**DISPUTE, "status": "lost"}},
        WebhookEvent("msg_1", WebhookKind.DISPUTE_LOST, amount=900,
                     object_reference="sbx_dp_1", message="fraudulent", **OURS),
    ),
    ("payment.updated", {"payment": payment()}, WebhookEvent("msg_1", WebhookKind.OTHER)),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "data", "expected"), TABLE, ids=[row[0] for row in TABLE])
def test_each_event_type_maps_to_its_kind(
    kind: str, data: dict[str, Any], expected: WebhookEvent
) -> None:
    assert event_of("msg_1", json.loads(sandbox_event(kind, data))) == expected


def test_a_key_less_request_gives_no_operation_key() -> None:
    event = event_of("msg_1", json.loads(sandbox_event(
        "payment.authorized", {"payment": payment(idempotency_key=None)})))  # fmt: skip
    assert event.operation_key == ""


@pytest.mark.parametrize(
    ("kind", "data", "reason"),
    [
        ("payment.authorized", {}, "malformed event: payment is not an object"),
        ("payment.captured", {"payment": payment()}, "malformed event: capture is not an object"),
        ("payment.voided", {"payment": payment()}, "malformed event: void is not an object"),
        ("refund.succeeded", {"payment": payment()}, "malformed event: refund is not an object"),
        (
            "dispute.closed",
            {"payment": payment(), "dispute": DISPUTE},
            "malformed event: a closed dispute is neither won nor lost",
        ),
        (
            "payment.authorized",
            {"payment": payment(amount="2500")},
            "malformed event: amount is not an integer",
        ),
    ],
)
def test_a_known_event_missing_what_it_needs_is_a_bad_request(
    kind: str, data: dict[str, Any], reason: str
) -> None:
    body = sandbox_event(kind, data)
    refused = refusal(signed(body), body)
    assert (refused.status, refused.reason) == (400, reason)


# --- the adapter --------------------------------------------------------------------------


def test_the_adapter_without_a_webhook_secret_refuses_every_delivery() -> None:
    adapter: WebhookVerifier = SandboxAdapter("http://127.0.0.1:1")
    with pytest.raises(WebhookRejected) as caught:
        adapter.verify_webhook(signed(BODY), BODY, now=NOW)
    assert (caught.value.status, caught.value.reason) == (401, "no webhook secret configured")


def test_the_adapter_takes_a_generated_secret_in_memory() -> None:
    generated = new_webhook_secret()
    adapter: WebhookVerifier = SandboxAdapter(
        "http://127.0.0.1:1", webhook_secrets=[Secret(generated, "generated by payorch serve")]
    )
    headers = {
        "webhook-id": "evt_abc",
        "webhook-timestamp": str(NOW),
        "webhook-signature": sign_standard_webhook(generated, "evt_abc", NOW, BODY),
    }
    [event] = adapter.verify_webhook(headers, BODY, now=NOW)
    assert event.payment_id == PAYMENT_ID


def test_the_configuration_reads_both_webhook_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    old = tmp_path / "old"
    old.write_text(OLD_SECRET + "\n")
    monkeypatch.setenv("SANDBOX_WHSEC", SECRET)
    adapter = from_config(
        "sandbox",
        {"base_url": "http://127.0.0.1:1", "webhook_secret_env": "SANDBOX_WHSEC",
         "webhook_secret_previous_file": str(old)},
    )  # fmt: skip
    adapter.verify_webhook(signed(BODY, SECRET), BODY, now=NOW)
    adapter.verify_webhook(signed(BODY, OLD_SECRET), BODY, now=NOW)


def test_the_configuration_refuses_a_secret_that_is_not_standard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SANDBOX_WHSEC", "whsec_!!not-base64!!")
    with pytest.raises(ValueError, match=r"\$SANDBOX_WHSEC") as caught:
        from_config(
            "sandbox", {"base_url": "http://127.0.0.1:1", "webhook_secret_env": "SANDBOX_WHSEC"}
        )
    assert "not-base64" not in str(caught.value)
