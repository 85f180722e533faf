"""The payments application: idempotent commands over event-sourced payments.

Every command follows the same path:

1. validate the request (nothing is read or written for bad input);
2. if a ``Command`` with this key exists, replay its result (or wait for its owner);
3. otherwise record the command and the payment's intent **in one transaction**; the event
   store's unique (id, version) makes exactly one concurrent duplicate win, across processes;
4. call the provider with the operation's derived key, within the operation's deadline;
5. record the outcome (or that it is unknown) and complete the command, again atomically.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar
from uuid import UUID, uuid4

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
    Repository,
)
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import IntegrityError, ProcessRecorder
from eventsourcing.utils import get_topic, strtobool

from orchestrator.accounts import DEFAULT_ACCOUNT, DEFAULT_INDEX_SIZE, AccountIndex
from orchestrator.commands import (
    CancelPayment,
    CapturePayment,
    Command,
    CreatePayment,
    RefundPayment,
    ResolvePayment,
    parse_payment_id,
)
from orchestrator.domain import validation
from orchestrator.domain.command import Command as CommandRecord
from orchestrator.domain.command import command_id, fingerprint, payment_id_for
from orchestrator.domain.errors import (
    ConcurrentModification,
    DomainError,
    IdempotencyKeyReused,
    NoProviderAvailable,
    PaymentNotFound,
    RequestInProgress,
)
from orchestrator.domain.payment import (
    IN_DOUBT,
    Cause,
    Kind,
    Operation,
    OperatorCause,
    Origin,
    Payment,
    RecoveryCause,
    Resolution,
)
from orchestrator.domain.reference import ProviderReference, reference_id
from orchestrator.drain import DrainGate
from orchestrator.encryption import CIPHER_TOPIC
from orchestrator.listing import ListingPage, PaymentFilter, PaymentListing
from orchestrator.logs import working_on
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)
from orchestrator.resilience.bulkhead import ProviderBusy
from orchestrator.resilience.provider import Stats
from orchestrator.results import DEFAULT_SIZE, KnownResult, ResultCache
from orchestrator.routing import Route, Router
from orchestrator.tracing import payment_attributes, span

log = logging.getLogger("payorch.payments")

# How long after an operation's deadline its owner is presumed gone: covers the time to
# record the outcome once the provider call itself has ended.
LEASE_GRACE = timedelta(seconds=1)
# Optimistic-concurrency retries when another command moved the payment between read and save.
MAX_CONFLICTS = 8
_POLL_START, _POLL_MAX = 0.005, 0.1
# A waiting duplicate answers this long before its caller's deadline, so that a slow store
# read or a busy machine still lets the retryable error reach the caller in time.
_ANSWER_MARGIN = 0.15
# Seconds between lookups of an operation in doubt, like Kill Bill's janitor: minutes, then
# hours. After the last step the payment is flagged for manual review.
DEFAULT_RECOVERY_SCHEDULE = (60.0, 300.0, 900.0, 3600.0, 3 * 3600.0, 12 * 3600.0, 24 * 3600.0)


PAYMENT_EVENT_TOPICS = [
    get_topic(member)
    for member in vars(Payment).values()
    if isinstance(member, type) and issubclass(member, Payment.Event)
]


def utc_now() -> datetime:
    return datetime.now(UTC)


P = ParamSpec("P")
R = TypeVar("R")


def _gated(
    command: Callable[Concatenate[Payments, P], R],
) -> Callable[Concatenate[Payments, P], R]:
    """A command counted by the drain gate while it runs, refused once the server drains."""

    @functools.wraps(command)
    def gated(self: Payments, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.drain.admitted():
            return command(self, *args, **kwargs)

    return gated


def replay(aggregate: Any, events: Iterable[Any]) -> Any:
    """An aggregate projected through ``events``: each one's ``mutate``. Every event of
    ours is an eventsourcing aggregate event, which has it."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


class Collected(ProcessingEvent[UUID]):
    """eventsourcing's ProcessingEvent, without its two runtime Protocol checks on each of our
    aggregates (``isinstance`` against a runtime-checkable Protocol walks its members: 18 us
    for a save of one aggregate, 6 % of a webhook acknowledgement's CPU). Anything that is not
    one of our aggregates is collected by eventsourcing's own code."""

    def collect_events(self, *objs: Any, **kwargs: Any) -> None:
        others = []
        for obj in objs:
            if isinstance(obj, Aggregate):
                self.events.extend(obj.collect_events())
                self.aggregates[obj.id] = obj
            elif obj is not None:
                others.append(obj)
        super().collect_events(*others, **kwargs)


