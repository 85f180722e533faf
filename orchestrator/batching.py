"""Group commit: the saves of concurrent commands share one store transaction.

Every ``Application.save`` ends in ``recorder.insert_events``. The recorders here gather the
calls that arrive while a transaction is in progress and write them all in the next one: one
fsync, and on PostgreSQL one table lock and one read of the chain's head, for many commands.

Leader and followers (no timer, so a lone caller waits for nobody):
- A save that finds no transaction in progress leads: it takes every save queued so far (its
  own first) and writes them. Alone, it writes through the unbatched path, exactly as before.
- A save that finds one in progress queues and sleeps. When the leader's transaction ends, the
  leader wakes each member of its batch with its outcome, and hands the lead to the first save
  still queued, which writes everything that queued meanwhile.

Why it is safe:
- Nothing is answered before its transaction commits: members are woken after the commit, so
  a crash (kill -9) mid-batch loses only saves that no caller was told about.
- A batch is all or nothing. If it fails for any reason (a duplicate command, a stale
  aggregate, a lost connection), every member is written again alone, through the unbatched
  path, and gets the outcome it would have had alone: the store's unique (originator_id,
  originator_version) still admits one execution per command, and an innocent member commits.
- The chain (``orchestrator.audit.chain``) is appended once per batch, in the batch's own
  transaction, under the same lock as a single save: one chain in commit order. Notification
  ids are handed back to each caller for its own events, in order.
- A tracking row (the webhook consumer's position) is written in the batch's transaction with
  the events it goes with; a position that cannot move fails the batch, whose members then go
  alone. Saves with any other keyword argument always go alone.

The simulator (``tests/simulation``) uses the unbatched chained recorder: one thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from eventsourcing.persistence import StoredEvent, Tracking
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore

from orchestrator.audit.chain import ChainedPostgresRecorder, ChainedSQLiteRecorder

log = logging.getLogger("payorch")

MAX_BATCH = 128  # saves per transaction: bounds a transaction's size and a leader's work

Ids = Sequence[int] | None  # what insert_events returns: the events' notification ids

_WAITING, _COMMITTED, _ALONE, _LEAD = range(4)


class Save:
    """One caller's insert_events, waiting for its transaction."""

    __slots__ = ("_gate", "events", "ids", "state", "tracking")

    def __init__(self, events: Sequence[StoredEvent], tracking: Tracking | None) -> None:
        self.events = events
        self.tracking = tracking
        self.ids: Ids = None
        self.state = _WAITING
        # Held until woken: a bare lock is the cheapest wait there is (an Event is a
        # Condition, Python code and three locks, on every save).
        self._gate = threading.Lock()
        self._gate.acquire()

    def wake(self, state: int, ids: Ids = None) -> None:
        self.ids, self.state = ids, state
        self._gate.release()

    def wait(self) -> None:
        self._gate.acquire()


@dataclass
class Stats:
    transactions: int = 0  # written by a leader: batches and lone saves
    batched_saves: int = 0  # saves committed in a batch of two or more
    largest: int = 0
    failed_batches: int = 0  # whose members then went alone


