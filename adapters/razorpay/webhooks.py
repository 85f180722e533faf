"""Razorpay's webhooks: ``X-Razorpay-Signature`` over the raw body, then the event read into
``WebhookEvent``s.

Scheme (razorpay-python ``razorpay/utility/utility.py``): the header is hex HMAC-SHA256 of the
exact body bytes keyed with the webhook secret as UTF-8 (the secret set on the webhook, not
the API key secret). No timestamp is signed and only one signature is sent, so a rotation is
two secrets tried in turn, and replays are stopped by deduplication alone.

The event id is the ``x-razorpay-event-id`` header. Razorpay does not sign it: a replayed body
under a fresh id passes verification. What protects us is that applying an event twice
changes nothing (the processor resolves each operation once).

What the adapter wrote into Razorpay's ``notes`` names our payment and operation: our payment
id and the provider key on the payment (its authorization's key) and on each refund (the
refund's key). A capture sends no notes, so ``payment.captured`` carries no operation key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Final

from adapters._webhooks import (
    JSONObject,
    active_secrets,
    integer,
    member,
    optional_member,
    optional_text,
    required_header,
    string_map,
    text,
    verified_json,
)
from adapters.razorpay.transformers import NOTE_PAYMENT_ID, NOTE_PROVIDER_KEY
from orchestrator.ports import WebhookEvent, WebhookKind, WebhookRejected
from orchestrator.secrets import Secret

__all__ = ["EVENT_ID_HEADER", "SIGNATURE_HEADER", "RazorpayWebhooks", "event_of"]

SIGNATURE_HEADER: Final = "x-razorpay-signature"
EVENT_ID_HEADER: Final = "x-razorpay-event-id"
_HEX_DIGEST_LENGTH: Final = 64


class RazorpayWebhooks:
    """``WebhookVerifier`` for Razorpay webhooks. Thread-safe."""

    def __init__(self, secrets: Sequence[Secret]) -> None:
        self._secrets = active_secrets(secrets, "razorpay webhooks")

    def __repr__(self) -> str:
        return f"RazorpayWebhooks({len(self._secrets)} secret(s))"

    def authenticate(self, headers: Mapping[str, str], body: bytes) -> None:
        """Checks the signature over the raw body; the body is not parsed."""
        given = _hex(required_header(headers, SIGNATURE_HEADER))
        for secret in self._secrets:
            expected = hmac.new(secret.reveal().encode("utf-8"), body, hashlib.sha256).digest()
            if hmac.compare_digest(expected, given):
                return
        raise WebhookRejected(401, f"{SIGNATURE_HEADER} does not match")

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> list[WebhookEvent]:
        # ``now`` goes unused: Razorpay signs no timestamp.
        event_id = required_header(headers, EVENT_ID_HEADER)
        self.authenticate(headers, body)
        return [event_of(event_id, verified_json(body))]


def _hex(value: str) -> bytes:
    if len(value) != _HEX_DIGEST_LENGTH:
        raise WebhookRejected(400, f"malformed {SIGNATURE_HEADER} header")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise WebhookRejected(400, f"malformed {SIGNATURE_HEADER} header") from None


# --- the event ----------------------------------------------------------------------------

_PAYMENT_EVENTS: Final = {
    "payment.authorized": WebhookKind.AUTHORIZATION_SUCCEEDED,
    "payment.failed": WebhookKind.AUTHORIZATION_FAILED,
    "payment.captured": WebhookKind.CAPTURE_SUCCEEDED,
}
_REFUND_EVENTS: Final = {
    "refund.processed": WebhookKind.REFUND_SUCCEEDED,
    "refund.failed": WebhookKind.REFUND_FAILED,
}
_DISPUTE_EVENTS: Final = {
    "payment.dispute.created": WebhookKind.DISPUTE_OPENED,
    "payment.dispute.won": WebhookKind.DISPUTE_WON,
    "payment.dispute.lost": WebhookKind.DISPUTE_LOST,
}


def event_of(event_id: str, document: JSONObject) -> WebhookEvent:
    """The ``WebhookEvent`` of a verified Razorpay event; events we do not apply are OTHER.
    Razorpay amounts are in the currency's smallest unit, which is ours."""
    name = text(document, "event")
    payload = member(document, "payload")
    if name in _PAYMENT_EVENTS:
        return _payment_event(event_id, _PAYMENT_EVENTS[name], payload)
    if name in _REFUND_EVENTS:
        return _refund_event(event_id, _REFUND_EVENTS[name], payload)
    if name in _DISPUTE_EVENTS:
        return _dispute_event(event_id, _DISPUTE_EVENTS[name], payload)
    return WebhookEvent(event_id, WebhookKind.OTHER)


def _entity(payload: JSONObject, name: str) -> JSONObject:
    """``payload.<name>.entity``: how Razorpay wraps each object of an event."""
    return member(member(payload, name), "entity")


def _optional_entity(payload: JSONObject, name: str) -> JSONObject:
    return optional_member(optional_member(payload, name), "entity")


def _payment_id(payload: JSONObject, *notes: dict[str, str]) -> str:
    """Our payment id: from the notes we wrote, else the Order's receipt (an Order's events
    embed it; payments are charged on an Order whose receipt is our payment id)."""
    for found in notes:
        if found.get(NOTE_PAYMENT_ID):
            return found[NOTE_PAYMENT_ID]
    return optional_text(_optional_entity(payload, "order"), "receipt")


def _payment_event(event_id: str, kind: WebhookKind, payload: JSONObject) -> WebhookEvent:
    payment = _entity(payload, "payment")
    notes = string_map(payment, "notes")
    # The payment's key is its authorization's: a capture sends no notes of its own.
    key = "" if kind is WebhookKind.CAPTURE_SUCCEEDED else notes.get(NOTE_PROVIDER_KEY, "")
    code = message = ""
    if kind is WebhookKind.AUTHORIZATION_FAILED:  # read as the adapter reads a failed payment
        code = optional_text(payment, "error_reason") or optional_text(payment, "error_code")
        message = optional_text(payment, "error_description")
    return WebhookEvent(
        event_id,
        kind,
        payment_id=_payment_id(payload, notes),
        provider_reference=text(payment, "id"),
        operation_key=key,
        amount=integer(payment, "amount"),
        currency=text(payment, "currency"),
        decline_code=code,
        message=message,
    )


def _refund_event(event_id: str, kind: WebhookKind, payload: JSONObject) -> WebhookEvent:
    refund = _entity(payload, "refund")
    payment = _optional_entity(payload, "payment")
    notes = string_map(refund, "notes")
    return WebhookEvent(
        event_id,
        kind,
        payment_id=_payment_id(payload, notes, string_map(payment, "notes")),
        provider_reference=optional_text(refund, "payment_id") or optional_text(payment, "id"),
        operation_key=notes.get(NOTE_PROVIDER_KEY, ""),
        object_reference=text(refund, "id"),
        amount=integer(refund, "amount"),
        currency=text(refund, "currency"),
    )


def _dispute_event(event_id: str, kind: WebhookKind, payload: JSONObject) -> WebhookEvent:
    dispute = _entity(payload, "dispute")
    payment = _optional_entity(payload, "payment")
    return WebhookEvent(
        event_id,
        kind,
        payment_id=_payment_id(payload, string_map(payment, "notes")),
        provider_reference=optional_text(dispute, "payment_id") or optional_text(payment, "id"),
        object_reference=text(dispute, "id"),
        amount=integer(dispute, "amount"),
        currency=text(dispute, "currency"),
        message=optional_text(dispute, "reason_description")
        or optional_text(dispute, "reason_code"),
    )
