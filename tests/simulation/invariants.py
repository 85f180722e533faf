"""What must hold after every run, once recovery had time to settle.

Each check compares payorch's event log with what the simulated providers' ledgers say really
happened, or with what callers were told. A violation names the payment and what is wrong.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from orchestrator.audit.verify import verify
from orchestrator.domain.payment import Payment, Status
from orchestrator.listing import ListingProjector, row_of
from orchestrator.ports import OutcomeStatus
from orchestrator.webhooks.processor import WebhookProcessor
from tests.simulation.world import SCHEDULE, World, dashboard, request_fingerprint

_OUTCOMES = (
    Payment.Authorized,
    Payment.Captured,
    Payment.Canceled,
    Payment.Refunded,
    Payment.OperationDeclined,
    Payment.OperationFailed,
    Payment.CaptureReversed,
    Payment.RefundReversed,
)


def check(world: World) -> list[str]:
    problems: list[str] = []
    problems += [f"actor {name} raised {error!r}" for name, error in world.scheduler.errors()]
    payments = list(_payments(world))
    problems += _money_moved_once(world)
    for payment, events in payments:
        problems += _agrees_with_providers(world, payment)
        problems += _changed_only_by_own_provider(payment, events)
        problems += _lookups_really_asked(world, payment, events)
        if payment.status is Status.PROCESSING:
            problems.append(f"payment {payment.id}: still PROCESSING after the schedule")
    problems += _replays_answer_the_same(world)
    problems += world.leaks
    problems += _accounts_kept_apart(world)
    problems += _outbound_limits_held(world)
    problems += _listing_matches_the_log(world, [p for p, _ in payments])
    problems += _operator_agrees_with_providers(world, payments)
    problems += _deliveries_end_matched(world)
    report = verify(world.store, world.any_app().mapper)
    problems += [f"audit verify: {finding.line()}" for finding in report.findings]
    return problems


def _operator_agrees_with_providers(
    world: World, payments: list[tuple[Payment, list[Any]]]
) -> list[str]:
    """Every operator's resolution says what the provider's ledger holds for its operation,
    and nothing the operator could settle is left in review once the world is quiet."""
    problems = []
    for payment, events in payments:
        for event in events:
            if not isinstance(event, Payment.ResolvedByOperator):
                continue
            op = payment.operation(event.sequence)
            truth = dashboard(world.providers[op.provider], payment, op)
            if truth[0] != event.outcome:
                problems.append(
                    f"payment {payment.id}: operator resolved operation {event.sequence} as "
                    f"{event.outcome}, the provider's ledger shows {truth}"
                )
        review = payment.operation_in_doubt
        if payment.status is Status.REQUIRES_REVIEW and review is not None:
            problems.append(f"payment {payment.id}: left in review, the operator could settle")
    return problems


def _deliveries_end_matched(world: World) -> list[str]:
    """A delivery left unmatched is matched once its payment is known: at the end none names
    a payment (by our id, or by the provider's id payorch has learnt) and is still unmatched."""
    app = world.any_app()
    problems = []
    for delivery in WebhookProcessor(app).unmatched():
        if WebhookProcessor(app)._payment_for(delivery) is not None:
            problems.append(
                f"webhook {delivery.verified_by}/{delivery.event_id}: still unmatched, but its "
                f"payment is known ({delivery.unmatched_reason})"
            )
    return problems


def _outbound_limits_held(world: World) -> list[str]:
    """No replica ever had more calls in flight at a provider than its
    ``max_concurrent_calls``, nor sent more requests by any moment than its token bucket
    allows: at most a full bucket plus what refilled since the replica (re)started."""
    problems = []
    for name, provider in sorted(world.providers.items()):
        limits = world.scenario.limits.get(name, {})
        concurrent = limits.get("max_concurrent_calls")
        rate = limits.get("max_calls_per_second")
        for sender, peak in sorted(provider.peak.items()):
            if concurrent is not None and peak > concurrent:
                problems.append(
                    f"{sender[0]}#{sender[1]} had {peak} calls in flight at {name} "
                    f"(max_concurrent_calls = {concurrent:g})"
                )
        if rate is None:
            continue
        bucket = max(1.0, float(int(rate)))
        for sender, times in sorted(provider.arrivals.items()):
            started = world.started[sender]
            for n, at in enumerate(times, start=1):
                if n > bucket + rate * (at - started) + 1e-9:
                    problems.append(
                        f"{sender[0]}#{sender[1]} sent {name} {n} requests by "
                        f"{at - started:.3f} s after it started "
                        f"(max_calls_per_second = {rate:g})"
                    )
                    break
    return problems


def _listing_matches_the_log(world: World, payments: list[Payment]) -> list[str]:
    """The listing, which the replicas' projectors kept through crashes and races, brought to
    the log's head by one more pass, has exactly one row per payment, as the payment is."""
    app = world.any_app()
    if app.listing.position() == 0:
        return ["listing: no projector pass ever completed"]
    ListingProjector(app).catch_up(app.recorder.max_notification_id() or 0)
    rows = {row.payment_id: row for row in app.listing.rows()}
    problems = []
    for payment in payments:
        row = rows.pop(payment.id, None)
        if row != row_of(app, payment):
            problems.append(f"payment {payment.id}: listed as {row}, is v{payment.version}")
    problems += [f"listing: row of no payment {pid}" for pid in rows]
    return problems


def _payments(world: World) -> Iterator[tuple[Payment, list[Any]]]:
    app = world.any_app()
    for pid in sorted(set(world.payment_ids) | _created_ids(world)):
        payment = app.get_payment(pid)
        yield payment, list(app.events.get(payment.id))


def _created_ids(world: World) -> set[str]:
    """Every payment in the log, even one whose caller never heard back."""
    ids = set()
    for provider in world.providers.values():
        ids.update(m.payment_id for m in provider.ledger)
    app = world.any_app()
    for _, event in _all_events(app):
        if isinstance(event, Payment.Requested):
            ids.add(str(event.originator_id))
    return ids


def _all_events(app: Any) -> Iterator[tuple[int, Any]]:
    for page in app.event_pages():
        yield from page


def _money_moved_once(world: World) -> list[str]:
    """No provider moved money twice for one operation (one payment and sequence), whatever
    attempts, providers and re-sends it took."""
    moved: Counter[tuple[str, str, str]] = Counter()
    for provider in world.providers.values():
        for m in provider.ledger:
            if m.status is OutcomeStatus.SUCCEEDED:
                payment_id, sequence = m.provider_key.split(":")[:2]
                moved[payment_id, sequence, m.kind.value] += 1
    return [
        f"payment {pid}: operation {seq} ({kind}) moved money {n} times at the providers"
        for (pid, seq, kind), n in sorted(moved.items())
        if n > 1
    ]


def _agrees_with_providers(world: World, payment: Payment) -> list[str]:
    """What payorch reports is what the providers hold, for every payment it knows the
    outcome of (one under review is for a person to settle)."""
    if payment.status in (Status.PROCESSING, Status.REQUIRES_REVIEW):
        return []
    pid = str(payment.id)
    held = [
        (name, charge)
        for name, provider in sorted(world.providers.items())
        for charge in provider.charges.values()
        if charge.payment_id == pid and not charge.voided
    ]
    where = f"payment {pid} ({payment.status.value} at {payment.provider or '-'})"
    if not payment.authorized:
        return [f"{where}: reported unauthorized, but {n} holds {c.reference}" for n, c in held]
    problems = []
    if payment.status is Status.CANCELED:
        if held:
            problems.append(f"{where}: canceled, but {held[0][0]} still holds the authorization")
        return problems
    if len(held) != 1 or held[0][0] != payment.provider:
        return [f"{where}: providers hold {[(n, c.reference) for n, c in held]}"]
    charge = held[0][1]
    if charge.reference != payment.provider_reference:
        problems.append(f"{where}: reference {payment.provider_reference} vs {charge.reference}")
    if charge.captured != payment.captured_amount:
        problems.append(f"{where}: captured {payment.captured_amount}, provider {charge.captured}")
    if charge.refunded != payment.refunded_amount:
        problems.append(f"{where}: refunded {payment.refunded_amount}, provider {charge.refunded}")
    return problems


def _changed_only_by_own_provider(payment: Payment, events: list[Any]) -> list[str]:
    """No operation was settled by another provider's webhook."""
    provider_of: dict[int, str] = {}
    problems = []
    for event in events:
        if isinstance(event, Payment.OperationStarted | Payment.FailedOver):
            provider_of[event.sequence] = event.provider
        elif isinstance(event, _OUTCOMES) and event.caused_by.get("kind") == "provider_event":
            sender = event.caused_by.get("provider")
            if sender != provider_of.get(event.sequence):
                problems.append(
                    f"payment {payment.id}: {type(event).__name__} of operation "
                    f"{event.sequence} (at {provider_of.get(event.sequence)}) caused by "
                    f"{sender}'s event {event.caused_by.get('event_id')}"
                )
    return problems


def _lookups_really_asked(world: World, payment: Payment, events: list[Any]) -> list[str]:
    """Every recorded step of the recovery schedule is a lookup the provider received, made
    when the schedule said: one per step, never a refused call counted as asked."""
    problems = []
    key_of: dict[int, tuple[str, str]] = {}
    last: dict[int, datetime] = {}
    steps: dict[int, int] = defaultdict(int)
    for event in events:
        if isinstance(event, Payment.OperationStarted | Payment.FailedOver):
            key_of[event.sequence] = (event.provider, event.provider_key)
        elif isinstance(event, Payment.StillUnknown):
            seq = event.sequence
            provider, key = key_of[seq]
            since = last.get(seq)
            asked = [
                who
                for k, when, who in world.providers[provider].lookups
                if k == key
                and (since is None or when > since.timestamp())
                and when <= event.checked_at.timestamp()
            ]
            if since is not None:
                wait = SCHEDULE[min(steps[seq], len(SCHEDULE)) - 1]
                if event.checked_at < since + timedelta(seconds=wait):
                    problems.append(
                        f"payment {payment.id}: lookup {steps[seq] + 1} of operation {seq} "
                        f"recorded {(event.checked_at - since).total_seconds():.3f} s after "
                        f"the one before, the schedule says {wait} s (asked by {asked})"
                    )
            if not asked:
                problems.append(
                    f"payment {payment.id}: lookup {steps[seq] + 1} of operation {seq} "
                    f"recorded ({event.message!r}) but {provider} was not asked"
                )
            last[seq] = event.checked_at
            steps[seq] += 1
    return problems


def _replays_answer_the_same(world: World) -> list[str]:
    problems = [
        f"command {key}: first answered {first}, replayed {again}"
        for key, first, again in world.replays
        if first != again
    ]
    created_for: dict[str, set[str]] = {}  # payment -> the "scope/key" of creates answering it
    for key, answers in sorted(world.answers.items()):
        for a in answers:
            if a.request.name == "CreatePayment":
                created_for.setdefault(a.summary[0], set()).add(key)
        payments = {a.summary[0] for a in answers}
        if len(payments) > 1:
            problems.append(f"command {key}: answered for several payments {sorted(payments)}")
        commands = {request_fingerprint(a.request) for a in answers}
        if len(commands) > 1:
            problems.append(f"command {key}: {len(commands)} different commands executed")
    problems += [
        f"payment {pid}: answered for the creates {sorted(keys)}: callers' scopes mixed"
        for pid, keys in sorted(created_for.items())
        if len(keys) > 1
    ]
    return problems


def _accounts_kept_apart(world: World) -> list[str]:
    """The same key in two scopes made two payments, and every event is attributed to the
    account of its payment's creator (what StreamEvents filters by), whether the account is
    known from the cache or read from the store (the events are asked for newest first)."""
    problems = []
    by_key: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for answers in world.answers.values():
        for a in answers:
            by_key[a.request.idempotency_key][a.caller.scope].add(a.summary[0])
    for key, scopes in sorted(by_key.items()):
        for scope, ids in sorted(scopes.items()):
            shared = {other for other, theirs in scopes.items() if other != scope and ids & theirs}
            if shared:
                problems.append(
                    f"command {key}: scopes {scope} and {sorted(shared)} share a payment"
                )
    app = world.any_app()
    events = list(_all_events(app))
    owner = {e.originator_id: e.account for _, e in events if isinstance(e, Payment.Requested)}
    for position, event in reversed(events):
        if app.account_of(event) != owner[event.originator_id]:
            problems.append(
                f"payment {event.originator_id}: event at {position} attributed to "
                f"{app.account_of(event)}, created by {owner[event.originator_id]}"
            )
    return problems