class _Repository(Repository[UUID]):
    def get(self, aggregate_id: UUID, *, projector_func: Any = replay, **options: Any) -> Any:
        return super().get(aggregate_id, projector_func=projector_func, **options)

    def get_many(self, ids: Iterable[UUID]) -> dict[UUID, Any]:
        """The current version of each aggregate of ``ids`` that exists, as ``get`` gives it
        (a deep copy), the events of them all read in one query (``select_events_after``).
        As ``get`` does, a cached aggregate is fast-forwarded in place, under eventsourcing's
        lock for it, through the events after its version only; one that was not cached is
        projected from its first event and cached."""
        wanted = sorted(dict.fromkeys(ids))  # sorted: the locks are taken in one order
        cached: dict[UUID, Any] = {}
        if self.cache is not None:
            for aggregate_id in wanted:
                with contextlib.suppress(KeyError):
                    cached[aggregate_id] = self.cache.get(aggregate_id)
        locked = [i for i in wanted if i in cached]
        # eventsourcing 9.5.6's own per-aggregate lock (pinned in pyproject.toml): the one
        # its get() fast-forwards a cached aggregate in place under.
        with contextlib.ExitStack() as held:
            for aggregate_id in locked:
                lock = self._use_fastforward_lock(aggregate_id)
                held.callback(self._disuse_fastforward_lock, aggregate_id)
                held.enter_context(lock)
            after = {i: cached[i].version if i in cached else 0 for i in wanted}
            recorder: Any = self.event_store.recorder
            stored = recorder.select_events_after(after)
            found = dict(cached)
            for oid, events in itertools.groupby(stored, key=lambda e: e.originator_id):
                domain = (self.event_store.mapper.to_domain_event(e) for e in events)
                found[oid] = replay(found.get(oid), domain)
                if oid not in cached and self.cache is not None:
                    self.cache.put(oid, found[oid])
            return {i: copy.deepcopy(aggregate) for i, aggregate in found.items()}


