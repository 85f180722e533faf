"""Replays answered from memory: a completed command's definite answer is kept (bounded) and
replayed without reading the store, byte for byte; an answer in doubt is not kept until its
outcome is learnt; a key reused with other parameters is still refused. Real gRPC over
loopback, real SQLite and PostgreSQL, the real sandbox."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import FrameType
from typing import Any, cast
from uuid import UUID

import grpc
import pytest

from adapters.sandbox import SandboxServer
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api.servicer import PaymentOrchestratorServicer
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_router
from orchestrator.commands import CreatePayment
from orchestrator.domain.command import DEFAULT_SCOPE, command_id
from orchestrator.results import ResultCache
from tests.e2e.conftest import Running
from tests.e2e.helpers import create_request, error_reason

_READS = ("select_events", "select_notifications", "max_notification_id", "max_tracking_id")


def count_reads(app: Payments, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every read the application asks of its recorder from now on, by method."""
    reads: Counter[str] = Counter()
    recorder = app.recorder
    for name in _READS:
        method = getattr(recorder, name)

        def counted(*args: Any, _name: str = name, _method: Any = method, **kwargs: Any) -> Any:
            reads[_name] += 1
            return _method(*args, **kwargs)

        monkeypatch.setattr(recorder, name, counted)
    return reads


def raw_create(running: Running) -> Callable[[pb.CreatePaymentRequest], bytes]:
    """CreatePayment answering the bytes that came over the wire, undecoded."""
    return running.channel.unary_unary(
        "/payments.v1.PaymentOrchestrator/CreatePayment",
        request_serializer=pb.CreatePaymentRequest.SerializeToString,
        response_deserializer=None,
    )


