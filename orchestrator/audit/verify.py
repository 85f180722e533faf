"""``payorch audit verify``: is the event log as payorch wrote it, and does its money add up?

Two independent checks, both streamed (memory does not grow with the log):
1. The chain (see ``orchestrator.audit.chain``): every link against the event it names and the
   link before it, then every event against the chain. Edits, deletions and insertions made
   directly in the database are found and named.
2. Every payment replayed from its events, one event at a time, against the money invariants:
   versions 1, 2, 3... without gaps; captured never more than authorized; refunded never more
   than captured; a terminal state never left except by a provider's reversal of the movement
   that made it terminal (a refund reversed, a dispute decided).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, TextIO
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic

from orchestrator.audit.chain import GENESIS, ChainedRecorder, content_digest, link_hash
from orchestrator.audit.progress import Progress
from orchestrator.domain.payment import TERMINAL, Payment, Status
from orchestrator.encryption import missing_key

# What may move a payment out of a terminal state: the provider undoing the movement that made
# it terminal (a refund that failed after all, a dispute opened on or decided for a payment).
PROVIDER_CORRECTIONS = frozenset(
    {
        Payment.RefundReversed,
        Payment.CaptureReversed,
        Payment.DisputeOpened,
        Payment.DisputeClosed,
    }
)
# All that may follow a terminal state: those corrections, and the provider's events noted.
AFTER_TERMINAL = PROVIDER_CORRECTIONS | {Payment.ProviderEventReceived}
CHECKS = (
    "chain links (each hash follows from its event and the link before it)",
    "event content (each event as stored matches its link's digest)",
    "deletions (a link without its event, a gap in the chain)",
    "insertions (an event no link names)",
    "versions of each payment without gaps",
    "captured never more than authorized",
    "refunded never more than captured",
    "terminal states never left",
)
MAX_LISTED = 1000  # findings kept for the report; all are counted


@dataclass(frozen=True)
class Finding:
    kind: str  # changed, deleted, inserted, chain-broken, truncated, version-gap, ...
    what: str  # the event it is about: payment (or aggregate) id, version, position
    detail: str

    def line(self) -> str:
        return f"{self.kind.upper():<14} {self.what}: {self.detail}"


@dataclass
class Report:
    links: int = 0
    events: int = 0
    payments: int = 0
    head: tuple[int, bytes] = (0, GENESIS)
    findings: list[Finding] = field(default_factory=list)
    finding_count: int = 0

    def add(self, kind: str, what: str, detail: str) -> None:
        self.finding_count += 1
        if len(self.findings) < MAX_LISTED:
            self.findings.append(Finding(kind, what, detail))

    @property
    def clean(self) -> bool:
        return self.finding_count == 0

    def lines(self) -> list[str]:
        seq, digest = self.head
        lines = [
            f"read {self.events:,} events ({self.payments:,} payments replayed) "
            f"and {self.links:,} chain links, and checked:",
            *(f"  - {check}" for check in CHECKS),
            f"chain head: {seq}:{digest.hex()}",
            "  (keep it: a later verify given --expect-head with it detects a cut of the log)",
        ]
        if self.clean:
            return [*lines, "no findings: the log is intact and its money adds up"]
        lines.append(f"{self.finding_count:,} finding(s):")
        lines.extend(f.line() for f in self.findings)
        if self.finding_count > len(self.findings):
            lines.append(f"... and {self.finding_count - len(self.findings):,} more")
        return lines


def verify(
    recorder: ChainedRecorder,
    mapper: Mapper[UUID],
    *,
    expect_head: tuple[int, bytes] | None = None,
    progress: TextIO | None = None,
) -> Report:
    """``progress``: where to show how far each pass is (the CLI's terminal, if any)."""
    report = Report()
    report.head = recorder.chain_head()
    links = Progress(report.head[0], progress, label="verifying the chain", unit="link")
    check_chain(recorder, report, expect_head, on_link=links.update)
    links.close()
    replayed = Progress(report.links, progress, label="replaying payments", unit="event")
    events = _counted(recorder.events_by_aggregate(), replayed.update)
    check_payments(events, mapper.to_domain_event, report)
    replayed.close()
    return report


def _counted(
    rows: Iterable[tuple[int, StoredEvent]], on_count: Callable[[int], None]
) -> Iterator[tuple[int, StoredEvent]]:
    for count, row in enumerate(rows, 1):
        on_count(count)
        yield row


def parse_head(text: str) -> tuple[int, bytes]:
    """``SEQ:HASH`` as ``audit verify`` prints it."""
    seq, _, digest = text.partition(":")
    try:
        value = (int(seq), bytes.fromhex(digest))
    except ValueError:
        value = (0, b"")
    if value[0] < 1 or len(value[1]) != len(GENESIS):
        raise ValueError(f"--expect-head takes SEQ:HASH as verify prints it, not {text!r}")
    return value


# --- the chain ----------------------------------------------------------------------------


def check_chain(
    recorder: ChainedRecorder,
    report: Report,
    expect_head: tuple[int, bytes] | None,
    on_link: Callable[[int], None] = lambda seq: None,
) -> None:
    key = recorder.chain_key
    head_seq = report.head[0]
    previous_seq, previous_hash = 0, GENESIS
    for link in recorder.links(0, head_seq):
        report.links += 1
        on_link(link.seq)
        topic = link.event.topic if link.event is not None else None
        what = f"{_named(link.originator_id, topic)} version {link.originator_version} "
        what += f"(link {link.seq})"
        if link.seq != previous_seq + 1:
            missing = link.seq - previous_seq - 1
            report.add(
                "deleted",
                f"links {previous_seq + 1}..{link.seq - 1}",
                f"{missing} event(s) and their links were removed from the log",
            )
        elif link_hash(key, previous_hash, link.digest) != link.hash:
            report.add(
                "chain-broken", what, "the link's hash does not follow from the link before it"
            )
        if link.event is None:
            report.add("deleted", what, "the event this link chains is gone from the log")
        else:
            event = link.event
            at = f"{what}, position {link.position}"
            found = content_digest(
                link.originator_id, event.originator_version, event.topic, event.state
            )
            if found != link.digest:
                report.add("changed", at, "the event's content differs from what was recorded")
        previous_seq, previous_hash = link.seq, link.hash
    for extra in recorder.unchained():
        event = extra.event
        report.add(
            "inserted",
            f"{_named(event.originator_id, event.topic)} version {event.originator_version} "
            f"(position {extra.position})",
            f"{_type_name(event.topic)} is in the log but not in the chain: written around payorch",
        )
    if expect_head is not None:
        seq, digest = expect_head
        found_hash = recorder.link_at(seq)
        if found_hash is None:
            report.add("truncated", f"link {seq}", "the expected head is gone: events were cut")
        elif found_hash != digest:
            report.add("chain-broken", f"link {seq}", "the expected head's hash differs")


# --- the money ----------------------------------------------------------------------------


def check_payments(
    events: Iterable[tuple[int, StoredEvent]],
    decode: Callable[[StoredEvent], DomainEventProtocol[UUID]],
    report: Report,
) -> None:
    for aggregate_id, rows in groupby(events, key=lambda row: row[1].originator_id):
        _replay(str(aggregate_id), rows, decode, report)


def _replay(
    aggregate_id: str,
    rows: Iterator[tuple[int, StoredEvent]],
    decode: Callable[[StoredEvent], DomainEventProtocol[UUID]],
    report: Report,
) -> None:
    payment: Any = None
    expected = 1
    is_payment: bool | None = None
    for position, stored in rows:
        report.events += 1
        what = f"payment {aggregate_id} version {stored.originator_version} (position {position})"
        if is_payment is None:
            is_payment = stored.topic.startswith(_PAYMENT_TOPICS)
            report.payments += is_payment
        if not is_payment:
            continue  # commands, webhook deliveries, indexes: the chain covers them
        if stored.originator_version != expected:
            report.add(
                "version-gap",
                what,
                f"expected version {expected}: versions {expected}.."
                f"{stored.originator_version - 1} are missing",
            )
            return  # a replay across a gap would report noise, not findings
        expected += 1
        try:
            event: Any = decode(stored)
        except Exception as e:  # a tampered state can fail in any way the decoder fails
            if (missing := missing_key(e)) is not None:
                raise missing from None  # not a finding: verify cannot read it without the key
            report.add("unreadable", what, f"the event cannot be decoded: {e}")
            return
        before = None if payment is None else payment.status
        try:
            payment = event.mutate(payment)
        except Exception as e:
            report.add("replay-failed", what, f"{type(event).__name__} cannot be applied: {e}")
            return
        _check(payment, before, event, what, report)


def _check(
    payment: Payment,
    before: Status | None,
    event: DomainEventProtocol[UUID],
    what: str,
    report: Report,
) -> None:
    name = type(event).__name__
    if payment.captured_amount > payment.amount or payment.captured_amount < 0:
        report.add(
            "over-captured",
            what,
            f"after {name}: captured {payment.captured_amount} of {payment.amount} authorized",
        )
    elif payment.captured_amount and not payment.authorized:
        report.add("over-captured", what, f"after {name}: captured without an authorization")
    if payment.refunded_amount > payment.captured_amount or payment.refunded_amount < 0:
        report.add(
            "over-refunded",
            what,
            f"after {name}: refunded {payment.refunded_amount} "
            f"of {payment.captured_amount} captured",
        )
    if before is not None and before in TERMINAL and type(event) not in AFTER_TERMINAL:
        after = payment.status
        moved = f"moved it to {after.value}" if after != before else "changed it"
        report.add("left-terminal", what, f"{name} after the payment was {before.value}: {moved}")


def _type_name(topic: str) -> str:
    return topic.rpartition(".")[2] or topic


def _named(aggregate_id: object, topic: str | None) -> str:
    """How a finding names an event's aggregate: ``payment <id>`` for a payment, the kind of
    record otherwise (a command, a webhook delivery), ``event of <id>`` when it is gone."""
    if topic is None:
        return f"event of {aggregate_id}"
    if topic.startswith(_PAYMENT_TOPICS):
        return f"payment {aggregate_id}"
    kind = topic.partition(":")[2].partition(".")[0] or "record"
    return f"{kind} {aggregate_id}"


# Every payment event's topic begins so; other aggregates (commands, webhook deliveries,
# reference indexes) share the table but have no money to check.
_PAYMENT_TOPICS = get_topic(Payment) + "."
