"""``payorch audit reconcile``: our payment event log against a provider's statement of money
movements, and what is missing on either side or differs in amount or currency.

A *movement* is money that moved at the provider: a capture (a charge, including a capture
made with an automatic-capture authorization), a refund, a chargeback, or the reversal of one
of these. Authorizations and voids hold or release funds without moving them; payouts, fees
and transfers are not payment movements. Statement rows of those kinds are counted ("not
reconciled (type X): n"), never compared.

What we recorded, per payment (replayed from the log in commit order):
  - ``Authorized`` with ``captured_amount`` > 0: a capture (automatic capture mode);
  - ``Captured``: a capture; ``Refunded``: a refund;
  - ``CaptureReversed`` / ``RefundReversed``: a capture or refund reversal (a provider
    accepted it first, then it failed, so the money went back);
  - ``DisputeOpened``: a chargeback, and ``DisputeClosed`` won: its reversal. The providers
    we read (the sandbox, Stripe) withdraw the disputed amount when a dispute opens and give
    it back when it is won, so a dispute closed before its opening reached us is a
    chargeback (lost), or a chargeback and its reversal (won).
A movement belongs to the provider that ran the operation (after any failover); a dispute to
the provider that authorized the payment.

Matching. Movements are grouped by ``(reference, kind)``, where ``reference`` is the
provider's id of the *payment*: the sandbox's payment id (ledger ``payment``), Stripe's
PaymentIntent id (the export's ``payment_intent_id``; ``source`` when a row has none). Several
movements can share a group (partial captures, partial refunds), so each group is matched as
a multiset, in three passes:
  1. by identity where both sides know it: the idempotency key that made the movement (the
     sandbox ledger records it; it is our operation's provider key), or the provider's id of
     the movement object itself (a Stripe refund ``re_...`` or dispute id, from ``source``);
  2. then by equal amount and currency;
  3. then what is left is paired in order, as differences (same movement, other amount or
     currency).
Two movements whose identities both exist and differ are never paired. What is still left is
missing at the provider (ours) or missing in our log (theirs).

Memory: the statement (a file) is indexed in memory; the log is streamed once, keeping per
payment only its currency, provider reference and operations. Ours that pass 1 matches are
counted and dropped as they stream by.

Amounts are integers in minor units throughout; statement decimals are read with ``Decimal``
and the ISO 4217 exponent, and shown in major units, never through a float.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from orchestrator.application import Payments
from orchestrator.audit.statements import Kind, Movement, Statement
from orchestrator.domain.money import CURRENCIES
from orchestrator.domain.payment import Payment

PAGE = 1000  # log events read per query, as the export reads them

# How each kind changes the merchant's balance: amounts are positive, the kind says which way.
_SIGN: Mapping[Kind, int] = {
    Kind.CAPTURE: 1,
    Kind.CAPTURE_REVERSAL: -1,
    Kind.REFUND: -1,
    Kind.REFUND_REVERSAL: 1,
    Kind.CHARGEBACK: -1,
    Kind.CHARGEBACK_REVERSAL: 1,
}


@dataclass(frozen=True)
class Difference:
    ours: Movement
    theirs: Movement


@dataclass
class Totals:
    """Sums per kind in minor units of one currency."""

    by_kind: Counter[Kind] = field(default_factory=Counter)

    def add(self, movement: Movement) -> None:
        self.by_kind[movement.kind] += movement.amount

    def net_of(self, kind: Kind, reversal: Kind) -> int:
        return self.by_kind[kind] - self.by_kind[reversal]

    @property
    def captured(self) -> int:
        return self.net_of(Kind.CAPTURE, Kind.CAPTURE_REVERSAL)

    @property
    def refunded(self) -> int:
        return self.net_of(Kind.REFUND, Kind.REFUND_REVERSAL)

    @property
    def charged_back(self) -> int:
        return self.net_of(Kind.CHARGEBACK, Kind.CHARGEBACK_REVERSAL)

    @property
    def net(self) -> int:
        return sum(_SIGN[kind] * amount for kind, amount in self.by_kind.items())


@dataclass
class Report:
    provider: str
    statement_unit: str = "entry"
    matched: int = 0
    missing_at_provider: list[Movement] = field(default_factory=list)
    missing_in_log: list[Movement] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    ours: dict[str, Totals] = field(default_factory=lambda: defaultdict(Totals))
    theirs: dict[str, Totals] = field(default_factory=lambda: defaultdict(Totals))
    not_reconciled: dict[str, int] = field(default_factory=dict)

    @property
    def findings(self) -> int:
        return len(self.missing_at_provider) + len(self.missing_in_log) + len(self.differences)


# --- our log ------------------------------------------------------------------------------


@dataclass
class _Operation:
    provider: str
    key: str
    object_id: str = ""  # a refund's id at the provider, once it succeeded
    kind: str = ""  # the operation's kind and amount, for an operator's resolution
    amount: int = 0


@dataclass
class _Payment:
    currency: str
    reference: str = ""  # the provider's id of the payment, once authorized
    provider: str = ""  # who authorized it
    operations: dict[int, _Operation] = field(default_factory=dict)
    withdrawn: dict[str, bool] = field(default_factory=dict)  # dispute -> money is out


def our_movements(
    app: Payments,
    provider: str,
    *,
    page: int = PAGE,
    on_page: Callable[[int], None] = lambda position: None,
) -> Iterator[Movement]:
    """The movements our log records at ``provider``, in commit order; ``on_page`` is told
    the position reached after each page (for a progress counter)."""
    replay = _Replay(provider)
    for batch in app.event_pages(page=page):
        for position, event in batch:
            yield from replay.movements(event, position)
        if batch:
            on_page(batch[-1][0])


class _Replay:
    """Turns payment events into movements, keeping per payment only what later events need."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.payments: dict[UUID, _Payment] = {}

    def movements(self, event: DomainEventProtocol[UUID], at: int) -> list[Movement]:
        if isinstance(event, Payment.Requested):
            self.payments[event.originator_id] = _Payment(event.currency)
            return []
        payment = self.payments.get(event.originator_id)
        if payment is None:
            return []  # no creation on record: nothing to attribute it to
        if isinstance(event, Payment.DisputeOpened | Payment.DisputeClosed):
            return self._dispute(event, payment, at)
        return self._operation(event, payment, at)

    def _operation(
        self, event: DomainEventProtocol[UUID], payment: _Payment, at: int
    ) -> list[Movement]:
        if isinstance(event, Payment.OperationStarted):
            payment.operations[event.sequence] = _Operation(
                event.provider, event.provider_key, kind=event.kind, amount=event.amount
            )
            return []
        sequence = getattr(event, "sequence", None)
        op = payment.operations.get(sequence) if isinstance(sequence, int) else None
        if op is None:
            return []
        kind: Kind | None = None
        amount = 0
        if isinstance(event, Payment.FailedOver):
            op.provider, op.key = event.provider, event.provider_key
        elif isinstance(event, Payment.Authorized):
            payment.reference, payment.provider = event.provider_reference, op.provider
            kind, amount = Kind.CAPTURE, event.captured_amount
        elif isinstance(event, Payment.Captured):
            kind, amount = Kind.CAPTURE, event.amount
        elif isinstance(event, Payment.Refunded):
            # Stripe answers with the Refund's id; a webhook resolution records the intent's.
            if event.provider_reference != payment.reference:
                op.object_id = event.provider_reference
            kind, amount = Kind.REFUND, event.amount
        elif isinstance(event, Payment.ResolvedByOperator):
            kind, amount = _resolved(event, payment, op)
        elif isinstance(event, Payment.CaptureReversed):
            kind, amount = Kind.CAPTURE_REVERSAL, event.amount
        elif isinstance(event, Payment.RefundReversed):
            kind, amount = Kind.REFUND_REVERSAL, event.amount
        if kind is None or amount <= 0 or op.provider != self.provider:
            return []
        return [self._movement(payment, kind, amount, event, at, key=op.key, obj=op.object_id)]

    def _dispute(
        self,
        event: Payment.DisputeOpened | Payment.DisputeClosed,
        payment: _Payment,
        at: int,
    ) -> list[Movement]:
        reference = event.dispute_reference
        out = payment.withdrawn.get(reference)  # None: the first we hear of this dispute
        kinds: list[Kind] = []
        if isinstance(event, Payment.DisputeOpened) or not event.won:
            if not out:
                kinds = [Kind.CHARGEBACK]
            payment.withdrawn[reference] = True
        else:
            if out is None:
                # Won before its opening reached us (webhooks arrive out of order): the
                # provider still took the money when it opened, then gave it back.
                kinds = [Kind.CHARGEBACK, Kind.CHARGEBACK_REVERSAL]
            elif out:
                kinds = [Kind.CHARGEBACK_REVERSAL]
            payment.withdrawn[reference] = False
        if event.amount <= 0 or payment.provider != self.provider:
            return []
        return [self._movement(payment, k, event.amount, event, at, obj=reference) for k in kinds]

    def _movement(
        self,
        payment: _Payment,
        kind: Kind,
        amount: int,
        event: DomainEventProtocol[UUID],
        at: int,
        *,
        key: str = "",
        obj: str = "",
    ) -> Movement:
        return Movement(
            provider=self.provider,
            reference=payment.reference,
            kind=kind,
            amount=amount,
            currency=payment.currency,
            payment_id=str(event.originator_id),
            key=key,
            object_id=obj,
            at=at,
        )


