"""The request path of a webhook: verify over the raw bytes, store each event once, answer.

No provider call and no payment change happen here: a delivery is only recorded (deduplicated
by the event store on its derived id), so the acknowledgement is as fast as one write.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from eventsourcing.persistence import IntegrityError

from orchestrator.application import Payments
from orchestrator.domain.webhook import WebhookDelivery, delivery_id
from orchestrator.ports import WebhookEvent, WebhookRejected, WebhookVerifier

log = logging.getLogger("payorch.webhooks")


@dataclass(frozen=True)
class NamedVerifier:
    name: str  # the configured provider, e.g. "stripe-us"
    verifier: WebhookVerifier


@dataclass(frozen=True)
class Receipt:
    stored: int  # new events stored
    duplicates: int  # events already stored by an earlier delivery


class WebhookIntake:
    def __init__(
        self,
        app: Payments,
        verifiers: Mapping[str, Sequence[NamedVerifier]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``verifiers`` maps a provider type (the URL's ``{provider}``) to the configured
        providers of that type that have webhook secrets."""
        self.app = app
        self.verifiers = {kind: list(v) for kind, v in verifiers.items()}
        self.clock = clock

    def knows(self, provider: str) -> bool:
        return provider in self.verifiers

    def receive(self, provider: str, headers: Mapping[str, str], body: bytes) -> Receipt:
        """Verifies and stores a delivery; ``WebhookRejected`` when it must not be stored."""
        name, events = self._verify(provider, headers, body)
        raw = base64.b64encode(body).decode()
        received_at = datetime.fromtimestamp(self.clock(), UTC)
        stored = duplicates = 0
        for item in events:
            delivery = _delivery(provider, name, item, raw, received_at)
            try:
                self.app.save(delivery)
                stored += 1
            except IntegrityError:
                duplicates += 1  # delivered before: stored once, applied once
        log.info(
            "webhook %s: %d stored, %d duplicate(s), verified by %s",
            provider, stored, duplicates, name,
        )  # fmt: skip
        return Receipt(stored, duplicates)

    def _verify(
        self, provider: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[str, list[WebhookEvent]]:
        candidates = self.verifiers.get(provider, [])
        if not candidates:
            raise WebhookRejected(404, f"no provider {provider!r} takes webhooks here")
        now = self.clock()
        rejection: WebhookRejected | None = None
        for candidate in candidates:
            try:
                return candidate.name, candidate.verifier.verify_webhook(headers, body, now=now)
            except WebhookRejected as e:
                # Another configured provider of this type may hold the right secret; keep
                # the most telling refusal (a bad timestamp over a plain mismatch).
                if rejection is None or e.status == 400:
                    rejection = e
        assert rejection is not None
        raise rejection


def _delivery(
    provider: str, name: str, item: WebhookEvent, raw: str, received_at: datetime
) -> WebhookDelivery:
    return WebhookDelivery(
        id=delivery_id(provider, item.event_id),
        provider=provider,
        verified_by=name,
        event_id=item.event_id,
        kind=item.kind.value,
        payment_id=item.payment_id,
        provider_reference=item.provider_reference,
        operation_key=item.operation_key,
        object_reference=item.object_reference,
        amount=item.amount,
        currency=item.currency,
        decline_code=item.decline_code,
        message=item.message,
        body=raw,
        received_at=received_at,
    )
