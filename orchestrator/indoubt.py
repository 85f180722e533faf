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
same reason: every id at or below the head is final when the head is read (SQLite has one
writer; eventsourcing's PostgreSQL recorder inserts under ``LOCK TABLE ... IN EXCLUSIVE
MODE``, so ids commit in order; see ``orchestrator.webhooks.processor``).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.utils import get_topic

from orchestrator.domain.payment import Payment

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
PAGE = 1000
# Serialises creating the table across replicas starting at once on PostgreSQL, where
# concurrent CREATE TABLE IF NOT EXISTS races; any constant will do ("payind").
_DDL_LOCK_KEY = 0x706179696E64


class InDoubtIndex:
    """The table and its position, on the application's own recorder (SQLite or PostgreSQL)."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder
        self.datastore = recorder.datastore
        self.postgres = hasattr(self.datastore, "schema")
        table = f"{recorder.events_table_name}_in_doubt"
        if self.postgres:
            name = f'"{self.datastore.schema}"."{table}"'
            self.create = [
                "SELECT pg_advisory_xact_lock(%s)",
                f"CREATE TABLE IF NOT EXISTS {name} "
                "(payment_id uuid PRIMARY KEY, version bigint NOT NULL)",
            ]
            # Table names come from eventsourcing's settings, never from input (noqa S608).
            self.upsert = (
                f"INSERT INTO {name} AS t VALUES (%s, %s) ON CONFLICT (payment_id) "  # noqa: S608
                "DO UPDATE SET version = GREATEST(t.version, excluded.version)"
            )
            self.delete = f"DELETE FROM {name} WHERE payment_id = %s AND version <= %s"  # noqa: S608
            self.select = f"SELECT payment_id FROM {name} ORDER BY payment_id"  # noqa: S608
            self.count_rows = f"SELECT count(*) FROM {name}"  # noqa: S608
        else:
            self.create = [
                f"CREATE TABLE IF NOT EXISTS {table} "
                "(payment_id TEXT PRIMARY KEY, version INTEGER NOT NULL)"
            ]
            self.upsert = (
                f"INSERT INTO {table} VALUES (?, ?) ON CONFLICT (payment_id) "  # noqa: S608
                f"DO UPDATE SET version = MAX({table}.version, excluded.version)"
            )
            self.delete = f"DELETE FROM {table} WHERE payment_id = ? AND version <= ?"  # noqa: S608
            self.select = f"SELECT payment_id FROM {table} ORDER BY payment_id"  # noqa: S608
            self.count_rows = f"SELECT count(*) FROM {table}"  # noqa: S608
        self._created = False

    def create_table(self) -> None:
        if self._created:
            return
        with self.datastore.transaction(commit=True) as cursor:
            for statement in self.create:
                cursor.execute(statement, (_DDL_LOCK_KEY,) if "%s" in statement else ())
        self._created = True

    def position(self) -> int:
        position: int = self.recorder.max_tracking_id(TRACKING_NAME) or 0
        return position

    def catch_up(self, head: int) -> int:
        """Adds the payments of every event of interest up to ``head`` (the log's largest id,
        read by the caller); returns the position reached, at or past ``head``."""
        self.create_table()
        position = self.position()
        while position < head:
            page = self.recorder.select_notifications(
                start=position, limit=PAGE, stop=head, topics=TOPICS, inclusive_of_start=False
            )
            reached = page[-1].id if len(page) == PAGE else head
            last: dict[Any, tuple[int, bool]] = {}  # payment -> (version, in doubt after it)
            for n in page:  # in commit order, so each payment's versions ascend
                last[self._id(n.originator_id)] = (n.originator_version, n.topic in DOUBT)
            upserts = [(pid, version) for pid, (version, doubt) in last.items() if doubt]
            # A settling event at version v: rows of doubt before v go (a strict "<", unlike
            # forget's read, which saw version v itself).
            settled = [(pid, version - 1) for pid, (version, doubt) in last.items() if not doubt]
            try:
                with self.datastore.transaction(commit=True) as cursor:
                    self.recorder._insert_tracking(cursor, Tracking(TRACKING_NAME, reached))
                    if upserts:
                        cursor.executemany(self.upsert, upserts)
                    if settled:
                        cursor.executemany(self.delete, settled)
                position = reached
            except IntegrityError:
                # Another replica recorded this stretch (or more) meanwhile: its rows are ours.
                position = self.position()
                if position < reached:
                    raise
        return position

    def payment_ids(self) -> list[UUID]:
        self.create_table()
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(self.select)
            rows = cursor.fetchall()
        return [UUID(str(row["payment_id"] if isinstance(row, dict) else row[0])) for row in rows]

    def count(self) -> int:
        """The rows: payments whose last operation may be in flight or in doubt (metrics)."""
        self.create_table()
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(self.count_rows)
            row = cursor.fetchone()
        return int(next(iter(row.values())) if isinstance(row, dict) else row[0])

    def forget(self, payment_id: UUID, version: int) -> None:
        """The payment, read at ``version``, has nothing in doubt: drop its row, unless an event
        after that read put it there."""
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(self.delete, (self._id(payment_id), version))

    def _id(self, payment_id: Any) -> Any:
        uid = payment_id if isinstance(payment_id, UUID) else UUID(str(payment_id))
        return uid if self.postgres else uid.hex
