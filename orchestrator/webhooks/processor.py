"""The background half of webhooks: apply each stored delivery to its payment, exactly once.

The processor follows the event store's notification log from its tracked position, a page
of deliveries at a time. What a page applies to its payments, its deliveries' ``Applied``/
``Unmatched`` events and the position of its last delivery commit in one transaction, so a
crash or a second replica can neither skip a delivery nor apply one twice: a crash before the
commit leaves nothing of the page and the position where it was. Deliveries of one payment in
a page apply in order to one in-memory payment, each seeing what the one before changed. If
the page's transaction fails (another replica's consumer or a command saved one of its
payments or deliveries meanwhile: an ``IntegrityError``), each of its deliveries goes alone,
in its own transaction as before the pages, and is applied once or found applied by the other
consumer. A page's deliveries are made from its notifications (their ``Received`` events), not
read again: one that moved on since takes a version already stored, which fails the page.
Out-of-order and duplicate deliveries cannot regress a payment: the domain only
resolves operations still in doubt, and records each reversal and dispute once.

Why a page: a transaction's cost is mostly fixed (on SQLite a commit's fsync, on PostgreSQL the
events table's lock and the chain's head), and a burst of acknowledgements outran a consumer
that paid it for every delivery.

Its position also advances past the events it does not care about (every payment event):
once it has applied every delivery up to the log's head, it records the head as its position.
A pass that finds the head where it left it costs one indexed query (the log's largest id), so
an idle server does no work that grows with the log.

Why skipping to the head is safe: every id at or below the head is final when the head is
read. On SQLite one writer at a time holds the write lock from insert to commit. On PostgreSQL
eventsourcing's recorder takes ``LOCK TABLE <events> IN EXCLUSIVE MODE`` before each insert
and holds it to commit (``PostgresApplicationRecorder._insert_stored_events``), so ids commit
in the order they are issued and no lower id can become visible after a higher one. A writer
that inserts without that lock (eventsourcing's ``POSTGRES_ENABLE_DB_FUNCTIONS``, or a batching
recorder that drops it) would let this consumer skip a delivery for ever:
``tests/integration/test_positions.py`` checks that a save still waits for the lock.

A delivery about a payment not known yet is kept ``Unmatched``. ``rematch`` re-tries those
when a payment is created or learns its provider's id (``Requested``, ``Authorized``,
``ResolvedByOperator``) after them, and each newly unmatched one once. The open ones are read
from a table of them kept from the log (``orchestrator.webhooks.unmatched``), never from the
log itself, so a (re)start reads the handful still open and none of those matched long ago;
with none, a pass that found the log moved costs the table's catch-up and one small query. A
re-try saves the delivery's ``Applied`` with the payment: the delivery's version makes it
happen once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.utils import get_topic

from orchestrator.application import Collected, Payments, apply_outcome
from orchestrator.domain.errors import PaymentNotFound
from orchestrator.domain.payment import (
    IN_DOUBT,
    Kind,
    Operation,
    Payment,
    ProviderEventCause,
    provider_key,
)
from orchestrator.domain.reference import ProviderReference, reference_id
from orchestrator.domain.webhook import WebhookDelivery
from orchestrator.ports import OutcomeStatus, ProviderOutcome, WebhookKind
from orchestrator.tracing import span
from orchestrator.webhooks.unmatched import UnmatchedIndex
from orchestrator.worker import BackgroundLoop

log = logging.getLogger("payorch.webhooks")

TRACKING_NAME = "webhooks"
_TOPICS = [get_topic(WebhookDelivery.Received)]
# Events after which a payment may be found by a delivery that named it: it exists, or the
# provider's id for it is known (the reference index entry is saved with these).
_PAYMENT_KNOWN = sorted(
    get_topic(e) for e in (Payment.Requested, Payment.Authorized, Payment.ResolvedByOperator)
)
_CONFLICTS = 8

# The kind of operation each webhook reports on.
_OPERATION_KIND = {
    WebhookKind.AUTHORIZATION_SUCCEEDED: Kind.AUTHORIZE,
    WebhookKind.AUTHORIZATION_FAILED: Kind.AUTHORIZE,
    WebhookKind.CAPTURE_SUCCEEDED: Kind.CAPTURE,
    WebhookKind.CAPTURE_FAILED: Kind.CAPTURE,
    WebhookKind.CANCEL_SUCCEEDED: Kind.CANCEL,
    WebhookKind.REFUND_SUCCEEDED: Kind.REFUND,
    WebhookKind.REFUND_FAILED: Kind.REFUND,
}
_SUCCEEDED = {
    WebhookKind.AUTHORIZATION_SUCCEEDED,
    WebhookKind.CAPTURE_SUCCEEDED,
    WebhookKind.CANCEL_SUCCEEDED,
    WebhookKind.REFUND_SUCCEEDED,
}


@dataclass
class ConsumerStats:
    pages: int = 0  # pages of two or more deliveries committed in one transaction
    fallbacks: int = 0  # pages whose transaction failed: their deliveries then went alone


class WebhookProcessor(BackgroundLoop):
    name = "webhooks"

    def __init__(self, app: Payments, *, interval: float = 0.2, batch: int = 200) -> None:
        super().__init__(interval=interval)
        self.app = app
        self.batch = batch
        # The head of the log up to which everything is known to be applied (by this consumer
        # or another): a pass that finds the head still there has nothing to do.
        self._caught_up_to = 0
        # Told each delivery's result (metrics); None: nobody is told.
        self.on_result: Callable[[str], None] | None = None
        # Deliveries left unmatched (by any consumer), kept from the log by their own table,
        # re-tried when a payment becomes known; those already tried once since this consumer
        # started; and the log position up to which payments becoming known were looked for.
        self.index = UnmatchedIndex(app.recorder)
        self._tried: set[UUID] = set()
        self._fresh: set[UUID] = set()  # left unmatched by this consumer since the last pass
        self._watched = 0
        self.stats = ConsumerStats()

    def position(self) -> int:
        return self.app.recorder.max_tracking_id(TRACKING_NAME) or 0  # type: ignore[attr-defined]

    def run_once(self) -> int:
        """Applies what was stored since the tracked position; returns how many."""
        head = self.app.recorder.max_notification_id() or 0
        if head <= self._caught_up_to:
            return 0
        done = 0
        while True:
            position = self.position()
            page = self.app.recorder.select_notifications(
                start=position,
                limit=self.batch,
                stop=head,
                topics=_TOPICS,
                inclusive_of_start=False,
            )
            for result in self.process_page(page):
                if self.on_result is not None:
                    self.on_result(result)
                done += 1
            if self.stopping:
                return done
            if len(page) < self.batch:
                # Every delivery up to the head is applied: nothing below it can still appear
                # (see the module's docstring), so the head is where the next pass starts.
                self._advance(position, head)
                return done + self.rematch(head)

    def _advance(self, position: int, head: int) -> None:
        if head > position:
            # IntegrityError: another consumer recorded a position at or past the head.
            with contextlib.suppress(IntegrityError):
                self.app.recorder.insert_tracking(Tracking(TRACKING_NAME, head))  # type: ignore[attr-defined]
        self._caught_up_to = head

    def rematch(self, head: int) -> int:
        """Re-tries the unmatched deliveries if a payment became known since the last pass
        (up to ``head``), and those newly unmatched once (their payment may have committed
        just after they looked); returns how many it matched now."""
        if self.index.catch_up(head, stopping=lambda: self.stopping) < head:
            return 0  # stopping: the next start goes on from the index's position
        start, self._watched = self._watched, head
        open_ = set(self.index.delivery_ids())
        # This consumer's own are past the head (recorded after it was read): not in the table
        # yet, but as new as those another consumer left unmatched since the last pass.
        fresh = self._fresh | (open_ - self._tried)
        self._fresh = set()
        retry = set(fresh)
        if open_ - retry and self._payment_known_between(start, head):
            retry |= open_
        matched = 0
        for delivery_id in sorted(retry):
            effect = self.retry(delivery_id)
            if effect.startswith("unmatched"):
                self._tried.add(delivery_id)
            else:
                self._tried.discard(delivery_id)
                matched += effect.startswith("re-matched")
        self._tried &= open_ | fresh  # matched since by an operator or another consumer
        return matched

    def _payment_known_between(self, start: int, stop: int) -> bool:
        """Whether a payment became known after ``start`` up to ``stop``: its first such event
        is enough (one indexed query, however long the stretch)."""
        return start < stop and bool(
            self.app.recorder.select_notifications(
                start=start, limit=1, stop=stop, topics=_PAYMENT_KNOWN, inclusive_of_start=False
            )
        )

    def retry(self, delivery_id: UUID) -> str:
        """Applies an unmatched delivery if the payment it names is known now (an operator's
        re-try, or ``rematch``). Saved with the payment, at most once: the delivery's version
        is the lock. Returns the effect, "unmatched: ..." if still unmatched."""
        for _ in range(_CONFLICTS):
            try:
                delivery: WebhookDelivery = self.app.repository.get(delivery_id)
            except AggregateNotFoundError:
                raise KeyError(f"no webhook delivery {delivery_id}") from None
            if delivery.outcome != "unmatched":
                return f"already {delivery.outcome or 'waiting for the consumer'}"
            payment = self._payment_for(delivery)
            if payment is None:
                return f"unmatched: {delivery.unmatched_reason}"
            effect, changed = self._apply_to(payment, delivery)
            try:
                self.app.save(payment, delivery, *changed)
            except IntegrityError:
                continue
            log.info("webhook %s %s re-matched to payment %s: %s", delivery.provider,
                     delivery.event_id, payment.id, effect)  # fmt: skip
            return f"re-matched: {effect}"
        raise RuntimeError(f"could not re-try webhook delivery {delivery_id}")

    def unmatched(self) -> list[WebhookDelivery]:
        """The deliveries still unmatched, oldest first: what an operator lists."""
        self.index.catch_up(self._head())
        deliveries: list[WebhookDelivery] = [
            self.app.repository.get(i) for i in self.index.delivery_ids()
        ]
        # One applied after the head just read is still in the table: not listed.
        still = [d for d in deliveries if d.outcome == "unmatched"]
        return sorted(still, key=lambda d: d.created_on)

    def _head(self) -> int:
        return self.app.recorder.max_notification_id() or 0

    def process_page(self, page: Sequence[Any]) -> list[str]:
        """Applies a page of the log's deliveries (notifications, in order) in one transaction
        with the position of its last; if that fails, each alone (``process``). Returns each
        delivery's effect, in order."""
        if len(page) > 1:
            try:
                return self._process_together(page)
            except Exception as e:  # whatever it was, each alone learns its own outcome
                # Nothing of the page committed. A conflict is expected now and then (a command
                # or another replica saved one of its aggregates); anything else (a delivery
                # its payment refuses) then fails alone, after those before it are applied.
                self.stats.fallbacks += 1
                log.info("a page of %d webhook deliveries failed (%s): each goes alone",
                         len(page), str(e) or type(e).__name__)  # fmt: skip
        return [self.process(UUID(str(n.originator_id)), n.id) for n in page]

    def _process_together(self, page: Sequence[Any]) -> list[str]:
        with span("webhook.page", {"webhook.deliveries": str(len(page))}):
            return self._together(page)

    def _together(self, page: Sequence[Any]) -> list[str]:
        processing: ProcessingEvent[UUID] = Collected(Tracking(TRACKING_NAME, page[-1].id))
        deliveries = [self._received(notification) for notification in page]
        # The page's payments, read together (one query, not one each); each is then changed
        # by its deliveries in turn. A payment found otherwise (by the provider's reference)
        # is read when first needed, into the same map.
        payments: dict[UUID, Payment] = self.app.get_payments(_named_payments(deliveries))
        applied: list[tuple[WebhookDelivery, str]] = []
        for delivery in deliveries:
            effect = self._apply(delivery, processing, payments)
            processing.collect_events(delivery)
            applied.append((delivery, effect))
        self.app.record_processing(processing)
        self.stats.pages += 1
        for delivery, effect in applied:
            _log_applied(delivery, effect)
        return [effect for _, effect in applied]

    def _received(self, notification: Any) -> WebhookDelivery:
        """The delivery as its ``Received`` event (the page's notification) made it, without
        reading it again. If it moved on since (another consumer applied it), its ``Applied``
        takes a version already stored, the page's transaction fails, and ``process`` reads it
        whole: the version is the lock, as for any aggregate read before a save."""
        received = self.app.mapper.to_domain_event(notification)
        assert isinstance(received, WebhookDelivery.Received), "a page holds these only"
        delivery = received.mutate(None)
        assert isinstance(delivery, WebhookDelivery)
        return delivery

    def process(self, delivery_id: UUID, notification_id: int) -> str:
        """Applies one delivery in its own transaction, with its position."""
        with span("webhook.process", {"webhook.delivery_id": str(delivery_id)}):
            return self._process(delivery_id, notification_id)

    def _process(self, delivery_id: UUID, notification_id: int) -> str:
        for _ in range(_CONFLICTS):
            delivery: WebhookDelivery = self.app.repository.get(delivery_id)
            processing: ProcessingEvent[UUID] = Collected(Tracking(TRACKING_NAME, notification_id))
            effect = self._apply(delivery, processing)
            processing.collect_events(delivery)
            try:
                self.app.record_processing(processing)
            except IntegrityError:
                if self.position() >= notification_id:
                    return "processed by another consumer"
                continue  # the payment moved meanwhile: read it again
            _log_applied(delivery, effect)
            return effect
        raise RuntimeError(f"could not apply webhook delivery {delivery_id}")

    def _apply(
        self,
        delivery: WebhookDelivery,
        processing: ProcessingEvent[UUID],
        payments: dict[UUID, Payment] | None = None,
    ) -> str:
        """``payments``: those already read for this transaction, by id (and where to keep
        those it reads), so that a page's deliveries of one payment change one copy."""
        if delivery.outcome == "applied":
            return f"already {delivery.outcome}"
        payment = self._payment_for(delivery, payments)
        if payment is None:
            reason = (
                f"no payment {delivery.payment_id or '?'} "
                f"(provider reference {delivery.provider_reference or '?'})"
            )
            log.warning("unmatched webhook %s %s: %s", delivery.provider, delivery.event_id, reason)
            delivery.unmatched(reason)
            self._fresh.add(delivery.id)
            return f"unmatched: {reason}"
        effect, changed = self._apply_to(payment, delivery)
        processing.collect_events(payment, *changed)
        return effect

    def _apply_to(self, payment: Payment, delivery: WebhookDelivery) -> tuple[str, list[Aggregate]]:
        effect, changed = _effect(self.app, payment, delivery)
        payment.provider_event_received(
            provider=delivery.verified_by,
            event_id=delivery.event_id,
            kind=delivery.kind,
            effect=effect,
            caused_by=_cause(delivery),
        )
        delivery.applied(payment_id=payment.id, payment_version=payment.version, effect=effect)
        return effect, changed

    def _payment_for(
        self, delivery: WebhookDelivery, payments: dict[UUID, Payment] | None = None
    ) -> Payment | None:
        """By our id when the provider echoes it, else by the operation's provider key (it
        begins with our payment id), else by the provider's own id for the payment.
        ``payments``: see ``_apply``."""
        read = {} if payments is None else payments
        for candidate in _candidates(delivery):
            try:
                return self._read(UUID(candidate), read)
            except (ValueError, PaymentNotFound):
                continue
        if delivery.provider_reference:
            index = reference_id(delivery.verified_by, delivery.provider_reference)
            try:
                entry: ProviderReference = self.app.repository.get(index)
            except AggregateNotFoundError:
                return None
            return self._read(entry.payment_id, read)
        return None

    def _read(self, payment_id: UUID, payments: dict[UUID, Payment]) -> Payment:
        if payment_id not in payments:
            payments[payment_id] = self.app.get_payment(payment_id)
        return payments[payment_id]


