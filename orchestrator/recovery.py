"""The recovery worker: resolves operations whose outcome nobody could see.

It follows the event log (every replica runs one, each tracking its own position) to learn
which payments started an operation, then asks each payment's provider what became of an
operation still in doubt once its lease is over, on the application's schedule (fast in tests;
minutes, then hours in production), until it is resolved or flagged for review.

Two replicas may look up the same payment at once: that is harmless. Lookups move no money,
a re-send goes only to providers that deduplicate its key, and the event store accepts one
record of what was learnt (the other save conflicts and finds it already resolved). A lookup
that found nothing is one step of the schedule, recorded by whichever replica comes first; a
lookup the provider never received (an open circuit) is none, and is simply asked again later.
"""

from __future__ import annotations

import logging
from uuid import UUID

from eventsourcing.utils import get_topic

from orchestrator.application import Payments
from orchestrator.domain.errors import DomainError, PaymentNotFound
from orchestrator.domain.payment import Payment
from orchestrator.worker import BackgroundLoop

log = logging.getLogger("payorch.recovery")

# Events after which a payment may have an operation in doubt.
_TOPICS = [
    get_topic(event)
    for event in (
        Payment.OperationStarted,
        Payment.FailedOver,
        Payment.OutcomeUnknown,
        Payment.StillUnknown,
    )
]
_PAGE = 500


class RecoveryWorker(BackgroundLoop):
    name = "recovery"

    def __init__(self, app: Payments, *, interval: float = 1.0) -> None:
        super().__init__(interval=interval)
        self.app = app
        self.position = 0  # the last notification read
        self.candidates: set[UUID] = set()

    def scan(self) -> None:
        """Reads what was recorded since the last scan."""
        while True:
            page = self.app.recorder.select_notifications(
                start=self.position, limit=_PAGE, topics=_TOPICS, inclusive_of_start=False
            )
            for notification in page:
                self.candidates.add(UUID(str(notification.originator_id)))
                self.position = notification.id
            if len(page) < _PAGE:
                return

    def run_once(self) -> int:
        """One pass: returns how many payments it asked a provider about."""
        self.scan()
        asked = 0
        for payment_id in sorted(self.candidates):
            try:
                payment = self.app.get_payment(payment_id)
                if payment.operation_in_doubt is None or payment.operation_in_doubt.review_required:
                    self.candidates.discard(payment_id)
                elif self.app.lookup_due(payment):
                    resolved = self.app.look_up(payment)  # the step judged due on this read
                    asked += 1
                    log.info("payment %s is now %s", payment_id, resolved.status.value)
            except PaymentNotFound:
                self.candidates.discard(payment_id)
            except DomainError as e:
                log.warning("could not resolve payment %s: %s", payment_id, e.message)
        return asked
