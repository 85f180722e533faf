"""Costs proportional to work, not to the log, on real stores (an SQLite file and PostgreSQL):
the webhook consumer's position and the recovery index's move past the events they do not
care about, yet what is stored after those events is still applied exactly once, across
replicas and crashes; a restarted replica reads only the payments in doubt; a long payment
reads from the cache exactly as a replay from scratch."""

from __future__ import annotations

import base64
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import Tracking

from adapters.sandbox import SandboxAdapter, SandboxServer
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_configuration
from orchestrator.domain.payment import Cause, Payment, Status
from orchestrator.domain.webhook import WebhookDelivery, delivery_id
from orchestrator.indoubt import InDoubtIndex
from orchestrator.ports import WebhookKind
from orchestrator.recovery import RecoveryWorker
from orchestrator.routing import Route, Router
from orchestrator.store import parse_database_url
from orchestrator.webhooks.processor import WebhookProcessor

CAUSE = Cause("default", "key-0")
NOW = datetime.now(UTC)  # fixed at import: replicas whose lease must hold take it as their clock
NOWHERE = "http://127.0.0.1:9"  # a provider never called: only webhooks change these payments


@pytest.fixture
def app(database_url: str) -> Iterator[Payments]:
    payments = build_payments(database_url, load_configuration(None, NOWHERE).router)
    try:
        yield payments
    finally:
        payments.close()


def replica(database_url: str, router: Router | None = None, **kwargs: Any) -> Payments:
    """Another process on the same store, whose schema is already there."""
    return Payments(
        env=parse_database_url(database_url).env,
        router=router or load_configuration(None, NOWHERE).router,
        **kwargs,
    )


def requested() -> Payment:
    return Payment(
        id=uuid4(), amount=100_000, currency="USD", payment_method="pm_card_visa", region="US",
        capture_mode="manual", reference="order-1", metadata={}, scope="default",
        idempotency_key="key-0", caused_by=CAUSE.as_data(), account="default",
    )  # fmt: skip


def authorized(deadline: datetime = NOW) -> Payment:
    payment = requested()
    payment.start_authorization(provider="sandbox", deadline=deadline, cause=CAUSE)
    payment.record_success(1, provider_reference=f"sbx_{payment.id.hex}", amount=0, caused_by=CAUSE)
    return payment


def capture_in_doubt(app: Payments) -> Payment:
    payment = authorized()
    op = payment.start_capture(None, deadline=NOW, cause=CAUSE)
    payment.record_unknown(op.sequence, message="timed out", caused_by=CAUSE)
    app.save(payment)
    return payment


def unrelated(app: Payments, n: int) -> None:
    """Payment events no consumer applies: they only lengthen the log."""
    for _ in range(n):
        app.save(requested())


def store_capture_succeeded(app: Payments, payment: Payment) -> int:
    """Stores a verified delivery as the intake does; returns its place in the log."""
    return store_delivery(app, payment, f"evt_{uuid4().hex[:12]}")


def store_delivery(app: Payments, payment: Payment, event_id: str) -> int:
    """A verified ``capture.succeeded`` of the payment's last operation, as the intake stores
    it (``event_id`` distinct: the provider sent it again); returns its place in the log."""
    op = payment.operations[-1]
    recordings = app.save(
        WebhookDelivery(
            id=delivery_id("sandbox", event_id), provider="sandbox", verified_by="sandbox",
            event_id=event_id, kind=WebhookKind.CAPTURE_SUCCEEDED.value,
            body=base64.b64encode(b"{}").decode(), received_at=NOW, payment_id=str(payment.id),
            provider_reference="", operation_key=op.provider_key, object_reference="",
            amount=op.amount, currency="USD", decline_code="", message="",
        )
    )  # fmt: skip
    return recordings[-1].notification.id


def received(app: Payments, payment: Payment) -> int:
    return sum(isinstance(e, Payment.ProviderEventReceived) for e in app.events.get(payment.id))


def head(app: Payments) -> int:
    return app.recorder.max_notification_id() or 0


