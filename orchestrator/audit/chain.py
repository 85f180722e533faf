"""A tamper-evident chain over the event store: finance can trust that nobody edited the log.

Every stored event, in commit order, gets a link in a side table of its events table
(``<events table>_chain``): the link's sequence number, the event's identity (aggregate id and
version), a digest of the event's content exactly as stored (id, version, topic, state bytes),
and a hash over the digest and the previous link's hash. The links are written by the
recorder in the same transaction as the events, so an event never commits without its link.

What this catches, made directly in the database (``audit verify`` names each):
- an edited event: its content no longer matches its digest;
- a deleted event: its link is left without an event, or, deleted with its link, the next link
  no longer follows from the link before the gap;
- an inserted event: it has no link; a forged link fails its hash.

The hash is keyed (HMAC-SHA256) with ``PAYORCH_AUDIT_CHAIN_KEY`` (or a secret file named by
``PAYORCH_AUDIT_CHAIN_KEY_FILE``), held by payorch and finance but not by the database: without
it, someone who can write to the database cannot forge a consistent chain. Without a key the
chain is still computed (with an empty key): it then catches accidental and naive edits, not a
forger who rewrites the whole chain. A cut of the newest events and their links leaves a valid
shorter chain: record the head ``audit verify`` prints and pass it back with ``--expect-head``.

Ordering: on PostgreSQL the links are written under the table lock eventsourcing takes for
every insert, so commit order and chain order agree; SQLite has one writer at a time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore, SQLiteProcessRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

KEY_VARIABLE = "PAYORCH_AUDIT_CHAIN_KEY"
KEY_FILE_VARIABLE = "PAYORCH_AUDIT_CHAIN_KEY_FILE"
GENESIS = bytes(32)  # the "previous hash" of the first link
PAGE = 2000


def chain_key() -> bytes:
    """The chain's key, from the environment or a secret file; empty when neither is set."""
    path = os.environ.get(KEY_FILE_VARIABLE)
    if path:
        return Path(path).read_bytes().strip()
    return os.environ.get(KEY_VARIABLE, "").encode()


def content_digest(originator_id: UUID, version: int, topic: str, state: bytes) -> bytes:
    """SHA-256 over the event as stored. Each part is length-prefixed, so no two different
    events (a topic ending where the state begins) can encode to the same bytes."""
    digest = hashlib.sha256()
    for part in (str(originator_id).encode(), str(version).encode(), topic.encode(), state):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def link_hash(key: bytes, previous: bytes, digest: bytes) -> bytes:
    return hmac.new(key, previous + digest, hashlib.sha256).digest()


@dataclass(frozen=True)
class Link:
    """One link of the chain, with the event it chains as it is now (``None``: gone)."""

    seq: int
    originator_id: UUID
    originator_version: int
    digest: bytes
    hash: bytes
    event: StoredEvent | None
    position: int | None  # the event's notification id, when it is there


@dataclass(frozen=True)
class Unchained:
    """A stored event that no link names: written around payorch."""

    position: int
    event: StoredEvent


def _as_uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def _new_links(
    key: bytes, head_seq: int, head_hash: bytes, stored_events: Sequence[StoredEvent]
) -> list[tuple[int, UUID, int, bytes, bytes]]:
    rows = []
    seq, previous = head_seq, head_hash
    for event in stored_events:
        oid = _as_uuid(event.originator_id)
        digest = content_digest(oid, event.originator_version, event.topic, event.state)
        seq, previous = seq + 1, link_hash(key, previous, digest)
        rows.append((seq, oid, event.originator_version, digest, previous))
    return rows


class ChainedRecorder:
    """What ``audit verify`` reads from a chained store, whatever the database."""

    chain_key: bytes

    def chain_head(self) -> tuple[int, bytes]:
        raise NotImplementedError

    def links(self, after: int, upto: int) -> Iterator[Link]:
        raise NotImplementedError

    def link_at(self, seq: int) -> bytes | None:
        raise NotImplementedError

    def unchained(self) -> Iterator[Unchained]:
        raise NotImplementedError

    def events_by_aggregate(self) -> Iterator[tuple[int, StoredEvent]]:
        """Every stored event with its position, by aggregate id then version, streamed."""
        raise NotImplementedError


