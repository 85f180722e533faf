"""Several server processes on one store, and a server killed (kill -9) mid-call."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from adapters.sandbox import SandboxServer
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api.server import create_server
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_router
from orchestrator.domain.command import command_id, payment_id_for
from tests.e2e.helpers import create_request, wait_at_the_sandbox
from tests.e2e.processes import ServerProcess

pytestmark = pytest.mark.timeout(120)


def ledger(sandbox: SandboxServer, kind: str) -> list[dict[str, object]]:
    entries = httpx.get(f"{sandbox.url}/_sandbox/ledger").json()["entries"]
    return [e for e in entries if e["kind"] == kind]


@pytest.mark.postgres
def test_two_processes_started_together_on_an_empty_postgres_execute_duplicates_once(
    postgres_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    servers = [ServerProcess(postgres_url, sandbox.url, tmp_path / f"s{i}.log") for i in range(2)]
    try:
        for server in servers:
            server.wait_listening()
        stubs = [server.stub() for server in servers]
        httpx.put(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": 100}).raise_for_status()

        def spread(make_call: object) -> list[bytes]:
            barrier = threading.Barrier(50)

            def one(i: int) -> bytes:
                barrier.wait()
                answer = make_call(stubs[i % 2][1])  # type: ignore[operator]
                return answer.SerializeToString()  # type: ignore[no-any-return]

            with ThreadPoolExecutor(max_workers=50) as pool:
                return list(pool.map(one, range(50)))

        created = spread(lambda stub: stub.CreatePayment(create_request("multi")))
        assert len(set(created)) == 1
        payment = pb.Payment.FromString(created[0])
        assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
        assert len(ledger(sandbox, "authorization")) == 1

        capture = pb.CapturePaymentRequest(
            idempotency_key="multi-capture", payment_id=payment.payment_id, amount=600
        )
        captured = spread(lambda stub: stub.CapturePayment(capture))
        assert len(set(captured)) == 1
        assert len(ledger(sandbox, "capture")) == 1

        refund = pb.RefundPaymentRequest(
            idempotency_key="multi-refund", payment_id=payment.payment_id, amount=200
        )
        refunded = spread(lambda stub: stub.RefundPayment(refund))
        assert len(set(refunded)) == 1
        assert pb.Payment.FromString(refunded[0]).refunded_amount == 200
        assert len(ledger(sandbox, "refund")) == 1
        for channel, _ in stubs:
            channel.close()
    finally:
        codes = [server.stop() for server in servers]
    assert codes == [0, 0], [s.log_path.read_text()[-2000:] for s in servers]


@pytest.mark.postgres
def test_eight_processes_starting_at_once_on_an_empty_postgres_all_come_up(
    postgres_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    servers = [ServerProcess(postgres_url, sandbox.url, tmp_path / f"s{i}.log") for i in range(8)]
    try:
        ports = [server.wait_listening(60) for server in servers]
    finally:
        codes = [server.stop() for server in servers]
    assert len(set(ports)) == 8
    assert codes == [0] * 8


def _wait_for_intent(app: Payments, key: str, timeout: float = 10) -> None:
    pid = payment_id_for(command_id("default", key))
    deadline = time.monotonic() + timeout
    while pid not in app.repository:
        assert time.monotonic() < deadline, "the intent was never recorded"
        time.sleep(0.02)


def test_kill_9_between_intent_and_outcome_is_resolved_by_asking_never_by_reauthorizing(
    database_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    httpx.put(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": 1500}).raise_for_status()
    observer = build_payments(database_url, load_router(None, sandbox.url))
    first = ServerProcess(database_url, sandbox.url, tmp_path / "first.log")
    first.wait_listening()
    channel, stub = first.stub()
    with ThreadPoolExecutor(max_workers=1) as pool:
        arrived = sandbox.state.arrived
        doomed = pool.submit(stub.CreatePayment, create_request("crash"))
        _wait_for_intent(observer, "crash")
        # Killed while the provider holds the request (its 1.5 s latency): killed before it
        # was sent, nothing would be there to charge (CI saw that on a loaded machine).
        wait_at_the_sandbox(sandbox, arrived)
        first.kill()
        with pytest.raises(grpc.RpcError):
            doomed.result()
    channel.close()

    # The provider still processes the request it received before the crash.
    deadline = time.monotonic() + 5
    while not ledger(sandbox, "authorization") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(ledger(sandbox, "authorization")) == 1

    second = ServerProcess(database_url, sandbox.url, tmp_path / "second.log")
    try:
        second.wait_listening()
        channel, stub = second.stub()
        started = time.monotonic()
        payment = stub.CreatePayment(create_request("crash"), timeout=30)
        answered_in = time.monotonic() - started
        assert answered_in < 6
        (op,) = payment.operations
        assert op.provider_key == f"{payment.payment_id}:1:authorize:1"
        # As recorded: still in doubt, or already resolved by the recovery worker, which
        # asks the sandbox once the dead owner's lease is over.
        if payment.status == pb.PAYMENT_STATUS_PROCESSING:
            assert op.status == pb.OPERATION_STATUS_PENDING
        else:
            assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
        deadline = time.monotonic() + 15
        while payment.status == pb.PAYMENT_STATUS_PROCESSING and time.monotonic() < deadline:
            time.sleep(0.2)
            payment = stub.GetPayment(pb.GetPaymentRequest(payment_id=payment.payment_id))
        assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
        assert payment.provider_reference == ledger(sandbox, "authorization")[0]["payment"]
        again = stub.CreatePayment(create_request("crash"), timeout=30)
        assert again.status == pb.PAYMENT_STATUS_AUTHORIZED
        channel.close()
    finally:
        assert second.stop() == 0
        observer.close()
    assert len(ledger(sandbox, "authorization")) == 1


def test_a_second_server_on_a_port_in_use_fails_to_start(running_app: Payments) -> None:
    # Several processes never share a port by accident: gRPC would set SO_REUSEPORT by
    # default on Linux, and two servers would then split one port's callers unannounced.
    first = create_server("127.0.0.1:0", running_app)
    first.start()
    try:
        with pytest.raises((OSError, RuntimeError)):
            create_server(f"127.0.0.1:{first.port}", running_app)
    finally:
        first.stop(grace=0)


@pytest.fixture
def running_app(database_url: str, sandbox: SandboxServer) -> Iterator[Payments]:
    app = build_payments(database_url, load_router(None, sandbox.url))
    try:
        yield app
    finally:
        app.close()
