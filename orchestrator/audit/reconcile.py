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

import csv
import enum
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from orchestrator.application import Payments
from orchestrator.domain.money import CURRENCIES
from orchestrator.domain.payment import Payment

PAGE = 1000  # log events read per query, as the export reads them


class Kind(enum.StrEnum):
    CAPTURE = "capture"
    CAPTURE_REVERSAL = "capture_reversal"
    REFUND = "refund"
    REFUND_REVERSAL = "refund_reversal"
    CHARGEBACK = "chargeback"
    CHARGEBACK_REVERSAL = "chargeback_reversal"


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
class Movement:
    """Money that moved at a provider, as one side recorded it."""

    provider: str
    reference: str  # the provider's id of the payment (sandbox payment, Stripe PaymentIntent)
    kind: Kind
    amount: int  # minor units, positive
    currency: str  # ISO 4217 alphabetic code
    payment_id: str = ""  # ours, when known
    key: str = ""  # the idempotency key that made it, when this side knows it
    object_id: str = ""  # the provider's id of the movement itself (a refund, a dispute)
    at: int = 0  # where it is written: log position (ours), statement entry or line (theirs)


class StatementError(ValueError):
    """A statement that cannot be read: the message says where and why, in one line."""


@dataclass(frozen=True)
class Statement:
    movements: list[Movement]
    not_reconciled: dict[str, int]  # statement type -> rows of it that are not movements
    unit: str = "entry"  # what ``Movement.at`` counts in this statement: "entry" or "line"


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


@dataclass
class _Payment:
    currency: str
    reference: str = ""  # the provider's id of the payment, once authorized
    provider: str = ""  # who authorized it
    operations: dict[int, _Operation] = field(default_factory=dict)
    withdrawn: dict[str, bool] = field(default_factory=dict)  # dispute -> money is out


def our_movements(app: Payments, provider: str, *, page: int = PAGE) -> Iterator[Movement]:
    """The movements our log records at ``provider``, in commit order."""
    replay = _Replay(provider)
    position = 0
    while True:
        batch = app.events_after(position, limit=page)
        for position, event in batch:
            yield from replay.movements(event, position)
        if len(batch) < page:
            return


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
            payment.operations[event.sequence] = _Operation(event.provider, event.provider_key)
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


# --- statements ---------------------------------------------------------------------------

# The sandbox ledger's kinds; "authorization" and "void" hold and release, moving nothing.
_SANDBOX_KINDS: Mapping[str, Kind] = {
    "capture": Kind.CAPTURE,
    "refund": Kind.REFUND,
    "dispute": Kind.CHARGEBACK,
    "dispute_reversal": Kind.CHARGEBACK_REVERSAL,
}


def read_sandbox_ledger(path: Path | str) -> Statement:
    """The body of the sandbox's ``GET /_sandbox/ledger``: ``{"entries": [...]}``, each entry
    with ``kind``, ``payment``, ``amount`` (minor units), ``currency`` and ``idempotency_key``."""
    try:
        body = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise StatementError(f"{path}: not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise StatementError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    entries = body.get("entries") if isinstance(body, dict) else None
    if not isinstance(entries, list):
        raise StatementError(f'{path}: not a sandbox ledger: expected {{"entries": [...]}}')
    movements: list[Movement] = []
    skipped: Counter[str] = Counter()
    for number, entry in enumerate(entries, start=1):
        where = f"{path} entry {number}"
        if not isinstance(entry, dict):
            raise StatementError(f"{where}: not a JSON object")
        kind_name = _text(entry, "kind", where)
        kind = _SANDBOX_KINDS.get(kind_name)
        if kind is None:
            skipped[kind_name] += 1
            continue
        amount = entry.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise StatementError(f"{where}: amount must be an integer of minor units >= 0")
        key = entry.get("idempotency_key")
        if key is not None and not isinstance(key, str):
            raise StatementError(f"{where}: idempotency_key must be a string or null")
        ours = entry.get("reference")  # the adapter sends our payment id as the reference
        movements.append(
            Movement(
                provider="sandbox",
                reference=_text(entry, "payment", where),
                kind=kind,
                amount=amount,
                currency=_currency_code(_text(entry, "currency", where), where),
                payment_id=ours if isinstance(ours, str) else "",
                key=key or "",
                at=number,
            )
        )
    return Statement(movements, dict(skipped), unit="entry")


# Stripe's balance transaction ``reporting_category`` (the Reporting API's itemized balance
# exports) and ``type`` (the Dashboard's balance transactions export) values that are payment
# movements. "adjustment" is told apart by its source; "partial_capture_reversal" (the
# uncaptured part of a charge captured in part) is folded into that charge.
_STRIPE_KINDS: Mapping[str, Kind] = {
    "charge": Kind.CAPTURE,
    "payment": Kind.CAPTURE,
    "charge_failure": Kind.CAPTURE_REVERSAL,
    "refund": Kind.REFUND,
    "payment_refund": Kind.REFUND,
    "refund_failure": Kind.REFUND_REVERSAL,
    "dispute": Kind.CHARGEBACK,
    "dispute_reversal": Kind.CHARGEBACK_REVERSAL,
}
_PARTIAL_CAPTURE_REVERSAL = "partial_capture_reversal"
# Columns by role; header names are compared lower-cased with punctuation as "_", so both the
# Reporting API's ``source_id`` and the Dashboard's ``Source`` are found. First name wins.
_STRIPE_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "category": ("reporting_category", "type"),
    "amount": ("gross", "amount"),
    "currency": ("currency",),
    "source": ("source_id", "source"),
    "payment_intent": ("payment_intent_id", "payment_intent", "paymentintent_id"),
}
_CUSTOMER_FACING = ("customer_facing_amount", "customer_facing_currency")


