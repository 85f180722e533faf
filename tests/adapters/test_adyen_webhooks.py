"""Adyen standard webhooks: per-item HMAC against the Adyen library's published vector, every
way a delivery is refused, key rotation, the eventCode table, and the adapter's wiring
(verified items feed its lookups)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from adapters.adyen import AdyenAdapter, AdyenNotifications, from_config
from adapters.adyen.webhooks import AdyenWebhooks, event_of
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderOperation,
    WebhookEvent,
    WebhookKind,
    WebhookRejected,
    WebhookVerifier,
)
from orchestrator.secrets import Secret

# Adyen/adyen-python-api-library test/UtilTest.py::test_notification_request_item_hmac
VECTOR_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
VECTOR_ITEM: dict[str, Any] = {
    "pspReference": "7914073381342284",
    "merchantReference": "TestPayment-1407325143704",
    "merchantAccountCode": "TestMerchant",
    "amount": {"currency": "EUR", "value": 1130},
    "eventCode": "AUTHORISATION",
    "success": "true",
    "eventDate": "2019-05-06T17:15:34.121+02:00",
    "operations": ["CANCEL", "CAPTURE", "REFUND"],
    "paymentMethod": "visa",
}
VECTOR_SIGNATURE = "coqCmt/IZ4E3CzPvMY8zTjQVL5hYJUiBRg8UU+iCWo0="

KEY = "74F490DD33F7327BAECC88B2947C011FC02D014A473AAA33A8EC93E4DC069174"
OLD_KEY = "0011223344556677889900AABBCCDDEEFF00112233445566778899AABBCCDDEE"
NOW = 1_750_000_000.0
PAYMENT_ID = "9f1c4a2e-0000-4000-8000-000000000004"
CAPTURE_KEY = f"{PAYMENT_ID}:2:capture:1"
REFUND_KEY = f"{PAYMENT_ID}:3:refund:1"


def sign(item: dict[str, Any], key: str = KEY) -> dict[str, Any]:
    """The item with its hmacSignature, computed independently of the code under test."""
    amount = item.get("amount", {})
    fields = [
        item.get("pspReference"), item.get("originalReference"), item.get("merchantAccountCode"),
        item.get("merchantReference"), amount.get("value"), amount.get("currency"),
        item.get("eventCode"), item.get("success"),
    ]  # fmt: skip
    text = ":".join("" if f is None else str(f) for f in fields)
    digest = hmac.new(bytes.fromhex(key), text.encode(), hashlib.sha256).digest()
    extra = {**item.get("additionalData", {}), "hmacSignature": base64.b64encode(digest).decode()}
    return {**item, "additionalData": extra}


def delivery(*items: dict[str, Any]) -> bytes:
    wrapped = [{"NotificationRequestItem": item} for item in items]
    return json.dumps({"live": "false", "notificationItems": wrapped}).encode()


def verifier(*keys: str, record: Any = None) -> AdyenWebhooks:
    chosen = keys or (KEY,)
    return AdyenWebhooks([Secret(k, f"test key {i}") for i, k in enumerate(chosen)], record=record)


def refusal(body: bytes, *, by: AdyenWebhooks | None = None) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        (by or verifier()).verify_webhook({}, body, now=NOW)
    return caught.value


def item(**changes: Any) -> dict[str, Any]:
    base = {
        "pspReference": "QFQTPCQ8HXSKGK82", "merchantAccountCode": "PayorchECOM",
        "merchantReference": PAYMENT_ID, "amount": {"currency": "EUR", "value": 2500},
        "eventCode": "AUTHORISATION", "success": "true",
        "eventDate": "2025-06-15T10:00:00+02:00", "paymentMethod": "visa", "reason": "",
    }  # fmt: skip
    return {**base, **changes}


BODY = delivery(sign(item()))


# --- the published vector -----------------------------------------------------------------


def test_our_test_signer_reproduces_the_published_vector() -> None:
    assert sign(VECTOR_ITEM, VECTOR_KEY)["additionalData"]["hmacSignature"] == VECTOR_SIGNATURE


def test_the_published_vector_is_authentic_and_read() -> None:
    signed = {**VECTOR_ITEM, "additionalData": {"hmacSignature": VECTOR_SIGNATURE}}
    [event] = verifier(VECTOR_KEY).verify_webhook({}, delivery(signed), now=NOW)
    assert event == WebhookEvent(
        "7914073381342284:AUTHORISATION:true", WebhookKind.AUTHORIZATION_SUCCEEDED,
        payment_id="TestPayment-1407325143704", provider_reference="7914073381342284",
        amount=1130, currency="EUR",
    )  # fmt: skip


def test_the_published_vector_with_a_changed_amount_fails() -> None:
    signed = {**VECTOR_ITEM, "amount": {"currency": "EUR", "value": 1131},
              "additionalData": {"hmacSignature": VECTOR_SIGNATURE}}  # fmt: skip
    assert refusal(delivery(signed), by=verifier(VECTOR_KEY)).status == 401


def test_a_lower_case_hex_key_is_the_same_key() -> None:
    signed = {**VECTOR_ITEM, "additionalData": {"hmacSignature": VECTOR_SIGNATURE}}
    verifier(VECTOR_KEY.lower()).verify_webhook({}, delivery(signed), now=NOW)


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    ["pspReference", "merchantReference", "merchantAccountCode", "eventCode", "success"],
)
def test_tampering_with_any_signed_field_is_refused(field: str) -> None:
    tampered = {**sign(item()), field: "false" if field == "success" else "other"}
    assert refusal(delivery(tampered)).status == 401


def test_tampering_with_the_currency_is_refused() -> None:
    tampered = {**sign(item()), "amount": {"currency": "USD", "value": 2500}}
    assert refusal(delivery(tampered)).status == 401


def test_an_item_signed_with_another_key_is_refused() -> None:
    assert refusal(delivery(sign(item(), OLD_KEY))).status == 401


def test_one_bad_item_refuses_the_whole_delivery() -> None:
    good = sign(item())
    bad = {**sign(item(pspReference="QFQTPCQ8HXSKGK83")), "merchantReference": "another"}
    records: list[object] = []
    refused = refusal(delivery(good, bad), by=verifier(record=records.append))
    assert refused.status == 401
    assert records == []


def test_every_item_of_a_genuine_delivery_becomes_an_event() -> None:
    body = delivery(sign(item()), sign(item(pspReference="QFQTPCQ8HXSKGK83", success="false")))
    events = verifier().verify_webhook({}, body, now=NOW)
    assert [e.kind for e in events] == [
        WebhookKind.AUTHORIZATION_SUCCEEDED,
        WebhookKind.AUTHORIZATION_FAILED,
    ]


def test_no_timestamp_is_checked_since_adyen_signs_none() -> None:
    verifier().verify_webhook({}, BODY, now=0)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "body is not an Adyen standard webhook"),
        (b"[]", "body is not an Adyen standard webhook"),
        (b'{"live": "false"}', "body is not an Adyen standard webhook"),
        (b'{"notificationItems": [{"Other": {}}]}', "body is not an Adyen standard webhook"),
        (b'{"notificationItems": []}', "no notification items"),
        (delivery(item()), "notification item without hmacSignature"),
        (
            delivery({**item(), "additionalData": {"hmacSignature": ""}}),
            "notification item without hmacSignature",
        ),
    ],
)
def test_a_body_that_cannot_be_verified_is_a_bad_request(body: bytes, reason: str) -> None:
    refused = refusal(body)
    assert (refused.status, refused.reason) == (400, reason)


def test_a_garbled_signature_is_refused() -> None:
    garbled = {**item(), "additionalData": {"hmacSignature": "not base64 at all"}}
    assert refusal(delivery(garbled)).status == 401


def test_a_genuine_item_without_what_an_event_needs_is_a_bad_request() -> None:
    refused = refusal(delivery(sign(item(success="maybe"))))
    assert (refused.status, refused.reason) == (
        400,
        "malformed event: success is neither true nor false",
    )


# --- rotation -----------------------------------------------------------------------------


def test_while_rotating_both_keys_pass() -> None:
    both = verifier(KEY, OLD_KEY)
    both.verify_webhook({}, delivery(sign(item(), KEY)), now=NOW)
    both.verify_webhook({}, delivery(sign(item(), OLD_KEY)), now=NOW)


def test_one_delivery_may_mix_items_signed_with_either_key() -> None:
    body = delivery(sign(item(), OLD_KEY), sign(item(pspReference="QFQTPCQ8HXSKGK83"), KEY))
    assert len(verifier(KEY, OLD_KEY).verify_webhook({}, body, now=NOW)) == 2


def test_with_only_the_old_key_configured_the_new_one_fails() -> None:
    assert refusal(delivery(sign(item(), KEY)), by=verifier(OLD_KEY)).status == 401


@pytest.mark.parametrize("bad", ["not-hex-at-all", "ABC"])
def test_a_key_that_is_not_hex_is_refused_at_construction(bad: str) -> None:
    with pytest.raises(ValueError, match="is not hex") as caught:
        AdyenWebhooks([Secret(bad, "the test")])
    assert bad not in str(caught.value)


# --- no reason gives anything away --------------------------------------------------------


def test_no_refusal_repeats_the_key_the_signature_or_the_body() -> None:
    genuine = sign(item(merchantReference="shopper@example.com"))
    signature = genuine["additionalData"]["hmacSignature"]
    attempts = [
        delivery({**genuine, "merchantReference": "shopper@example.org"}),
        delivery({**genuine, "additionalData": {"hmacSignature": KEY}}),
        delivery(item(merchantReference="shopper@example.com")),
        b"shopper@example.com",
        delivery(sign(item(merchantReference="shopper@example.com", success=KEY))),
    ]
    for body in attempts:
        refused = refusal(body)
        for leak in (KEY, KEY.lower(), signature, "shopper@example"):
            assert leak not in refused.reason and leak not in str(refused)


def test_a_verifier_does_not_show_its_keys() -> None:
    assert KEY not in repr(verifier(KEY, OLD_KEY))


# --- the event table ----------------------------------------------------------------------


def read(**changes: Any) -> WebhookEvent:
    return event_of(sign(item(**changes)))


def modification(code: str, success: str = "true", **changes: Any) -> dict[str, Any]:
    return {
        "pspReference": "MOD0000000000001", "originalReference": "QFQTPCQ8HXSKGK82",
        "merchantReference": CAPTURE_KEY, "eventCode": code, "success": success, **changes,
    }  # fmt: skip


def dispute(code: str, status: str | None = None, **changes: Any) -> dict[str, Any]:
    extra = {"disputeStatus": status} if status else {}
    return {
        "pspReference": "DSP0000000000001", "originalReference": "QFQTPCQ8HXSKGK82",
        "merchantReference": PAYMENT_ID, "eventCode": code, "success": "true",
        "reason": "Fraud - Card Absent Environment", "additionalData": extra, **changes,
    }  # fmt: skip


def mod_event(code: str, success: str, kind: WebhookKind, message: str = "") -> WebhookEvent:
    return WebhookEvent(
        f"MOD0000000000001:QFQTPCQ8HXSKGK82:{code}:{success}", kind,
        provider_reference="QFQTPCQ8HXSKGK82", operation_key=CAPTURE_KEY,
        object_reference="MOD0000000000001", amount=2500, currency="EUR", message=message,
    )  # fmt: skip


def dispute_event(code: str, kind: WebhookKind) -> WebhookEvent:
    return WebhookEvent(
        f"DSP0000000000001:QFQTPCQ8HXSKGK82:{code}:true", kind, payment_id=PAYMENT_ID,
        provider_reference="QFQTPCQ8HXSKGK82", object_reference="DSP0000000000001",
        amount=2500, currency="EUR", message="Fraud - Card Absent Environment",
    )  # fmt: skip


AUTHORISED = WebhookEvent(
    "QFQTPCQ8HXSKGK82:AUTHORISATION:true", WebhookKind.AUTHORIZATION_SUCCEEDED,
    payment_id=PAYMENT_ID, provider_reference="QFQTPCQ8HXSKGK82", amount=2500, currency="EUR",
)  # fmt: skip

TABLE = [
    # a success's reason is "authCode:last4:expiry": never copied
    (item(reason="074214:1111:03/2030"), AUTHORISED),
    (
        item(success="false", reason="Not enough balance"),
        WebhookEvent("QFQTPCQ8HXSKGK82:AUTHORISATION:false", WebhookKind.AUTHORIZATION_FAILED,
                     payment_id=PAYMENT_ID, provider_reference="QFQTPCQ8HXSKGK82", amount=2500,
                     currency="EUR", decline_code="12", message="Not enough balance"),
    ),
    (
        item(success="false", reason="Something new"),
        WebhookEvent("QFQTPCQ8HXSKGK82:AUTHORISATION:false", WebhookKind.AUTHORIZATION_FAILED,
                     payment_id=PAYMENT_ID, provider_reference="QFQTPCQ8HXSKGK82", amount=2500,
                     currency="EUR", decline_code="Something new", message="Something new"),
    ),
    (
        modification("CAPTURE", amount={"currency": "EUR", "value": 2500}),
        mod_event("CAPTURE", "true", WebhookKind.CAPTURE_SUCCEEDED),
    ),
    (
        modification("CAPTURE", "false", reason="Insufficient balance on payment",
                     amount={"currency": "EUR", "value": 2500}),
        mod_event("CAPTURE", "false", WebhookKind.CAPTURE_FAILED,
                  "Insufficient balance on payment"),
    ),
    (
        modification("CAPTURE_FAILED", reason="Rejected by acquirer",
                     amount={"currency": "EUR", "value": 2500}),
        mod_event("CAPTURE_FAILED", "true", WebhookKind.CAPTURE_FAILED, "Rejected by acquirer"),
    ),
    (
        modification("CANCELLATION", amount={"currency": "EUR", "value": 2500}),
        mod_event("CANCELLATION", "true", WebhookKind.CANCEL_SUCCEEDED),
    ),
    (
        modification("CANCELLATION", "false", reason="already captured",
                     amount={"currency": "EUR", "value": 2500}),
        mod_event("CANCELLATION", "false", WebhookKind.OTHER),
    ),
    (
        modification("REFUND", amount={"currency": "EUR", "value": 2500}),
        mod_event("REFUND", "true", WebhookKind.REFUND_SUCCEEDED),
    ),
    (
        modification("REFUND", "false", reason="Refused", amount={"currency": "EUR", "value": 2500}),
        mod_event("REFUND", "false", WebhookKind.REFUND_FAILED, "Refused"),
    ),
    (
        modification("REFUND_FAILED", amount={"currency": "EUR", "value": 2500}),
        mod_event("REFUND_FAILED", "true", WebhookKind.REFUND_FAILED),
    ),
    (
        modification("REFUNDED_REVERSED", amount={"currency": "EUR", "value": 2500}),
        mod_event("REFUNDED_REVERSED", "true", WebhookKind.REFUND_FAILED),
    ),
    (
        dispute("NOTIFICATION_OF_CHARGEBACK", "Undefended", amount={"currency": "EUR", "value": 2500}),
        dispute_event("NOTIFICATION_OF_CHARGEBACK", WebhookKind.DISPUTE_OPENED),
    ),
    (
        dispute("CHARGEBACK", "Undefended", amount={"currency": "EUR", "value": 2500}),
        dispute_event("CHARGEBACK", WebhookKind.DISPUTE_OPENED),
    ),
    (
        dispute("CHARGEBACK", amount={"currency": "EUR", "value": 2500}),  # Brazil: no status
        dispute_event("CHARGEBACK", WebhookKind.DISPUTE_OPENED),
    ),
    (
        dispute("CHARGEBACK", "Lost", amount={"currency": "EUR", "value": 2500}),
        dispute_event("CHARGEBACK", WebhookKind.DISPUTE_LOST),
    ),
    (
        dispute("CHARGEBACK", "Accepted", amount={"currency": "EUR", "value": 2500}),
        dispute_event("CHARGEBACK", WebhookKind.DISPUTE_LOST),
    ),
    (
        dispute("CHARGEBACK", "Won", amount={"currency": "EUR", "value": 2500}),
        dispute_event("CHARGEBACK", WebhookKind.DISPUTE_WON),
    ),
    (
        dispute("CHARGEBACK_REVERSED", "Won", amount={"currency": "EUR", "value": 2500}),
        dispute_event("CHARGEBACK_REVERSED", WebhookKind.DISPUTE_WON),
    ),
    (
        dispute("SECOND_CHARGEBACK", "Lost", amount={"currency": "EUR", "value": 2500}),
        dispute_event("SECOND_CHARGEBACK", WebhookKind.DISPUTE_LOST),
    ),
    (
        dispute("PREARBITRATION_WON", "Won", amount={"currency": "EUR", "value": 2500}),
        dispute_event("PREARBITRATION_WON", WebhookKind.DISPUTE_WON),
    ),
    (
        dispute("PREARBITRATION_WON", "Pending", amount={"currency": "EUR", "value": 2500}),
        dispute_event("PREARBITRATION_WON", WebhookKind.DISPUTE_OPENED),
    ),
    (
        dispute("PREARBITRATION_LOST", "Lost", amount={"currency": "EUR", "value": 2500}),
        dispute_event("PREARBITRATION_LOST", WebhookKind.DISPUTE_LOST),
    ),
    (
        item(eventCode="REPORT_AVAILABLE", amount={"currency": "EUR", "value": 0}),
        WebhookEvent("QFQTPCQ8HXSKGK82:REPORT_AVAILABLE:true", WebhookKind.OTHER),
    ),
    (
        dispute("REQUEST_FOR_INFORMATION", "Unresponded"),
        WebhookEvent("DSP0000000000001:QFQTPCQ8HXSKGK82:REQUEST_FOR_INFORMATION:true",
                     WebhookKind.OTHER),
    ),
    (
        modification("CANCEL_OR_REFUND"),
        WebhookEvent("MOD0000000000001:QFQTPCQ8HXSKGK82:CANCEL_OR_REFUND:true", WebhookKind.OTHER),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "expected"),
    TABLE,
    ids=[f"{row[0]['eventCode']}-{row[0]['success']}-{i}" for i, row in enumerate(TABLE)],
)
def test_each_event_code_maps_to_its_kind(raw: dict[str, Any], expected: WebhookEvent) -> None:
    assert event_of(sign(raw)) == expected


def test_the_table_holds_end_to_end_through_the_signatures() -> None:
    body = delivery(
        sign(dispute("SECOND_CHARGEBACK", "Lost", amount={"currency": "EUR", "value": 1}))
    )
    [event] = verifier().verify_webhook({}, body, now=NOW)
    assert event.kind is WebhookKind.DISPUTE_LOST


@pytest.mark.parametrize(
    ("currency", "value", "ours"),
    [("EUR", 1130, 1130), ("IDR", 15000, 1500000), ("ISK", 10000, 100)],
)
def test_amounts_come_back_in_iso_minor_units(currency: str, value: int, ours: int) -> None:
    event = read(amount={"currency": currency, "value": value})
    assert (event.amount, event.currency) == (ours, currency)


# --- the adapter --------------------------------------------------------------------------


def adapter(**kw: Any) -> AdyenAdapter:
    return AdyenAdapter(
        api_key=Secret("AQE_test", "test"), merchant_account="PayorchECOM",
        return_url="https://shop.example/return", **kw,
    )  # fmt: skip


def test_the_adapter_without_a_webhook_key_refuses_every_delivery() -> None:
    verifying: WebhookVerifier = adapter()
    with pytest.raises(WebhookRejected) as caught:
        verifying.verify_webhook({}, BODY, now=NOW)
    assert (caught.value.status, caught.value.reason) == (401, "no webhook secret configured")


def test_verified_items_reach_the_adapters_lookup() -> None:
    notifications = AdyenNotifications()
    verifying = adapter(notifications=notifications, webhook_secrets=[Secret(KEY, "test")])
    verifying.verify_webhook({}, BODY, now=NOW)
    operation = ProviderOperation(
        OperationKind.AUTHORIZE, PAYMENT_ID, f"{PAYMENT_ID}:1:authorize:1", 2500, "EUR"
    )
    outcome = verifying.lookup(operation, timeout=1.0)
    assert outcome is not None
    assert (outcome.status, outcome.provider_reference) == (
        OutcomeStatus.SUCCEEDED,
        "QFQTPCQ8HXSKGK82",
    )


def test_refused_deliveries_never_reach_the_adapters_lookup() -> None:
    notifications = AdyenNotifications()
    verifying = adapter(notifications=notifications, webhook_secrets=[Secret(KEY, "test")])
    with pytest.raises(WebhookRejected):
        verifying.verify_webhook({}, delivery(sign(item(), OLD_KEY)), now=NOW)
    assert notifications.items() == []


def test_the_configuration_reads_both_webhook_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADYEN_API_KEY", "AQE_test")
    monkeypatch.setenv("ADYEN_HMAC", KEY)
    monkeypatch.setenv("ADYEN_HMAC_OLD", OLD_KEY)
    configured = from_config(
        "adyen-eu",
        {"merchant_account": "PayorchECOM", "return_url": "https://shop.example/return",
         "api_key_env": "ADYEN_API_KEY", "webhook_secret_env": "ADYEN_HMAC",
         "webhook_secret_previous_env": "ADYEN_HMAC_OLD"},
    )  # fmt: skip
    configured.verify_webhook({}, delivery(sign(item(), KEY)), now=NOW)
    configured.verify_webhook({}, delivery(sign(item(), OLD_KEY)), now=NOW)


def test_the_configuration_refuses_a_key_that_is_not_hex(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADYEN_API_KEY", "AQE_test")
    monkeypatch.setenv("ADYEN_HMAC", "definitely not hex")
    with pytest.raises(ValueError, match=r"\$ADYEN_HMAC\) is not hex") as caught:
        from_config(
            "adyen-eu",
            {"merchant_account": "PayorchECOM", "return_url": "https://shop.example/return",
             "api_key_env": "ADYEN_API_KEY", "webhook_secret_env": "ADYEN_HMAC"},
        )  # fmt: skip
    assert "definitely" not in str(caught.value)
