"""Adyen's standard webhooks: every item's HMAC signature, then the items read into
``WebhookEvent``s.

Scheme (Adyen/adyen-python-api-library ``Adyen/util.py``; implemented once, in
``transformers.has_valid_signature``): each ``NotificationRequestItem`` carries
``additionalData.hmacSignature``, base64 HMAC-SHA256 under the hex-decoded key of
``pspReference:originalReference:merchantAccountCode:merchantReference:value:currency:
eventCode:success``. The signature is inside the body, so the body is parsed first; nothing in
it is believed before every item is verified, and one bad item refuses the whole delivery.
No timestamp is signed: replays are stopped by deduplication (and HTTPS with basic auth).

References: the adapter sends our payment id as a payment's ``reference`` (echoed as the
AUTHORISATION's ``merchantReference``) and the operation's provider key as a modification's
``reference`` (echoed as the CAPTURE's, CANCELLATION's or REFUND's ``merchantReference``, with
``originalReference`` the payment's pspReference). A dispute's ``pspReference`` is the
dispute's own, the same for all its events; its ``originalReference`` is the payment's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Final

from adapters._http import MalformedAnswerError
from adapters._webhooks import (
    JSONObject,
    active_secrets,
    integer,
    optional_member,
    optional_text,
    text,
)
from adapters.adyen.transformers import (
    _REFUSAL_CODES,
    from_adyen_value,
    has_valid_signature,
    notification_items,
)
from orchestrator.ports import WebhookEvent, WebhookKind, WebhookRejected
from orchestrator.secrets import Secret

__all__ = ["AdyenWebhooks", "event_of"]

Recorder = Callable[[JSONObject], object]


class AdyenWebhooks:
    """``WebhookVerifier`` for Adyen's standard webhooks; the secrets are the hex HMAC keys
    of the endpoint (two while one is rotated out: Adyen keeps retrying queued items signed
    with the old one). ``record``, when given, is handed every item of a verified delivery
    (the adapter's ``AdyenNotifications``, which its lookups read). Thread-safe."""

    def __init__(self, secrets: Sequence[Secret], *, record: Recorder | None = None) -> None:
        self._secrets = active_secrets(secrets, "adyen webhooks")
        for secret in self._secrets:
            try:
                bytes.fromhex(secret.reveal())
            except ValueError:
                # found at start-up, not at the first delivery; names the source, not the value
                raise ValueError(f"adyen webhook HMAC key {secret} is not hex") from None
        self._record = record

    def __repr__(self) -> str:
        return f"AdyenWebhooks({len(self._secrets)} key(s))"

    def verified_items(self, body: bytes) -> list[JSONObject]:
        """The ``NotificationRequestItem``s of a delivery whose every item is signed with one
        of our keys; ``WebhookRejected`` otherwise."""
        try:
            items = notification_items(body)
        except MalformedAnswerError:
            raise WebhookRejected(400, "body is not an Adyen standard webhook") from None
        if not items:
            raise WebhookRejected(400, "no notification items")
        for item in items:
            signature = optional_member(item, "additionalData").get("hmacSignature")
            if not isinstance(signature, str) or not signature:
                raise WebhookRejected(400, "notification item without hmacSignature")
            if not any(has_valid_signature(item, key.reveal()) for key in self._secrets):
                raise WebhookRejected(401, "notification item HMAC signature does not match")
        return items

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> list[WebhookEvent]:
        # Neither headers nor ``now`` take part: Adyen signs items, with no timestamp.
        items = self.verified_items(body)
        events = [event_of(item) for item in items]  # all read before any is recorded
        if self._record is not None:
            for item in items:
                self._record(item)
        return events


# --- the items ----------------------------------------------------------------------------

_AUTHORISATION: Final = "AUTHORISATION"
# eventCode -> (kind when success is "true", kind when "false")
_MODIFICATIONS: Final = {
    "CAPTURE": (WebhookKind.CAPTURE_SUCCEEDED, WebhookKind.CAPTURE_FAILED),
    "CAPTURE_FAILED": (WebhookKind.CAPTURE_FAILED, WebhookKind.CAPTURE_FAILED),
    "CANCELLATION": (WebhookKind.CANCEL_SUCCEEDED, WebhookKind.OTHER),
    "REFUND": (WebhookKind.REFUND_SUCCEEDED, WebhookKind.REFUND_FAILED),
    "REFUND_FAILED": (WebhookKind.REFUND_FAILED, WebhookKind.REFUND_FAILED),
    # the scheme sent a refund back after Adyen reported it done: it failed after all
    "REFUNDED_REVERSED": (WebhookKind.REFUND_FAILED, WebhookKind.REFUND_FAILED),
}
# Dispute events (docs.adyen.com "Dispute webhooks"), refined by additionalData.disputeStatus
# as hyperswitch's Adyen connector does: a CHARGEBACK is funds taken, and its status says
# whether the case is still open or already decided; a PREARBITRATION_WON still "Pending" is
# not over yet.
_DISPUTES: Final = {
    "NOTIFICATION_OF_CHARGEBACK": WebhookKind.DISPUTE_OPENED,
    "CHARGEBACK": WebhookKind.DISPUTE_OPENED,
    "CHARGEBACK_REVERSED": WebhookKind.DISPUTE_WON,
    "PREARBITRATION_WON": WebhookKind.DISPUTE_WON,
    "SECOND_CHARGEBACK": WebhookKind.DISPUTE_LOST,
    "PREARBITRATION_LOST": WebhookKind.DISPUTE_LOST,
}
_CHARGEBACK_DECIDED: Final = {
    "Won": WebhookKind.DISPUTE_WON,
    "Lost": WebhookKind.DISPUTE_LOST,
    "Accepted": WebhookKind.DISPUTE_LOST,  # the merchant accepted the chargeback
}


def event_of(item: JSONObject) -> WebhookEvent:
    """The ``WebhookEvent`` of one verified ``NotificationRequestItem``. Adyen gives no event
    id; ``pspReference[:originalReference]:eventCode:success`` is what it retries unchanged."""
    psp = text(item, "pspReference")
    code = text(item, "eventCode")
    success = text(item, "success")
    if success not in ("true", "false"):
        raise WebhookRejected(400, "malformed event: success is neither true nor false")
    original = optional_text(item, "originalReference")
    event = WebhookEvent(
        ":".join(part for part in (psp, original, code, success) if part), WebhookKind.OTHER
    )
    if code == _AUTHORISATION:
        return _authorisation(event, item, succeeded=success == "true")
    if code in _MODIFICATIONS:
        return _modification(event, item, _MODIFICATIONS[code][0 if success == "true" else 1])
    if code in _DISPUTES:
        return _dispute(event, item, code)
    return event


def _authorisation(event: WebhookEvent, item: JSONObject, *, succeeded: bool) -> WebhookEvent:
    amount, currency = _money(item)
    authorization = replace(
        event,
        kind=WebhookKind.AUTHORIZATION_SUCCEEDED,
        payment_id=optional_text(item, "merchantReference"),
        provider_reference=text(item, "pspReference"),
        amount=amount,
        currency=currency,
    )
    if succeeded:
        # the ``reason`` of a success is "authCode:last4:expiry": card data we do not keep
        return authorization
    refusal = optional_text(item, "reason") or "Refused"
    return replace(
        authorization,
        kind=WebhookKind.AUTHORIZATION_FAILED,
        # the code a direct answer would have carried (refusalReasonCode)
        decline_code=_REFUSAL_CODES.get(refusal, refusal),
        message=refusal,
    )


def _modification(event: WebhookEvent, item: JSONObject, kind: WebhookKind) -> WebhookEvent:
    amount, currency = _money(item)
    failed = kind in (WebhookKind.CAPTURE_FAILED, WebhookKind.REFUND_FAILED)
    return replace(
        event,
        kind=kind,
        provider_reference=optional_text(item, "originalReference"),
        operation_key=optional_text(item, "merchantReference"),
        object_reference=text(item, "pspReference"),
        amount=amount,
        currency=currency,
        message=optional_text(item, "reason") if failed else "",
    )


def _dispute(event: WebhookEvent, item: JSONObject, code: str) -> WebhookEvent:
    status = optional_text(optional_member(item, "additionalData"), "disputeStatus")
    kind = _DISPUTES[code]
    if code == "CHARGEBACK":
        kind = _CHARGEBACK_DECIDED.get(status, kind)
    elif code == "PREARBITRATION_WON" and status == "Pending":
        kind = WebhookKind.DISPUTE_OPENED
    amount, currency = _money(item)
    return replace(
        event,
        kind=kind,
        payment_id=optional_text(item, "merchantReference"),  # the disputed payment's
        provider_reference=optional_text(item, "originalReference"),
        object_reference=text(item, "pspReference"),
        amount=amount,
        currency=currency,
        message=optional_text(item, "reason"),
    )


def _money(item: JSONObject) -> tuple[int, str]:
    """The item's amount in our minor units (Adyen's differ for CLP, CVE, IDR and ISK)."""
    amount = optional_member(item, "amount")
    if not amount:
        return 0, ""
    currency = text(amount, "currency")
    return from_adyen_value(integer(amount, "value"), currency), currency
