"""Which payments may have an operation in doubt: a small table next to the event log, kept
by the recovery worker, so that a restarted replica reads those payments and nothing else.

The table (``<events table>_in_doubt``) holds one row per payment that recorded an event after
which an operation may be in doubt (``OperationStarted``, ``FailedOver``, ``OutcomeUnknown``,
``StillUnknown``), with the highest version of such an event seen. It follows the log from its
own tracked position (``Tracking("recovery-index", ...)`` in the store's tracking table): the
rows it adds and the position they reach commit in one transaction, so a crash can neither
lose a row nor add one twice, and every replica shares the one table and position.

A row is removed by ``forget(payment, version)``: when the payment, read at ``version``, has
nothing in doubt, and only if no event after that read added to the row (its version is at
most the one read). A replica that read a payment before another replica recorded a new
operation on it therefore never removes the row that operation needs. The index also follows
the events that settle an operation (``Authorized``, ``Captured``, ``Canceled``, ``Refunded``,
``OperationDeclined``, ``OperationFailed``, ``ReviewRequired``): a payment whose last such
event comes after its last event of doubt gets no row, or loses the rows before it, without
being read. That relies on the domain's rule that at most one operation is in doubt, always
the last one, and that these events only ever settle that one (a reversal of an earlier
capture or refund is not among them). So building the index over an existing log reads the
log once and no payment, and a busy log's passes read only the payments still in doubt.

The position skips to the log's head the way the webhook consumer's does, and is safe for the
same reason (``orchestrator.tracked``, which keeps the table and its position).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from orchestrator.domain.payment import Payment
from orchestrator.tracked import Bulk, TrackedTable

TRACKING_NAME = "recovery-index"
# Events after which a payment may have an operation in doubt.
DOUBT = {
    get_topic(event)
    for event in (
        Payment.OperationStarted,
        Payment.FailedOver,
        Payment.OutcomeUnknown,
        Payment.StillUnknown,
    )
}
# Events after which the payment's operation (the last one) is no longer in doubt, or needs a
# person (the recovery worker leaves those alone).
SETTLED = {
    get_topic(event)
    for event in (
        Payment.Authorized,
        Payment.Captured,
        Payment.Canceled,
        Payment.Refunded,
        Payment.OperationDeclined,
        Payment.OperationFailed,
        Payment.ReviewRequired,
        Payment.ResolvedByOperator,
    )
}
TOPICS = sorted(DOUBT | SETTLED)


class InDoubtIndex(TrackedTable):
    """The table and its position, on the application's own recorder (SQLite or PostgreSQL)."""

    tracking_name = TRACKING_NAME
    ddl_lock_key = 0x706179696E64  # "payind"

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder, "in_doubt")
        name = self.name
        # Table names come from eventsourcing's settings, never from input (noqa S608).
        self.upsert = Bulk(
            f"INSERT INTO {name} AS t SELECT * FROM unnest(%s::uuid[], %s::bigint[]) "  # noqa: S608
            "ON CONFLICT (payment_id) "
            "DO UPDATE SET version = GREATEST(t.version, excluded.version)",
            f"INSERT INTO {name} AS t VALUES (?, ?) ON CONFLICT (payment_id) "  # noqa: S608
            "DO UPDATE SET version = MAX(t.version, excluded.version)",
        )
        self.delete = Bulk(
            f"DELETE FROM {name} t USING unnest(%s::uuid[], %s::bigint[]) AS d(id, version) "  # noqa: S608
            "WHERE t.payment_id = d.id AND t.version <= d.version",
            f"DELETE FROM {name} WHERE payment_id = ? AND version <= ?",  # noqa: S608
        )

    def ddl(self) -> list[str]:
        uuid, integer = self.id_and_integer_types
        return [
            f"CREATE TABLE IF NOT EXISTS {self.name} "
            f"(payment_id {uuid} PRIMARY KEY, version {integer} NOT NULL)"
        ]

    def catch_up(self, head: int) -> int:
        """Adds the payments of every event of interest up to ``head`` (the log's largest id,
        read by the caller); returns the position reached, at or past ``head``."""
        return self.follow(head, TOPICS, self._write)

    def _write(self, cursor: Any, page: Sequence[Any]) -> None:
        last: dict[Any, tuple[int, bool]] = {}  # payment -> (version, in doubt after it)
        for n in page:  # in commit order, so each payment's versions ascend
            last[self.key(n.originator_id)] = (n.originator_version, n.topic in DOUBT)
        upserts = [(pid, version) for pid, (version, doubt) in last.items() if doubt]
        # A settling event at version v: rows of doubt before v go (a strict "<", unlike
        # forget's read, which saw version v itself).
        settled = [(pid, version - 1) for pid, (version, doubt) in last.items() if not doubt]
        self.many(cursor, self.upsert, upserts)
        self.many(cursor, self.delete, settled)

    def payment_ids(self) -> list[UUID]:
        return self.uuids(f"SELECT payment_id FROM {self.name} ORDER BY payment_id", "payment_id")  # noqa: S608

    def count(self) -> int:
        """The rows: payments whose last operation may be in flight or in doubt (metrics)."""
        return self.scalar(f"SELECT count(*) FROM {self.name}")  # noqa: S608

    def forget(self, payment_id: UUID, version: int) -> None:
        """The payment, read at ``version``, has nothing in doubt: drop its row, unless an event
        after that read put it there."""
        row = (self.key(payment_id), version)
        self.commit(None, lambda cursor: self.many(cursor, self.delete, [row]))