class GroupCommit:
    """Gathers concurrent saves into shared transactions. ``insert_together`` writes a batch
    in one transaction and returns each save's ids, in order, or raises and writes nothing;
    ``insert_alone`` is the unbatched path, whose outcome (ids or exception) is the caller's."""

    def __init__(
        self,
        insert_together: Callable[[Sequence[Save]], list[Ids]],
        insert_alone: Callable[[Save], Ids],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError("a batch holds at least one save")
        self._together = insert_together
        self._alone = insert_alone
        self._max = max_batch
        self._lock = threading.Lock()
        self._queue: deque[Save] = deque()
        self._leading = False  # a leader is writing; new saves queue
        self.stats = Stats()
        # Told each transaction's saves and seconds (metrics); None: nobody is told.
        self.observe: Callable[[int, float], None] | None = None

    def queued(self) -> int:
        """Saves waiting for the next transaction (the leader's own batch excluded)."""
        with self._lock:
            return len(self._queue)

    def save(self, save: Save) -> Ids:
        with self._lock:
            self._queue.append(save)
            lead = not self._leading
            self._leading = True
        if not lead:
            save.wait()
            if save.state == _COMMITTED:
                return save.ids
            if save.state == _ALONE:
                return self._timed_alone(save)
        return self._lead(save)

    def _timed_alone(self, save: Save) -> Ids:
        if self.observe is None:
            return self._alone(save)
        started = time.perf_counter()
        try:
            return self._alone(save)
        finally:
            self.observe(1, time.perf_counter() - started)

    def _lead(self, own: Save) -> Ids:
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(self._max, len(self._queue)))]
            self.stats.transactions += 1
            self.stats.largest = max(self.stats.largest, len(batch))
        assert batch[0] is own, "the leader's own save heads the queue"
        results: list[Ids] | None = None
        try:
            if len(batch) == 1:
                return self._timed_alone(own)
            started = time.perf_counter()
            try:
                results = self._together(batch)
            except Exception as e:  # every member then retries alone, and learns its outcome
                log.debug("a batch of %d saves failed (%s): each goes alone", len(batch), e)
                with self._lock:
                    self.stats.failed_batches += 1
            else:
                if self.observe is not None:
                    self.observe(len(batch), time.perf_counter() - started)
                with self._lock:
                    self.stats.batched_saves += len(batch)
        finally:
            # Whatever happened (an interrupt included), nobody is left waiting.
            for i, member in enumerate(batch[1:], start=1):
                if results is None:
                    member.wake(_ALONE)
                else:
                    member.wake(_COMMITTED, results[i])
            self._hand_off()
        return self._timed_alone(own) if results is None else results[0]

    def _hand_off(self) -> None:
        with self._lock:
            if self._queue:
                self._queue[0].wake(_LEAD)
            else:
                self._leading = False


def batchable(kwargs: dict[str, Any]) -> bool:
    """Only ``tracking`` is understood in a batch; anything else takes the unbatched path."""
    return set(kwargs) <= {"tracking"}


def split(ids: Ids, saves: Sequence[Save]) -> list[Ids]:
    """Each save's notification ids, from those of the batch's events in order."""
    if ids is None:  # no events at all (tracking only)
        return [None] * len(saves)
    ends = list(accumulate(len(s.events) for s in saves))
    if len(ids) != ends[-1]:
        raise AssertionError(f"{len(ids)} ids for {ends[-1]} events")
    return [ids[end - len(s.events) : end] for s, end in zip(saves, ends, strict=True)]


def _events(saves: Sequence[Save]) -> list[StoredEvent]:
    return [event for save in saves for event in save.events]


def _trackings(saves: Sequence[Save]) -> list[Tracking]:
    return [save.tracking for save in saves if save.tracking is not None]


class GroupCommitSQLiteRecorder(ChainedSQLiteRecorder):
    """The chained SQLite recorder, its saves grouped: SQLite has one writer, so while one
    transaction commits, the next batch gathers."""

    def __init__(
        self, datastore: SQLiteDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.group = GroupCommit(self._insert_together, self._insert_alone)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Ids:
        if not batchable(kwargs):
            return super().insert_events(stored_events, **kwargs)
        return self.group.save(Save(stored_events, kwargs.get("tracking")))

    def _insert_alone(self, save: Save) -> Ids:
        return super().insert_events(save.events, tracking=save.tracking)

    def _insert_together(self, saves: Sequence[Save]) -> list[Ids]:
        ids = super().insert_events(_events(saves), trackings=_trackings(saves))
        return split(ids, saves)

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        trackings: list[Tracking] = kwargs.pop("trackings", [])
        returning = super()._insert_events(c, stored_events, **kwargs)
        for tracking in trackings:
            self._insert_tracking(c, tracking)
        return returning


class GroupCommitPostgresRecorder(ChainedPostgresRecorder):
    """The chained PostgreSQL recorder, its saves grouped: a batch is one transaction of
    the chained recorder's (``insert_in_one_transaction``): one round trip when it knows
    the chain's head."""

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        tracking_table_name: str = "notification_tracking",
    ) -> None:
        super().__init__(
            datastore, events_table_name=events_table_name, tracking_table_name=tracking_table_name
        )
        self.group = GroupCommit(self._insert_together, self._insert_alone)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Ids:
        if not batchable(kwargs):
            return super().insert_events(stored_events, **kwargs)
        return self.group.save(Save(stored_events, kwargs.get("tracking")))

    def _insert_alone(self, save: Save) -> Ids:
        return super().insert_events(save.events, tracking=save.tracking)

    def _insert_together(self, saves: Sequence[Save]) -> list[Ids]:
        return split(self.insert_in_one_transaction(_events(saves), _trackings(saves)), saves)
