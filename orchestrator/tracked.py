"""A small table next to the event log, kept from the log at its own tracked position: what the
in-doubt index (``orchestrator.indoubt``), the unmatched-delivery index
(``orchestrator.webhooks.unmatched``) and the payment listing (``orchestrator.listing``) share.

Each follows the log from its own ``Tracking(<name>, ...)`` row in the store's tracking table:
the rows a page of events gives and the position that page reaches commit in one transaction,
so a crash can neither lose a row nor add one twice. Every replica shares the one table and
position; a replica whose page conflicts on the position (``IntegrityError``) finds another
replica recorded that stretch, and takes its position.

The position skips to the log's head, as the webhook consumer's does, and is safe for the same
reason: every id at or below the head is final when the head is read (SQLite has one writer;
eventsourcing's PostgreSQL recorder inserts under ``LOCK TABLE ... IN EXCLUSIVE MODE``, so ids
commit in order; see ``orchestrator.webhooks.processor``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Tracking

PAGE = 1000  # events per transaction


@dataclass(frozen=True)
class Bulk:
    """One write of many rows, in each dialect (``TrackedTable.many``): PostgreSQL's takes one
    array per column, SQLite's one row."""

    postgres: str
    sqlite: str


class TrackedTable:
    """The table and its position, on the application's own recorder (SQLite or PostgreSQL).
    Subclasses name their position and give their table's DDL."""

    tracking_name: str
    # Serialises creating the table across replicas starting at once on PostgreSQL, where
    # concurrent CREATE TABLE IF NOT EXISTS races: one constant per table.
    ddl_lock_key: int

    def __init__(self, recorder: Any, suffix: str) -> None:
        self.recorder = recorder
        self.datastore = recorder.datastore
        self.postgres = hasattr(self.datastore, "schema")
        self.table = f"{recorder.events_table_name}_{suffix}"
        # Table names come from eventsourcing's settings, never from input.
        self.name = f'"{self.datastore.schema}"."{self.table}"' if self.postgres else self.table
        self.mark = "%s" if self.postgres else "?"
        self._created = False

    @property
    def id_and_integer_types(self) -> tuple[str, str]:
        """The column types of an aggregate id and of a version or position, in the store's
        dialect (SQLite keeps ids as text, as eventsourcing's recorder does)."""
        return ("uuid", "bigint") if self.postgres else ("TEXT", "INTEGER")

    def ddl(self) -> list[str]:
        """The statements that create the table and its indexes (IF NOT EXISTS)."""
        raise NotImplementedError

    def create_table(self) -> None:
        if self._created:
            return
        with self.datastore.transaction(commit=True) as cursor:
            if self.postgres:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (self.ddl_lock_key,))
            for statement in self.ddl():
                cursor.execute(statement)
        self._created = True

    def position(self) -> int:
        position: int = self.recorder.max_tracking_id(self.tracking_name) or 0
        return position

    def many(self, cursor: Any, statements: Bulk, rows: Sequence[tuple[Any, ...]]) -> None:
        """Writes ``rows`` with ``statements``: on PostgreSQL the first, once, given one array
        per column; on SQLite the second, for each row (its executemany is one loop in C).
        psycopg's executemany sends a statement per row and reads each one's result in
        Python: the webhook consumer spent half its time deleting index rows one by one."""
        if not rows:
            return
        if self.postgres:
            columns = [list(column) for column in zip(*rows, strict=True)]
            cursor.execute(statements.postgres, columns)
        else:
            cursor.executemany(statements.sqlite, rows)

    def commit(self, reached: int | None, write: Callable[[Any], object]) -> None:
        """``write(cursor)`` and the position ``reached``, in one transaction. Raises
        IntegrityError if the position is already at or past ``reached`` (another replica's
        pass). Without ``reached``, the writes alone."""
        with self.datastore.transaction(commit=True) as cursor:
            if reached is not None:
                self.recorder._insert_tracking(cursor, Tracking(self.tracking_name, reached))
            write(cursor)

    def follow(
        self,
        head: int,
        topics: Sequence[str],
        write: Callable[[Any, Sequence[Any]], None],
        *,
        stopping: Callable[[], bool] = lambda: False,
    ) -> int:
        """Gives each page of the events of ``topics`` after the position, up to ``head`` (the
        log's largest id, read by the caller), to ``write(cursor, page)`` with the position it
        reaches; returns the position reached, at or past ``head`` unless ``stopping``."""
        self.create_table()
        position = self.position()
        while position < head and not stopping():
            page = self.recorder.select_notifications(
                start=position, limit=PAGE, stop=head, topics=list(topics),
                inclusive_of_start=False,
            )  # fmt: skip
            reached = page[-1].id if len(page) == PAGE else head
            try:
                self.commit(reached, functools.partial(_write_page, write, page))
                position = reached
            except IntegrityError:
                # Another replica recorded this stretch (or more) meanwhile: its rows are ours.
                position = self.position()
                if position < reached:
                    raise
        return position

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self.create_table()
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        row = self.fetch(sql, params)[0]
        return int(next(iter(row.values())) if isinstance(row, dict) else row[0])

    def uuids(self, sql: str, column: str) -> list[UUID]:
        """The first column of each row, as UUIDs (SQLite stores them as hex text)."""
        rows = self.fetch(sql)
        return [UUID(str(row[column] if isinstance(row, dict) else row[0])) for row in rows]

    def key(self, value: Any) -> Any:
        """A UUID as the table stores it: uuid on PostgreSQL, hex text on SQLite."""
        uid = value if isinstance(value, UUID) else UUID(str(value))
        return uid if self.postgres else uid.hex


def _write_page(
    write: Callable[[Any, Sequence[Any]], None], page: Sequence[Any], cursor: Any
) -> None:
    write(cursor, page)
