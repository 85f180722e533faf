"""Stripe's webhooks: the ``Stripe-Signature`` scheme over the raw body, then the event read
into ``WebhookEvent``s.

Scheme (stripe-python ``stripe/_webhook.py``): ``stripe-signature: t=<unix>,v1=<hex>[,v1=...]``;
each ``v1`` is hex HMAC-SHA256 of ``b"<t>." + raw body`` keyed with the whole ``whsec_...``
endpoint secret as UTF-8 (not decoded). Any matching ``v1`` passes: Stripe signs with the old
and the new secret while one is rolled. Unlike the SDK we also refuse timestamps from the
future, which a leaked signature could be minted with.

What the adapter wrote into Stripe's metadata lets an event name our payment and operation:
``payment_id`` and ``payorch_key`` on PaymentIntents (copied by Stripe onto their Charges
once, at confirmation) and on Refunds. Captures and cancels write no key of their own, and a
Charge's ``payorch_key`` is its authorization's, so those events carry no operation key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Final

from adapters._webhooks import (
    DEFAULT_TOLERANCE,
    JSONObject,
    active_secrets,
    check_timestamp,
    integer,
    member,
    optional_member,
    optional_text,
    required_header,
    string_map,
    text,
    unix_seconds,
    verified_json,
)
from adapters.stripe.transformers import OPERATION_KEY, PAYMENT_ID, from_stripe_amount
from orchestrator.ports import WebhookEvent, WebhookKind, WebhookRejected
from orchestrator.secrets import Secret

__all__ = ["SIGNATURE_HEADER", "StripeWebhooks", "event_of"]

SIGNATURE_HEADER: Final = "stripe-signature"
_SCHEME: Final = "v1"
_HEX_DIGEST_LENGTH: Final = 64
_AUTOMATIC_CAPTURE: Final = frozenset({"automatic", "automatic_async"})


class StripeWebhooks:
    """``WebhookVerifier`` for one Stripe webhook endpoint. Thread-safe."""

    def __init__(self, secrets: Sequence[Secret], *, tolerance: float = DEFAULT_TOLERANCE) -> None:
        self._secrets = active_secrets(secrets, "stripe webhooks")
        self.tolerance = tolerance

    def __repr__(self) -> str:
        return f"StripeWebhooks({len(self._secrets)} secret(s), tolerance={self.tolerance:g}s)"

    def authenticate(self, headers: Mapping[str, str], body: bytes, *, now: float) -> None:
        """Checks the signature and its timestamp; the body is not parsed."""
        timestamp, signatures = _parse_header(required_header(headers, SIGNATURE_HEADER))
        signed = f"{timestamp}.".encode() + body
        expected = [
            hmac.new(secret.reveal().encode("utf-8"), signed, hashlib.sha256).digest()
            for secret in self._secrets
        ]
        if not any(hmac.compare_digest(e, s) for e in expected for s in signatures):
            raise WebhookRejected(401, f"no {SIGNATURE_HEADER} v1 signature matches")
        check_timestamp(timestamp, now=now, tolerance=self.tolerance)

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> list[WebhookEvent]:
        self.authenticate(headers, body, now=now)
        return [event_of(verified_json(body))]


def _parse_header(value: str) -> tuple[int, list[bytes]]:
    """``t`` (exactly once) and the decoded ``v1`` values; other schemes (``v0``) are skipped,
    and a ``v1`` that is not 64 hex digits simply matches nothing."""
    timestamps: list[str] = []
    signatures: list[bytes] = []
    for item in value.split(","):
        name, _, content = item.strip().partition("=")
        if name == "t":
            timestamps.append(content)
        elif name == _SCHEME:
            signatures.append(_hex(content))
    if len(timestamps) != 1:
        raise WebhookRejected(400, f"malformed {SIGNATURE_HEADER} header: one t= is required")
    if not signatures:
        raise WebhookRejected(400, f"no v1 signature in {SIGNATURE_HEADER} header")
    return unix_seconds(timestamps[0], f"{SIGNATURE_HEADER} t"), signatures


def _hex(content: str) -> bytes:
    if len(content) != _HEX_DIGEST_LENGTH:
        return b""
    try:
        return bytes.fromhex(content)
    except ValueError:
        return b""


# --- the event ----------------------------------------------------------------------------

Reader = Callable[[str, str, JSONObject], WebhookEvent]


def event_of(document: JSONObject) -> WebhookEvent:
    """The ``WebhookEvent`` of a verified Stripe event (API version pinned by the adapter,
    2024-06-20). Event types we do not apply are OTHER."""
    event_id = text(document, "id")
    kind = text(document, "type")
    reader = _READERS.get(kind)
    if reader is None:
        return WebhookEvent(event_id, WebhookKind.OTHER)
    return reader(event_id, kind, member(member(document, "data"), "object"))


def _amount(obj: JSONObject, name: str, currency: str) -> int:
    # Stripe's unit differs from ISO 4217's for a few currencies (ISK, MGA)
    return from_stripe_amount(integer(obj, name), currency)


def _currency(obj: JSONObject) -> str:
    return text(obj, "currency").upper()  # Stripe writes currencies in lower case


def _id_of(value: object) -> str:
    """An expandable reference: the id string, or the object with its ``id``; "" for none."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return optional_text(value, "id")
    return ""


# PaymentIntents ------------------------------------------------------------------------------


