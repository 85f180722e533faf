"""The sandbox provider's webhooks: Standard Webhooks (v1, HMAC-SHA256) signing and
verification, and the sandbox's event payload read into ``WebhookEvent``s.

Scheme (standard-webhooks spec v1.0.0; libraries/python ``standardwebhooks/webhooks.py``):
the key is base64-decode(secret minus ``whsec_``); the signed bytes are
``{webhook-id}.{webhook-timestamp}.{raw body}``; ``webhook-signature`` is a space-separated
list of ``<version>,<base64>`` where only ``v1`` is ours (several during a secret rotation).

The payload is what ``adapters/sandbox/server.py`` emits::

    {"id": "evt_...", "type": T, "created": unix,
     "data": {"payment": <payment>, "capture"?: {...}, "refund"?: {...}, "dispute"?: {...}}}

Standard library and ``orchestrator`` only, because the sandbox server signs with
``sign_standard_webhook`` and must run wherever payorch's own code runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
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
    optional_text,
    required_header,
    text,
    unix_seconds,
    verified_json,
)
from orchestrator.ports import WebhookEvent, WebhookKind, WebhookRejected
from orchestrator.secrets import Secret

__all__ = [
    "ID_HEADER",
    "SECRET_PREFIX",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SandboxWebhooks",
    "event_of",
    "new_webhook_secret",
    "sign_standard_webhook",
]

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the prefix every secret shares
ID_HEADER: Final = "webhook-id"
TIMESTAMP_HEADER: Final = "webhook-timestamp"
SIGNATURE_HEADER: Final = "webhook-signature"
_VERSION: Final = "v1"
_SECRET_BYTES: Final = 32  # the spec asks for 24 to 64


def new_webhook_secret() -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: base64-decode of what follows ``whsec_`` (the prefix is
    optional, as in the reference library, and so is the padding). ``ValueError`` when it is
    not base64; the message never repeats the secret."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret must be whsec_ followed by base64") from None
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def sign_standard_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of one delivery."""
    digest = _digest(signing_key(secret), msg_id, timestamp, body)
    return f"{_VERSION},{base64.b64encode(digest).decode('ascii')}"


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    # The raw body bytes, never a re-serialisation: any change breaks the signature.
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.digest(key, signed, hashlib.sha256)  # the one-shot C path


class SandboxWebhooks:
    """``WebhookVerifier`` for the sandbox provider's Standard Webhooks. Thread-safe."""

    def __init__(self, secrets: Sequence[Secret], *, tolerance: float = DEFAULT_TOLERANCE) -> None:
        self._secrets = active_secrets(secrets, "sandbox webhooks")
        for secret in self._secrets:
            try:
                signing_key(secret.reveal())
            except ValueError as exc:
                # found at start-up, not at the first delivery; names the source, not the value
                raise ValueError(f"sandbox webhook secret {secret}: {exc}") from None
        self.tolerance = tolerance

    def __repr__(self) -> str:
        return f"SandboxWebhooks({len(self._secrets)} secret(s), tolerance={self.tolerance:g}s)"

    def authenticate(self, headers: Mapping[str, str], body: bytes, *, now: float) -> str:
        """Checks the signature and the timestamp of a delivery; returns its ``webhook-id``.
        The body is not parsed."""
        msg_id = required_header(headers, ID_HEADER)
        timestamp = unix_seconds(required_header(headers, TIMESTAMP_HEADER), TIMESTAMP_HEADER)
        signatures = _signatures(required_header(headers, SIGNATURE_HEADER))
        expected = [
            _digest(signing_key(secret.reveal()), msg_id, timestamp, body)
            for secret in self._secrets
        ]
        if not any(hmac.compare_digest(e, s) for e in expected for s in signatures):
            raise WebhookRejected(401, f"no {SIGNATURE_HEADER} v1 signature matches")
        check_timestamp(timestamp, now=now, tolerance=self.tolerance)
        return msg_id

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> list[WebhookEvent]:
        msg_id = self.authenticate(headers, body, now=now)
        return [event_of(msg_id, verified_json(body))]


def _signatures(value: str) -> list[bytes]:
    """The decoded ``v1`` signatures of the header. Other versions (``v1a`` is asymmetric) are
    skipped; a v1 value that is not base64 simply matches nothing."""
    found: list[bytes] = []
    for entry in value.split():
        version, sep, signature = entry.partition(",")
        if not sep:
            raise WebhookRejected(400, f"malformed {SIGNATURE_HEADER} header")
        if version != _VERSION:
            continue
        try:
            found.append(base64.b64decode(signature, validate=True))
        except binascii.Error:
            found.append(b"")
    if not found:
        raise WebhookRejected(400, f"no v1 signature in {SIGNATURE_HEADER} header")
    return found


