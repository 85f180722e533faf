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
class Request:
    """One HTTP delivery as it arrived: the provider type of its URL, headers, raw body."""

    provider: str  # the URL's {provider}
    headers: Mapping[str, str]
    body: bytes


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
        answer = self.receive_many([Request(provider, headers, body)])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def receive_many(self, requests: Sequence[Request]) -> list[Receipt | Exception]:
        """Verifies each request, then stores every verified delivery in one transaction: the
        HTTP side hands over the requests that arrived together. If that transaction fails (a
        delivery stored before, or twice in this batch; a store error), nothing of it was
        stored, and each delivery is then stored alone, exactly as ``receive`` does. Answers
        in order: a ``Receipt``, or what ``receive`` would have raised for that request."""
        answers: list[Receipt | Exception] = []
        # Deliveries are made anew for each attempt: a save takes the pending events out of
        # its aggregates, so a failed batch's deliveries would store nothing if saved again.
        verified: list[tuple[int, str, str, Callable[[], list[WebhookDelivery]]]] = []
        for i, request in enumerate(requests):
            try:
                name, events = self._verify(request.provider, request.headers, request.body)
            except WebhookRejected as e:
                answers.append(e)
                continue
            raw = base64.b64encode(request.body).decode()
            received_at = datetime.fromtimestamp(self.clock(), UTC)
            answers.append(Receipt(len(events), 0))
            verified.append(
                (i, request.provider, name, _deliveries(request, name, events, raw, received_at))
            )
        alone = True
        if len(verified) > 1:
            try:
                self.app.save(*(d for *_, make in verified for d in make()))
            except Exception:  # nothing of the batch was stored: each goes alone, below
                log.debug("a batch of %d deliveries goes alone", len(verified), exc_info=True)
            else:
                alone = False
        # One log line per provider and verifying secret for the whole batch, not one per
        # delivery: formatting and writing a line cost as much as verifying a delivery.
        counts: dict[tuple[str, str], Receipt] = {}
        for i, provider, name, make in verified:
            if alone:
                try:
                    answers[i] = self._store_alone(make())
                except Exception as e:  # as receive would raise it: the caller answers 500
                    answers[i] = e
                    continue
            receipt = answers[i]
            assert isinstance(receipt, Receipt)
            before = counts.get((provider, name), Receipt(0, 0))
            counts[provider, name] = Receipt(
                before.stored + receipt.stored, before.duplicates + receipt.duplicates
            )
        for (provider, name), total in counts.items():
            log.info(
                "webhook %s: %d stored, %d duplicate(s), verified by %s",
                provider, total.stored, total.duplicates, name,
            )  # fmt: skip
        return answers

    def _store_alone(self, deliveries: list[WebhookDelivery]) -> Receipt:
        stored = duplicates = 0
        for delivery in deliveries:
            try:
                self.app.save(delivery)
                stored += 1
            except IntegrityError:
                duplicates += 1  # delivered before: stored once, applied once
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


def _deliveries(
    request: Request, name: str, events: list[WebhookEvent], raw: str, received_at: datetime
) -> Callable[[], list[WebhookDelivery]]:
    return lambda: [_delivery(request.provider, name, e, raw, received_at) for e in events]


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