# --- matching -----------------------------------------------------------------------------

_Group = tuple[str, Kind]


def reconcile(ours: Iterable[Movement], theirs: Statement, *, provider: str = "") -> Report:
    """Matches our movements with the statement's (see the module's docstring for the rule).
    Pure: reads only its arguments."""
    report = Report(
        provider, theirs.unit, not_reconciled=dict(sorted(theirs.not_reconciled.items()))
    )
    groups: dict[_Group, list[Movement]] = defaultdict(list)
    for movement in theirs.movements:
        groups[(movement.reference, movement.kind)].append(movement)
        report.theirs[movement.currency].add(movement)
    waiting: dict[_Group, list[Movement]] = defaultdict(list)
    for movement in ours:
        report.ours[movement.currency].add(movement)
        group = (movement.reference, movement.kind)
        twin = _take(groups.get(group, []), movement, _same_identity)
        if twin is None:
            waiting[group].append(movement)
        else:
            _record_pair(report, movement, twin)
    for group, mine in waiting.items():
        candidates = groups.get(group, [])
        left = mine
        for fits in (_same_amount, _compatible):  # pass 2, then pass 3
            unpaired = []
            for movement in left:
                twin = _take(candidates, movement, fits)
                if twin is None:
                    unpaired.append(movement)
                else:
                    _record_pair(report, movement, twin)
            left = unpaired
        report.missing_at_provider.extend(left)
    report.missing_at_provider.sort(key=lambda m: m.at)
    report.missing_in_log = sorted(
        (m for left in groups.values() for m in left), key=lambda m: m.at
    )
    report.differences.sort(key=lambda d: d.ours.at)
    return report


