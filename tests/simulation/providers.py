"""Simulated payment providers: each keeps its own ledger, as a real provider does, and fails
the ways real ones do, as the seed decides.

A provider implements payorch's provider port (``orchestrator.ports.PaymentProvider``) and its
webhook verifier, so the real resilient layer, routing, recovery, intake and consumer run
against it. Its faults:

- down for a while (connection refused: nothing processed; enough of them open the breaker);
- a request refused before processing, or answered so slowly that the caller times out, with
  the request processed or not;
- the answer lost after processing (a reset);
- honouring idempotency keys, or ignoring them (a re-send charges again);
- webhooks for what it did, duplicated, delayed and so reordered, and, for an attempt it
  refused, a late "authorization failed" about a payment that another provider now serves.

It also counts what each replica (each incarnation) sends it: the calls in flight at once and
when each request arrived, so a run can check that payorch's outbound limits held.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
    WebhookEvent,
    WebhookKind,
    WebhookRejected,
)
from tests.simulation.scheduler import Scheduler

DECLINING_METHOD = "pm_card_declined"
_SIGNATURE = "x-sim-signature"


@dataclass(frozen=True)
class Faults:
    refuse_rate: float = 0.0  # refused before processing (not reached)
    timeout_rate: float = 0.0  # slower than the caller waits
    processed_on_timeout: float = 0.5  # of those, processed all the same
    drop_rate: float = 0.0  # processed, answer lost
    outages: tuple[tuple[float, float], ...] = ()  # (from, to), simulated Unix seconds
    webhook_rate: float = 0.0  # a webhook for what it did
    duplicate_rate: float = 0.0
    max_webhook_delay: float = 0.0
    stray_failure_rate: float = 0.0  # a late "failed" for an attempt it refused
    reference_only_rate: float = 0.0  # an authorization's webhook naming only the charge


@dataclass
class Movement:
    """One thing the provider did with money (or refused to do)."""

    kind: OperationKind
    payment_id: str
    provider_key: str
    amount: int
    status: OutcomeStatus
    reference: str
    at: float


@dataclass
class Charge:
    payment_id: str
    reference: str
    amount: int
    captured: int = 0
    refunded: int = 0
    voided: bool = False


@dataclass
class Webhook:
    provider: str
    body: bytes
    headers: dict[str, str]
    due: float


@dataclass
class SimulatedProvider:
    name: str
    honors_idempotency_keys: bool
    scheduler: Scheduler
    rng: random.Random
    faults: Faults
    latency: tuple[float, float] = (0.001, 0.05)
    secret: bytes = b""
    ledger: list[Movement] = field(default_factory=list)
    charges: dict[str, Charge] = field(default_factory=dict)  # by reference
    by_key: dict[str, ProviderOutcome] = field(default_factory=dict)
    # (key, when, who): each lookup received, and the actor that sent it
    lookups: list[tuple[str, float, str]] = field(default_factory=list)
    outbox: list[Webhook] = field(default_factory=list)
    quiet: bool = False  # after the load: no more faults, so the run can settle
    # Lookups find only authorizations: the rest is learnt from webhooks or not at all (Adyen
    # has no request that reads a modification), so a lost webhook leaves it for a person.
    modifications_by_webhook_only: bool = False
    # by (replica, incarnation): calls in flight now, the most at once, each arrival's time
    in_flight: dict[tuple[str, int], int] = field(default_factory=dict)
    peak: dict[tuple[str, int], int] = field(default_factory=dict)
    arrivals: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    _events: int = 0
    # Draws of its own for the webhook's shape, so the world's draws stay as they were.
    quirks: random.Random = field(default_factory=lambda: random.Random(0))

    # --- the port ---------------------------------------------------------------------

    def authorize(self, op: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        with self._counted():
            return self._call(op, timeout)

    def capture(self, op: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        with self._counted():
            return self._call(op, timeout)

    def cancel(self, op: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        with self._counted():
            return self._call(op, timeout)

    def refund(self, op: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        with self._counted():
            return self._call(op, timeout)

    def lookup(self, op: ProviderOperation, *, timeout: float) -> ProviderOutcome | None:
        with self._counted():
            self._travel(timeout)
            self.lookups.append((op.provider_key, self.scheduler.now, self.scheduler.current.name))
            found = self.by_key.get(op.provider_key)
            if self.modifications_by_webhook_only and op.kind is not OperationKind.AUTHORIZE:
                found = None
            self._back()
            return found

    @contextmanager
    def _counted(self) -> Iterator[None]:
        """One request of the calling replica's incarnation, in flight until it ends."""
        host = self.scheduler.current.host
        sender = (host.name, host.incarnation) if host is not None else ("-", 0)
        self.arrivals.setdefault(sender, []).append(self.scheduler.now)
        self.in_flight[sender] = self.in_flight.get(sender, 0) + 1
        self.peak[sender] = max(self.peak.get(sender, 0), self.in_flight[sender])
        try:
            yield
        finally:
            self.in_flight[sender] -= 1

    # --- what a call goes through -----------------------------------------------------

    def down(self) -> bool:
        now = self.scheduler.now
        return not self.quiet and any(start <= now < end for start, end in self.faults.outages)

    def _faulty(self, rate: float) -> bool:
        return not self.quiet and rate > 0 and self.rng.random() < rate

    def _travel(self, timeout: float) -> None:
        """The request's way there: while the provider is down, nothing arrives."""
        self.scheduler.wait("provider", self.rng.uniform(*self.latency) / 2)
        if self.down():
            raise ProviderNotReached(f"{self.name}: connection refused")

    def _back(self) -> None:
        """The answer's way back: the request was handled, whatever happens to the answer."""
        self.scheduler.wait("provider", self.rng.uniform(*self.latency) / 2)
        if self.down():
            raise ProviderOutcomeUnknown(f"{self.name}: connection reset before the answer")

    def _call(self, op: ProviderOperation, timeout: float) -> ProviderOutcome:
        self._travel(timeout)
        if self._faulty(self.faults.refuse_rate):
            if (
                op.kind is OperationKind.AUTHORIZE
                and self.honors_idempotency_keys
                and op.provider_key not in self.by_key
                and self._faulty(self.faults.stray_failure_rate)
            ):
                self._fail_later(op)
            raise ProviderNotReached(f"{self.name}: 503, not processed")
        if self._faulty(self.faults.timeout_rate):
            processed = self.rng.random() < self.faults.processed_on_timeout
            if processed:
                self._process(op)
            self.scheduler.wait("provider", timeout)
            raise ProviderOutcomeUnknown(f"{self.name}: timed out after {timeout:.3f} s")
        outcome = self._process(op)
        if self._faulty(self.faults.drop_rate):
            self.scheduler.wait("provider", self.rng.uniform(*self.latency) / 2)
            raise ProviderOutcomeUnknown(f"{self.name}: connection reset after sending")
        self._back()
        self.scheduler.maybe_crash_after("provider answer")
        return outcome

    def _fail_later(self, op: ProviderOperation) -> None:
        """The refused attempt did reach the provider's back end, which failed it and says so
        later, in a webhook: the key now answers with that failure. Meanwhile the payment
        may have moved to another provider, and this event is about an attempt it left."""
        outcome = ProviderOutcome(OutcomeStatus.DECLINED, decline_code="processing_error")
        self.by_key[op.provider_key] = outcome
        self.ledger.append(
            Movement(op.kind, op.payment_id, op.provider_key, op.amount, outcome.status, "",
                     self.scheduler.now)
        )  # fmt: skip
        self._send(WebhookKind.AUTHORIZATION_FAILED, op, "", with_key=self.rng.random() < 0.5)

    def _process(self, op: ProviderOperation) -> ProviderOutcome:
        if self.honors_idempotency_keys and op.provider_key in self.by_key:
            return self.by_key[op.provider_key]
        outcome = self._execute(op)
        self.by_key.setdefault(op.provider_key, outcome)
        self.ledger.append(
            Movement(
                op.kind,
                op.payment_id,
                op.provider_key,
                op.amount,
                outcome.status,
                outcome.provider_reference,
                self.scheduler.now,
            )
        )
        kind = _WEBHOOK_KIND[op.kind, outcome.status]
        if kind is not None and self._faulty(self.faults.webhook_rate):
            self._send(kind, op, outcome.provider_reference, with_key=self.rng.random() < 0.7)
        return outcome

    def _execute(self, op: ProviderOperation) -> ProviderOutcome:
        if op.kind is OperationKind.AUTHORIZE:
            if op.payment_method == DECLINING_METHOD:
                return ProviderOutcome(OutcomeStatus.DECLINED, decline_code="card_declined")
            self._events += 1
            reference = f"{self.name}_ch_{self._events}"
            charge = Charge(op.payment_id, reference, op.amount)
            if op.capture:
                charge.captured = op.amount
            self.charges[reference] = charge
            return ProviderOutcome(
                OutcomeStatus.SUCCEEDED,
                provider_reference=reference,
                captured_amount=op.amount if op.capture else 0,
            )
        charge = self.charges.get(op.provider_reference)
        if charge is None or charge.voided:
            return ProviderOutcome(OutcomeStatus.DECLINED, decline_code="no_such_charge")
        if op.kind is OperationKind.CAPTURE:
            if charge.captured + op.amount > charge.amount:
                return ProviderOutcome(OutcomeStatus.DECLINED, decline_code="amount_too_large")
            charge.captured += op.amount
        elif op.kind is OperationKind.CANCEL:
            if charge.captured:
                return ProviderOutcome(OutcomeStatus.DECLINED, decline_code="already_captured")
            charge.voided = True
        else:
            if charge.refunded + op.amount > charge.captured:
                return ProviderOutcome(OutcomeStatus.DECLINED, decline_code="amount_too_large")
            charge.refunded += op.amount
        return ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference=charge.reference)

    # --- webhooks ---------------------------------------------------------------------

    def _send(
        self, kind: WebhookKind, op: ProviderOperation, reference: str, *, with_key: bool
    ) -> None:
        self._events += 1
        # Some providers' authorization events name only their own charge: payorch learns
        # which payment that is when it records the authorization, often after the event
        # arrived (it timed out, recovery finds it later, or an operator records it): the
        # delivery waits unmatched until then.
        ours = not (
            kind is WebhookKind.AUTHORIZATION_SUCCEEDED
            and reference
            and self.quirks.random() < self.faults.reference_only_rate
        )
        body = json.dumps(
            {
                "id": f"{self.name}_evt_{self._events}",
                "kind": kind.value,
                "payment_id": op.payment_id if ours else "",
                "reference": reference,
                "key": op.provider_key if with_key and ours else "",
                "amount": op.amount,
                "currency": op.currency,
            },
            sort_keys=True,
        ).encode()
        signature = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        copies = 2 if self.rng.random() < self.faults.duplicate_rate else 1
        for _ in range(copies):
            due = self.scheduler.now + self.rng.uniform(0, self.faults.max_webhook_delay)
            self.outbox.append(Webhook(self.name, body, {_SIGNATURE: signature}, due))

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> list[WebhookEvent]:
        expected = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers.get(_SIGNATURE, "")):
            raise WebhookRejected(401, "signature mismatch")
        data: dict[str, Any] = json.loads(body)
        return [
            WebhookEvent(
                event_id=data["id"],
                kind=WebhookKind(data["kind"]),
                payment_id=data["payment_id"],
                provider_reference=data["reference"],
                operation_key=data["key"],
                amount=data["amount"],
                currency=data["currency"],
                decline_code="card_declined" if "failed" in data["kind"] else "",
            )
        ]


_WEBHOOK_KIND: dict[tuple[OperationKind, OutcomeStatus], WebhookKind | None] = {
    (OperationKind.AUTHORIZE, OutcomeStatus.SUCCEEDED): WebhookKind.AUTHORIZATION_SUCCEEDED,
    (OperationKind.AUTHORIZE, OutcomeStatus.DECLINED): WebhookKind.AUTHORIZATION_FAILED,
    (OperationKind.CAPTURE, OutcomeStatus.SUCCEEDED): WebhookKind.CAPTURE_SUCCEEDED,
    (OperationKind.CAPTURE, OutcomeStatus.DECLINED): WebhookKind.CAPTURE_FAILED,
    (OperationKind.CANCEL, OutcomeStatus.SUCCEEDED): WebhookKind.CANCEL_SUCCEEDED,
    (OperationKind.CANCEL, OutcomeStatus.DECLINED): None,
    (OperationKind.REFUND, OutcomeStatus.SUCCEEDED): WebhookKind.REFUND_SUCCEEDED,
    (OperationKind.REFUND, OutcomeStatus.DECLINED): WebhookKind.REFUND_FAILED,
}
