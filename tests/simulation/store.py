"""One event store shared by every simulated replica: payorch's own chained SQLite recorder
(in memory), with the simulator's wait points around each of its operations.

Each read and each write is a place where another actor may run first; each write may crash
the replica before it reaches the store (nothing committed) or after (committed, but the
replica never learns it). The recorder's own work happens between wait points, as one step, as
a transaction does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteDatastore

from orchestrator.audit.chain import ChainedSQLiteRecorder
from tests.simulation.scheduler import Scheduler

CHAIN_KEY = b"simulated chain key"


class SimulatedStore(ChainedSQLiteRecorder):
    scheduler: Scheduler

    @classmethod
    def open(cls, scheduler: Scheduler) -> SimulatedStore:
        datastore = SQLiteDatastore(db_name=":memory:")
        store = cls(datastore)
        store.scheduler = scheduler
        store.create_table()
        store.chain_key = CHAIN_KEY
        return store

    def _point(self, name: str) -> None:
        # Outside any actor (set-up, the final checks) the store is just a store.
        if self.scheduler.in_actor:
            self.scheduler.wait(name)

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        self._point("store write")
        result = super().insert_events(stored_events, **kwargs)
        if self.scheduler.in_actor:
            self.scheduler.maybe_crash_after("store write")
        return result

    def select_events(self, *args: Any, **kwargs: Any) -> Sequence[StoredEvent]:
        self._point("store read")
        return super().select_events(*args, **kwargs)

    def select_notifications(self, *args: Any, **kwargs: Any) -> Any:
        self._point("store read")
        return super().select_notifications(*args, **kwargs)

    def max_tracking_id(self, *args: Any, **kwargs: Any) -> Any:
        self._point("store read")
        return super().max_tracking_id(*args, **kwargs)

    def digest(self) -> str:
        """SHA-256 of the whole log in commit order: ids, versions, topics and state bytes.
        Two runs of one seed must print the same."""
        h = hashlib.sha256()
        position = 0
        while True:
            page = super().select_notifications(
                start=position, limit=1000, inclusive_of_start=False
            )
            for n in page:
                for part in (
                    str(n.id).encode(),
                    str(n.originator_id).encode(),
                    str(n.originator_version).encode(),
                    n.topic.encode(),
                    n.state,
                ):
                    h.update(len(part).to_bytes(8, "big"))
                    h.update(part)
                position = n.id
            if len(page) < 1000:
                return h.hexdigest()