class Payments(Application[UUID]):
    """Payments and the commands that change them."""

    name = "Payments"
    is_snapshotting_enabled = False
    # Long payments read in constant time: eventsourcing's aggregate cache. On every read of a
    # cached aggregate it fast-forwards through the events stored after the cached version
    # (whoever wrote them, whichever replica), so it never answers an old version as current;
    # and it hands out a deep copy, so a command's changes that fail to save never reach it.
    # Only events are stored, as before: no snapshot can disagree with the log. The settings
    # are the lowest-precedence defaults (the environment and the constructor's env win).
    env = {
        "AGGREGATE_CACHE_MAXSIZE": "4096",
        "AGGREGATE_CACHE_FASTFORWARD": "y",
        "AGGREGATE_CACHE_FASTFORWARD_SKIPPING": "n",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "y",
        # Event state sealed with AES-GCM under PAYORCH_ENCRYPTION_KEYS' current key, opened
        # with whichever key sealed it; in clear without keys (see orchestrator.encryption).
        "CIPHER_TOPIC": CIPHER_TOPIC,
    }

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        router: Router,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        new_owner: Callable[[], str] = lambda: uuid4().hex,
        recovery_schedule: Sequence[float] = DEFAULT_RECOVERY_SCHEDULE,
        result_cache_size: int = DEFAULT_SIZE,
        default_account: str = DEFAULT_ACCOUNT,
        account_index_size: int = DEFAULT_INDEX_SIZE,
    ) -> None:
        """``clock``, ``sleep``, ``monotonic`` (what callers' ``answer_by`` deadlines are
        measured on) and ``new_owner`` (a command's owner token) are injectable, so that the
        simulator (``tests/simulation``) runs the real code on simulated time and seeded ids.
        ``default_account`` owns the payments stored before payments named their account."""
        super().__init__(env)
        if not default_account:
            raise ValueError("the default account needs a name")
        self.default_account = default_account
        self.accounts = AccountIndex(self._stored_account, account_index_size)
        self.router = router
        self.clock = clock
        self.sleep = sleep
        self.monotonic = monotonic
        self.new_owner = new_owner
        if not recovery_schedule:
            raise ValueError("the recovery schedule needs at least one step")
        self.recovery_schedule = tuple(recovery_schedule)
        self.recovery_stats = Stats()
        self.results = ResultCache(result_cache_size)  # definite answers: replays read nothing
        self.listing = PaymentListing(self.recorder)  # kept by ListingProjector
        self.drain = DrainGate()  # closed on SIGTERM: see orchestrator/drain.py

    def construct_repository(self) -> Repository[UUID]:
        """eventsourcing's repository, with the same settings, replaying events with
        ``replay``: eventsourcing's projector asserts ``isinstance(event, CanMutateProtocol)``
        for every event, a runtime Protocol check that costs three times applying the event
        (10 µs against 3.6) on every read of every payment."""
        return _Repository(
            event_store=self.events,
            snapshot_store=self.snapshots,
            cache_maxsize=int(self.env.get(self.AGGREGATE_CACHE_MAXSIZE) or 0) or None,
            fastforward=strtobool(self.env.get(self.AGGREGATE_CACHE_FASTFORWARD, "y")),
            fastforward_skipping=strtobool(
                self.env.get(self.AGGREGATE_CACHE_FASTFORWARD_SKIPPING, "n")
            ),
            deepcopy_from_cache=strtobool(self.env.get(self.DEEPCOPY_FROM_AGGREGATE_CACHE, "y")),
        )

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """eventsourcing's ``Application.save`` (9.5.6, pinned), collecting with ``Collected``."""
        processing_event = Collected()
        processing_event.collect_events(*objs, **kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # deprecated in eventsourcing, kept as it does
        return recordings

    def construct_recorder(self) -> ProcessRecorder:
        # A process recorder: the application recorder plus a tracking table, so that what
        # the webhook consumer applies and the position it reached commit together.
        return self.factory.process_recorder()

    # --- queries --------------------------------------------------------------------------

    # Every query and command takes ``account``: the caller's account, which must own the
    # payment, or it is answered exactly as a payment that does not exist (no existence
    # leak). ``None`` is the service itself (recovery, webhooks, operator tools): any account.

    def get_payments(self, payment_ids: Iterable[UUID]) -> dict[UUID, Payment]:
        """The payments of ``payment_ids`` that exist, read in one query (the webhook
        consumer's page): as ``get_payment`` reads each, for the service (any account)."""
        repository: _Repository = self.repository  # type: ignore[assignment]
        found = repository.get_many(payment_ids)
        return {i: p for i, p in found.items() if isinstance(p, Payment)}

    def get_payment(
        self, payment_id: UUID | str, *, version: int | None = None, account: str | None = None
    ) -> Payment:
        pid = payment_id if isinstance(payment_id, UUID) else parse_payment_id(payment_id)
        try:
            payment: Payment = self.repository.get(pid, version=version)
        except AggregateNotFoundError:
            raise PaymentNotFound(str(payment_id)) from None
        if not isinstance(payment, Payment):  # an id of another kind of aggregate
            raise PaymentNotFound(str(payment_id))
        if account is not None and self.owner(payment) != account:
            raise PaymentNotFound(str(payment_id))
        return payment

    def owner(self, payment: Payment) -> str:
        """The account the payment belongs to."""
        return payment.account or self.default_account

    def account_of(self, event: DomainEventProtocol[UUID]) -> str:
        """The account owning the payment of a payment event, mostly without a store read:
        what the event stream filters by."""
        if isinstance(event, Payment.Requested):
            account = event.account or self.default_account
            self.accounts.put(event.originator_id, account)
            return account
        return self.accounts.get(event.originator_id)

    def _stored_account(self, payment_id: UUID) -> str:
        first = next(iter(self.events.get(payment_id, limit=1)), None)
        account = first.account if isinstance(first, Payment.Requested) else ""
        return account or self.default_account

    def events_after(
        self, position: int, *, limit: int = 500
    ) -> list[tuple[int, DomainEventProtocol[UUID]]]:
        """Payment events of every payment stored after ``position``, in commit order, with
        their positions (which may have gaps): what downstream consumers follow."""
        page = self.recorder.select_notifications(
            start=position, limit=limit, topics=PAYMENT_EVENT_TOPICS, inclusive_of_start=False
        )
        return [(n.id, self.mapper.to_domain_event(n)) for n in page]

    def event_pages(
        self, *, page: int = 1000
    ) -> Iterator[list[tuple[int, DomainEventProtocol[UUID]]]]:
        """Every payment event of every payment in commit order, a page at a time, each with
        its position: how the audit tools read the whole log in constant memory. The last
        page is short, maybe empty."""
        position = 0
        while True:
            batch = self.events_after(position, limit=page)
            yield batch
            if len(batch) < page:
                return
            position = batch[-1][0]

    def list_payments(
        self, where: PaymentFilter, *, account: str, page_size: int = 0, page_token: str = ""
    ) -> ListingPage:
        """The account's payments that match, newest first, from the listing (eventually
        consistent: see ``orchestrator.listing``)."""
        return self.listing.search(account, where, page_size=page_size, page_token=page_token)

    def payment_events(
        self, payment_id: str, *, account: str | None = None
    ) -> Iterator[DomainEventProtocol[UUID]]:
        payment = self.get_payment(payment_id, account=account)
        yield from self.events.get(payment.id, lte=payment.version)

    # --- commands -------------------------------------------------------------------------

    @_gated
    def create_payment(
        self,
        request: CreatePayment,
        *,
        scope: str,
        account: str | None = None,
        answer_by: float | None = None,
    ) -> Payment:
        """``account`` owns the new payment (``None``: the default account)."""
        if (known := self._answered(scope, account, request)) is not None:
            return known
        cmd = request.validated()
        cid = command_id(scope, cmd.idempotency_key)
        if (replayed := self._replay_if_known(cid, cmd, answer_by, account, scope)) is not None:
            return replayed
        routes = self.router.candidates(cmd.region, cmd.currency)
        if not routes:
            raise NoProviderAvailable(
                f"no provider serves region {cmd.region} in {cmd.currency}", region=cmd.region
            )
        available = [r for r in routes if r.available()]
        if not available:
            raise NoProviderAvailable(
                f"every provider for region {cmd.region} is unavailable "
                "(circuit open, or over its outbound limits)",
                region=cmd.region,
                retry_after=min(r.retry_after() for r in routes),
            )
        with ExitStack() as held:
            route = self._admit(available, held, region=cmd.region)
            fallbacks = available[available.index(route) + 1 :]
            cause = Cause(scope, cmd.idempotency_key)
            payment = Payment(
                id=payment_id_for(cid),
                amount=cmd.amount,
                currency=cmd.currency,
                payment_method=cmd.payment_method,
                region=cmd.region,
                capture_mode=cmd.capture_mode,
                reference=cmd.reference,
                metadata=cmd.metadata,
                scope=scope,
                idempotency_key=cmd.idempotency_key,
                caused_by=cause.as_data(),
                account=self.default_account if account is None else account,
            )
            op = payment.start_authorization(
                provider=route.provider.name, deadline=self._deadline(route), cause=cause
            )
            record = self._command_record(cid, cmd, scope, payment.id, op)
            try:
                self.save(payment, record)
            except IntegrityError:
                held.close()  # a duplicate waits for the first without holding its slot
                return self._replay_after_conflict(cid, cmd, record, answer_by, account)
            return self._perform(payment, record, op, answer_by, fallbacks)

    @staticmethod
    def _admit(routes: Sequence[Route], held: ExitStack, *, region: str) -> Route:
        """The first route whose bulkhead admits a call now, its slot (and first token)
        taken before any intent is written and held until ``held`` closes; if none does,
        ``NoProviderAvailable``, with nothing written (see ``resilience/bulkhead.py``)."""
        for route in routes:
            try:
                held.enter_context(route.admitted())
            except ProviderBusy:
                continue
            return route
        raise NoProviderAvailable(
            f"every provider for region {region} is over its outbound limits",
            region=region,
            retry_after=min(r.retry_after() for r in routes),
        )

    @_gated
    def capture_payment(
        self,
        request: CapturePayment,
        *,
        scope: str,
        account: str | None = None,
        answer_by: float | None = None,
    ) -> Payment:
        if (known := self._answered(scope, account, request)) is not None:
            return known
        cmd = request.validated()

        def start(payment: Payment, cause: Cause) -> Operation:
            amount = validation.optional_amount(cmd.amount, payment.currency)
            return payment.start_capture(amount, deadline=self._deadline_for(payment), cause=cause)

        return self._follow_up(cmd, scope, account, answer_by, start)

    @_gated
    def cancel_payment(
        self,
        request: CancelPayment,
        *,
        scope: str,
        account: str | None = None,
        answer_by: float | None = None,
    ) -> Payment:
        if (known := self._answered(scope, account, request)) is not None:
            return known
        cmd = request.validated()

        def start(payment: Payment, cause: Cause) -> Operation:
            return payment.start_cancel(deadline=self._deadline_for(payment), cause=cause)

        return self._follow_up(cmd, scope, account, answer_by, start)

    @_gated
    def refund_payment(
        self,
        request: RefundPayment,
        *,
        scope: str,
        account: str | None = None,
        answer_by: float | None = None,
    ) -> Payment:
        if (known := self._answered(scope, account, request)) is not None:
            return known
        cmd = request.validated()

        def start(payment: Payment, cause: Cause) -> Operation:
            amount = validation.optional_amount(cmd.amount, payment.currency)
            return payment.start_refund(
                amount, reason=cmd.reason, deadline=self._deadline_for(payment), cause=cause
            )

        return self._follow_up(cmd, scope, account, answer_by, start)

    @_gated
    def resolve_payment(self, request: ResolvePayment, *, scope: str, operator: str) -> Payment:
        """An operator settles the operation in review with what the provider's dashboard
        shows. Idempotent like every command: a retry with the key replays the result. No
        provider is called: the operator's reading is the outcome, recorded with who read it."""
        cmd = request.validated()
        cid = command_id(scope, cmd.idempotency_key)
        for _ in range(MAX_CONFLICTS):
            if (replayed := self._replay_if_known(cid, cmd, None, None)) is not None:
                return replayed
            payment = self.get_payment(cmd.payment_id)
            authorized_before = payment.authorized
            op = payment.resolve_by_operator(
                Resolution(cmd.outcome),
                note=cmd.note,
                caused_by=OperatorCause(operator, scope, cmd.idempotency_key),
                sequence=cmd.operation or None,
                provider_reference=cmd.provider_reference,
            )
            record = CommandRecord(
                id=cid,
                scope=scope,
                idempotency_key=cmd.idempotency_key,
                name=cmd.name,
                fingerprint=fingerprint(cmd.name, cmd.parameters()),
                payment_id=payment.id,
                owner=self.new_owner(),
                lease_until=self.clock(),
            )
            record.complete(payment_version=payment.version, in_doubt=False)
            waiting = self.complete_waiting_command(payment, op)
            learned = learned_reference(payment, authorized_before)
            try:
                self.save(payment, record, *waiting, *learned)
            except IntegrityError:
                continue  # a duplicate, or the payment moved: the next pass replays or re-checks
            log.warning(
                "payment=%s op=%s resolved by operator %s as %s",
                payment.id, op.sequence, operator, cmd.outcome,
            )  # fmt: skip
            self._remember(record, payment)
            return payment
        raise ConcurrentModification("the payment kept changing; retry with the same key")

    # --- the shared path of follow-up commands --------------------------------------------

    def _follow_up(
        self,
        cmd: CapturePayment | CancelPayment | RefundPayment,
        scope: str,
        account: str | None,
        answer_by: float | None,
        start: Callable[[Payment, Cause], Operation],
    ) -> Payment:
        cid = command_id(scope, cmd.idempotency_key)
        if (replayed := self._replay_if_known(cid, cmd, answer_by, account, scope)) is not None:
            return replayed
        for _ in range(MAX_CONFLICTS):
            # Another account's payment is refused here: before a lookup, a write or a call.
            payment = self.get_payment(cmd.payment_id, account=account)
            if self._lease_over(payment):
                # Never act on a guess: ask the provider what became of the operation in
                # doubt before starting another one.
                payment = self.resolve(payment.id)
            try:
                op = start(payment, Cause(scope, cmd.idempotency_key))
            except DomainError:
                # A concurrent duplicate may have won since we looked: its operation is what
                # now makes ours look refused. Answer with its result if so.
                replayed = self._replay_if_known(cid, cmd, answer_by, account)
                if replayed is not None:
                    return replayed
                raise
            record = self._command_record(cid, cmd, scope, payment.id, op)
            with ExitStack() as held:
                route = self.router.route(payment.provider)
                self._admit([route], held, region=payment.region)
                try:
                    self.save(payment, record)
                except IntegrityError:
                    if self.find_command(cid) is not None:
                        held.close()  # a duplicate waits for the first without its slot
                        return self._replay_after_conflict(cid, cmd, record, answer_by, account)
                    continue  # another command moved the payment on: read it again, re-check
                return self._perform(payment, record, op, answer_by)
        raise ConcurrentModification("the payment kept changing; retry with the same key")

    def _command_record(
        self, cid: UUID, cmd: Command, scope: str, payment_id: UUID, op: Operation
    ) -> CommandRecord:
        return CommandRecord(
            id=cid,
            scope=scope,
            idempotency_key=cmd.idempotency_key,
            name=cmd.name,
            fingerprint=fingerprint(cmd.name, cmd.parameters()),
            payment_id=payment_id,
            owner=self.new_owner(),
            lease_until=op.deadline + LEASE_GRACE,
        )

    def _deadline(self, route: Route) -> datetime:
        return self.clock() + timedelta(seconds=route.timeout)

    def _deadline_for(self, payment: Payment) -> datetime:
        return self._deadline(self.router.route(payment.provider))

    # --- calling the provider and recording what it said ----------------------------------

    def _perform(
        self,
        payment: Payment,
        record: CommandRecord,
        op: Operation,
        answer_by: float | None,
        fallbacks: Sequence[Route] = (),
    ) -> Payment:
        pid, kind = str(payment.id), op.kind.value
        with (
            ExitStack() as held,  # the slots of the providers it fails over to
            working_on(pid, kind),
            span(f"payment.{kind}", payment_attributes(pid, op.provider, kind)),
        ):
            return self._attempts(payment, record, op, answer_by, fallbacks, held=held)

    def _attempts(
        self,
        payment: Payment,
        record: CommandRecord,
        op: Operation,
        answer_by: float | None,
        fallbacks: Sequence[Route],
        *,
        held: ExitStack,
    ) -> Payment:
        while True:
            route = self.router.route(op.provider)
            budget = (op.deadline - self.clock()).total_seconds()
            if answer_by is not None:  # never past the caller's own deadline
                budget = min(budget, answer_by - self.monotonic())
            try:
                if budget <= 0:
                    raise ProviderNotReached("not attempted: no time was left for the call")
                outcome = self._call(route, op.kind, self._provider_operation(payment, op), budget)
            except ProviderNotReached as e:
                fallback = None
                if op.kind is Kind.AUTHORIZE:
                    fallback = self._admit_fallback(fallbacks, held)
                if fallback is None:
                    outcome = ProviderOutcome(OutcomeStatus.FAILED, message=e.message)
                else:
                    # Certainly not charged: the next provider may try, with a new attempt.
                    fallbacks = fallbacks[fallbacks.index(fallback) + 1 :]
                    moved = self._fail_over(payment, record, op, fallback, e.message)
                    if moved is None:
                        return self._result_now(record)
                    payment, record, op = moved
                    continue
            except ProviderOutcomeUnknown as e:
                log.warning(
                    "outcome unknown: payment=%s op=%s provider=%s: %s",
                    payment.id, op.sequence, op.provider, e.message,
                )  # fmt: skip
                return self._record_outcome(payment, record, op, None, message=e.message)
            log.debug("payment=%s op=%s -> %s", payment.id, op.sequence, outcome.status.value)
            return self._record_outcome(payment, record, op, outcome)

    @staticmethod
    def _admit_fallback(fallbacks: Sequence[Route], held: ExitStack) -> Route | None:
        """The next provider that would let a call through and whose bulkhead admits it now
        (its slot held by ``held``), or ``None``: a busy fallback is skipped before the
        payment fails over to it, as a busy provider is before a new payment's intent."""
        for route in fallbacks:
            if not route.available():
                continue
            try:
                held.enter_context(route.admitted())
            except ProviderBusy:
                continue
            return route
        return None

    def _fail_over(
        self, payment: Payment, record: CommandRecord, op: Operation, route: Route, why: str
    ) -> tuple[Payment, CommandRecord, Operation] | None:
        log.warning(
            "payment=%s fails over from %s to %s: %s",
            payment.id, op.provider, route.provider.name, why,
        )  # fmt: skip
        moved = payment.fail_over(
            op.sequence,
            provider=route.provider.name,
            deadline=self._deadline(route),
            message=why,
            caused_by=Cause(op.scope, op.idempotency_key),
        )
        record.extend_lease(moved.deadline + LEASE_GRACE)
        try:
            self.save(payment, record)
        except IntegrityError:
            return None  # someone else acted on the payment meanwhile: answer with its state
        return payment, record, moved

    @staticmethod
    def _call(route: Route, kind: Kind, request: ProviderOperation, timeout: float) -> Any:
        """The provider call for ``kind``, within ``timeout`` and the route's own budget."""
        provider = route.provider
        call = {
            Kind.AUTHORIZE: provider.authorize,
            Kind.CAPTURE: provider.capture,
            Kind.CANCEL: provider.cancel,
            Kind.REFUND: provider.refund,
        }[kind]
        return call(request, timeout=min(timeout, route.timeout))

    @staticmethod
    def _provider_operation(payment: Payment, op: Operation) -> ProviderOperation:
        return ProviderOperation(
            kind=OperationKind(op.kind.value),
            payment_id=str(payment.id),
            provider_key=op.provider_key,
            amount=op.amount,
            currency=payment.currency,
            payment_method=payment.payment_method,
            capture=payment.capture_mode == "automatic",
            provider_reference=payment.provider_reference,
            reference=payment.reference,
            reason=op.reason,
            metadata=payment.metadata,
        )

    def _record_outcome(
        self,
        payment: Payment,
        record: CommandRecord,
        op: Operation,
        outcome: ProviderOutcome | None,
        *,
        message: str = "",
    ) -> Payment:
        """Records the outcome (``None``: unknown) and completes the command atomically. If
        something else resolved the operation meanwhile, only completes the command."""
        for _ in range(MAX_CONFLICTS):
            learned: list[ProviderReference] = []
            if payment.operation(op.sequence).status in IN_DOUBT:
                # Answered to the call of the command that started the operation.
                by = Cause(op.scope, op.idempotency_key)
                learned = apply_outcome(payment, op, outcome, message, caused_by=by)
            record.complete(
                payment_version=payment.version,
                in_doubt=payment.operation_in_doubt is not None,
            )
            try:
                self.save(payment, record, *learned)
            except IntegrityError:
                payment = self.get_payment(payment.id)
                record = self._get_command(record.id)
                if record.completed:
                    return self._result(record)
                continue
            self._remember(record, payment)
            return payment
        raise ConcurrentModification("could not record the provider's answer; retry with the key")

    # --- resolving an operation in doubt ------------------------------------------------

    def _lease_over(self, payment: Payment) -> bool:
        op = payment.operation_in_doubt
        return op is not None and self.clock() >= op.deadline + LEASE_GRACE

    def lookup_due(self, payment: Payment) -> bool:
        """Whether the recovery schedule says to ask the provider about this payment now."""
        op = payment.operation_in_doubt
        if op is None or op.review_required or not self._lease_over(payment):
            return False
        if op.last_checked is None:
            return True
        wait = self.recovery_schedule[min(op.lookups, len(self.recovery_schedule)) - 1]
        return self.clock() >= op.last_checked + timedelta(seconds=wait)

    def resolve(self, payment_id: UUID) -> Payment:
        """Asks the provider what became of the payment's operation in doubt, and records
        what it learns. Harmless when several replicas do it at once: a provider that honours
        keys deduplicates a re-send, the event store refuses all but one record of an
        outcome, and a lookup that found nothing is recorded once per step of the schedule."""
        return self.look_up(self.get_payment(payment_id))

    def look_up(self, payment: Payment) -> Payment:
        """``resolve``, for the payment as the caller read it. The recovery worker passes the
        read on which it judged the lookup due: that is the step it may record, even when
        another replica records the same step between the worker's read and its lookup."""
        op = payment.operation_in_doubt
        if op is None or op.review_required or not self._lease_over(payment):
            return payment
        with span("payment.lookup", payment_attributes(str(payment.id), op.provider, "lookup")):
            return self._look_up(payment, op)

    def _look_up(self, payment: Payment, op: Operation) -> Payment:
        # A follow-up command asks whenever its caller retries; only a lookup the schedule
        # called for may count as a step, or a few retries would send it to review early.
        scheduled = self.lookup_due(payment)
        route = self.router.route(op.provider)
        request = self._provider_operation(payment, op)
        message = "the provider has no record of it yet"
        found: ProviderOutcome | None = None
        try:
            found = route.provider.lookup(request, timeout=route.timeout)
        except ProviderNotReached as e:
            # Nobody was asked (an open circuit, a refused connection): that is no step of
            # the schedule, whose end means "unknown after every lookup at the provider".
            # Nothing is recorded, so the payment stays due and a later pass asks again.
            log.info(
                "lookup not sent: payment=%s op=%s provider=%s: %s",
                payment.id, op.sequence, op.provider, e.message,
            )  # fmt: skip
            self.recovery_stats.add("lookups_not_sent")
            return payment
        except ProviderOutcomeUnknown as e:
            message = e.message
        else:
            if found is None and route.provider.honors_idempotency_keys:
                # Safe only because the provider deduplicates the key: if the first request
                # did arrive, this returns its result; if it did not, this makes it now.
                try:
                    found = self._call(route, op.kind, request, route.timeout)
                except (ProviderNotReached, ProviderOutcomeUnknown) as e:
                    message = e.message  # the lookup itself was answered: a step was taken
        self.recovery_stats.add("lookups")
        if found is None and not scheduled:
            self.recovery_stats.add("lookups_off_schedule")
            return payment
        return self._record_resolution(payment.id, op, found, message)

    def _record_resolution(
        self, payment_id: UUID, asked: Operation, found: ProviderOutcome | None, message: str
    ) -> Payment:
        """Records what the lookup about ``asked`` (the operation as it was when the lookup
        was decided) found, on the payment as it is now."""
        sequence = asked.sequence
        for _ in range(MAX_CONFLICTS):
            payment = self.get_payment(payment_id)
            op = payment.operation(sequence)
            if op.status not in IN_DOUBT or op.review_required:
                return payment  # another replica recorded it first
            if found is None and op.lookups != asked.lookups:
                # Another replica recorded this step while we asked. Recording ours too would
                # count the step twice and send the payment to review before its schedule ran.
                self.recovery_stats.add("lookups_already_recorded")
                return payment
            changed: list[Any] = [payment]
            if found is not None:
                changed.extend(apply_outcome(payment, op, found, "", caused_by=RecoveryCause()))
                changed.extend(self.complete_waiting_command(payment, op))
                self.recovery_stats.add("resolved")
            else:
                payment.record_still_unknown(
                    sequence, checked_at=self.clock(), message=message, caused_by=RecoveryCause()
                )
                if payment.operation(sequence).lookups > len(self.recovery_schedule):
                    payment.require_review(
                        sequence,
                        message=f"unresolved after {op.lookups + 1} lookups: {message}",
                        caused_by=RecoveryCause(),
                    )
                    self.recovery_stats.add("review_required")
            try:
                self.save(*changed)
            except IntegrityError:
                continue
            return payment
        raise ConcurrentModification("could not record what the provider said")

    def _result_now(self, record: CommandRecord) -> Payment:
        """The answer after someone else acted on the payment: if that completed the command
        (a webhook or recovery learnt the outcome), its result, as every replay will answer;
        otherwise the payment as it is now (found by the simulator, seed 1583)."""
        current = self._get_command(record.id)
        if current.completed:
            return self._result(current)
        return self.get_payment(record.payment_id)

    # --- replaying a known command --------------------------------------------------------

    def complete_waiting_command(self, payment: Payment, op: Operation) -> list[CommandRecord]:
        """The command that started ``op``, completed at the payment's version now that its
        outcome is known (to be saved with the payment); if it answered "in doubt", its result
        is fixed at this version from now on. Nothing if its result was already definite."""
        record = self.find_command(command_id(op.scope, op.idempotency_key))
        if record is None:
            return []
        if not record.completed:
            record.complete(payment_version=payment.version, in_doubt=False)
        elif not record.learn_outcome(payment_version=payment.version):
            return []
        return [record]

    def find_command(self, cid: UUID) -> CommandRecord | None:
        try:
            record: CommandRecord = self.repository.get(cid)
        except AggregateNotFoundError:
            return None
        return record

    def record_processing(self, processing: ProcessingEvent[UUID]) -> None:
        """Saves what processing one notification produced, with its tracking position, in
        one transaction: the consumer's exactly-once."""
        self._record(processing)

    def _get_command(self, cid: UUID) -> CommandRecord:
        record = self.find_command(cid)
        assert record is not None, "commands are never deleted"
        return record

    def _replay_if_known(
        self,
        cid: UUID,
        cmd: Command,
        answer_by: float | None,
        account: str | None,
        scope: str | None = None,
    ) -> Payment | None:
        if (known := self.results.get(cid)) is not None:
            _refuse_if_reused(known.fingerprint, known.name, cmd)
            if account is not None and self.owner(known.payment) != account:
                raise _not_yours(cmd)
            if scope is not None:  # its next replays skip validation (results.py)
                self.results.note(scope, cmd, known)
            return known.payment
        record = self.find_command(cid)
        return None if record is None else self._replay(record, cmd, answer_by, account)

    def _answered(self, scope: str, account: str | None, request: Command) -> Payment | None:
        """The answer to a replay identical to one this cache answered before (no
        validation, no store: results.py), and only to the account that owns it."""
        known = self.results.answer(scope, request)
        if known is None or (account is not None and self.owner(known) != account):
            return None
        return known

    def _replay_after_conflict(
        self,
        cid: UUID,
        cmd: Command,
        mine: CommandRecord,
        answer_by: float | None,
        account: str | None,
    ) -> Payment:
        record = self._get_command(cid)
        if record.owner == mine.owner:
            # Our own save committed although the driver reported a conflict (a retried
            # commit). Never call the provider from here: the record's lease will expire and
            # the operation, still pending, is resolved by asking the provider.
            log.warning("save reported a conflict but committed: command %s", cid)
        return self._replay(record, cmd, answer_by, account)

    def _replay(
        self, record: CommandRecord, cmd: Command, answer_by: float | None, account: str | None
    ) -> Payment:
        _refuse_if_reused(record.fingerprint, record.name, cmd)
        # The command id includes the scope, which names one caller of one account; this
        # holds even for a scope that two accounts were configured to share.
        if account is not None and self.accounts.get(record.payment_id) != account:
            raise _not_yours(cmd)
        poll = _POLL_START
        while not record.completed:
            if self.clock() >= record.lease_until:
                # Its owner is gone (crashed mid-call): answer with the payment as recorded,
                # its operation still in doubt. Never call the provider again from here.
                return self.get_payment(record.payment_id)
            if answer_by is not None and self.monotonic() + poll + _ANSWER_MARGIN >= answer_by:
                retry_after = (record.lease_until - self.clock()).total_seconds()
                raise RequestInProgress(cmd.idempotency_key, retry_after=max(retry_after, 0.1))
            self.sleep(poll)
            poll = min(poll * 1.5, _POLL_MAX)
            record = self._get_command(record.id)
        return self._result(record)

    def _result(self, record: CommandRecord) -> Payment:
        if record.in_doubt:
            # It answered "in doubt" and nothing has learnt the outcome since: show what is
            # known now. Once recovery or a webhook learns it, the result is fixed there.
            return self.get_payment(record.payment_id)
        payment = self.get_payment(record.payment_id, version=record.payment_version)
        self._remember(record, payment)
        return payment

    def _remember(self, record: CommandRecord, payment: Payment) -> None:
        """Keeps a definite answer for the command's replays: the payment as of the version
        the command completed at. An answer in doubt is never kept (it changes once the
        outcome is learnt), nor a payment read at another version."""
        if record.completed and not record.in_doubt and payment.version == record.payment_version:
            self.results.put(record.id, KnownResult(record.name, record.fingerprint, payment))


def _not_yours(cmd: Command) -> DomainError:
    """What a caller learns of a command of its scope on another account's payment: for a
    follow-up, that its payment does not exist; for a create, that the key is taken."""
    if isinstance(cmd, CreatePayment):
        return IdempotencyKeyReused(cmd.idempotency_key, cmd.name)
    return PaymentNotFound(cmd.payment_id)


def _refuse_if_reused(recorded: str, name: str, cmd: Command) -> None:
    """The same key with other parameters is another request: refused, never replayed."""
    if recorded != fingerprint(cmd.name, cmd.parameters()):
        raise IdempotencyKeyReused(cmd.idempotency_key, name)


def apply_outcome(
    payment: Payment,
    op: Operation,
    outcome: ProviderOutcome | None,
    message: str,
    *,
    caused_by: Origin,
) -> list[ProviderReference]:
    """Records what the provider said (``None``: that nobody knows). Returns the index entry
    of the provider's payment id when this outcome taught it, to be saved with the payment."""
    authorized_before = payment.authorized
    if outcome is None:
        payment.record_unknown(op.sequence, message=message, caused_by=caused_by)
    elif outcome.status is OutcomeStatus.SUCCEEDED:
        amount = outcome.captured_amount if op.kind is Kind.AUTHORIZE else op.amount
        payment.record_success(
            op.sequence,
            provider_reference=outcome.provider_reference,
            amount=amount,
            caused_by=caused_by,
        )
    elif outcome.status is OutcomeStatus.DECLINED:
        payment.record_decline(
            op.sequence,
            decline_code=outcome.decline_code or "declined",
            message=outcome.message,
            caused_by=caused_by,
        )
    else:
        why = outcome.message or "failed at the provider"
        payment.record_failure(op.sequence, message=why, caused_by=caused_by)
    return learned_reference(payment, authorized_before)


def learned_reference(payment: Payment, authorized_before: bool) -> list[ProviderReference]:
    if authorized_before or not payment.authorized or not payment.provider_reference:
        return []
    return [
        ProviderReference(
            id=reference_id(payment.provider, payment.provider_reference),
            provider=payment.provider,
            provider_reference=payment.provider_reference,
            payment_id=payment.id,
        )
    ]