def _candidates(delivery: WebhookDelivery) -> list[str]:
    """What may be our payment id in a delivery: the id the provider echoes, then the
    operation's provider key, which begins with it."""
    return [delivery.payment_id, delivery.operation_key.split(":", 1)[0]]


def _named_payments(deliveries: Sequence[WebhookDelivery]) -> set[UUID]:
    """The payment ids the deliveries name (``_payment_for``'s candidates)."""
    named = set()
    for delivery in deliveries:
        for candidate in _candidates(delivery):
            try:
                named.add(UUID(candidate))
            except ValueError:
                continue
    return named


def _log_applied(delivery: WebhookDelivery, effect: str) -> None:
    log.info("webhook %s %s (%s): %s", delivery.provider, delivery.event_id, delivery.kind, effect)


def _effect(
    app: Payments, payment: Payment, delivery: WebhookDelivery
) -> tuple[str, list[Aggregate]]:
    kind = WebhookKind(delivery.kind)
    if kind in (WebhookKind.DISPUTE_OPENED, WebhookKind.DISPUTE_WON, WebhookKind.DISPUTE_LOST):
        why = _not_about(payment, delivery, "the payment", payment.provider)
        return why or _dispute(payment, delivery, kind), []
    if kind not in _OPERATION_KIND:
        return "nothing to apply", []
    op = _operation(payment, delivery, _OPERATION_KIND[kind])
    if isinstance(op, str):
        return op, []
    if op.status in IN_DOUBT:
        learned = apply_outcome(
            payment, op, _outcome(op, delivery, kind), "", caused_by=_cause(delivery)
        )
        changed = [*learned, *app.complete_waiting_command(payment, op)]
        return f"resolved operation {op.sequence}", changed
    if kind in (WebhookKind.CAPTURE_FAILED, WebhookKind.REFUND_FAILED) and payment.reverse(
        op.sequence,
        message=delivery.message or f"{kind.value} reported by the provider",
        caused_by=_cause(delivery),
    ):
        return f"reversed operation {op.sequence}", []
    return f"operation {op.sequence} already {op.status.value}: unchanged", []


