"""SIGTERM drains a real ``payorch serve``: calls in flight end and record their outcome, new
ones are refused UNAVAILABLE, and what the grace cannot wait for is left in doubt for recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.sandbox import SandboxServer
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_router
from orchestrator.domain.command import command_id, payment_id_for
from orchestrator.domain.payment import Payment, Status
from tests.e2e.conftest import opened_stores
from tests.e2e.helpers import create_request, error_reason, wait_at_the_sandbox, wait_until
from tests.e2e.processes import ServerProcess

pytestmark = pytest.mark.timeout(120)

IN_FLIGHT = 8  # creates inside the provider call when SIGTERM arrives
# A provider answering in 3 s, inside its 5 s timeout: long enough to send SIGTERM and a late
# call while the first calls wait on it, on a busy machine too.
LATENCY_MS = 3000
MARGIN = 5.0  # seconds a slow machine may add to an exit


def providers(tmp_path: Path, sandbox_url: str) -> str:
    path = tmp_path / "providers.toml"
    path.write_text(
        f'[providers.sandbox]\ntype = "sandbox"\nbase_url = "{sandbox_url}"\ntimeout = 5.0\n'
        'attempt_timeout = 5.0\n[routes]\n"*" = ["sandbox"]\n'
    )
    return str(path)


def authorizations(sandbox: SandboxServer) -> list[dict[str, object]]:
    entries = httpx.get(f"{sandbox.url}/_sandbox/ledger").json()["entries"]
    return [e for e in entries if e["kind"] == "authorization"]


def payment_of(app: Payments, key: str) -> Payment:
    return app.get_payment(payment_id_for(command_id("default", key)))


def exits_within(server: ServerProcess, seconds: float) -> tuple[int, float]:
    """(exit code, seconds it took from now), or fails if it takes longer."""
    started = time.monotonic()
    try:
        code = server.process.wait(seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {seconds} s after SIGTERM:\n{server.log_path.read_text()}")
    return code, time.monotonic() - started


@pytest.fixture
def store(database_url: str, sandbox: SandboxServer) -> Iterator[Callable[[], Payments]]:
    with opened_stores(database_url, sandbox.url) as open_store:
        yield open_store


def test_sigterm_under_load_lets_calls_in_flight_record_their_outcome_and_refuses_new_ones(
    database_url: str,
    sandbox: SandboxServer,
    store: Callable[[], Payments],
    tmp_path: Path,
) -> None:
    server = ServerProcess(
        database_url, sandbox.url, tmp_path / "drained.log",
        config=providers(tmp_path, sandbox.url), env={"PAYORCH_DRAIN_GRACE": "15"},
    )  # fmt: skip
    try:
        server.wait_listening()
        http_port = server.http_port()
        assert httpx.get(f"http://127.0.0.1:{http_port}/readyz").status_code == 200
        httpx.put(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": LATENCY_MS})
        channel, stub = server.stub()
        health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
        observer = store()
        arrived = sandbox.state.arrived
        with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
            calls: list[Future[pb.Payment]] = [
                pool.submit(stub.CreatePayment, create_request(f"drain-{i}"), timeout=60)
                for i in range(IN_FLIGHT)
            ]
            for i in range(IN_FLIGHT):  # every intent is written: the calls are at the provider
                wait_until(lambda i=i: payment_of_exists(observer, f"drain-{i}"), 10, "intents")
            wait_at_the_sandbox(sandbox, arrived, IN_FLIGHT)
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            # Load balancers are told at once, while the calls are still in flight...
            wait_until(lambda: not_ready(http_port), 2, "/readyz to answer 503")
            answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # ...and a call that still arrives is refused, retryable elsewhere, having changed
            # nothing.
            with pytest.raises(grpc.RpcError) as late:
                stub.CreatePayment(create_request("late"), timeout=5)
            assert error_reason(late.value) == (grpc.StatusCode.UNAVAILABLE, "SERVER_DRAINING")
            assert time.monotonic() - signalled < LATENCY_MS / 1000, "too late to prove it"

            answered = [call.result() for call in calls]
        code, took = exits_within(server, 15 + MARGIN)
        channel.close()
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert code == 0, log
    assert took < LATENCY_MS / 1000 + MARGIN, log  # it left once its calls ended
    assert "every command in flight ended" in log
    assert [p.status for p in answered] == [pb.PAYMENT_STATUS_AUTHORIZED] * IN_FLIGHT

    # What the store holds, read afresh: each outcome the provider gave is recorded.
    after = store()
    recorded = [payment_of(after, f"drain-{i}") for i in range(IN_FLIGHT)]
    assert [p.status for p in recorded] == [Status.AUTHORIZED] * IN_FLIGHT
    assert {p.provider_reference for p in recorded} == {
        e["payment"] for e in authorizations(sandbox)
    }
    assert not payment_of_exists(after, "late")
    assert len(authorizations(sandbox)) == IN_FLIGHT


def test_a_call_longer_than_the_grace_is_left_in_doubt_and_resolved_by_recovery_once(
    database_url: str,
    sandbox: SandboxServer,
    store: Callable[[], Payments],
    tmp_path: Path,
) -> None:
    config = providers(tmp_path, sandbox.url)
    grace = 0.5
    first = ServerProcess(
        database_url, sandbox.url, tmp_path / "first.log",
        config=config, env={"PAYORCH_DRAIN_GRACE": str(grace)},
    )  # fmt: skip
    try:
        first.wait_listening()
        httpx.put(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": LATENCY_MS})
        channel, stub = first.stub()
        observer = store()
        arrived = sandbox.state.arrived
        with ThreadPoolExecutor(max_workers=1) as pool:
            call = pool.submit(stub.CreatePayment, create_request("doubt"), timeout=60)
            wait_until(lambda: payment_of_exists(observer, "doubt"), 10, "the intent")
            wait_at_the_sandbox(sandbox, arrived)
            first.process.send_signal(signal.SIGTERM)
            code, took = exits_within(first, LATENCY_MS / 1000)
            with pytest.raises(grpc.RpcError):
                call.result()
        channel.close()
    finally:
        first.stop()
    log = first.log_path.read_text()
    assert code == 0, log
    assert took < grace + 2.0, log
    assert "1 command(s) still in flight left in doubt" in log
    assert payment_of(store(), "doubt").status == Status.PROCESSING  # its intent, no outcome

    # The provider still answers the request it received; nobody was there to record it.
    wait_until(lambda: len(authorizations(sandbox)) == 1, 10, "the provider's charge")
    httpx.put(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": 0})
    second = ServerProcess(database_url, sandbox.url, tmp_path / "second.log", config=config)
    try:
        second.wait_listening()

        # The recovery worker asks the provider once the operation's lease is over.
        def resolved() -> bool:
            fresh = build_payments(database_url, load_router(None, sandbox.url))
            try:
                return payment_of(fresh, "doubt").status == Status.AUTHORIZED
            finally:
                fresh.close()

        wait_until(resolved, 30, "recovery to resolve the payment", every=0.5)
        channel, stub = second.stub()
        again = stub.CreatePayment(create_request("doubt"), timeout=30)
        channel.close()
    finally:
        assert second.stop() == 0
    assert again.status == pb.PAYMENT_STATUS_AUTHORIZED
    (charge,) = authorizations(sandbox)  # one charge for the one provider key: never twice
    assert again.provider_reference == charge["payment"]


def test_a_second_sigterm_stops_at_once_leaving_the_call_in_flight_in_doubt(
    database_url: str,
    sandbox: SandboxServer,
    store: Callable[[], Payments],
    tmp_path: Path,
) -> None:
    server = ServerProcess(
        database_url, sandbox.url, tmp_path / "hurried.log",
        config=providers(tmp_path, sandbox.url), env={"PAYORCH_DRAIN_GRACE": "30"},
    )  # fmt: skip
    try:
        server.wait_listening()
        http_port = server.http_port()
        httpx.put(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": LATENCY_MS})
        channel, stub = server.stub()
        observer = store()
        arrived = sandbox.state.arrived
        with ThreadPoolExecutor(max_workers=1) as pool:
            call = pool.submit(stub.CreatePayment, create_request("hurried"), timeout=60)
            wait_until(lambda: payment_of_exists(observer, "hurried"), 10, "the intent")
            wait_at_the_sandbox(sandbox, arrived)
            server.process.send_signal(signal.SIGTERM)
            # The first is handled (two pending SIGTERMs would be delivered as one).
            wait_until(lambda: not_ready(http_port), 5, "/readyz to answer 503")
            server.process.send_signal(signal.SIGTERM)
            code, took = exits_within(server, LATENCY_MS / 1000)
            with pytest.raises(grpc.RpcError):
                call.result()
        channel.close()
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert code == 0, log
    assert "stopping now" in log
    assert "1 command(s) still in flight left in doubt" in log
    assert took < 2.0, log
    assert payment_of(store(), "hurried").status == Status.PROCESSING  # for recovery to ask


def payment_of_exists(app: Payments, key: str) -> bool:
    return payment_id_for(command_id("default", key)) in app.repository


def not_ready(http_port: int) -> bool:
    return httpx.get(f"http://127.0.0.1:{http_port}/readyz").status_code == 503


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--drain-grace", "-1"], {}, "--drain-grace must be a number of seconds >= 0"),
        ([], {"PAYORCH_DRAIN_GRACE": "soon"}, "PAYORCH_DRAIN_GRACE must be a number of seconds"),
    ],
)
def test_a_drain_grace_that_is_no_number_of_seconds_stops_the_start(
    args: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    environment = {**os.environ, "PAYORCH_DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}", **env}
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "serve", *args],
        env=environment, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert (done.returncode, message in done.stderr) == (2, True), done.stderr
    assert not (tmp_path / "p.db").exists()