def read_stripe_balance_transactions(path: Path | str) -> Statement:
    """A Stripe balance transactions CSV: the itemized "Balance change from activity" report
    (``balance_change_from_activity.itemized.*``) or the Dashboard's balance transactions
    export, with a PaymentIntent column (``payment_intent_id``), which is how charges are
    matched to our payments. Amounts are decimals in major units (``10.00``, ``-5.00``).

    Where the customer paid in another currency than the account settles in, ``gross`` is
    the converted amount; ``customer_facing_amount``/``_currency``, when present, are what
    the customer paid, which is what we recorded, so they are preferred."""
    try:
        with Path(path).open(encoding="utf-8-sig", newline="") as file:
            reader = csv.reader(file)
            # Numbered by the line a row ends on: a quoted description may hold newlines.
            return _read_stripe_rows(((reader.line_num, row) for row in reader), str(path))
    except UnicodeDecodeError as e:
        raise StatementError(f"{path}: not UTF-8 text ({e.reason})") from None
    except csv.Error as e:
        raise StatementError(f"{path}: not a readable CSV file ({e})") from None


def _read_stripe_rows(rows: Iterator[tuple[int, list[str]]], name: str) -> Statement:
    _, header = next(rows, (0, []))
    if not header:
        raise StatementError(f"{name}: empty, expected a header row")
    columns = {_column_name(title): index for index, title in reversed(list(enumerate(header)))}
    found = {
        role: next((columns[n] for n in names if n in columns), None)
        for role, names in _STRIPE_COLUMNS.items()
    }
    missing = [names[0] for role, names in _STRIPE_COLUMNS.items() if found[role] is None]
    if missing:
        raise StatementError(
            f"{name}: not a Stripe balance transactions export with PaymentIntents: no "
            f"{', '.join(missing)} column (export the itemized balance report with them)"
        )
    facing = [columns.get(column) for column in _CUSTOMER_FACING]
    movements: list[Movement] = []
    reversals: list[Movement] = []
    skipped: Counter[str] = Counter()
    for number, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise StatementError(
                f"{name} line {number}: {len(row)} fields, the header has {len(header)}"
            )
        cell = {role: row[index].strip() for role, index in found.items() if index is not None}
        category = cell["category"].lower()
        kind = _stripe_kind(category, cell["source"], cell["amount"])
        if kind is None and category != _PARTIAL_CAPTURE_REVERSAL:
            skipped[category or "(none)"] += 1
            continue
        where = f"{name} line {number}"
        amount_text, currency = cell["amount"], cell["currency"]
        if facing[0] is not None and facing[1] is not None and row[facing[1]].strip():
            amount_text, currency = row[facing[0]].strip(), row[facing[1]].strip()
        code = _currency_code(currency.upper(), where)
        movement = Movement(
            provider="stripe",
            reference=cell["payment_intent"] or cell["source"],
            kind=kind or Kind.CAPTURE_REVERSAL,
            amount=abs(minor_units(amount_text, code, where)),
            currency=code,
            object_id=cell["source"] if kind is not Kind.CAPTURE else "",
            at=number,
        )
        (movements if kind is not None else reversals).append(movement)
    return Statement(_fold(movements, reversals), dict(skipped), unit="line")