def _dispute(payment: Payment, delivery: WebhookDelivery, kind: WebhookKind) -> str:
    if kind is WebhookKind.DISPUTE_OPENED:
        opened = payment.open_dispute(
            delivery.object_reference,
            amount=delivery.amount,
            reason=delivery.message,
            caused_by=_cause(delivery),
        )
        return "dispute opened" if opened else "dispute already known"
    closed = payment.close_dispute(
        delivery.object_reference,
        won=kind is WebhookKind.DISPUTE_WON,
        amount=delivery.amount,
        caused_by=_cause(delivery),
    )
    return "dispute closed" if closed else "dispute already closed"


def _not_about(payment: Payment, delivery: WebhookDelivery, subject: str, provider: str) -> str:
    """Why the event may not change ``subject``, which is at ``provider`` ("" if it may).

    Only the provider that verified an event speaks for its attempts: a payment that failed
    over still has our id in the first provider's objects, whose late events would otherwise
    settle the attempt at the next provider. And when both sides know the provider's id of
    the payment, they must agree: otherwise the event is about another of the provider's
    payments that happens to carry our id."""
    if provider != delivery.verified_by:
        return f"{subject} is at {provider}, not {delivery.verified_by}: unchanged"
    theirs, ours = delivery.provider_reference, payment.provider_reference
    if theirs and ours and theirs != ours:
        return f"provider reference {theirs} is not the payment's ({ours}): unchanged"
    return ""