# --- the payload --------------------------------------------------------------------------

Reader = Callable[[str, JSONObject, JSONObject], WebhookEvent]


def event_of(event_id: str, document: JSONObject) -> WebhookEvent:
    """The event of a verified sandbox payload; ``event_id`` is the ``webhook-id``, which
    stays the same across the sender's retries. Types we do not apply are OTHER."""
    kind = text(document, "type")
    data = member(document, "data")
    reader = _READERS.get(kind)
    if reader is None:
        return WebhookEvent(event_id, WebhookKind.OTHER)
    return reader(event_id, data, member(data, "payment"))


def _event(event_id: str, kind: WebhookKind, payment: JSONObject) -> WebhookEvent:
    # The sandbox adapter sends our payment id as ``reference``; sandbox amounts are already
    # ISO 4217 minor units, so nothing is converted.
    return WebhookEvent(
        event_id,
        kind,
        payment_id=optional_text(payment, "reference"),
        provider_reference=text(payment, "id"),
        currency=text(payment, "currency"),
    )


def _authorized(event_id: str, data: JSONObject, payment: JSONObject) -> WebhookEvent:
    return replace(
        _event(event_id, WebhookKind.AUTHORIZATION_SUCCEEDED, payment),
        operation_key=optional_text(payment, "idempotency_key"),
        amount=integer(payment, "amount"),
    )


def _declined(event_id: str, data: JSONObject, payment: JSONObject) -> WebhookEvent:
    return replace(
        _event(event_id, WebhookKind.AUTHORIZATION_FAILED, payment),
        operation_key=optional_text(payment, "idempotency_key"),
        amount=integer(payment, "amount"),
        decline_code=optional_text(payment, "decline_code"),
    )


def _captured(event_id: str, data: JSONObject, payment: JSONObject) -> WebhookEvent:
    capture = member(data, "capture")
    return replace(
        _event(event_id, WebhookKind.CAPTURE_SUCCEEDED, payment),
        operation_key=optional_text(capture, "idempotency_key"),
        object_reference=text(capture, "id"),
        amount=integer(capture, "amount"),
    )


def _voided(event_id: str, data: JSONObject, payment: JSONObject) -> WebhookEvent:
    return replace(
        _event(event_id, WebhookKind.CANCEL_SUCCEEDED, payment),
        operation_key=optional_text(member(payment, "void"), "idempotency_key"),
    )


def _refund(kind: WebhookKind) -> Reader:
    def read(event_id: str, data: JSONObject, payment: JSONObject) -> WebhookEvent:
        refund = member(data, "refund")
        return replace(
            _event(event_id, kind, payment),
            operation_key=optional_text(refund, "idempotency_key"),
            object_reference=text(refund, "id"),
            amount=integer(refund, "amount"),
            currency=text(refund, "currency"),
        )

    return read


_CLOSED: Final = {"won": WebhookKind.DISPUTE_WON, "lost": WebhookKind.DISPUTE_LOST}


def _dispute_opened(event_id: str, data: JSONObject, payment: JSONObject) -> WebhookEvent:
    return _dispute_event(event_id, WebhookKind.DISPUTE_OPENED, member(data, "dispute"), payment)


def _dispute_closed(event_id: str, data: JSONObject, payment: JSONObject) -> WebhookEvent:
    dispute = member(data, "dispute")
    kind = _CLOSED.get(text(dispute, "status"))
    if kind is None:
        raise WebhookRejected(400, "malformed event: a closed dispute is neither won nor lost")
    return _dispute_event(event_id, kind, dispute, payment)


def _dispute_event(
    event_id: str, kind: WebhookKind, dispute: JSONObject, payment: JSONObject
) -> WebhookEvent:
    return replace(
        _event(event_id, kind, payment),
        object_reference=text(dispute, "id"),
        amount=integer(dispute, "amount"),
        currency=text(dispute, "currency"),
        message=optional_text(dispute, "reason"),
    )


_READERS: Final[dict[str, Reader]] = {
    "payment.authorized": _authorized,
    "payment.declined": _declined,
    "payment.captured": _captured,
    "payment.voided": _voided,
    "refund.succeeded": _refund(WebhookKind.REFUND_SUCCEEDED),
    "refund.failed": _refund(WebhookKind.REFUND_FAILED),
    "dispute.opened": _dispute_opened,
    "dispute.closed": _dispute_closed,
}
