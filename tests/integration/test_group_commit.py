"""Group commit on a real store (an SQLite file and PostgreSQL): concurrent saves share
transactions, a conflict refuses only its own save, duplicates of a command execute once, and
a follower of the log never skips or reorders an event while batches commit.

To make a batch form deterministically, the store is held by another connection (SQLite's
write lock, PostgreSQL's table lock) while a first save waits for it: every save that arrives
meanwhile queues behind that leader, and the next transaction carries them all.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import psycopg
import pytest
from eventsourcing.persistence import IntegrityError

from adapters.sandbox import SandboxServer
from orchestrator.application import Payments
from orchestrator.audit.verify import verify
from orchestrator.batching import GroupCommit
from orchestrator.bootstrap import build_payments, load_router
from orchestrator.commands import CreatePayment
from orchestrator.domain.payment import Cause, Payment
from orchestrator.routing import Router
from orchestrator.store import parse_database_url

pytestmark = pytest.mark.timeout(120)

WRITERS = 16


@pytest.fixture
def app(database_url: str) -> Iterator[Payments]:
    payments = build_payments(database_url, Router({}, {}))
    try:
        yield payments
    finally:
        payments.close()


def group(app: Payments) -> GroupCommit:
    batched: GroupCommit = app.recorder.group  # type: ignore[attr-defined]
    return batched


def intent(payment_id: UUID | None = None) -> Payment:
    """A payment's first save, as CreatePayment makes it: ``Requested`` + ``OperationStarted``."""
    cause = Cause("default", f"key-{uuid4()}")
    payment = Payment(
        id=payment_id or uuid4(), amount=1000, currency="USD", payment_method="pm_card_visa",
        region="US", capture_mode="manual", reference=cause.idempotency_key, metadata={},
        scope=cause.scope, idempotency_key=cause.idempotency_key, caused_by=cause.as_data(), account="default",
    )  # fmt: skip
    payment.start_authorization(
        provider="sandbox", deadline=datetime.now(UTC) + timedelta(seconds=3), cause=cause
    )
    return payment


@contextmanager
def store_held(database_url: str) -> Iterator[Callable[[], None]]:
    """Another connection holds the store's write lock until the yielded function is called."""
    config = parse_database_url(database_url)
    if config.kind == "postgres":
        with psycopg.connect(**config.conninfo) as conn:  # type: ignore[arg-type]
            conn.execute("LOCK TABLE payments_events IN EXCLUSIVE MODE")
            yield conn.rollback
    else:
        lite = sqlite3.connect(config.env["SQLITE_DBNAME"], isolation_level=None)
        try:
            lite.execute("BEGIN IMMEDIATE")
            yield lite.rollback
        finally:
            lite.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


def in_threads(calls: list[Callable[[], Any]]) -> tuple[list[threading.Thread], list[Any]]:
    """Starts each call in its own thread; its result or exception lands in the list."""
    outcomes: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            outcomes[i] = calls[i]()
        except Exception as e:  # the caller's outcome, whatever it is
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    return threads, outcomes


def one_batch_behind_a_leader(
    app: Payments, database_url: str, first: Callable[[], Any], calls: list[Callable[[], Any]]
) -> list[Any]:
    """``first`` leads and waits for the held store; ``calls`` all queue behind it; then the
    store is released. Returns the outcomes of ``calls``."""
    before = group(app).stats.transactions
    with store_held(database_url) as release:
        leader, _ = in_threads([first])
        wait_until(lambda: group(app).stats.transactions == before + 1)
        threads, outcomes = in_threads(calls)
        wait_until(lambda: group(app).queued() == len(calls))
        release()
        for t in leader + threads:
            t.join(30)
    return outcomes