def _operation(payment: Payment, delivery: WebhookDelivery, kind: Kind) -> Operation | str:
    """The operation the event reports on, or why it may change none of the payment's."""
    if delivery.operation_key:
        # The event names its attempt: that attempt or nothing, never a guess.
        op = payment.operation_by_key(delivery.operation_key)
        if op is None:
            return _superseded(payment, delivery.operation_key) or (
                f"no operation has the key {delivery.operation_key}: unchanged"
            )
        if op.kind is not kind:
            return f"operation {op.sequence} is a {op.kind.value}, not a {kind.value}: unchanged"
        return _not_about(payment, delivery, f"operation {op.sequence}", op.provider) or op
    if kind is Kind.AUTHORIZE and payment.operations:
        op = payment.operations[0]
    elif (in_doubt := payment.operation_in_doubt) is not None and in_doubt.kind is kind:
        # Without the key, only an operation of that kind in doubt can be meant, and only if
        # it is the payment's one operation of that kind: a late event of an earlier partial
        # capture or refund would otherwise settle one the provider may never have received.
        # Recovery's lookup, by key, settles the rest.
        alike = sum(o.kind is kind for o in payment.operations)
        if alike > 1:
            return (
                f"names no attempt, and the payment has {alike} {kind.value} operations: unchanged"
            )
        op = in_doubt
    else:
        return "no matching operation"
    return _not_about(payment, delivery, f"operation {op.sequence}", op.provider) or op


