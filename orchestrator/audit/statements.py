"""Providers' statements of money movements, read into one shape for ``audit reconcile``.

A statement is a file a provider gives: the sandbox's ledger JSON (``GET /_sandbox/ledger``),
or Stripe's balance transactions CSV (the itemized report, or the Dashboard export with a
PaymentIntent column). Each reader turns it into ``Movement`` values: captures, refunds,
chargebacks and their reversals, in integer minor units. Rows that are not payment
movements (payouts, fees, authorizations) are counted, never compared. A file that cannot be
read raises ``StatementError`` with one line saying where and why.

Amounts are read with ``Decimal`` and the ISO 4217 exponent, never through a float.
"""

from __future__ import annotations

import csv
import enum
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

from orchestrator.domain.money import CURRENCIES


class Kind(enum.StrEnum):
    CAPTURE = "capture"
    CAPTURE_REVERSAL = "capture_reversal"
    REFUND = "refund"
    REFUND_REVERSAL = "refund_reversal"
    CHARGEBACK = "chargeback"
    CHARGEBACK_REVERSAL = "chargeback_reversal"


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