class Reads:
    """Counts what a recorder is asked, by wrapping its methods on the instance."""

    def __init__(self, recorder: Any) -> None:
        self.calls: Counter[str] = Counter()
        self.notifications = 0
        self.aggregates: list[UUID] = []
        for name in (
            "select_notifications",
            "select_events",
            "select_events_after",
            "max_notification_id",
            "max_tracking_id",
            "insert_tracking",
            "insert_events",
        ):
            setattr(recorder, name, self._counting(name, getattr(recorder, name)))

    def _counting(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            result = method(*args, **kwargs)
            if name == "select_notifications":
                self.notifications += len(result)
            elif name == "select_events":
                self.aggregates.append(UUID(str(args[0] if args else kwargs["originator_id"])))
            return result

        return counted


# --- the webhook consumer ---------------------------------------------------------------


def test_the_consumer_moves_its_position_past_events_it_does_not_apply(app: Payments) -> None:
    unrelated(app, 20)
    consumer = WebhookProcessor(app)

    assert consumer.run_once() == 0

    assert consumer.position() == head(app) > 0


def test_an_idle_consumer_asks_the_store_one_indexed_question_per_pass(app: Payments) -> None:
    unrelated(app, 20)
    consumer = WebhookProcessor(app)
    consumer.run_once()
    reads = Reads(app.recorder)

    assert consumer.run_once() == 0

    assert reads.calls == Counter({"max_notification_id": 1})


def test_a_delivery_stored_after_skipped_events_is_applied_exactly_once(
    app: Payments, database_url: str
) -> None:
    payment = capture_in_doubt(app)
    unrelated(app, 10)
    consumer = WebhookProcessor(app)
    assert consumer.run_once() == 0
    skipped_to = consumer.position()
    at = store_capture_succeeded(app, payment)
    unrelated(app, 5)

    assert at > skipped_to
    assert consumer.run_once() == 1
    assert app.get_payment(payment.id).status is Status.CAPTURED
    assert consumer.run_once() == 0
    other = replica(database_url)
    try:
        assert WebhookProcessor(other).run_once() == 0  # a replica finds nothing left
    finally:
        other.close()
    assert received(app, payment) == 1
    assert consumer.position() == head(app)


def test_two_consumers_racing_for_a_delivery_apply_it_once(
    app: Payments, database_url: str
) -> None:
    payment = capture_in_doubt(app)
    unrelated(app, 10)
    WebhookProcessor(app).run_once()
    store_capture_succeeded(app, payment)
    unrelated(app, 5)
    other = replica(database_url)
    second = WebhookProcessor(other)

    class Racing(WebhookProcessor):
        def process_page(self, page: Sequence[Any]) -> list[str]:
            second.run_once()  # the other replica applies it first, while this one reads it
            return super().process_page(page)

    try:
        first = Racing(app)
        first.run_once()
        assert first.run_once() == 0 and second.run_once() == 0
    finally:
        other.close()
    assert received(app, payment) == 1
    assert app.get_payment(payment.id).status is Status.CAPTURED
    assert first.position() == head(app)


def test_a_page_holding_deliveries_another_consumer_applied_meanwhile_applies_the_rest_once(
    app: Payments, database_url: str
) -> None:
    """A page's deliveries are made from its notifications, not read again: one another
    replica applied since makes the page's transaction fail, and each delivery then goes
    alone, reading what the other did."""
    payments = [capture_in_doubt(app) for _ in range(4)]
    for payment in payments:
        store_capture_succeeded(app, payment)
    other = replica(database_url)
    second = WebhookProcessor(other, batch=2)

    class Racing(WebhookProcessor):
        def process_page(self, page: Sequence[Any]) -> list[str]:
            second.process_page(page[:2])  # the other replica's first page, while this reads
            return super().process_page(page)

    first = Racing(app)
    effects: list[str] = []
    first.on_result = effects.append
    try:
        assert first.run_once() == 4
    finally:
        other.close()

    assert effects == ["processed by another consumer"] * 2 + ["resolved operation 2"] * 2
    assert first.stats.fallbacks == 1
    assert [received(app, p) for p in payments] == [1] * 4


def test_two_consumers_running_at_once_apply_each_delivery_once(
    app: Payments, database_url: str
) -> None:
    payments = [capture_in_doubt(app) for _ in range(6)]
    for round_ in range(3):  # each payment's deliveries spread over the log
        for payment in payments:
            unrelated(app, 1)
            store_delivery(app, payment, f"evt_{payment.id.hex}_{round_}")
    other = replica(database_url)
    consumers = [WebhookProcessor(app, batch=4), WebhookProcessor(other, batch=4)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(consumer: WebhookProcessor) -> None:
        start.wait()
        try:
            consumer.run_once()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in consumers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for consumer in consumers:
            consumer.run_once()  # whatever a conflict left for the next pass
    finally:
        other.close()
    assert not errors
    assert [received(app, p) for p in payments] == [3] * len(payments)


def crash_when_tracking_past(app: Payments, position: int) -> None:
    """The replica dies inside the transaction that would move the consumer's position past
    ``position``: after its events are written, before it commits."""
    recorder: Any = app.recorder
    # The tracking's statement: run (SQLite, PostgreSQL reading the chain's head first) or
    # queued to be sent with the rest of the transaction (PostgreSQL's one round trip).
    for name in ("_insert_tracking", "_queue_tracking"):
        if hasattr(recorder, name):
            setattr(recorder, name, _crashing(getattr(recorder, name), position))


def _crashing(write: Callable[..., None], position: int) -> Callable[..., None]:
    def crashing(cursor: Any, tracking: Tracking, *rest: Any) -> None:
        if tracking.notification_id > position:
            raise SystemExit("killed before the transaction committed")
        write(cursor, tracking, *rest)

    return crashing


def test_a_consumer_that_crashes_mid_page_applies_none_of_the_page(
    app: Payments, database_url: str
) -> None:
    """A page is one transaction: a crash before it commits leaves nothing of it, and the
    position where it was; the restarted consumer applies each delivery once."""
    first, second = capture_in_doubt(app), capture_in_doubt(app)
    at_first = store_capture_succeeded(app, first)
    unrelated(app, 5)
    store_capture_succeeded(app, second)
    unrelated(app, 5)
    before = WebhookProcessor(app).position()
    crash_when_tracking_past(app, at_first)

    with pytest.raises(SystemExit):
        WebhookProcessor(app).run_once()

    restarted = replica(database_url)
    try:
        consumer = WebhookProcessor(restarted)
        assert consumer.position() == before < at_first
        assert (received(restarted, first), received(restarted, second)) == (0, 0)
        assert consumer.run_once() == 2
        assert consumer.run_once() == 0  # past its own events too, on the next pass
        assert consumer.position() == head(restarted)
        assert (received(restarted, first), received(restarted, second)) == (1, 1)
    finally:
        restarted.close()


def test_a_consumer_that_crashes_between_pages_keeps_the_pages_it_committed(
    app: Payments, database_url: str
) -> None:
    payments = [capture_in_doubt(app) for _ in range(3)]
    at = [store_capture_succeeded(app, p) for p in payments]
    unrelated(app, 5)
    crash_when_tracking_past(app, at[1])

    with pytest.raises(SystemExit):
        WebhookProcessor(app, batch=2).run_once()  # its second page is the third delivery

    restarted = replica(database_url)
    try:
        consumer = WebhookProcessor(restarted, batch=2)
        assert consumer.position() == at[1]
        assert [received(restarted, p) for p in payments] == [1, 1, 0]
        assert consumer.run_once() == 1
        assert consumer.run_once() == 0
        assert consumer.position() == head(restarted)
    finally:
        restarted.close()
    assert [received(app, p) for p in payments] == [1, 1, 1]


def test_a_page_of_deliveries_is_applied_in_one_transaction(app: Payments) -> None:
    payments = [capture_in_doubt(app) for _ in range(6)]
    for payment in payments:
        store_capture_succeeded(app, payment)
        unrelated(app, 2)
    consumer = WebhookProcessor(app)
    reads = Reads(app.recorder)

    assert consumer.run_once() == 6

    # One save: the payments, the deliveries' Applied and the position of the last; then
    # the position moves past the unrelated events after it.
    assert (reads.calls["insert_events"], reads.calls["insert_tracking"]) == (1, 1)
    # The page's payments were read together, in one query, not one each.
    assert reads.calls["select_events_after"] == 1
    assert not set(reads.aggregates) & {p.id for p in payments}
    assert [received(app, p) for p in payments] == [1] * 6
    assert all(app.get_payment(p.id).status is Status.CAPTURED for p in payments)
    assert consumer.run_once() == 0  # past its own events, on the next pass
    assert consumer.position() == head(app)


def test_deliveries_of_one_payment_in_a_page_apply_in_order_to_one_payment(
    app: Payments,
) -> None:
    """The second sees what the first changed, in the same transaction, without a conflict."""
    payment = capture_in_doubt(app)
    store_delivery(app, payment, "evt_first")
    store_delivery(app, payment, "evt_again")  # the provider sent it again, under a new id
    consumer = WebhookProcessor(app)
    effects: list[str] = []
    consumer.on_result = effects.append
    reads = Reads(app.recorder)

    assert consumer.run_once() == 2

    assert effects == ["resolved operation 2", "operation 2 already succeeded: unchanged"]
    assert reads.calls["insert_events"] == 1
    assert consumer.stats.fallbacks == 0
    assert received(app, payment) == 2
    assert app.get_payment(payment.id).status is Status.CAPTURED


def test_a_conflict_in_a_page_falls_back_to_one_delivery_at_a_time(
    app: Payments, database_url: str
) -> None:
    """Another replica's command saves one of the page's payments while the page is being
    applied: the page's transaction fails whole, and each delivery goes alone, once."""
    payments = [capture_in_doubt(app) for _ in range(4)]
    for payment in payments:
        store_capture_succeeded(app, payment)
    other = replica(database_url)
    record_processing = app.record_processing

    def a_command_saves_the_third_payment_first(processing: Any) -> None:
        app.record_processing = record_processing  # type: ignore[method-assign]
        moved = other.get_payment(payments[2].id)
        op = moved.operations[-1]
        moved.record_success(op.sequence, provider_reference="sbx", amount=op.amount,
                             caused_by=CAUSE)  # fmt: skip
        other.save(moved)  # recovery learned the capture's outcome meanwhile
        record_processing(processing)

    app.record_processing = a_command_saves_the_third_payment_first  # type: ignore[method-assign]
    consumer = WebhookProcessor(app)
    effects: list[str] = []
    consumer.on_result = effects.append
    reads = Reads(app.recorder)
    try:
        assert consumer.run_once() == 4
    finally:
        other.close()

    assert consumer.stats.fallbacks == 1
    assert reads.calls["insert_events"] == 1 + 4  # the page that failed, then each alone
    assert effects[2] == "operation 2 already succeeded: unchanged"
    assert [received(app, p) for p in payments] == [1] * 4
    assert all(app.get_payment(p.id).status is Status.CAPTURED for p in payments)
    assert consumer.run_once() == 0
    assert consumer.position() == head(app)


@pytest.mark.postgres
def test_a_postgres_save_waits_for_the_events_table_lock(postgres_url: str) -> None:
    """What skipping to the head relies on: eventsourcing's writer takes LOCK TABLE ... IN
    EXCLUSIVE MODE before it inserts, so ids commit in the order they are issued. A session
    holding ROW EXCLUSIVE (what a plain INSERT takes, compatible with other inserts) must make
    a save wait; if a writer ever inserts without the lock (a batching recorder that drops it,
    POSTGRES_ENABLE_DB_FUNCTIONS), this fails, and the consumers could skip a delivery."""
    app = build_payments(postgres_url, load_configuration(None, NOWHERE).router)
    try:
        app.save(requested())
        table = f'"{app.recorder.datastore.schema}"."{app.recorder.events_table_name}"'  # type: ignore[attr-defined]
        saved = threading.Event()

        def save() -> None:
            app.save(requested())
            saved.set()

        with psycopg.connect(postgres_url) as blocker:
            blocker.execute(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE")
            writer = threading.Thread(target=save)
            writer.start()
            assert not saved.wait(1.0), "a save went through while another session wrote"
            blocker.rollback()
        writer.join(30)
        assert saved.is_set()
    finally:
        app.close()


# --- the recovery index -------------------------------------------------------------------


def sandbox_router(sandbox: SandboxServer) -> Router:
    adapter = SandboxAdapter(sandbox.url, name="sandbox")
    return Router({"sandbox": Route(adapter, timeout=2.0, kind="sandbox")}, {"*": ["sandbox"]})


def authorization_in_doubt(app: Payments, deadline: datetime) -> Payment:
    """An authorization the sandbox never received: a lookup finds nothing, and the sandbox,
    which honours keys, is sent it again."""
    payment = requested()
    payment.start_authorization(provider="sandbox", deadline=deadline, cause=CAUSE)
    payment.record_unknown(1, message="timed out", caused_by=CAUSE)
    app.save(payment)
    return payment


def test_a_restarted_replica_reads_only_the_payments_in_doubt(
    database_url: str, sandbox: SandboxServer
) -> None:
    router = sandbox_router(sandbox)
    # Its clock stands at NOW, so its lease is not over however late the test runs: it
    # looks nothing up.
    first = replica(database_url, router, clock=lambda: NOW)
    later = NOW + timedelta(hours=1)
    restarted = replica(database_url, router, clock=lambda: later)
    try:
        settled = [authorized() for _ in range(15)]
        first.save(*settled)
        unrelated(first, 15)
        doubtful = authorization_in_doubt(first, deadline=NOW + timedelta(minutes=5))
        assert RecoveryWorker(first).run_once() == 0
        while_down = authorization_in_doubt(first, deadline=NOW + timedelta(minutes=5))
        unrelated(first, 5)
        reads = Reads(restarted.recorder)

        worker = RecoveryWorker(restarted)
        assert worker.run_once() == 2

        assert reads.notifications == 2  # only what was recorded while it was down (one payment)
        assert not {p.id for p in settled} & set(reads.aggregates)
        assert {doubtful.id, while_down.id} <= set(reads.aggregates)
        for payment in (doubtful, while_down):
            assert restarted.get_payment(payment.id).status is Status.AUTHORIZED
        worker.run_once()
        assert worker.index.payment_ids() == []
    finally:
        restarted.close()
        first.close()


def test_indexing_a_log_of_settled_payments_reads_none_of_them(database_url: str) -> None:
    """What a first start on a log written before the index costs: one read of the log by
    topic, and only the payments still in doubt."""
    app = replica(database_url)
    try:
        settled = [authorized() for _ in range(15)]
        app.save(*settled)
        doubtful = authorization_in_doubt(app, deadline=NOW + timedelta(minutes=5))
        captured = authorized()
        app.save(captured)
        capture = app.get_payment(captured.id)
        capture.start_capture(None, deadline=NOW, cause=CAUSE)
        app.save(capture)  # its capture is in doubt now
        reads = Reads(app.recorder)

        RecoveryWorker(app).run_once()

        assert set(reads.aggregates) == {doubtful.id, captured.id}
        assert sorted(InDoubtIndex(app.recorder).payment_ids()) == sorted(
            [doubtful.id, captured.id]
        )
    finally:
        app.close()


def test_an_idle_recovery_pass_asks_the_store_one_indexed_question(app: Payments) -> None:
    unrelated(app, 20)
    app.save(authorized())
    worker = RecoveryWorker(app)
    worker.run_once()
    reads = Reads(app.recorder)

    assert worker.run_once() == 0

    assert reads.calls == Counter({"max_notification_id": 1})


def test_a_payment_read_before_its_next_operation_keeps_its_row(app: Payments) -> None:
    """One replica reads the payment (nothing in doubt) while another records a new operation
    on it and brings the index up to date: the first replica's late ``forget`` must not drop
    the row that new operation needs."""
    index = InDoubtIndex(app.recorder)
    payment = authorized()
    app.save(payment)
    index.catch_up(head(app))
    read = app.get_payment(payment.id)
    assert read.operation_in_doubt is None

    moved = app.get_payment(payment.id)
    moved.start_capture(None, deadline=NOW, cause=CAUSE)
    app.save(moved)
    index.catch_up(head(app))
    index.forget(payment.id, read.version)

    assert index.payment_ids() == [payment.id]
    index.forget(payment.id, moved.version)
    assert index.payment_ids() == []


def test_two_replicas_share_one_index_and_neither_loses_a_payment(
    database_url: str, sandbox: SandboxServer
) -> None:
    router = sandbox_router(sandbox)
    first = replica(database_url, router, clock=lambda: NOW)  # the lease is its own
    later = NOW + timedelta(hours=1)
    second = replica(database_url, router, clock=lambda: later)
    try:
        payment = authorization_in_doubt(first, deadline=NOW + timedelta(minutes=5))
        unrelated(first, 5)
        first_worker, second_worker = RecoveryWorker(first), RecoveryWorker(second)
        assert first_worker.run_once() == 0  # it brings the shared index up to the head
        assert first_worker.index.position() == head(first)

        assert second_worker.run_once() == 1  # the second finds it there, reading no log

        assert second.get_payment(payment.id).status is Status.AUTHORIZED
    finally:
        second.close()
        first.close()


# --- long payments ------------------------------------------------------------------------


def test_a_long_payment_reads_the_same_as_a_replay_from_scratch(
    app: Payments, database_url: str
) -> None:
    assert app.repository.cache is not None
    payment = authorized(deadline=NOW + timedelta(hours=1))
    app.save(payment)
    other = replica(database_url)
    try:
        for i in range(250):
            writer = app if i % 3 else other  # another replica writes a third of them
            capture = writer.get_payment(payment.id)
            op = capture.start_capture(1, deadline=NOW + timedelta(hours=1), cause=CAUSE)
            capture.record_success(op.sequence, provider_reference="sbx", amount=1, caused_by=CAUSE)
            writer.save(capture)
        abandoned = app.get_payment(payment.id)  # a command that fails before its save
        abandoned.start_capture(1, deadline=NOW, cause=CAUSE)
    finally:
        other.close()

    cached = app.get_payment(payment.id)
    replayed = app.get_payment(payment.id, version=cached.version)  # every event, no cache

    assert cached.version == replayed.version >= 500
    assert vars(cached) == vars(replayed)
    assert cached.captured_amount == 250 and cached.operation_in_doubt is None