def _stripe_kind(category: str, source: str, amount: str) -> Kind | None:
    if category != "adjustment":
        return _STRIPE_KINDS.get(category)
    # The Dashboard export's "adjustment" covers disputes (dp_/du_ sources: money out when
    # one opens, back when it is won) and failed refunds (re_/pyr_: money back).
    back = not amount.startswith("-")
    if source.startswith(("dp_", "du_")):
        return Kind.CHARGEBACK_REVERSAL if back else Kind.CHARGEBACK
    if source.startswith(("re_", "pyr_")) and back:
        return Kind.REFUND_REVERSAL
    return None


def _fold(movements: list[Movement], reversals: list[Movement]) -> list[Movement]:
    """A charge captured in part shows as the whole authorization and a reversal of the rest;
    we recorded what was captured. Each reversal is netted into its PaymentIntent's only
    capture; where that is not one capture, it stays, as a capture reversal to look at."""
    captures: dict[str, list[int]] = defaultdict(list)
    for index, movement in enumerate(movements):
        if movement.kind is Kind.CAPTURE:
            captures[movement.reference].append(index)
    for reversal in reversals:
        target = captures.get(reversal.reference, [])
        charge = movements[target[0]] if len(target) == 1 else None
        if (
            charge is None
            or charge.currency != reversal.currency
            or charge.amount <= reversal.amount
        ):
            movements.append(reversal)
            continue
        movements[target[0]] = Movement(
            provider=charge.provider,
            reference=charge.reference,
            kind=charge.kind,
            amount=charge.amount - reversal.amount,
            currency=charge.currency,
            at=charge.at,
        )
    return movements


def _column_name(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.strip().lower()).strip("_")


def _text(entry: Mapping[str, Any], name: str, where: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str):
        raise StatementError(f"{where}: {name} must be a string")
    return value


def _currency_code(code: str, where: str) -> str:
    if not (len(code) == 3 and code.isascii() and code.isalpha() and code.isupper()):
        raise StatementError(f"{where}: currency {code[:16]!r} is not an ISO 4217 code")
    return code


# A decimal in major units: "10.00", "-5", "1,234.56" (groups of three, "." the separator).
_DECIMAL = re.compile(r"([-+]?)(\d{1,30}|[1-9]\d{0,2}(?:,\d{3}){1,9})(?:\.(\d{1,30}))?")
_EXACT = Context(prec=80)  # wide enough that no amount the pattern admits is ever rounded


def minor_units(text: str, currency: str, where: str = "amount") -> int:
    """``text`` (major units) in minor units of ``currency``, exactly, or StatementError.

    A "," is read as a thousands separator only where it cannot be a decimal comma (a
    decimal point follows, or the currency has no minor unit): "1,234" in EUR could be
    either, and a guess would be off by a factor of a thousand."""
    known = CURRENCIES.get(currency)
    if known is None:
        raise StatementError(f"{where}: currency {currency!r} is not a known ISO 4217 code")
    match = _DECIMAL.fullmatch(text)
    grouped = match is not None and "," in match[2]
    if match is None or (grouped and match[3] is None and known.exponent > 0):
        raise StatementError(
            f"{where}: amount {text[:32]!r} is not a decimal in major units such as 10.00, "
            "-5.00 or 1,234.56 (export with '.' as the decimal separator)"
        )
    value = Decimal(f"{match[1]}{match[2].replace(',', '')}.{match[3] or '0'}")
    scaled = value.scaleb(known.exponent, _EXACT)
    if scaled != scaled.to_integral_value(context=_EXACT):
        raise StatementError(
            f"{where}: amount {text!r} has more decimals than {currency} has ({known.exponent})"
        )
    return int(scaled)


STATEMENT_READERS: Mapping[str, Callable[[Path | str], Statement]] = {
    "sandbox": read_sandbox_ledger,
    "stripe": read_stripe_balance_transactions,
}


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