def _record_pair(report: Report, ours: Movement, theirs: Movement) -> None:
    if (ours.amount, ours.currency) == (theirs.amount, theirs.currency):
        report.matched += 1
    else:
        report.differences.append(Difference(ours, theirs))


def _take(
    candidates: list[Movement], movement: Movement, fits: Callable[[Movement, Movement], bool]
) -> Movement | None:
    """Removes and returns the first candidate that fits, preferring one of equal amount."""
    fitting = [i for i, candidate in enumerate(candidates) if fits(movement, candidate)]
    if not fitting:
        return None
    exact = [i for i in fitting if _same_amount(movement, candidates[i])]
    return candidates.pop((exact or fitting)[0])


def _same_identity(a: Movement, b: Movement) -> bool:
    return bool(a.key and a.key == b.key) or bool(a.object_id and a.object_id == b.object_id)


def _compatible(a: Movement, b: Movement) -> bool:
    """Not known to be two different movements."""
    return not (a.key and b.key and a.key != b.key) and not (
        a.object_id and b.object_id and a.object_id != b.object_id
    )


def _same_amount(a: Movement, b: Movement) -> bool:
    return _compatible(a, b) and (a.amount, a.currency) == (b.amount, b.currency)


# --- the text report ----------------------------------------------------------------------