class ChainedSQLiteRecorder(SQLiteProcessRecorder, ChainedRecorder):
    def __init__(
        self, datastore: SQLiteDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.chain_key = chain_key()
        # Table names come from eventsourcing's settings, never from input (hence noqa S608).
        chain, events = self.chain_table_name, self.events_table_name
        self._head_sql = f"SELECT seq, hash FROM {chain} ORDER BY seq DESC LIMIT 1"  # noqa: S608
        self._insert_link_sql = f"INSERT INTO {chain} VALUES (?, ?, ?, ?, ?)"  # noqa: S608
        self._link_at_sql = f"SELECT hash FROM {chain} WHERE seq = ?"  # noqa: S608
        self._links_sql = (
            "SELECT c.seq, c.originator_id, c.originator_version, c.digest, c.hash, "  # noqa: S608
            f"e.rowid AS position, e.topic, e.state FROM {chain} c LEFT JOIN {events} e "
            "ON e.originator_id = c.originator_id AND e.originator_version = c.originator_version "
            "WHERE c.seq > ? AND c.seq <= ? ORDER BY c.seq LIMIT ?"
        )
        self._unchained_sql = (
            f"SELECT e.rowid AS position, e.* FROM {events} e LEFT JOIN {chain} c "  # noqa: S608
            "ON e.originator_id = c.originator_id AND e.originator_version = c.originator_version "
            "WHERE c.seq IS NULL AND e.rowid > ? ORDER BY e.rowid LIMIT ?"
        )
        self._by_aggregate_sql = (
            f"SELECT rowid AS position, * FROM {events} "  # noqa: S608
            "WHERE (originator_id, originator_version) > (?, ?) "
            "ORDER BY originator_id, originator_version LIMIT ?"
        )

    @property
    def chain_table_name(self) -> str:
        return f"{self.events_table_name}_chain"

    def construct_create_table_statements(self) -> list[str]:
        statements = super().construct_create_table_statements()
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {self.chain_table_name} ("
            "seq INTEGER PRIMARY KEY, originator_id TEXT NOT NULL, "
            "originator_version INTEGER NOT NULL, digest BLOB NOT NULL, hash BLOB NOT NULL, "
            "UNIQUE (originator_id, originator_version))"
        )
        return statements

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # The events go first: their insert takes SQLite's write lock, so the head read
        # next is the head, and no other writer extends the chain before this commits.
        returning = super()._insert_events(c, stored_events, **kwargs)
        if stored_events:
            c.execute(self._head_sql)
            row = c.fetchone()
            head = (row["seq"], bytes(row["hash"])) if row else (0, GENESIS)
            rows = _new_links(self.chain_key, head[0], head[1], stored_events)
            c.executemany(
                self._insert_link_sql,
                [(s, oid.hex, v, d, h) for s, oid, v, d, h in rows],
            )
        return returning

    # --- reading, for verify ----------------------------------------------------------

    def _rows(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, params)
            return list(c.fetchall())

    def chain_head(self) -> tuple[int, bytes]:
        rows = self._rows(self._head_sql)
        return (rows[0]["seq"], bytes(rows[0]["hash"])) if rows else (0, GENESIS)

    def link_at(self, seq: int) -> bytes | None:
        rows = self._rows(self._link_at_sql, (seq,))
        return bytes(rows[0]["hash"]) if rows else None

    def links(self, after: int, upto: int) -> Iterator[Link]:
        while True:
            rows = self._rows(self._links_sql, (after, upto, PAGE))
            for row in rows:
                yield _link(row, UUID(row["originator_id"]))
            if len(rows) < PAGE:
                return
            after = rows[-1]["seq"]

    def unchained(self) -> Iterator[Unchained]:
        after = 0
        while True:
            rows = self._rows(self._unchained_sql, (after, PAGE))
            for row in rows:
                yield Unchained(row["position"], _stored(row, UUID(row["originator_id"])))
            if len(rows) < PAGE:
                return
            after = rows[-1]["position"]

    def events_by_aggregate(self) -> Iterator[tuple[int, StoredEvent]]:
        after: tuple[str, int] = ("", 0)
        while True:
            rows = self._rows(self._by_aggregate_sql, (*after, PAGE))
            for row in rows:
                yield row["position"], _stored(row, UUID(row["originator_id"]))
            if len(rows) < PAGE:
                return
            after = (rows[-1]["originator_id"], rows[-1]["originator_version"])


class ChainedPostgresRecorder(PostgresProcessRecorder, ChainedRecorder):
    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        tracking_table_name: str = "notification_tracking",
    ) -> None:
        if datastore.enable_db_functions:
            # That insert path skips _insert_events: events would commit without their links.
            raise ValueError("the audit chain needs POSTGRES_ENABLE_DB_FUNCTIONS off")
        super().__init__(
            datastore, events_table_name=events_table_name, tracking_table_name=tracking_table_name
        )
        self.chain_key = chain_key()
        self.chain_table = SQL("{}.{}").format(
            Identifier(datastore.schema), Identifier(f"{events_table_name}_chain")
        )
        self.events_table = SQL("{}.{}").format(
            Identifier(datastore.schema), Identifier(events_table_name)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {chain} ("
                "seq bigint PRIMARY KEY, originator_id {id_type} NOT NULL, "
                "originator_version bigint NOT NULL, digest bytea NOT NULL, hash bytea NOT NULL, "
                "UNIQUE (originator_id, originator_version))"
            ).format(chain=self.chain_table, id_type=Identifier(datastore.originator_id_type))
        )

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # Runs in the events' transaction, before their insert. Taking the table lock here
        # (the insert takes it again, harmlessly) makes the head read next the true head:
        # every writer of the events table waits for it, so the chain cannot fork.
        if stored_events:
            self._lock_table(curs)
            curs.execute(SQL("SELECT seq, hash FROM {} ORDER BY seq DESC LIMIT 1").format(
                self.chain_table
            ))  # fmt: skip
            row = curs.fetchone()
            head = (row["seq"], bytes(row["hash"])) if row else (0, GENESIS)
            curs.executemany(
                SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s)").format(self.chain_table),
                _new_links(self.chain_key, head[0], head[1], stored_events),
            )
        super()._insert_events(curs, stored_events, **kwargs)

    # --- reading, for verify ----------------------------------------------------------

    def _rows(self, statement: Any, params: Sequence[Any] = ()) -> list[DictRow]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, params)
            return curs.fetchall()

    def chain_head(self) -> tuple[int, bytes]:
        rows = self._rows(
            SQL("SELECT seq, hash FROM {} ORDER BY seq DESC LIMIT 1").format(self.chain_table)
        )
        return (rows[0]["seq"], bytes(rows[0]["hash"])) if rows else (0, GENESIS)

    def link_at(self, seq: int) -> bytes | None:
        rows = self._rows(
            SQL("SELECT hash FROM {} WHERE seq = %s").format(self.chain_table), (seq,)
        )
        return bytes(rows[0]["hash"]) if rows else None

    def links(self, after: int, upto: int) -> Iterator[Link]:
        statement = SQL(
            "SELECT c.seq, c.originator_id, c.originator_version, c.digest, c.hash, "
            "e.notification_id AS position, e.topic, e.state "
            "FROM {chain} c LEFT JOIN {events} e ON e.originator_id = c.originator_id "
            "AND e.originator_version = c.originator_version "
            "WHERE c.seq > %s AND c.seq <= %s ORDER BY c.seq LIMIT %s"
        ).format(chain=self.chain_table, events=self.events_table)
        while True:
            rows = self._rows(statement, (after, upto, PAGE))
            for row in rows:
                yield _link(row, _as_uuid(row["originator_id"]))
            if len(rows) < PAGE:
                return
            after = rows[-1]["seq"]

    def unchained(self) -> Iterator[Unchained]:
        statement = SQL(
            "SELECT e.* FROM {events} e LEFT JOIN {chain} c "
            "ON e.originator_id = c.originator_id AND e.originator_version = c.originator_version "
            "WHERE c.seq IS NULL AND e.notification_id > %s ORDER BY e.notification_id LIMIT %s"
        ).format(chain=self.chain_table, events=self.events_table)
        after = 0
        while True:
            rows = self._rows(statement, (after, PAGE))
            for row in rows:
                oid = _as_uuid(row["originator_id"])
                yield Unchained(row["notification_id"], _stored(row, oid))
            if len(rows) < PAGE:
                return
            after = rows[-1]["notification_id"]

    def events_by_aggregate(self) -> Iterator[tuple[int, StoredEvent]]:
        statement = SQL(
            "SELECT * FROM {events} WHERE (originator_id, originator_version) > (%s, %s) "
            "ORDER BY originator_id, originator_version LIMIT %s"
        ).format(events=self.events_table)
        after: tuple[UUID, int] = (UUID(int=0), 0)
        while True:
            rows = self._rows(statement, (*after, PAGE))
            for row in rows:
                yield row["notification_id"], _stored(row, _as_uuid(row["originator_id"]))
            if len(rows) < PAGE:
                return
            after = (_as_uuid(rows[-1]["originator_id"]), rows[-1]["originator_version"])


def _stored(row: Any, originator_id: UUID) -> StoredEvent:
    return StoredEvent(
        originator_id=originator_id,
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )


def _link(row: Any, originator_id: UUID) -> Link:
    present = row["position"] is not None
    return Link(
        seq=row["seq"],
        originator_id=originator_id,
        originator_version=row["originator_version"],
        digest=bytes(row["digest"]),
        hash=bytes(row["hash"]),
        event=_stored(row, originator_id) if present else None,
        position=row["position"] if present else None,
    )
