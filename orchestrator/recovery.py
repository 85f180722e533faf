"""The recovery worker: resolves operations whose outcome nobody could see.

It follows the event log to learn which payments started an operation, through a table of the
payments that may have one in doubt (``orchestrator.indoubt``), shared by every replica and
kept at its own tracked position: a restarted replica reads those payments and what was
recorded since, never the whole log, and an idle pass costs one indexed query. It then asks
each payment's provider what became of an operation still in doubt once its lease is over, on
the application's schedule (fast in tests; minutes, then hours in production), until it is
resolved or flagged for review.

Two replicas may look up the same payment at once: that is harmless. Lookups move no money,
a re-send goes only to providers that deduplicate its key, and the event store accepts one
record of what was learnt (the other save conflicts and finds it already resolved). A lookup
that found nothing is one step of the schedule, recorded by whichever replica comes first; a
lookup the provider never received (an open circuit) is none, and is simply asked again later.
"""

from __future__ import annotations

import logging
from uuid import UUID

from orchestrator.application import Payments
from orchestrator.domain.errors import DomainError, PaymentNotFound
from orchestrator.indoubt import InDoubtIndex
from orchestrator.worker import BackgroundLoop

log = logging.getLogger("payorch.recovery")


class RecoveryWorker(BackgroundLoop):
    name = "recovery"

    def __init__(self, app: Payments, *, interval: float = 1.0) -> None:
        super().__init__(interval=interval)
        self.app = app
        self.index = InDoubtIndex(app.recorder)
        self.position = 0  # the log's head when the index was last read
        self.candidates: set[UUID] = set()
        self._loaded = False

    def scan(self) -> None:
        """Brings the index up to the log's head and reads it, if anything was recorded
        since the last scan; otherwise reads nothing but the head."""
        head = self.app.recorder.max_notification_id() or 0
        if self._loaded and head <= self.position:
            return
        self.position = max(self.index.catch_up(head), head)
        self.candidates = set(self.index.payment_ids())
        self._loaded = True

    def run_once(self) -> int:
        """One pass: returns how many payments it asked a provider about."""
        self.scan()
        asked = 0
        for payment_id in sorted(self.candidates):
            if self.stopping:
                break  # a drain waits for the lookup under way, not for every one still due
            try:
                payment = self.app.get_payment(payment_id)
                if payment.operation_in_doubt is None or payment.operation_in_doubt.review_required:
                    self.index.forget(payment_id, payment.version)
                    self.candidates.discard(payment_id)
                elif self.app.lookup_due(payment):
                    resolved = self.app.look_up(payment)  # the step judged due on this read
                    asked += 1
                    log.info("payment %s is now %s", payment_id, resolved.status.value)
            except PaymentNotFound:
                self.index.forget(payment_id, 2**62)
                self.candidates.discard(payment_id)
            except DomainError as e:
                log.warning("could not resolve payment %s: %s", payment_id, e.message)
        return asked