def _intent(event_id: str, kind: str, intent: JSONObject) -> WebhookEvent:
    metadata = string_map(intent, "metadata")
    currency = _currency(intent)
    event = WebhookEvent(
        event_id,
        WebhookKind.OTHER,
        payment_id=metadata.get(PAYMENT_ID, ""),
        provider_reference=text(intent, "id"),
        currency=currency,
    )
    authorization = replace(
        event,
        kind=WebhookKind.AUTHORIZATION_SUCCEEDED,
        operation_key=metadata.get(OPERATION_KEY, ""),
        amount=_amount(intent, "amount", currency),
    )
    if kind == "payment_intent.amount_capturable_updated":
        return authorization  # a manual-capture authorization now holds the money
    if kind == "payment_intent.succeeded":
        if optional_text(intent, "capture_method") in _AUTOMATIC_CAPTURE:
            return authorization  # authorized and captured in the authorization itself
        # Manual capture: the capture wrote no key of ours (only a marker digest), and
        # amount_received is what the PaymentIntent captured in all.
        return replace(
            event,
            kind=WebhookKind.CAPTURE_SUCCEEDED,
            amount=_amount(intent, "amount_received", currency),
        )
    if kind == "payment_intent.payment_failed":
        return _failed(authorization, optional_member(intent, "last_payment_error"))
    # payment_intent.canceled: our cancel or Stripe's own release after 7 days
    return replace(
        event,
        kind=WebhookKind.CANCEL_SUCCEEDED,
        message=optional_text(intent, "cancellation_reason"),
    )


def _failed(authorization: WebhookEvent, error: JSONObject) -> WebhookEvent:
    # As the adapter reads a refusal: only a card error is a decline with a code; any other
    # failure moved no money and has none.
    code = ""
    if error.get("type") == "card_error":
        code = optional_text(error, "decline_code") or optional_text(error, "code")
    return replace(
        authorization,
        kind=WebhookKind.AUTHORIZATION_FAILED,
        decline_code=code,
        message=optional_text(error, "message"),
    )


# Refunds ---------------------------------------------------------------------------------

_REFUND_FAILED: Final = frozenset({"failed", "canceled"})


def _refund(event_id: str, kind: str, refund: JSONObject) -> WebhookEvent:
    status = text(refund, "status")
    if kind == "refund.failed" or status in _REFUND_FAILED:
        outcome = WebhookKind.REFUND_FAILED
    elif status == "succeeded":
        outcome = WebhookKind.REFUND_SUCCEEDED
    else:
        outcome = WebhookKind.OTHER  # pending or requires_action: the adapter has said so
    metadata = string_map(refund, "metadata")
    currency = _currency(refund)
    return WebhookEvent(
        event_id,
        outcome,
        payment_id=metadata.get(PAYMENT_ID, ""),
        provider_reference=_id_of(refund.get("payment_intent")),
        operation_key=metadata.get(OPERATION_KEY, ""),
        object_reference=text(refund, "id"),
        amount=_amount(refund, "amount", currency),
        currency=currency,
        message=optional_text(refund, "failure_reason"),
    )


def _charge_refunded(event_id: str, kind: str, charge: JSONObject) -> WebhookEvent:
    """A Charge (partly) refunded. From API 2022-11-15 its ``refunds`` are not in the payload,
    so which refund this was is unknown: no key, no refund id and no amount (the Charge's
    ``amount_refunded`` is a running total, not this refund's). The ``refund.*`` events carry
    all three; when an older payload does embed the refunds, the newest one is read."""
    embedded = optional_member(charge, "refunds").get("data")
    refunds = [r for r in embedded if isinstance(r, dict)] if isinstance(embedded, list) else []
    if refunds:
        return _refund(event_id, kind, max(refunds, key=_created))
    return WebhookEvent(
        event_id,
        WebhookKind.REFUND_SUCCEEDED,
        payment_id=string_map(charge, "metadata").get(PAYMENT_ID, ""),
        provider_reference=_id_of(charge.get("payment_intent")),
        currency=_currency(charge),
    )


def _created(obj: JSONObject) -> int:
    created = obj.get("created")
    return created if isinstance(created, int) else 0


# Disputes --------------------------------------------------------------------------------

# An inquiry (``warning_*``) closed without becoming a chargeback took no money: for the
# payment it ends like a dispute won, else it would stay DISPUTED forever.
_CLOSED: Final = {
    "won": WebhookKind.DISPUTE_WON,
    "warning_closed": WebhookKind.DISPUTE_WON,
    "lost": WebhookKind.DISPUTE_LOST,
}


def _dispute(event_id: str, kind: str, dispute: JSONObject) -> WebhookEvent:
    if kind == "charge.dispute.created":
        outcome = WebhookKind.DISPUTE_OPENED
    else:
        outcome = _CLOSED.get(text(dispute, "status"), WebhookKind.OTHER)
    currency = _currency(dispute)
    # A Dispute carries no metadata of ours: the payment is found by its PaymentIntent.
    return WebhookEvent(
        event_id,
        outcome,
        provider_reference=_id_of(dispute.get("payment_intent")),
        object_reference=text(dispute, "id"),
        amount=_amount(dispute, "amount", currency),
        currency=currency,
        message=optional_text(dispute, "reason"),
    )


_READERS: Final[dict[str, Reader]] = {
    "payment_intent.amount_capturable_updated": _intent,
    "payment_intent.succeeded": _intent,
    "payment_intent.payment_failed": _intent,
    "payment_intent.canceled": _intent,
    "refund.created": _refund,
    "refund.updated": _refund,
    "refund.failed": _refund,
    "charge.refund.updated": _refund,  # the older name of refund.updated
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute,
    "charge.dispute.closed": _dispute,
}