class Transactions:
    """Write transactions the store committed, counted by the store, not by the batcher:
    PostgreSQL's distinct xmin of the (insert-only) events; SQLite's committed transactions
    of the recorder's datastore."""

    def __init__(self, app: Payments, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.config = parse_database_url(database_url)
        self.sqlite_commits = 0
        if self.config.kind == "sqlite":
            datastore = app.recorder.datastore  # type: ignore[attr-defined]
            transaction = datastore.transaction

            @contextmanager
            def counted(*, commit: bool) -> Iterator[Any]:
                with transaction(commit=commit) as c:
                    yield c
                self.sqlite_commits += commit

            monkeypatch.setattr(datastore, "transaction", counted)

    def count(self) -> int:
        if self.config.kind == "sqlite":
            return self.sqlite_commits
        with psycopg.connect(**self.config.conninfo) as conn:  # type: ignore[arg-type]
            row = conn.execute("SELECT count(DISTINCT xmin::text) FROM payments_events").fetchone()
            assert row is not None
            return int(row[0])


def test_concurrent_saves_of_distinct_payments_share_one_transaction(
    app: Payments, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions = Transactions(app, database_url, monkeypatch)
    payments = [intent() for _ in range(WRITERS)]
    outcomes = one_batch_behind_a_leader(
        app,
        database_url,
        lambda: app.save(intent()),
        [lambda p=p: app.save(p) for p in payments],  # type: ignore[misc]
    )
    # All committed: the leader's save in its own transaction, the sixteen in one more.
    assert transactions.count() == 2
    assert group(app).stats.batched_saves == WRITERS
    # Each caller was told the positions of its own events.
    for payment, recordings in zip(payments, outcomes, strict=True):
        assert [r.notification.originator_id for r in recordings] == [payment.id, payment.id]
        for recording in recordings:
            (stored,) = app.recorder.select_notifications(recording.notification.id, limit=1)
            assert (stored.originator_id, stored.originator_version) == (
                payment.id,
                recording.notification.originator_version,
            )
        assert app.get_payment(payment.id).version == 2
    assert verify(app.recorder, app.mapper).clean  # type: ignore[arg-type]


def test_a_conflicting_member_is_refused_and_the_rest_of_its_batch_commits(
    app: Payments, database_url: str
) -> None:
    stored = intent()
    app.save(stored)
    innocent = [intent() for _ in range(WRITERS - 1)]
    conflicting = intent(payment_id=stored.id)  # a second "first save" of the same payment
    members = [*innocent[:7], conflicting, *innocent[7:]]
    outcomes = one_batch_behind_a_leader(
        app,
        database_url,
        lambda: app.save(intent()),
        [lambda p=p: app.save(p) for p in members],  # type: ignore[misc]
    )
    assert isinstance(outcomes[7], IntegrityError)
    assert not any(isinstance(o, Exception) for i, o in enumerate(outcomes) if i != 7)
    assert group(app).stats.failed_batches == 1
    for payment in innocent:
        assert app.get_payment(payment.id).version == 2
    # The stored payment is the first one, untouched by its would-be duplicate.
    assert app.get_payment(stored.id).reference == stored.reference
    assert verify(app.recorder, app.mapper).clean  # type: ignore[arg-type]


def test_concurrent_duplicates_of_one_command_in_one_batch_execute_once(
    database_url: str, sandbox: SandboxServer
) -> None:
    # The sandbox then books every authorization it is sent: a second execution would show.
    faults = {"honor_idempotency": False}
    httpx.put(f"{sandbox.url}/_sandbox/faults", json=faults).raise_for_status()
    app = build_payments(database_url, load_router(None, sandbox.url))
    try:
        request = CreatePayment("dup-key", 1000, "USD", "pm_card_visa", "US", "manual")

        def create() -> Payment:
            return app.create_payment(request, scope="default")

        outcomes = one_batch_behind_a_leader(app, database_url, create, [create] * WRITERS)
        assert not any(isinstance(o, Exception) for o in outcomes), [
            repr(o) for o in outcomes if isinstance(o, Exception)
        ]
        assert {(p.id, p.status, p.version) for p in outcomes} == {
            (outcomes[0].id, outcomes[0].status, outcomes[0].version)
        }
        # The duplicates met in one batch, which failed; alone, each found the first.
        assert group(app).stats.failed_batches >= 1
        ledger = httpx.get(f"{sandbox.url}/_sandbox/ledger").json()["entries"]
        assert [e["kind"] for e in ledger].count("authorization") == 1
        assert verify(app.recorder, app.mapper).clean  # type: ignore[arg-type]
    finally:
        app.close()


def test_a_follower_never_skips_or_reorders_an_event_while_batches_commit(
    app: Payments, database_url: str
) -> None:
    # Two replicas write, four threads each: their batches compete for the store.
    replica = build_payments(database_url, Router({}, {}))
    seen: list[tuple[int, UUID | str, int]] = []
    stop, written = threading.Event(), threading.Event()

    def follow() -> None:
        position = 0
        while True:
            done = written.is_set()  # read before the page: the last page then sees all
            page = app.recorder.select_notifications(
                start=position, limit=50, inclusive_of_start=False
            )
            seen.extend((n.id, n.originator_id, n.originator_version) for n in page)
            if page:
                position = page[-1].id
            elif done:
                return

    errors: list[Exception] = []

    def write(writer: Payments) -> None:
        try:
            while not stop.is_set():
                writer.save(intent())
        except Exception as e:  # reported below
            errors.append(e)

    follower = threading.Thread(target=follow)
    writers = [threading.Thread(target=write, args=(a,)) for a in [app, replica] * 4]
    follower.start()
    for w in writers:
        w.start()
    time.sleep(2)
    stop.set()
    for w in writers:
        w.join(30)
    written.set()
    follower.join(30)
    replica.close()

    log: list[tuple[int, UUID | str, int]] = []
    position = 0
    while page := app.recorder.select_notifications(
        start=position, limit=1000, inclusive_of_start=False
    ):
        log.extend((n.id, n.originator_id, n.originator_version) for n in page)
        position = page[-1].id
    assert errors == []
    assert len(log) > 100
    assert seen == log  # every event, once, in the log's order
    # Batches did commit, from both replicas, while it followed.
    assert group(app).stats.batched_saves > 0
    assert group(replica).stats.batched_saves > 0
    assert verify(app.recorder, app.mapper).clean  # type: ignore[arg-type]


def test_group_commit_can_be_turned_off(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYORCH_GROUP_COMMIT", "off")
    app = build_payments(database_url, Router({}, {}))
    try:
        assert not hasattr(app.recorder, "group")
        app.save(intent())
        assert verify(app.recorder, app.mapper).clean  # type: ignore[arg-type]
    finally:
        app.close()


@pytest.mark.postgres
@pytest.mark.parametrize("group_commit", ["on", "off"])
def test_a_duplicate_saved_alone_on_postgresql_learns_it_lost_by_an_integrity_error(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, group_commit: str
) -> None:
    """A duplicate's save fails on its chain link, before its events. In eventsourcing's
    psycopg pipeline the error arrived first (as under load; the delay before the NOTIFY
    makes it certain) and the caller got OperationalError("pipeline aborted"), retried ten
    times, not the IntegrityError that sends a duplicate to read the winner's result: under
    load, duplicates of one command answered UNAVAILABLE."""
    monkeypatch.setenv("PAYORCH_GROUP_COMMIT", group_commit)
    app = build_payments(postgres_url, Router({}, {}))
    try:
        stored = intent()
        app.save(stored)
        duplicate = [app.mapper.to_stored_event(e) for e in intent(stored.id).collect_events()]
        notify = app.recorder._notify_channel  # type: ignore[attr-defined]

        def late_notify(cursor: Any) -> None:
            time.sleep(0.05)  # the link's error is back before the next statement
            notify(cursor)

        monkeypatch.setattr(app.recorder, "_notify_channel", late_notify)
        for _ in range(3):
            with pytest.raises(IntegrityError):
                app.recorder.insert_events(duplicate)
        assert app.get_payment(stored.id).reference == stored.reference
        assert verify(app.recorder, app.mapper).clean  # type: ignore[arg-type]
    finally:
        app.close()
