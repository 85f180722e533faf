"""One simulated world per seed: replicas of payorch on one store, providers, callers.

Everything random is drawn from the seed: how many replicas and payments, each provider's
faults and whether it honours idempotency keys, what each caller asks for and when, where
replicas crash. The real code runs: ``Payments`` (commands, replays, failover, resolution),
the resilient layer (bulkhead, breaker, retries, timeouts), routing, ``RecoveryWorker``,
``WebhookIntake`` and ``WebhookProcessor``, and ``audit verify`` at the end.
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import eventsourcing.domain
from payorch_client.errors import Refusal
from payorch_client.retry import retryable

from orchestrator.api.errors import status_code_for
from orchestrator.application import Payments
from orchestrator.bootstrap import resilient_route, webhook_verifiers
from orchestrator.commands import (
    CancelPayment,
    CapturePayment,
    CreatePayment,
    RefundPayment,
    ResolvePayment,
)
from orchestrator.domain.command import fingerprint
from orchestrator.domain.errors import (
    DomainError,
    IdempotencyKeyReused,
    PaymentNotFound,
)
from orchestrator.domain.payment import Kind, Operation, Payment, Status
from orchestrator.encryption import KeyedAESCipher
from orchestrator.listing import ListingProjector, PaymentFilter
from orchestrator.ports import OutcomeStatus
from orchestrator.recovery import RecoveryWorker
from orchestrator.resilience.provider import Stats
from orchestrator.resilience.retry import full_jitter
from orchestrator.routing import Router
from orchestrator.webhooks.intake import Request, WebhookIntake
from orchestrator.webhooks.processor import WebhookProcessor
from tests.simulation.providers import DECLINING_METHOD, Faults, SimulatedProvider
from tests.simulation.scheduler import EPOCH, Crashed, Host, Scheduler
from tests.simulation.store import SimulatedStore

# Two accounts: customer i calls as ACCOUNTS[i % 2]; the other account's callers try the same
# key (customer 0's twin: a payment of its own) and each customer's payment (never found).
ACCOUNTS = ("shop", "market")
CALL_TIMEOUT = 1.0  # a provider call's whole budget (the operation's deadline)
SCHEDULE = (1.0, 2.0, 4.0)  # recovery lookups, seconds apart
LOAD_SECONDS = 20.0  # callers start within this; faults and crashes end at its end
SETTLE_SECONDS = 40.0  # then: recovery, webhooks and breakers have this long to settle
OPERATOR_EVERY = 3.0  # seconds between an operator's looks at the review queue
CALLER_DEADLINE = 2.5  # each call's gRPC deadline, as ``answer_by``
# Two encryption keys (id:base64), fixed: made up for the simulation, they protect nothing.
SIMULATION_KEYS = tuple(
    f"{name}:{base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()}"
    for name in ("sim-old", "sim-new")
)


@dataclass(frozen=True)
class Caller:
    """Who calls: its account, and its idempotency scope (the caller's name)."""

    account: str
    scope: str


def caller_of(customer: int, *, other: bool = False) -> Caller:
    """Customer ``customer``'s caller, or (``other``) a caller of the other account."""
    account = ACCOUNTS[(customer + other) % 2]
    return Caller(account, f"{account}.checkout")


@dataclass
class Answer:
    """What a command's caller was told the first time it got a definite answer."""

    request: Any
    summary: tuple[Any, ...]
    caller: Caller


@dataclass
class Scenario:
    """What the seed chose: printed with a failure, so a reader knows the world it ran in."""

    replicas: int
    payments: int
    crash_rate: float
    providers: dict[str, tuple[bool, Faults]]
    # each provider's outbound limits in payorch's configuration, as a TOML table sets them
    limits: dict[str, dict[str, float]] = field(default_factory=dict)

    def describe(self) -> str:
        honours = ", ".join(
            f"{name} ({'honours' if keys else 'ignores'} keys"
            f"{', outages' if faults.outages else ''}"
            f"{''.join(f', {k} {v:g}' for k, v in self.limits.get(name, {}).items())})"
            for name, (keys, faults) in self.providers.items()
        )
        return (
            f"{self.replicas} replica(s), {self.payments} payment(s), "
            f"crash rate {self.crash_rate:.3f}, providers {honours}"
        )


def choose(rng: random.Random) -> Scenario:
    providers = {}
    for name in ("alpha", "beta"):
        outages: list[tuple[float, float]] = []
        for _ in range(rng.choice((0, 0, 1, 2))):
            start = EPOCH + rng.uniform(0, LOAD_SECONDS)
            outages.append((start, start + rng.uniform(1, 15)))
        faults = Faults(
            refuse_rate=rng.choice((0.0, 0.1, 0.3)),
            timeout_rate=rng.choice((0.0, 0.1, 0.3)),
            processed_on_timeout=rng.random(),
            drop_rate=rng.choice((0.0, 0.1, 0.2)),
            outages=tuple(outages),
            webhook_rate=rng.choice((0.0, 0.5, 1.0)),
            duplicate_rate=rng.choice((0.0, 0.3)),
            max_webhook_delay=rng.choice((0.1, 2.0, 8.0)),
            stray_failure_rate=rng.choice((0.0, 0.5, 1.0)),
        )
        providers[name] = (rng.random() < 0.6, faults)
    return Scenario(
        replicas=rng.choice((1, 2, 2, 3)),
        payments=rng.randint(2, 6),
        crash_rate=rng.choice((0.0, 0.002, 0.01)),
        providers=providers,
    )


def choose_limits(seed: int) -> dict[str, dict[str, float]]:
    """Outbound limits for some providers: tight enough that duplicates, lookups and retries
    run into them. Drawn from a source of their own, so that every other choice of a seed
    (and so the path of each regression seed that no limit touches) stays where it was."""
    rng = random.Random(f"limits/{seed}")
    limits: dict[str, dict[str, float]] = {}
    for name in ("alpha", "beta"):
        table: dict[str, float] = {}
        if rng.random() < 0.35:
            table["max_concurrent_calls"] = rng.choice((1, 1, 2))
        if rng.random() < 0.35:
            table["max_calls_per_second"] = rng.choice((0.5, 1.0, 2.0, 5.0))
        if table:
            limits[name] = table
    return limits


@contextmanager
def simulated_event_time(scheduler: Scheduler) -> Iterator[None]:
    """eventsourcing stamps each event with the wall clock; in a run it is simulated time."""
    original = eventsourcing.domain.datetime_now_with_tzinfo
    eventsourcing.domain.datetime_now_with_tzinfo = scheduler.datetime
    try:
        yield
    finally:
        eventsourcing.domain.datetime_now_with_tzinfo = original


class Replica:
    """One payorch process: its own application, breakers and background workers, on the
    shared store. A crash loses all of it but what the store committed."""

    def __init__(self, world: World, host: Host) -> None:
        self.host = host
        sched = world.scheduler
        routes = {
            name: resilient_route(
                name,
                name,
                provider,
                {**PROVIDER_SPEC, **world.scenario.limits.get(name, {})},
                world.stats,
                clock=sched.monotonic,
                sleep=sched.sleep,
                jitter=full_jitter(world.rng),
            )
            for name, provider in world.providers.items()
        }
        router = Router(routes, {"EU": ["alpha", "beta"], "US": ["beta"]})
        store = world.store

        class SimulatedPayments(Payments):
            def construct_recorder(self) -> SimulatedStore:
                return store

        owners = world.rng
        # Event state is encrypted, mid-rotation: every other replica (and restart) seals
        # with the new key, the others still with the old one, each holding both; so every
        # read of every seed opens states sealed by either key. Nonces come from a generator
        # of their own, so the world's draws (and the pinned seeds' witnesses) stay as they were.
        replica_number = len(world.apps)
        keys = SIMULATION_KEYS if replica_number % 2 else SIMULATION_KEYS[::-1]

        self.app = SimulatedPayments(
            # Without eventsourcing's aggregate cache: its fast-forward holds a threading.Lock
            # per aggregate across a store read, where the scheduler switches greenlets, and a
            # second greenlet reading that aggregate would block the one thread they share.
            {
                "PERSISTENCE_MODULE": "eventsourcing.popo",
                "AGGREGATE_CACHE_MAXSIZE": "",
                "PAYORCH_ENCRYPTION_KEYS": ",".join(keys),
            },
            router=router,
            clock=sched.datetime,
            sleep=sched.sleep,
            monotonic=sched.monotonic,
            new_owner=lambda: f"{host.name}.{host.incarnation}.{owners.getrandbits(32):08x}",
            recovery_schedule=SCHEDULE,
        )
        world.apps.append(self.app)
        cipher = self.app.mapper.cipher
        assert isinstance(cipher, KeyedAESCipher)
        cipher.random_bytes = random.Random(f"{world.seed}.nonces.{replica_number}").randbytes
        world.started[host.name, host.incarnation] = sched.now
        self.intake = WebhookIntake(self.app, webhook_verifiers(router), clock=sched.wall)
        self.recovery = RecoveryWorker(self.app, interval=0.5)
        self.consumer = WebhookProcessor(self.app, interval=0.5)
        # The listing's projector: its reads are crash points, so replicas crash mid-pass and
        # race each other's passes (invariants: _listing_matches_the_log).
        self.listing = ListingProjector(self.app, interval=0.5)
        for name, loop in (
            ("recovery", self.recovery),
            ("webhooks", self.consumer),
            ("listing", self.listing),
        ):
            sched.spawn(
                f"{host.name}.{name}",
                _forever(sched, loop.run_once, loop.interval),
                host=host,
                at=sched.now + world.rng.uniform(0, loop.interval),
            )


# Each provider as a TOML table would configure it: tight, so that faults trip breakers and
# timeouts often within a short run.
PROVIDER_SPEC = {
    "timeout": CALL_TIMEOUT,
    "attempt_timeout": 0.4,
    "retry": {"base": 0.05, "max": 0.4, "max_attempts": 3},
    "breaker": {"failure_threshold": 3, "open_seconds": 5.0, "half_open_trials": 1},
}


def _forever(sched: Scheduler, once: Callable[[], int], interval: float) -> Callable[[], None]:
    def loop() -> None:
        while True:
            once()
            sched.sleep(interval)

    return loop


@dataclass
class World:
    seed: int
    rng: random.Random = field(init=False)
    scheduler: Scheduler = field(init=False)
    scenario: Scenario = field(init=False)
    store: SimulatedStore = field(init=False)
    providers: dict[str, SimulatedProvider] = field(init=False)
    replicas: dict[str, Replica] = field(init=False)
    hosts: list[Host] = field(init=False)
    answers: dict[str, list[Answer]] = field(default_factory=dict)  # by scope/key
    leaks: list[str] = field(default_factory=list)  # another account's payment, seen
    refused: list[str] = field(default_factory=list)  # keys refused as reused
    crashes: list[str] = field(default_factory=list)
    payment_ids: list[str] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)  # what every replica's resilient layer did
    apps: list[Payments] = field(default_factory=list)  # every replica's, crashed ones too
    started: dict[tuple[str, int], float] = field(default_factory=dict)  # each incarnation's
    resolutions: list[tuple[str, int, str]] = field(default_factory=list)  # (payment, op, outcome)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.scenario = choose(self.rng)
        self.scenario.limits = choose_limits(self.seed)
        self.scheduler = Scheduler(self.rng, crash_rate=self.scenario.crash_rate)
        self.scheduler.on_crash = self._crashed
        self.store = SimulatedStore.open(self.scheduler)
        self.providers = {
            name: SimulatedProvider(
                name,
                keys,
                self.scheduler,
                self.rng,
                faults,
                secret=f"whsec_{name}".encode(),
            )
            for name, (keys, faults) in self.scenario.providers.items()
        }
        for name, provider in self.providers.items():
            quirks = random.Random(f"{self.seed}.quirks.{name}")
            provider.quirks = quirks
            provider.faults = replace(
                provider.faults, reference_only_rate=quirks.choice((0.0, 0.5, 1.0))
            )
            # Like Adyen: a capture, cancel or refund is known only from its webhook. A draw of
            # its own, so the world's and the quirks' draws stay as they were.
            provider.modifications_by_webhook_only = (
                random.Random(f"{self.seed}.lookups.{name}").random() < 0.3
            )
        self.operator_rng = random.Random(f"{self.seed}.operator")
        self.hosts = [Host(f"replica{i}") for i in range(self.scenario.replicas)]
        self.replicas = {}

    def any_app(self) -> Payments:
        """A live replica's application, to read the shared store through."""
        return self.replicas[self.hosts[0].name].app

    def recovery_counts(self) -> dict[str, int]:
        """What every replica's resolutions did, added up."""
        counts: dict[str, int] = {}
        for app in self.apps:
            for name, n in app.recovery_stats.snapshot().items():
                counts[name] = counts.get(name, 0) + n
        return counts

    # --- the run ----------------------------------------------------------------------

    def run(self) -> None:
        sched = self.scheduler
        with simulated_event_time(sched):
            for host in self.hosts:
                self.replicas[host.name] = Replica(self, host)
            for i in range(self.scenario.payments):
                at = EPOCH + self.rng.uniform(0, LOAD_SECONDS / 2)
                sched.spawn(f"customer{i}", self._customer(i), at=at)
            for name in self.providers:
                sched.spawn(f"{name}.webhooks", self._postman(name), at=EPOCH)
            sched.spawn("operator", self._operator(), at=EPOCH + OPERATOR_EVERY)
            sched.run(until=EPOCH + LOAD_SECONDS)
            # The storm ends: no more faults or crashes, every replica back up.
            sched.crash_rate = 0.0
            for provider in self.providers.values():
                provider.quiet = True
            for host in self.hosts:
                if not host.alive:
                    self._restart(host)
            sched.run(until=EPOCH + LOAD_SECONDS + SETTLE_SECONDS)
            self.replays = self._replay_all()

    def _crashed(self, host: Host, where: str) -> None:
        sched = self.scheduler
        self.crashes.append(f"{host.name} at {sched.now - EPOCH:.3f} s {where}")
        sched.spawn(
            f"{host.name}.restart",
            lambda: self._restart(host),
            at=sched.now + self.rng.uniform(0.1, 3.0),
            crash_points=False,
        )

    def _restart(self, host: Host) -> None:
        if host.alive:
            return
        host.alive = True
        host.incarnation += 1
        self.replicas[host.name] = Replica(self, host)

    # --- callers ----------------------------------------------------------------------

    def call(
        self, name: str, request: Any, command: Callable[[Payments], Payment], caller: Caller
    ) -> Any:
        """Calls a live replica as payorch-client would: a crash (UNAVAILABLE) or an error the
        client retries (its own ``retryable``, over the status the server would send) is
        retried with the same key after a pause; returns the payment or the final error."""
        sched = self.scheduler
        for _ in range(40):
            live = [h for h in self.hosts if h.alive]
            if not live:
                sched.sleep(0.5)
                continue
            host = live[self.rng.randrange(len(live))]
            replica = self.replicas[host.name]
            before = sched.bind(host)
            try:
                payment = command(replica.app)
            except Crashed:
                sched.bind(before)
                sched.sleep(self.rng.uniform(0.05, 1.0))  # UNAVAILABLE: the connection died
                continue
            except DomainError as e:
                sched.bind(before)
                if not retryable(_refusal(e)):
                    return e
                sched.sleep(min(max(getattr(e, "retry_after", None) or 0.1, 0.05), 2.0))
                continue
            sched.bind(before)
            if replica.app.owner(payment) != caller.account:
                self.leaks.append(
                    f"payment {payment.id}: of {replica.app.owner(payment)}, answered to "
                    f"{name} of {caller.account} ({request.name} {request.idempotency_key})"
                )
            self._remember(request, payment, caller)
            return payment
        return None

    def _remember(self, request: Any, payment: Payment, caller: Caller) -> None:
        if payment.status in (Status.PROCESSING, Status.REQUIRES_REVIEW):
            return  # an answer in doubt is not a stored result: it shows what is known now
        self.answers.setdefault(f"{caller.scope}/{request.idempotency_key}", []).append(
            Answer(request, summary(payment), caller)
        )

    def _customer(self, i: int) -> Callable[[], None]:
        rng = self.rng
        sched = self.scheduler

        def deadline() -> float:
            return sched.monotonic() + CALLER_DEADLINE

        caller = caller_of(i)

        def run() -> None:
            request = CreatePayment(
                idempotency_key=f"order-{i}-create",
                amount=rng.choice((1000, 2500, 999)),
                currency="EUR",
                payment_method=DECLINING_METHOD if rng.random() < 0.15 else "pm_card_visa",
                region=rng.choice(("EU", "EU", "US")),
                capture_mode=rng.choice(("manual", "automatic")),
                reference=f"order-{i}",
            )
            create = _command_of(request, caller, deadline)
            self._duplicates(request, create, caller)
            if i == 0:
                self.scheduler.spawn(f"twin {request.idempotency_key}", self._twin(request))
            created = self.call(f"customer{i}", request, create, caller)
            if not isinstance(created, Payment):
                return
            self.payment_ids.append(str(created.id))
            pid = str(created.id)
            self._intrude(i, pid, deadline)
            for step in range(rng.randint(0, 3)):
                sched.sleep(rng.uniform(0, 3))
                key = f"order-{i}-op{step}"
                choice = rng.random()
                follow: Any
                if choice < 0.45:
                    amount = rng.choice((0, 0, 300))
                    follow = CapturePayment(idempotency_key=key, payment_id=pid, amount=amount)
                elif choice < 0.65:
                    follow = CancelPayment(idempotency_key=key, payment_id=pid)
                else:
                    amount = rng.choice((0, 100))
                    follow = RefundPayment(idempotency_key=key, payment_id=pid, amount=amount)
                command = _command_of(follow, caller, deadline)
                self._duplicates(follow, command, caller)
                self.call(f"customer{i}", follow, command, caller)

        return run

    def _twin(self, request: CreatePayment) -> Callable[[], None]:
        """Customer 0's create, the same key, from a caller of the other account: another
        command, so a payment of its own, never a refusal or the customer's payment."""
        twin = caller_of(0, other=True)

        def run() -> None:
            answer = self.call("twin", request, _command_of(request, twin), twin)
            if isinstance(answer, DomainError):
                self.leaks.append(f"command {request.idempotency_key}: twin refused: {answer!r}")

        return run

    def _intrude(self, i: int, pid: str, deadline: Callable[[], float]) -> None:
        """A caller of the other account reads and captures customer ``i``'s payment: each
        must find nothing, as for a payment that does not exist."""
        intruder = caller_of(i, other=True)
        probe = CapturePayment(idempotency_key=f"order-{i}-intrude", payment_id=pid)
        capture = _command_of(probe, intruder, deadline)

        def attempt(app: Payments) -> Payment:
            reads: tuple[Callable[[], object], ...] = (
                lambda: app.get_payment(pid, account=intruder.account),
                lambda: list(app.payment_events(pid, account=intruder.account)),
            )
            for read in reads:
                try:
                    read()
                except PaymentNotFound:
                    continue
                self.leaks.append(f"payment {pid}: read by {intruder.account}")
            return capture(app)

        answer = self.call(f"intruder{i}", probe, attempt, intruder)
        if answer is not None and not isinstance(answer, PaymentNotFound):
            self.leaks.append(f"payment {pid}: {intruder.account}'s capture answered {answer!r}")

    def _duplicates(
        self, request: Any, command: Callable[[Payments], Payment], caller: Caller
    ) -> None:
        """Sometimes the caller (or its load balancer) sends the same command twice at once;
        sometimes a buggy caller sends another command under the same key."""
        if self.rng.random() < 0.3:
            self.scheduler.spawn(
                f"duplicate {request.idempotency_key}",
                lambda: self.call("duplicate", request, command, caller),
            )
        if isinstance(request, CreatePayment) and self.rng.random() < 0.1:
            other = replace(request, amount=request.amount + 1)
            self.scheduler.spawn(
                f"reuse {request.idempotency_key}",
                lambda: self.call("reuse", other, _command_of(other, caller), caller),
            )

    # --- the person who settles what needs one -------------------------------------------

    def _operator(self) -> Callable[[], None]:
        """Every few seconds an operator lists the payments in review and, for each, reads
        the provider's dashboard (its ledger: the truth) and records what it shows."""
        sched = self.scheduler
        rng = self.operator_rng

        def run() -> None:
            while True:
                sched.sleep(OPERATOR_EVERY)
                live = [h for h in self.hosts if h.alive]
                if not live:
                    continue
                host = live[rng.randrange(len(live))]
                before = sched.bind(host)
                try:
                    self._settle_reviews(self.replicas[host.name].app)
                except Crashed:
                    pass  # its replica died under it: the next round asks another
                finally:
                    sched.bind(before)

        return run

    def _settle_reviews(self, app: Payments) -> None:
        # The review queue: each account's payments in REQUIRES_REVIEW, from the listing.
        queue = [
            row.payment_id
            for account in ACCOUNTS
            for row in app.list_payments(
                PaymentFilter(status=Status.REQUIRES_REVIEW), account=account, page_size=100
            ).rows
        ]
        for payment_id in queue:
            pid = str(payment_id)
            payment = app.get_payment(payment_id)
            op = payment.operation_in_doubt
            if op is None or not op.review_required:
                continue
            outcome, reference = dashboard(self.providers[op.provider], payment, op)
            request = ResolvePayment(
                f"resolve:{pid}:{op.sequence}", pid, outcome, f"dashboard: {outcome}",
                op.sequence, reference,
            )  # fmt: skip
            try:
                app.resolve_payment(request, scope="operator:sim", operator="sim")
            except DomainError:
                continue  # settled meanwhile (a late webhook): nothing to record
            self.resolutions.append((pid, op.sequence, outcome))

    # --- webhooks on their way ---------------------------------------------------------

    def _postman(self, name: str) -> Callable[[], None]:
        provider = self.providers[name]
        sched = self.scheduler

        def run() -> None:
            while True:
                due = [w for w in provider.outbox if w.due <= sched.now]
                for webhook in due:
                    provider.outbox.remove(webhook)
                # The webhooks due together arrive together: the HTTP side hands them to the
                # intake as one batch (one transaction, or each alone if it cannot commit).
                for webhook, delivered in zip(due, self._deliver(due), strict=True):
                    if not delivered:
                        webhook.due = sched.now + self.rng.uniform(0.1, 1.0)  # retried later
                        provider.outbox.append(webhook)
                upcoming = min((w.due for w in provider.outbox), default=sched.now + 0.5)
                sched.sleep(max(upcoming - sched.now, 0.01))

        return run

    def _deliver(self, webhooks: list[Any]) -> list[bool]:
        """Which of ``webhooks`` were acknowledged (a refusal is an answer too)."""
        sched = self.scheduler
        live = [h for h in self.hosts if h.alive]
        if not webhooks or not live:
            return [False] * len(webhooks)
        host = live[self.rng.randrange(len(live))]
        before = sched.bind(host)
        requests = [Request(w.provider, w.headers, w.body) for w in webhooks]
        try:
            answers = self.replicas[host.name].intake.receive_many(requests)
        except Crashed:
            return [False] * len(webhooks)
        finally:
            sched.bind(before)
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer  # as receive would have raised it
        return [True] * len(webhooks)

    # --- after the run ------------------------------------------------------------------

    def _replay_all(self) -> list[tuple[str, Any, Any]]:
        """Every command that got a definite answer, sent again once the world is quiet:
        (key, first answer, what the replay answers). Each is sent three times, so that a
        replica that answers a key twice answers it once more by the hot key's shortcut
        (``orchestrator/results.py``); then a create's key once with another amount, which
        must still be refused."""
        results: list[tuple[str, Any, Any]] = []

        def replay() -> None:
            for key, answers in sorted(self.answers.items()):
                first = answers[0]
                for _ in range(3):
                    command = _command_of(first.request, first.caller)
                    again = self.call("replay", first.request, command, first.caller)
                    results.append(
                        (
                            key,
                            first.summary,
                            summary(again) if isinstance(again, Payment) else again,
                        )
                    )
                if isinstance(first.request, CreatePayment):
                    other = replace(first.request, amount=first.request.amount + 1)
                    command = _command_of(other, first.caller)
                    refused = self.call("reuse", other, command, first.caller)
                    results.append(
                        (
                            f"{key} reused",
                            IdempotencyKeyReused.reason,
                            getattr(refused, "reason", refused),
                        )
                    )

        self.scheduler.spawn("replays", replay, crash_points=False)
        self.scheduler.run(until=self.scheduler.now + 10)
        return results


