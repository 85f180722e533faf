"""A process that saves payment intents from eight threads through the group commit, printing
``acked <id>`` for each save once ``save`` has returned, until a batch of at least two saves
(after a few that committed) has written all its rows: it prints ``mid-batch <ids>`` and holds
that transaction open, uncommitted, for the test to kill it (kill -9).

On PostgreSQL a batch is mostly one round trip (``_write_in_one_round_trip``): there the
transaction is held by the server, in a ``SELECT pg_sleep(60)`` queued after the batch's rows
and before its COMMIT, and ``mid-batch`` is printed as it is sent; the test waits to see that
statement running before it kills.

  python -m tests.e2e.group_commit_child <database url>
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from psycopg import Cursor
from psycopg.rows import DictRow

from orchestrator.application import Payments
from orchestrator.batching import GroupCommitPostgresRecorder, GroupCommitSQLiteRecorder
from orchestrator.routing import Router
from orchestrator.store import parse_database_url, schema_lock
from tests.integration.test_group_commit import intent

WRITERS = 8
COMMITTED_FIRST = 5  # batches that commit before the one held open
_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _Hold:
    batches = 0

    def due(self, originator_ids: Sequence[Any]) -> bool:
        """Whether to hold this transaction, of events of these payments: then says so."""
        ids = sorted({str(i) for i in originator_ids})
        if len(ids) < 2:
            return False
        self.batches += 1
        if self.batches <= COMMITTED_FIRST:
            return False
        say("mid-batch " + " ".join(ids))
        return True

    def hold_if_due(self, stored_events: Sequence[StoredEvent]) -> None:
        """Called inside a batch's transaction, once all its rows are written."""
        if self.due([e.originator_id for e in stored_events]):
            time.sleep(60)  # the test kills the process meanwhile


class HoldingSQLiteRecorder(GroupCommitSQLiteRecorder, _Hold):
    def _insert_events(self, c: Any, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        batch = "trackings" in kwargs  # only a batch passes them
        returning = super()._insert_events(c, stored_events, **kwargs)
        if batch:
            self.hold_if_due(stored_events)
        return returning


class HoldingPostgresRecorder(GroupCommitPostgresRecorder, _Hold):
    def _write_events(self, curs: Cursor[DictRow], events: Sequence[StoredEvent]) -> Any:
        written = super()._write_events(curs, events)
        self.hold_if_due(events)
        return written

    def _queue_writes(self, curs: Cursor[DictRow], results: Any, *args: Any) -> None:
        super()._queue_writes(curs, results, *args)
        _, params, _ = args
        if self.due(params[1]):  # the links' originator ids
            # Without it the server would sleep on after the kill, holding the table lock.
            curs.execute("SET LOCAL client_connection_check_interval = '100ms'")
            curs.execute("SELECT pg_sleep(60)")


def main(database_url: str) -> None:
    store = parse_database_url(database_url, group_commit=True)
    env = dict(store.env)
    holding = HoldingPostgresRecorder if store.kind == "postgres" else HoldingSQLiteRecorder
    env["PROCESS_RECORDER_TOPIC"] = f"{__name__}:{holding.__name__}"
    with schema_lock(store):
        app = Payments(env=env, router=Router({}, {}))

    def write() -> None:
        while True:
            payment = intent()
            app.save(payment)
            say(f"acked {payment.id}")

    for _ in range(WRITERS):
        threading.Thread(target=write, daemon=True).start()
    time.sleep(120)


if __name__ == "__main__":
    main(sys.argv[1])
