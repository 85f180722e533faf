"""A provider's webhook delivery, stored once, applied once.

The delivery's id is derived from the provider and the provider's event id, so a duplicate
delivery (providers deliver at least once) fails to be created again: the event store's
unique (id, version) is the dedupe. The raw body is kept, byte for byte, for the audit.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

_DELIVERIES = UUID("a7d2c0f4-3b1e-4c5d-8e9f-6a7b8c9d0e1f")


def delivery_id(provider: str, event_id: str) -> UUID:
    return uuid5(_DELIVERIES, f"{provider}\x1f{event_id}")


class WebhookDelivery(Aggregate):
    class Received(Aggregate.Created):
        provider: str  # the provider type: stripe, razorpay, adyen, sandbox
        verified_by: str  # the configured provider whose secret verified it
        event_id: str
        kind: str
        payment_id: str
        provider_reference: str
        operation_key: str
        object_reference: str
        amount: int
        currency: str
        decline_code: str
        message: str
        body: str  # the raw body, base64: exactly the bytes that were verified
        received_at: datetime

    class Applied(Aggregate.Event):
        payment_id: UUID
        payment_version: int
        effect: str  # what it changed, or why it changed nothing

    class Unmatched(Aggregate.Event):
        reason: str

    @event(Received)
    def __init__(
        self,
        *,
        id: UUID,  # delivery_id(provider, event_id)
        provider: str,
        verified_by: str,
        event_id: str,
        kind: str,
        payment_id: str,
        provider_reference: str,
        operation_key: str,
        object_reference: str,
        amount: int,
        currency: str,
        decline_code: str,
        message: str,
        body: str,
        received_at: datetime,
    ) -> None:
        self.provider = provider
        self.verified_by = verified_by
        self.event_id = event_id
        self.kind = kind
        self.payment_id = payment_id
        self.provider_reference = provider_reference
        self.operation_key = operation_key
        self.object_reference = object_reference
        self.amount = amount
        self.currency = currency
        self.decline_code = decline_code
        self.message = message
        self.outcome = ""  # "applied" or "unmatched" once processed
        self.unmatched_reason = ""

    def applied(self, *, payment_id: UUID, payment_version: int, effect: str) -> None:
        # An unmatched delivery is applied once its payment becomes known: re-matched.
        if self.outcome != "applied":
            self._applied(payment_id=payment_id, payment_version=payment_version, effect=effect)

    def unmatched(self, reason: str) -> None:
        if not self.outcome:
            self._unmatched(reason=reason)

    @event(Applied)
    def _applied(self, *, payment_id: UUID, payment_version: int, effect: str) -> None:
        self.outcome = "applied"

    @event(Unmatched)
    def _unmatched(self, *, reason: str) -> None:
        self.outcome = "unmatched"
        self.unmatched_reason = reason