def _command_of(
    request: Any, caller: Caller, deadline: Callable[[], float | None] = lambda: None
) -> Callable[[Payments], Payment]:
    """The application call a request makes, with the caller's deadline taken per call."""
    method = {
        "CreatePayment": "create_payment",
        "CapturePayment": "capture_payment",
        "CancelPayment": "cancel_payment",
        "RefundPayment": "refund_payment",
    }[request.name]
    return lambda app: getattr(app, method)(
        request, scope=caller.scope, account=caller.account, answer_by=deadline()
    )


def dashboard(provider: SimulatedProvider, payment: Payment, op: Operation) -> tuple[str, str]:
    """What the provider's dashboard shows for ``op``: the outcome an operator records, and
    the charge's (or refund's) id."""
    moved = [m for m in provider.ledger if m.provider_key == op.provider_key]
    if not moved:
        return "not_found", ""
    movement = moved[0]
    if movement.status is not OutcomeStatus.SUCCEEDED:
        return "declined", ""
    if op.kind is Kind.AUTHORIZE:
        automatic = payment.capture_mode == "automatic"
        return ("captured" if automatic else "authorized"), movement.reference
    if op.kind is Kind.CAPTURE:
        return "captured", movement.reference
    if op.kind is Kind.CANCEL:
        return "canceled", movement.reference
    return "refunded", movement.reference


def summary(payment: Payment) -> tuple[Any, ...]:
    return (
        str(payment.id),
        payment.version,
        payment.status.value,
        payment.captured_amount,
        payment.refunded_amount,
    )


def request_fingerprint(request: Any) -> str:
    return fingerprint(request.name, request.validated().parameters())


def _refusal(error: DomainError) -> Refusal:
    """What payorch-client would see of ``error``: the server's code, reason and RetryInfo."""
    return Refusal(
        status_code_for(error), error.message, error.reason, error.metadata,
        getattr(error, "retry_after", None),
    )  # fmt: skip
