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
every insert (a group commit's batch takes the same lock, see ``orchestrator.batching``), so
commit order and chain order agree; SQLite has one writer at a time.

Speed on PostgreSQL: a transaction that must read the head under the lock before Python can
compute the links holds the lock across round trips to Python. A recorder that wrote the
newest link knows the head (``KnownHead``): it computes the links first and sends the whole
transaction in one round trip, with a guard the server checks under the lock (the head is
still the one guessed, else the transaction fails). A guess that fails has read the true head
under the lock on its way, and the transaction is sent again built on that one: a replica
whose head another replica moved pays one more round trip, and the lock is never held while
Python computes links. The key never leaves payorch: the database checks a guess, it does not
compute a link.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore, SQLiteProcessRecorder
from psycopg import Cursor, errors
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from orchestrator.store import check_only_when_suspect, without_jit

KEY_VARIABLE = "PAYORCH_AUDIT_CHAIN_KEY"
KEY_FILE_VARIABLE = "PAYORCH_AUDIT_CHAIN_KEY_FILE"
GENESIS = bytes(32)  # the "previous hash" of the first link
# A link (c) and the event it chains (e).
_JOIN = "ON e.originator_id = c.originator_id AND e.originator_version = c.originator_version"
PAGE = 2000
# Attempts of a transaction in one round trip: the known head, then the head the miss saw.
# More measured slower with two processes writing all the time (bench: 1,500 saves/s with
# three, 1,790 with two): a retry that misses again costs a whole transaction's round trip.
GUESSES = 2
AFTER_PAGE = 400  # aggregates per query of select_events_after (SQLite: two variables each)


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


@dataclass(frozen=True)
class ChainStatements:
    """The chain's SQL in one database's dialect. Every reading statement names the event's
    place in the log ``position``; the paged ones end with a keyset and a LIMIT."""

    head: Any  # the newest link: seq, hash
    insert_link: Any  # seq, originator_id, originator_version, digest, hash
    link_at: Any  # hash of the link with seq = ?
    links: Any  # links after seq ? up to seq ?, with their events (or NULLs: gone)
    unchained: Any  # events after position ? that no link names
    by_aggregate: Any  # events after (originator_id, originator_version) ?


class KnownHead:
    """The chain's head as this recorder's last transaction left it, while it may still be
    the head: then the next transaction can send its links, computed from it, without first
    reading the head under the lock. Thread-safe.

    A transaction starts from the known head only when no other transaction of this
    recorder is in flight (one that would move the head first), and the head is handed out
    once. Each attempt sent in one round trip is a guess, that hits or misses (another
    writer, another replica, moved the head meanwhile).

    A transaction's first guess that misses makes the next ``skip`` transactions read the
    head instead, ``skip`` doubling up to MAX_SKIP while first guesses keep missing and
    starting again at 1 after one that hits: replicas that all write all the time read the
    head under the lock (cheaper then than guesses that keep missing), and a replica that
    another writes past now and then loses one round trip."""

    MAX_SKIP = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._head: tuple[int, bytes] | None = None
        self._writing = 0  # transactions in flight, between take and done
        self._skipping = 0  # transactions left that do not guess
        self._skip = 1  # what the next first miss sets _skipping to
        self.guesses = 0  # attempts sent in one round trip
        self.misses = 0  # of those, that found the head moved
        # Told each guess's result, "hit" or "miss" (metrics); None: nobody is told.
        self.observe: Callable[[str], None] | None = None

    def take(self) -> tuple[int, bytes] | None:
        """At a transaction's start: the head to guess, or None (read it). Pair with done."""
        with self._lock:
            self._writing += 1
            head, self._head = self._head, None
            if self._skipping:
                self._skipping -= 1
                return None
            return head if self._writing == 1 else None

    def sent(self) -> None:
        """An attempt goes in one round trip; ``hit`` or ``missed`` follows, unless it fails
        for another reason (a duplicate)."""
        with self._lock:
            self.guesses += 1

    def missed(self, *, first: bool = True) -> None:
        """A guess found the head moved; ``first``: the transaction's first."""
        with self._lock:
            self.misses += 1
            if first:
                self._skipping = self._skip
                self._skip = min(2 * self._skip, self.MAX_SKIP)
        if self.observe is not None:
            self.observe("miss")

    def hit(self, *, first: bool = True) -> None:
        """A guess committed; ``first``: the transaction's first."""
        if first:
            with self._lock:
                self._skip = 1
        if self.observe is not None:
            self.observe("hit")

    def done(self, head: tuple[int, bytes] | None) -> None:
        """At a transaction's end: the head it committed, or None (it failed)."""
        with self._lock:
            self._writing -= 1
            self._head = head


class ChainedRecorder:
    """The chain, written with every save and read by ``audit verify``, whatever the
    database: the dialects give their statements, how they run one, and how they store ids."""

    chain_key: bytes
    chain_sql: ChainStatements
    lowest_id: Any  # below every stored originator id, where a walk by aggregate starts

    def _rows(self, statement: Any, params: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def _stored_id(self, originator_id: UUID) -> Any:
        raise NotImplementedError

    def _append_links(self, cursor: Any, stored_events: Sequence[StoredEvent]) -> None:
        """Inside the events' transaction, with no other writer able to move the head."""
        cursor.execute(self.chain_sql.head)
        self._insert_links(cursor, self._next_links(cursor.fetchone(), stored_events))

    def _next_links(self, head: Any, stored_events: Sequence[StoredEvent]) -> list[tuple[Any, ...]]:
        """The links of ``stored_events`` after ``head`` (the newest link's row, or None):
        seq, originator_id, originator_version, digest, hash."""
        seq, previous = (head["seq"], bytes(head["hash"])) if head else (0, GENESIS)
        links = []
        for event in stored_events:
            oid = _as_uuid(event.originator_id)
            digest = content_digest(oid, event.originator_version, event.topic, event.state)
            seq, previous = seq + 1, link_hash(self.chain_key, previous, digest)
            links.append((seq, self._stored_id(oid), event.originator_version, digest, previous))
        return links

    def _insert_links(self, cursor: Any, links: list[tuple[Any, ...]]) -> None:
        cursor.executemany(self.chain_sql.insert_link, links)

    def select_events_after(self, after: Mapping[UUID, int]) -> list[StoredEvent]:
        """The events of each aggregate of ``after`` past its version there, by aggregate then
        version, in one query per ``AFTER_PAGE`` aggregates: a page of reads, one round trip."""
        keys = list(after.items())
        events: list[StoredEvent] = []
        for start in range(0, len(keys), AFTER_PAGE):
            rows = self._events_after(keys[start : start + AFTER_PAGE])
            events.extend(_stored(row, _as_uuid(row["originator_id"])) for row in rows)
        return events

    def _events_after(self, keys: list[tuple[UUID, int]]) -> list[Any]:
        raise NotImplementedError

    def chain_head(self) -> tuple[int, bytes]:
        rows = self._rows(self.chain_sql.head)
        return (rows[0]["seq"], bytes(rows[0]["hash"])) if rows else (0, GENESIS)

    def link_at(self, seq: int) -> bytes | None:
        rows = self._rows(self.chain_sql.link_at, (seq,))
        return bytes(rows[0]["hash"]) if rows else None

    def links(self, after: int, upto: int) -> Iterator[Link]:
        rows = self._pages(self.chain_sql.links, (after,), lambda r: (r["seq"],), extra=(upto,))
        for row in rows:
            yield _link(row, _as_uuid(row["originator_id"]))

    def unchained(self) -> Iterator[Unchained]:
        for row in self._pages(self.chain_sql.unchained, (0,), lambda r: (r["position"],)):
            yield Unchained(row["position"], _stored(row, _as_uuid(row["originator_id"])))

    def events_by_aggregate(self) -> Iterator[tuple[int, StoredEvent]]:
        """Every stored event with its position, by aggregate id then version, streamed."""
        rows = self._pages(
            self.chain_sql.by_aggregate,
            (self.lowest_id, 0),
            lambda r: (r["originator_id"], r["originator_version"]),
        )
        for row in rows:
            yield row["position"], _stored(row, _as_uuid(row["originator_id"]))

    def _pages(
        self,
        statement: Any,
        after: tuple[Any, ...],
        key: Callable[[Any], tuple[Any, ...]],
        *,
        extra: tuple[Any, ...] = (),
    ) -> Iterator[Any]:
        """The rows of a keyset-paged statement, a page at a time: constant memory."""
        while True:
            rows = self._rows(statement, (*after, *extra, PAGE))
            yield from rows
            if len(rows) < PAGE:
                return
            after = key(rows[-1])


class ChainedSQLiteRecorder(SQLiteProcessRecorder, ChainedRecorder):
    lowest_id = ""

    def __init__(
        self, datastore: SQLiteDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.chain_key = chain_key()
        # Table names come from eventsourcing's settings, never from input (hence noqa S608).
        chain, events = self.chain_table_name, self.events_table_name
        self.chain_sql = ChainStatements(
            head=f"SELECT seq, hash FROM {chain} ORDER BY seq DESC LIMIT 1",  # noqa: S608
            insert_link=f"INSERT INTO {chain} VALUES (?, ?, ?, ?, ?)",  # noqa: S608
            link_at=f"SELECT hash FROM {chain} WHERE seq = ?",  # noqa: S608
            links=(
                "SELECT c.seq, c.originator_id, c.originator_version, c.digest, c.hash, "  # noqa: S608
                f"e.rowid AS position, e.topic, e.state FROM {chain} c LEFT JOIN {events} e "
                f"{_JOIN} WHERE c.seq > ? AND c.seq <= ? ORDER BY c.seq LIMIT ?"
            ),
            unchained=(
                f"SELECT e.rowid AS position, e.* FROM {events} e LEFT JOIN {chain} c "  # noqa: S608
                f"{_JOIN} WHERE c.seq IS NULL AND e.rowid > ? ORDER BY e.rowid LIMIT ?"
            ),
            by_aggregate=(
                f"SELECT rowid AS position, * FROM {events} "  # noqa: S608
                "WHERE (originator_id, originator_version) > (?, ?) "
                "ORDER BY originator_id, originator_version LIMIT ?"
            ),
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
            self._append_links(c, stored_events)
        return returning

    def _rows(self, statement: Any, params: Sequence[Any] = ()) -> list[Any]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(statement, params)
            return list(c.fetchall())

    def _stored_id(self, originator_id: UUID) -> str:
        return originator_id.hex  # as eventsourcing's SQLite recorder stores it

    def _events_after(self, keys: list[tuple[UUID, int]]) -> list[Any]:
        values = ", ".join(["(?, ?)"] * len(keys))
        statement = (
            f"WITH k(id, after) AS (VALUES {values}) "  # noqa: S608 (placeholders only)
            "SELECT e.originator_id, e.originator_version, e.topic, e.state "
            f"FROM {self.events_table_name} e JOIN k ON e.originator_id = k.id "
            "AND e.originator_version > k.after ORDER BY e.originator_id, e.originator_version"
        )
        return self._rows(statement, [v for i, after in keys for v in (i.hex, after)])


class ChainedPostgresRecorder(PostgresProcessRecorder, ChainedRecorder):
    lowest_id = UUID(int=0)

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
        without_jit(datastore.pool)  # before eventsourcing's __init__ opens the pool
        super().__init__(
            datastore, events_table_name=events_table_name, tracking_table_name=tracking_table_name
        )
        check_only_when_suspect(datastore.pool)
        self.chain_key = chain_key()
        names = {
            "chain": SQL("{}.{}").format(
                Identifier(datastore.schema), Identifier(f"{events_table_name}_chain")
            ),
            "events": SQL("{}.{}").format(
                Identifier(datastore.schema), Identifier(events_table_name)
            ),
            "id_type": Identifier(datastore.originator_id_type),
            "join": SQL(_JOIN),
        }
        self.chain_sql = ChainStatements(
            head=SQL("SELECT seq, hash FROM {chain} ORDER BY seq DESC LIMIT 1").format(**names),
            insert_link=SQL("INSERT INTO {chain} VALUES (%s, %s, %s, %s, %s)").format(**names),
            link_at=SQL("SELECT hash FROM {chain} WHERE seq = %s").format(**names),
            links=SQL(
                "SELECT c.seq, c.originator_id, c.originator_version, c.digest, c.hash, "
                "e.notification_id AS position, e.topic, e.state "
                "FROM {chain} c LEFT JOIN {events} e {join} "
                "WHERE c.seq > %s AND c.seq <= %s ORDER BY c.seq LIMIT %s"
            ).format(**names),
            unchained=SQL(
                "SELECT e.notification_id AS position, e.* FROM {events} e "
                "LEFT JOIN {chain} c {join} WHERE c.seq IS NULL AND e.notification_id > %s "
                "ORDER BY e.notification_id LIMIT %s"
            ).format(**names),
            by_aggregate=SQL(
                "SELECT notification_id AS position, * FROM {events} "
                "WHERE (originator_id, originator_version) > (%s, %s) "
                "ORDER BY originator_id, originator_version LIMIT %s"
            ).format(**names),
        )
        # Every link of a save (or of a group commit's batch) in one statement: in psycopg's
        # pipeline each statement is a result to process, in Python, under the table lock.
        self.insert_links_statement = SQL(
            "INSERT INTO {chain} SELECT * FROM unnest("
            "%s::bigint[], %s::{id_type}[], %s::bigint[], %s::bytea[], %s::bytea[])"
        ).format(**names)
        # A save that reads the head is three round trips: lock the table, announce (NOTIFY)
        # and read the chain's head; insert the links and the events in one statement;
        # commit. One that knows the head is one (``_write_in_one_round_trip``).
        notify = SQL("NOTIFY {}").format(Identifier(self.channel_name))
        self.lock_and_read_head = SQL("; ").join(
            [*self.lock_table_statements, notify, self.chain_sql.head]
        )
        # A save's links and events in one statement, from one column per field, sent in
        # binary (%b): eventsourcing's composite stored_event[] is dumped as text, field by
        # field in Python, its state bytes hex-escaped, under the lock. The events are
        # inserted in their order, so RETURNING gives their notification ids in that order.
        new = SQL(
            "new AS (SELECT * FROM unnest(%b::bigint[], %b::{id_type}[], %b::bigint[], "
            "%b::bytea[], %b::bytea[], %b::text[], %b::bytea[]) WITH ORDINALITY "
            "AS n(seq, originator_id, originator_version, digest, hash, topic, state, i){only})"
        )
        links_and_events = SQL(
            "links AS (INSERT INTO {chain} "
            "SELECT seq, originator_id, originator_version, digest, hash FROM new) "
            "INSERT INTO {events} (originator_id, originator_version, topic, state) "
            "SELECT originator_id, originator_version, topic, state FROM new ORDER BY i "
            "RETURNING notification_id"
        )
        self.insert_links_and_events = SQL("WITH {}, {}").format(
            new.format(**names, only=SQL("")), links_and_events.format(**names)
        )
        self.notify_statement = notify
        # The one-round-trip transaction's guard: its statements write only while the head
        # is still the one guessed, (seq, hash), an empty chain's being (0, GENESIS). A
        # guess that misses writes nothing and commits, so the lock is released by the
        # server at once: an aborted transaction would hold it until Python rolled it back.
        guessed = SQL(
            "guessed AS (SELECT coalesce((SELECT c.seq = g.seq AND c.hash = g.hash "
            "FROM {chain} c ORDER BY c.seq DESC LIMIT 1), g.seq = 0) AS is_head "
            "FROM (SELECT %b::bigint AS seq, %b::bytea AS hash) g)"
        ).format(**names)
        is_head = SQL("(SELECT is_head FROM guessed)")
        self.insert_if_guessed = SQL("WITH {}, {}, {}").format(
            guessed,
            new.format(**names, only=SQL(" WHERE {}").format(is_head)),
            links_and_events.format(**names),
        )
        # A tracking row moves (its position was not already past this one), else 1 / 0
        # fails the transaction; after a wrong guess it writes nothing. It runs before the
        # events' insert, so that its guard reads the head as the guess found it.
        self.tracking_moves_if_guessed = SQL(
            "WITH {}, moved AS (INSERT INTO {tracking} (application_name, notification_id) "
            "SELECT %b::text, %b::bigint WHERE {} "
            "ON CONFLICT (application_name) DO UPDATE SET notification_id = "
            "EXCLUDED.notification_id WHERE {tracking}.notification_id < "
            "EXCLUDED.notification_id RETURNING 1) "
            "SELECT CASE WHEN {} THEN 1 / count(*)::int ELSE 0 END FROM moved"
        ).format(
            guessed,
            is_head,
            is_head,
            tracking=SQL("{}.{}").format(
                Identifier(datastore.schema), Identifier(tracking_table_name)
            ),
        )
        self.known_head = KnownHead()
        # One index range per aggregate, whatever the statistics say: as a join, a table
        # whose statistics are stale was read whole, in parallel, for each page (7-9 ms on
        # 20,900 events, growing with the log). OFFSET 0 keeps the planner from flattening
        # the lateral subquery back into that join.
        self.events_after = SQL(
            "SELECT e.originator_id, e.originator_version, e.topic, e.state "
            "FROM unnest(%b::{id_type}[], %b::bigint[]) AS k(id, after) "
            "CROSS JOIN LATERAL (SELECT * FROM {events} e WHERE e.originator_id = k.id "
            "AND e.originator_version > k.after ORDER BY e.originator_version OFFSET 0) e "
            "ORDER BY e.originator_id, e.originator_version"
        ).format(**names)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {chain} ("
                "seq bigint PRIMARY KEY, originator_id {id_type} NOT NULL, "
                "originator_version bigint NOT NULL, digest bytea NOT NULL, hash bytea NOT NULL, "
                "UNIQUE (originator_id, originator_version))"
            ).format(**names)
        )

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # Runs in the events' transaction, before their insert. Taking the table lock here
        # (the insert takes it again, harmlessly) makes the head read next the true head:
        # every writer of the events table waits for it, so the chain cannot fork.
        if stored_events:
            self._lock_table(curs)
            self._append_links(curs, stored_events)
        super()._insert_events(curs, stored_events, **kwargs)

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """In one plain transaction, not in eventsourcing's psycopg pipeline. There, a
        duplicate's save failed first on a statement before the events' insert (its chain
        link's or its tracking's uniqueness), and the caller got "pipeline aborted", an
        OperationalError that eventsourcing retried ten times, instead of the IntegrityError
        that tells a duplicate it lost and must read the winner's result."""
        if set(kwargs) - {"tracking"}:
            ids: Sequence[int] | None = super().insert_events(stored_events, **kwargs)
            return ids
        tracking: Tracking | None = kwargs.get("tracking")
        return self.insert_in_one_transaction(stored_events, [tracking] if tracking else [])

    def insert_in_one_transaction(
        self, events: Sequence[StoredEvent], trackings: Sequence[Tracking]
    ) -> list[int] | None:
        """Events (with their links) and trackings in one transaction: the events' ids.

        When this recorder's last transaction left the chain's head known (``KnownHead``),
        the transaction is one round trip (``_write_in_one_round_trip``). When another writer
        has moved the head since, the attempt writes nothing, having read the true head under
        the lock, and the next attempt is built on that one, up to ``GUESSES`` attempts.
        Otherwise, or after that many misses (writers racing), it reads the head under the
        lock first."""
        if not events or not self.datastore.single_row_tracking:
            return self._read_head_and_write(events, trackings)[0]
        written: tuple[list[int] | None, tuple[int, bytes] | None] | None = None
        head = self.known_head.take()
        try:
            for attempt in range(GUESSES):
                if head is None:  # none known: read it
                    break
                self.known_head.sent()
                try:
                    written = self._write_in_one_round_trip(events, trackings, head)
                except _HeadMoved as moved:
                    self.known_head.missed(first=attempt == 0)
                    head = moved.head
                else:
                    self.known_head.hit(first=attempt == 0)
                    break
            if written is None:
                written = self._read_head_and_write(events, trackings)
            return written[0]
        finally:
            self.known_head.done(written[1] if written else None)

    def _read_head_and_write(
        self, events: Sequence[StoredEvent], trackings: Sequence[Tracking]
    ) -> tuple[list[int] | None, tuple[int, bytes] | None]:
        """The transaction that reads the head under the lock: the events' ids and the head
        it leaves (None, both, without events)."""
        written: tuple[list[int] | None, tuple[int, bytes] | None] = (None, None)
        with (
            self.datastore.get_connection() as conn,
            conn.transaction(),
            conn.cursor() as curs,
        ):
            if events:
                written = self._write_events(curs, events)
            for tracking in trackings:
                self._insert_tracking(curs, tracking)
        return written

    def _write_events(
        self, curs: Cursor[DictRow], events: Sequence[StoredEvent]
    ) -> tuple[list[int], tuple[int, bytes]]:
        """The events and their links, in the caller's transaction: their ids, in order, and
        the chain's head once this commits."""
        # Under the table lock, which every writer of the events (ours and eventsourcing's)
        # takes: the head read here stays the head until this transaction ends.
        curs.execute(self.lock_and_read_head)
        while curs.nextset():  # to the last statement's result: the head
            pass
        links = self._next_links(curs.fetchone(), events)
        curs.execute(self.insert_links_and_events, self._links_and_events(links, events))
        return [row["notification_id"] for row in curs.fetchall()], _head_of(links)

    def _links_and_events(
        self, links: list[tuple[Any, ...]], events: Sequence[StoredEvent]
    ) -> list[Any]:
        """The parameters of ``insert_links_and_events``: a column of each, in order."""
        return [
            *[list(column) for column in zip(*links, strict=True)],
            [e.topic for e in events],
            [e.state for e in events],
        ]

    def _write_in_one_round_trip(
        self,
        events: Sequence[StoredEvent],
        trackings: Sequence[Tracking],
        head: tuple[int, bytes],
    ) -> tuple[list[int], tuple[int, bytes]]:
        """The whole transaction in one psycopg pipeline, sent at once: begin, lock, notify,
        check the head is still ``head``, insert the links and events, move the trackings,
        commit. The links are computed from ``head`` before anything is sent, so the table
        lock is held only while the server runs the statements, never across a round trip
        to Python (where a thread may wait milliseconds for the GIL).

        Returns the events' ids and the head it leaves. Raises _HeadMoved (nothing written),
        with the head the server found under the lock, when the head is not ``head``;
        otherwise as the reading path would: a duplicate's IntegrityError, a tracking's that
        cannot move."""
        links = self._next_links({"seq": head[0], "hash": head[1]}, events)
        params = self._links_and_events(links, events)
        with (
            self.datastore.get_connection() as conn,
            conn.cursor() as inserted,
            conn.cursor() as found,
        ):
            failed: errors.Error | None = None
            with conn.pipeline() as pipeline, conn.cursor() as curs:
                try:  # an error may come back while statements are still being queued
                    curs.execute("BEGIN")
                    self._queue_writes(curs, (inserted, found), head, params, trackings)
                    curs.execute("COMMIT")
                    pipeline.sync()
                except errors.Error as e:  # raised below, once the pipeline has ended
                    failed = e
                    with contextlib.suppress(errors.Error):
                        pipeline.sync()  # collects what is left, or the pipeline cannot end
            if failed is not None:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")
                if isinstance(failed, errors.DivisionByZero):  # tracking_moves_if_guessed
                    raise IntegrityError("a tracking position could not move") from failed
                raise failed
            ids = [row["notification_id"] for row in inserted.fetchall()]
            if not ids:  # the guess was wrong: nothing was written
                # ``found`` ran under the lock: its row is the head.
                raise _HeadMoved(_head_row(found.fetchone()))
        return ids, _head_of(links)

    def _queue_writes(
        self,
        curs: Cursor[DictRow],
        results: tuple[Cursor[DictRow], Cursor[DictRow]],
        head: tuple[int, bytes],
        params: list[Any],
        trackings: Sequence[Tracking],
    ) -> None:
        """Queues the one-round-trip transaction's statements, between its BEGIN and COMMIT:
        each writes only if the head is ``head``. On ``results``, the events' insert, whose
        rows are their ids (none after a wrong guess), and the head as the server finds it
        under the lock."""
        inserted, found = results
        for statement in self.lock_table_statements:
            curs.execute(statement, prepare=True)
        curs.execute(self.notify_statement)
        found.execute(self.chain_sql.head, prepare=True)
        for tracking in trackings:
            self._queue_tracking(curs, tracking, head)
        inserted.execute(self.insert_if_guessed, [*head, *params], prepare=True)

    def _queue_tracking(
        self, curs: Cursor[DictRow], tracking: Tracking, head: tuple[int, bytes]
    ) -> None:
        """The one-round-trip path's ``_insert_tracking``."""
        params = (*head, tracking.application_name, tracking.notification_id)
        curs.execute(self.tracking_moves_if_guessed, params, prepare=True)

    def _insert_links(self, cursor: Any, links: list[tuple[Any, ...]]) -> None:
        if len(links) == 1:
            cursor.execute(self.chain_sql.insert_link, links[0])
        else:
            cursor.execute(self.insert_links_statement, [list(c) for c in zip(*links, strict=True)])

    def _rows(self, statement: Any, params: Sequence[Any] = ()) -> list[Any]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, params)
            return curs.fetchall()

    def _stored_id(self, originator_id: UUID) -> UUID:
        return originator_id

    def _events_after(self, keys: list[tuple[UUID, int]]) -> list[Any]:
        ids, versions = zip(*keys, strict=True)
        return self._rows(self.events_after, (list(ids), list(versions)))


class _HeadMoved(Exception):
    """The one-round-trip transaction found the head moved, to ``head``, and wrote
    nothing."""

    def __init__(self, head: tuple[int, bytes]) -> None:
        super().__init__(f"the chain's head is at {head[0]}")
        self.head = head


def _head_row(row: Any) -> tuple[int, bytes]:
    """The head a ``chain_sql.head`` row names: an empty chain's is (0, GENESIS)."""
    return (row["seq"], bytes(row["hash"])) if row else (0, GENESIS)


def _head_of(links: list[tuple[Any, ...]]) -> tuple[int, bytes]:
    """The chain's head after ``links``: the last one's seq and hash."""
    return links[-1][0], links[-1][4]


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