def major_units(amount: int, currency: str) -> str:
    """``1234`` USD as ``12.34``, JPY as ``1234``; minor units said as such when the
    currency's exponent is unknown (only a statement can name such a currency)."""
    known = CURRENCIES.get(currency)
    if known is None:
        return f"{amount} (minor units)"
    if known.exponent == 0:
        return str(amount)
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 10**known.exponent)
    return f"{sign}{major}.{minor:0{known.exponent}d}"


def render(report: Report, statement_name: str = "the statement") -> list[str]:
    unit = report.statement_unit
    lines = [
        f"reconciliation of {report.provider or 'the provider'}: our log against {statement_name}",
        f"matched: {report.matched}",
        f"missing at the provider (in our log, not in the statement): "
        f"{len(report.missing_at_provider)}",
        *(f"  {_describe(m)}  (log position {m.at})" for m in report.missing_at_provider),
        f"missing in our log (in the statement, not in our log): {len(report.missing_in_log)}",
        *(f"  {_describe(m)}  ({unit} {m.at})" for m in report.missing_in_log),
        f"amount or currency differs: {len(report.differences)}",
        *(
            f"  {d.ours.kind} {d.ours.reference}: ours {_money(d.ours)} (log position "
            f"{d.ours.at}{_payment(d.ours)}), theirs {_money(d.theirs)} ({unit} {d.theirs.at})"
            for d in report.differences
        ),
        *(f"not reconciled (type {t}): {n}" for t, n in report.not_reconciled.items()),
        "",
        *_totals_table(report),
        "",
        "all movements match"
        if not report.findings
        else f"{report.findings} finding{'s' if report.findings != 1 else ''}",
    ]
    return lines


def _describe(m: Movement) -> str:
    identity = f", key {m.key}" if m.key else (f", id {m.object_id}" if m.object_id else "")
    return f"{m.kind} {_money(m)}  reference {m.reference or '-'}{identity}{_payment(m)}"


def _money(m: Movement) -> str:
    return f"{major_units(m.amount, m.currency)} {m.currency}"


def _payment(m: Movement) -> str:
    return f", payment {m.payment_id}" if m.payment_id else ""


_TOTAL_HEADERS = ("captured", "refunded", "charged back", "net")


def _totals_table(report: Report) -> list[str]:
    rows: list[tuple[str, ...]] = []
    for currency in sorted(set(report.ours) | set(report.theirs)):
        for side, totals in (("ours", report.ours), ("statement", report.theirs)):
            t = totals.get(currency, Totals())
            values = (t.captured, t.refunded, t.charged_back, t.net)
            rows.append((currency, side, *(major_units(v, currency) for v in values)))
    if not rows:
        return ["totals per currency: no movements"]
    header = ("currency", "side", *_TOTAL_HEADERS)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [header, *rows]:
        label = f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}"
        numbers = "  ".join(f"{v:>{w}}" for v, w in zip(row[2:], widths[2:], strict=True))
        out.append(f"  {label}  {numbers}".rstrip())
    return ["totals per currency:", *out]


def _resolved(
    event: Payment.ResolvedByOperator, payment: _Payment, op: _Operation
) -> tuple[Kind | None, int]:
    """An operator read a movement on the provider's dashboard: it happened."""
    if event.status != "succeeded":
        return None, 0
    if op.kind == "authorize":
        payment.reference = event.provider_reference or payment.reference
        payment.provider = op.provider
        return Kind.CAPTURE, event.captured_amount
    if op.kind == "capture":
        return Kind.CAPTURE, op.amount
    if op.kind == "refund":
        if event.provider_reference and event.provider_reference != payment.reference:
            op.object_id = event.provider_reference  # the refund's own id, as for Refunded
        return Kind.REFUND, op.amount
    return None, 0  # a cancel moves no money