def _superseded(payment: Payment, key: str) -> str:
    """Why ``key``, an earlier attempt's of one of the payment's operations, settles nothing:
    that attempt certainly moved no money (it failed over), and its operation's outcome is
    the later attempt's. "" when it is no attempt of the payment's."""
    for op in payment.operations:
        for attempt in range(1, op.attempt):
            if provider_key(payment.id, op.sequence, op.kind, attempt) == key:
                return (
                    f"attempt {attempt} of operation {op.sequence} was superseded by "
                    f"attempt {op.attempt} at {op.provider}: unchanged"
                )
    return ""


def _outcome(op: Operation, delivery: WebhookDelivery, kind: WebhookKind) -> ProviderOutcome:
    """What the webhook says of the operation, as a provider call would have answered."""
    if kind in _SUCCEEDED:
        reference = delivery.provider_reference or op.provider_reference
        return ProviderOutcome(
            OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=op.amount
        )
    if delivery.decline_code:
        return ProviderOutcome(
            OutcomeStatus.DECLINED, decline_code=delivery.decline_code, message=delivery.message
        )
    return ProviderOutcome(OutcomeStatus.FAILED, message=delivery.message)


def _cause(delivery: WebhookDelivery) -> ProviderEventCause:
    """What the payment's events record as their cause: the provider's own event."""
    return ProviderEventCause(delivery.verified_by, delivery.event_id)