def test_a_replay_of_a_completed_command_reads_nothing_and_answers_the_same_bytes(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    create = raw_create(running)
    first = create(create_request("cached-1"))
    assert pb.Payment.FromString(first).status == pb.PAYMENT_STATUS_AUTHORIZED
    reads = count_reads(running.app, monkeypatch)
    again = [create(create_request("cached-1")) for _ in range(3)]
    assert sum(reads.values()) == 0, reads
    assert again == [first] * 3
    assert len(running.ledger("authorization")) == 1


def test_a_replayed_follow_up_command_reads_nothing(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    payment = running.stub.CreatePayment(create_request("cached-2"))
    capture = pb.CapturePaymentRequest(idempotency_key="capture-2", payment_id=payment.payment_id)
    first = running.stub.CapturePayment(capture)
    assert first.status == pb.PAYMENT_STATUS_CAPTURED
    reads = count_reads(running.app, monkeypatch)
    assert running.stub.CapturePayment(capture) == first
    assert sum(reads.values()) == 0, reads


class WatchedLock:
    """A lock that notes, while ``watching`` names a thread, each time that thread takes it
    in a way that waits if another thread holds it (a non-blocking try never waits)."""

    watching: int | None = None
    waits: list[str] = []

    def __init__(self) -> None:
        self._lock = _REAL_LOCK()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if blocking:
            self._note(sys._getframe(1))
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        self._note(sys._getframe(1))
        return self._lock.acquire()

    @staticmethod
    def _note(caller: FrameType) -> None:
        if WatchedLock.watching == threading.get_ident():
            WatchedLock.waits.append(f"{caller.f_code.co_filename}:{caller.f_lineno}")

    def __exit__(self, *exc: object) -> None:
        self.release()


_REAL_LOCK = threading.Lock


class _Context:
    def time_remaining(self) -> float:
        return 10.0


def test_a_replay_answered_from_memory_waits_for_no_lock(
    database_url: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every gRPC worker replaying a hot key would take such a lock: they queue on it whenever
    # its holder loses the GIL, and each replay then costs a sleep and a wake-up more.
    with monkeypatch.context() as patched:
        patched.setattr(threading, "Lock", WatchedLock)
        app = build_payments(database_url, load_router(None, sandbox.url))
        servicer = PaymentOrchestratorServicer(app)
    try:
        context = cast(grpc.ServicerContext, _Context())
        first = servicer.CreatePayment(create_request("lockless-1"), context)
        assert servicer.CreatePayment(create_request("lockless-1"), context) == first  # hot
        WatchedLock.waits, WatchedLock.watching = [], threading.get_ident()
        try:
            again = servicer.CreatePayment(create_request("lockless-1"), context)
        finally:
            WatchedLock.watching = None
        assert again == first
        assert WatchedLock.waits == []
    finally:
        app.close()


def test_concurrent_replays_of_a_hot_key_all_answer_the_first_bytes(running: Running) -> None:
    create = raw_create(running)
    first = create(create_request("hot-concurrent"))
    answers: list[bytes] = []

    def replay() -> None:
        for _ in range(25):
            answers.append(create(create_request("hot-concurrent")))

    workers = [threading.Thread(target=replay) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert answers == [first] * 200
    with pytest.raises(grpc.RpcError) as refused:
        create(create_request("hot-concurrent", amount=2000))
    assert error_reason(refused.value) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert len(running.ledger("authorization")) == 1


def test_the_same_key_with_other_parameters_is_still_refused_without_a_read(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    running.stub.CreatePayment(create_request("cached-3", amount=1000))
    reads = count_reads(running.app, monkeypatch)
    with pytest.raises(grpc.RpcError) as refused:
        running.stub.CreatePayment(create_request("cached-3", amount=2000))
    assert error_reason(refused.value) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert sum(reads.values()) == 0, reads


def test_a_hot_key_reused_with_other_parameters_is_still_refused(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = running.stub.CreatePayment(create_request("hot-1", amount=1000))
    for _ in range(3):  # hot: its replays now skip validation and the fingerprint
        assert running.stub.CreatePayment(create_request("hot-1", amount=1000)) == first
    reads = count_reads(running.app, monkeypatch)
    for other in (create_request("hot-1", amount=2000), create_request("hot-1", region="EU")):
        with pytest.raises(grpc.RpcError) as refused:
            running.stub.CreatePayment(other)
        assert error_reason(refused.value) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "IDEMPOTENCY_KEY_REUSED",
        )
    assert running.stub.CreatePayment(create_request("hot-1", amount=1000)) == first
    assert sum(reads.values()) == 0, reads
    assert len(running.ledger("authorization")) == 1


def test_the_cache_is_bounded_and_an_evicted_answer_is_read_again_unchanged(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    running.app.results = ResultCache(maxsize=2)
    create = raw_create(running)
    first = {key: create(create_request(key)) for key in ("bounded-1", "bounded-2", "bounded-3")}
    assert len(running.app.results) == 2
    reads = count_reads(running.app, monkeypatch)
    assert create(create_request("bounded-3")) == first["bounded-3"]
    assert sum(reads.values()) == 0, reads
    assert create(create_request("bounded-1")) == first["bounded-1"]  # evicted: read again
    assert reads["select_events"] > 0
    assert len(running.app.results) == 2
    reads.clear()
    assert create(create_request("bounded-1")) == first["bounded-1"]  # and kept again
    assert sum(reads.values()) == 0, reads


def test_an_answer_in_doubt_is_kept_only_once_its_outcome_is_learnt(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    running.faults(timeout_rate=1.0, hang_ms=3500)
    first = running.stub.CreatePayment(create_request("in-doubt-1"))
    assert first.operations[0].status == pb.OPERATION_STATUS_UNKNOWN
    running.faults(timeout_rate=0.0)
    cid = command_id(DEFAULT_SCOPE, "in-doubt-1")
    assert running.app.results.get(cid) is None
    reads = count_reads(running.app, monkeypatch)
    assert running.stub.CreatePayment(create_request("in-doubt-1")).status == (
        pb.PAYMENT_STATUS_PROCESSING
    )
    assert reads["select_events"] > 0  # shown as it is now, read from the store
    assert running.app.results.get(cid) is None

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the lease ends a second after the call's deadline
        resolved = running.app.resolve(UUID(first.payment_id))
        if resolved.operation_in_doubt is None:
            break
        time.sleep(0.2)
    learnt = running.stub.CreatePayment(create_request("in-doubt-1"))
    assert learnt.status == pb.PAYMENT_STATUS_AUTHORIZED
    assert running.app.results.get(cid) is not None

    cancel = pb.CancelPaymentRequest(idempotency_key="cancel-1", payment_id=first.payment_id)
    assert running.stub.CancelPayment(cancel).status == pb.PAYMENT_STATUS_CANCELED
    reads.clear()
    assert running.stub.CreatePayment(create_request("in-doubt-1")) == learnt  # not the cancel
    assert sum(reads.values()) == 0, reads


def test_the_callers_scope_is_part_of_the_key(database_url: str, sandbox: SandboxServer) -> None:
    app = build_payments(database_url, load_router(None, sandbox.url))
    try:

        def create(amount: int, scope: str) -> UUID:
            request = CreatePayment(
                idempotency_key="shared-key",
                amount=amount,
                currency="USD",
                payment_method="pm_card_visa",
                region="US",
            )
            return app.create_payment(request, scope=scope).id

        ours = create(1000, "team-a")
        theirs = create(2000, "team-b")  # another caller's key: another command, not refused
        assert theirs != ours
        assert create(1000, "team-a") == ours
        assert app.get_payment(theirs).amount == 2000
    finally:
        app.close()
