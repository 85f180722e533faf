"""``payorch audit show``: one payment's timeline as a table a person reads in a terminal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from orchestrator.application import Payments
from orchestrator.audit.records import describe_cause, event_fields, event_timestamp
from orchestrator.domain.payment import Payment

MAX_WIDTH = 120
# A provider's event id can be long: the column shows its start, the export has it whole.
CAUSE_WIDTH = 32
HEADERS = ("VERSION", "TIME (UTC)", "TYPE", "CAUSED BY", "SUMMARY")
# The fields worth a glance, in the order a reader wants them. The long, rarely read provider
# key comes last, so that it is what truncation cuts first.
SUMMARY_FIELDS = (
    "kind",
    "outcome",
    "amount",
    "captured_amount",
    "region",
    "capture_mode",
    "provider",
    "provider_reference",
    "decline_code",
    "dispute_reference",
    "won",
    "event_id",
    "effect",
    "reason",
    "message",
    "note",
    "attempt",
    "provider_key",
)
MONEY_FIELDS = frozenset({"amount", "captured_amount"})
# Values too usual to be worth the room: a first attempt is every operation's first attempt.
UNREMARKABLE = {"attempt": 1}


def timeline(app: Payments, payment_id: str) -> list[str]:
    """The lines to print; raises ``PaymentNotFound`` for an unknown id."""
    events = list(app.payment_events(payment_id))  # one payment's events: a short list
    # The payment as of the last event listed, so the table and the totals agree even if a
    # command changes the payment meanwhile.
    payment = app.get_payment(payment_id, version=events[-1].originator_version)
    rows = [_row(event, payment.currency) for event in events]
    return [_title(payment, app.owner(payment)), "", *table(rows), "", status_line(payment)]


def table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Aligned columns; the summary, last, is cut to keep each line within MAX_WIDTH."""
    aligned = len(HEADERS) - 1
    widths = [max(len(row[i]) for row in [HEADERS, *rows]) for i in range(aligned)]
    rule = tuple("-" * len(h) for h in HEADERS)
    lines = []
    for row in [HEADERS, rule, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:aligned], widths, strict=True)]
        lines.append(_fit("  ".join([*cells, row[aligned]]).rstrip()))
    return lines


def status_line(payment: Payment) -> str:
    currency = payment.currency
    parts = [
        f"status: {payment.status.value}",
        f"amount: {payment.amount} {currency}",
        f"captured: {payment.captured_amount} {currency}",
        f"refunded: {payment.refunded_amount} {currency}",
    ]
    if payment.charged_back_amount:
        parts.append(f"charged back: {payment.charged_back_amount} {currency}")
    return "  ".join(parts)


def summary(fields: Mapping[str, Any], currency: str) -> str:
    parts = []
    for name in SUMMARY_FIELDS:
        value = fields.get(name)
        if value is None or value == "" or UNREMARKABLE.get(name) == value:
            continue
        text = f"{value} {currency}" if name in MONEY_FIELDS else _one_line(str(value))
        parts.append(f"{name}={text}")
    return ", ".join(parts)


def _row(event: DomainEventProtocol[UUID], currency: str) -> tuple[str, ...]:
    moment = event_timestamp(event).astimezone(UTC)
    fields = event_fields(event)
    return (
        str(event.originator_version),
        moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],  # milliseconds are enough to read
        type(event).__name__,
        _clip(describe_cause(fields.get("caused_by")), CAUSE_WIDTH),
        summary(fields, currency),
    )


def _title(payment: Payment, account: str) -> str:
    details = [
        f"region {payment.region}",
        f"provider {payment.provider or '-'}",
        f"account {account}",
    ]
    if payment.reference:
        details.insert(0, f"reference {payment.reference}")
    return _fit(f"payment {payment.id} ({', '.join(details)})")


def _one_line(text: str) -> str:
    return " ".join(text.split())  # provider messages may hold newlines that break the table


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _fit(line: str) -> str:
    return _clip(line, MAX_WIDTH)
