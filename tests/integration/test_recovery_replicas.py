"""Two replicas resolving the same operation in doubt, on one real store (an SQLite file and
PostgreSQL) and the real sandbox over HTTP: each step of the recovery schedule is recorded
once, however the replicas' lookups interleave. The interleaving is made deterministic by a
provider that lets the other replica act before it answers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from adapters.sandbox import SandboxAdapter, SandboxServer
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments
from orchestrator.commands import CapturePayment
from orchestrator.domain.errors import OperationInProgress
from orchestrator.domain.payment import Cause, Payment, Status
from orchestrator.ports import OperationKind, ProviderOperation, ProviderOutcome
from orchestrator.recovery import RecoveryWorker
from orchestrator.routing import Route, Router
from orchestrator.store import parse_database_url

CAUSE = Cause("default", "key-0")


class AnswersAfter:
    """The sandbox, except that its next lookup first lets ``meanwhile`` run (once): what
    another replica does while this replica's lookup is on the wire. It honours no key, so a
    lookup that finds nothing is all a replica can learn."""

    def __init__(self, sandbox: SandboxAdapter) -> None:
        self.inner = sandbox
        self.name = sandbox.name
        self.honors_idempotency_keys = False
        self.meanwhile: Callable[[], object] | None = None

    def authorize(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return self.inner.authorize(operation, timeout=timeout)

    def capture(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return self.inner.capture(operation, timeout=timeout)

    def cancel(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return self.inner.cancel(operation, timeout=timeout)

    def refund(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return self.inner.refund(operation, timeout=timeout)

    def lookup(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome | None:
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return self.inner.lookup(operation, timeout=timeout)


class DecidesThenWaits(Payments):
    """A replica that, once it has judged a lookup due, lets ``meanwhile`` run (once) before
    it goes on: the other replica recording that very step between this one's read of the
    payment and its lookup."""

    name = Payments.name  # the same tables: eventsourcing names them after the application
    meanwhile: Callable[[], object] | None = None

    def lookup_due(self, payment: Payment) -> bool:
        due = super().lookup_due(payment)
        meanwhile, self.meanwhile = self.meanwhile, None
        if due and meanwhile is not None:
            meanwhile()
        return due


@dataclass
class Replicas:
    first: Payments
    second: DecidesThenWaits
    first_provider: AnswersAfter
    second_provider: AnswersAfter
    sandbox: SandboxAdapter


def router(provider: AnswersAfter) -> Router:
    return Router({"sandbox": Route(provider, timeout=2.0, kind="sandbox")}, {"*": ["sandbox"]})


@pytest.fixture
def replicas(database_url: str, sandbox: SandboxServer) -> Iterator[Replicas]:
    adapter = SandboxAdapter(sandbox.url, name="sandbox")
    first_provider, second_provider = AnswersAfter(adapter), AnswersAfter(adapter)
    first = build_payments(database_url, router(first_provider))
    # The second replica is built on the same store; its schema is already there.
    second = DecidesThenWaits(
        env=parse_database_url(database_url).env, router=router(second_provider)
    )
    try:
        yield Replicas(first, second, first_provider, second_provider, adapter)
    finally:
        second.close()
        first.close()


def in_doubt(app: Payments) -> Payment:
    """An authorization whose outcome nobody saw and whose owner is long gone: the sandbox
    never received it, so every lookup finds nothing."""
    payment = Payment(
        id=uuid4(), amount=1000, currency="USD", payment_method="pm_card_visa", region="US",
        capture_mode="manual", reference="order-1", metadata={}, scope="default",
        idempotency_key="key-0", caused_by=CAUSE.as_data(), account="default",
    )  # fmt: skip
    deadline = datetime.now(UTC) - timedelta(seconds=10)
    payment.start_authorization(provider="sandbox", deadline=deadline, cause=CAUSE)
    payment.record_unknown(1, message="timed out", caused_by=CAUSE)
    app.save(payment)
    assert app.lookup_due(payment)
    return payment


def still_unknown(app: Payments, payment: Payment) -> int:
    events = app.events.get(payment.id)
    return sum(isinstance(e, Payment.StillUnknown) for e in events)


def test_two_replicas_looking_up_the_same_step_record_it_once(replicas: Replicas) -> None:
    payment = in_doubt(replicas.first)
    # The second replica does the whole lookup while the first one's is on the wire.
    replicas.first_provider.meanwhile = lambda: replicas.second.resolve(payment.id)

    replicas.first.resolve(payment.id)

    assert replicas.first.recovery_stats.snapshot()["lookups"] == 1
    assert replicas.second.recovery_stats.snapshot()["lookups"] == 1
    assert still_unknown(replicas.first, payment) == 1
    after = replicas.first.get_payment(payment.id)
    assert (after.status, after.operation(1).lookups) == (Status.PROCESSING, 1)


def test_two_recovery_workers_reaching_the_same_due_lookup_record_it_once(
    replicas: Replicas,
) -> None:
    payment = in_doubt(replicas.first)
    first, second = RecoveryWorker(replicas.first), RecoveryWorker(replicas.second)
    replicas.first_provider.meanwhile = second.run_once

    assert first.run_once() == 1

    assert still_unknown(replicas.first, payment) == 1
    assert replicas.first.get_payment(payment.id).operation(1).lookups == 1


def test_a_replica_that_judged_a_lookup_due_before_another_recorded_it_records_nothing(
    replicas: Replicas,
) -> None:
    payment = in_doubt(replicas.first)
    # The second replica's worker reads the payment and finds the lookup due; before it asks,
    # the first replica records that step.
    replicas.second.meanwhile = lambda: replicas.first.resolve(payment.id)

    RecoveryWorker(replicas.second).run_once()

    assert still_unknown(replicas.first, payment) == 1
    assert replicas.first.get_payment(payment.id).operation(1).lookups == 1


def test_what_a_lookup_finds_is_recorded_even_after_another_replica_found_nothing(
    replicas: Replicas,
) -> None:
    payment = in_doubt(replicas.first)
    op = payment.operation(1)

    def meanwhile() -> None:
        replicas.second.resolve(payment.id)  # finds nothing: this step is still unknown
        # ... and then the lost request reaches the sandbox after all.
        replicas.sandbox.authorize(
            ProviderOperation(
                kind=OperationKind.AUTHORIZE, payment_id=str(payment.id),
                provider_key=op.provider_key, amount=1000, currency="USD",
                payment_method="pm_card_visa",
            ),
            timeout=2.0,
        )  # fmt: skip

    replicas.first_provider.meanwhile = meanwhile

    resolved = replicas.first.resolve(payment.id)

    assert resolved.status is Status.AUTHORIZED
    assert still_unknown(replicas.first, payment) == 1
    events = [type(e).__name__ for e in replicas.first.events.get(payment.id)]
    assert events[-2:] == ["StillUnknown", "Authorized"]


def test_a_callers_follow_ups_on_a_payment_in_doubt_do_not_spend_the_schedule(
    replicas: Replicas,
) -> None:
    """Found by the simulator: a caller retrying a capture of a payment in doubt made each
    retry look the operation up and record a step, so a few retries within seconds sent the
    payment to review, days before its schedule (1 min ... 24 h) ran out."""
    payment = in_doubt(replicas.first)
    replicas.first.resolve(payment.id)  # the schedule's first step, due: recorded
    capture = CapturePayment(idempotency_key="capture-1", payment_id=str(payment.id))

    for _ in range(len(replicas.first.recovery_schedule) + 2):
        with pytest.raises(OperationInProgress):
            replicas.first.capture_payment(capture, scope="default")

    after = replicas.first.get_payment(payment.id)
    assert (after.status, after.operation(1).lookups) == (Status.PROCESSING, 1)
    assert still_unknown(replicas.first, payment) == 1
    # The provider was asked each time all the same: a found outcome would have been taken.
    assert replicas.first.recovery_stats.snapshot()["lookups_off_schedule"] == (
        len(replicas.first.recovery_schedule) + 2
    )


def test_a_recovery_worker_told_to_stop_mid_pass_finishes_its_lookup_and_asks_no_more(
    replicas: Replicas,
) -> None:
    """A drain (SIGTERM) stops the worker: the lookup on the wire is recorded, the payments
    still due wait for another replica instead of holding this one's exit."""
    payments = [in_doubt(replicas.first) for _ in range(3)]
    worker = RecoveryWorker(replicas.first)
    replicas.first_provider.meanwhile = worker.request_stop  # SIGTERM during the first lookup

    assert worker.run_once() == 1

    assert sum(still_unknown(replicas.first, p) for p in payments) == 1
