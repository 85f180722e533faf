"""Breakers, failover and in-doubt recovery end to end: real gRPC, real stores, real sandboxes
over HTTP (one of them sometimes down, hung or forgetful)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest

from adapters.sandbox import SandboxServer, start_sandbox
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.resilience.provider import ResilientProvider
from tests.e2e.conftest import ServerFactory, free_port
from tests.e2e.helpers import create_request, error_reason, retry_delay

FAST = """
timeout = {timeout}
attempt_timeout = {attempt}
honors_idempotency_keys = {honors}
[providers.{name}.retry]
base = 0.02
max = 0.1
max_attempts = 3
[providers.{name}.breaker]
failure_threshold = {threshold}
open_seconds = {open_seconds}
half_open_trials = 1
"""


def provider(
    name: str, url: str, *, timeout: float = 1.0, attempt: float = 0.4, honors: bool = True,
    threshold: int = 5, open_seconds: float = 30,
) -> str:  # fmt: skip
    table = f'[providers.{name}]\ntype = "sandbox"\nbase_url = "{url}"\n'
    return table + FAST.format(
        name=name, timeout=timeout, attempt=attempt, honors=str(honors).lower(),
        threshold=threshold, open_seconds=open_seconds,
    )  # fmt: skip


def ledger(sandbox: SandboxServer, kind: str = "authorization") -> list[dict[str, object]]:
    entries = httpx.get(f"{sandbox.url}/_sandbox/ledger").json()["entries"]
    return [e for e in entries if e["kind"] == kind]


def faults(sandbox: SandboxServer, **settings: object) -> None:
    httpx.put(f"{sandbox.url}/_sandbox/faults", json=settings).raise_for_status()


def event_types(stub: object, payment_id: str) -> list[str]:
    request = pb.ListPaymentEventsRequest(payment_id=payment_id)
    return [e.type for e in stub.ListPaymentEvents(request).events]  # type: ignore[attr-defined]


@pytest.fixture
def second_sandbox() -> Iterator[SandboxServer]:
    server = start_sandbox("127.0.0.1:0")
    yield server
    server.stop()


def test_a_payment_fails_over_when_the_primary_certainly_did_not_charge(
    serve: ServerFactory, sandbox: SandboxServer
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    running = serve(
        provider("primary", down) + provider("fallback", sandbox.url)
        + '[routes]\nUS = ["primary", "fallback"]\n'
    )  # fmt: skip
    payment = running.stub.CreatePayment(create_request("failover"))
    assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
    assert payment.provider == "fallback"
    (op,) = payment.operations
    assert (op.attempt, op.provider) == (2, "fallback")
    assert op.provider_key == f"{payment.payment_id}:1:authorize:2"
    assert event_types(running.stub, payment.payment_id) == [
        "Requested", "OperationStarted", "FailedOver", "Authorized",
    ]  # fmt: skip
    assert [e["idempotency_key"] for e in ledger(sandbox)] == [op.provider_key]


def test_a_payment_in_doubt_never_fails_over(
    serve: ServerFactory, sandbox: SandboxServer, second_sandbox: SandboxServer
) -> None:
    faults(sandbox, timeout_rate=1.0, hang_ms=1500)
    running = serve(
        provider("primary", sandbox.url) + provider("fallback", second_sandbox.url)
        + '[routes]\nUS = ["primary", "fallback"]\n'
    )  # fmt: skip
    payment = running.stub.CreatePayment(create_request("in-doubt"))
    assert payment.status == pb.PAYMENT_STATUS_PROCESSING
    assert payment.provider == "primary"
    assert "FailedOver" not in event_types(running.stub, payment.payment_id)
    assert ledger(second_sandbox) == []


def test_a_down_provider_opens_its_breaker_fails_fast_and_closes_when_it_recovers(
    serve: ServerFactory,
) -> None:
    port = free_port()
    running = serve(
        provider("only", f"http://127.0.0.1:{port}", threshold=3, open_seconds=1.0)
        + '[routes]\n"*" = ["only"]\n'
    )
    first = running.stub.CreatePayment(create_request("down-1"))
    assert first.status == pb.PAYMENT_STATUS_FAILED  # certainly not charged: refused at once
    assert "not reached" in first.failure_message
    breaker = running.app.router.route("only").breaker
    assert breaker is not None and breaker.state.value == "open"
    before = running.app.recorder.max_notification_id()
    timings = []
    for i in range(20):
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as refused:
            running.stub.CreatePayment(create_request(f"fast-{i}"))
        timings.append(time.perf_counter() - started)
        assert error_reason(refused.value) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE")
        assert 0 < (retry_delay(refused.value) or 0) <= 1.0
    assert running.app.recorder.max_notification_id() == before  # nothing written
    timings.sort()
    assert timings[len(timings) // 2] < 0.05, timings  # round trip over gRPC, p50
    with start_sandbox(f"127.0.0.1:{port}"):
        time.sleep(1.05)
        recovered = running.stub.CreatePayment(create_request("back"))
        assert recovered.status == pb.PAYMENT_STATUS_AUTHORIZED
        assert breaker.state.value == "closed"


def test_a_follow_up_on_a_payment_in_doubt_asks_the_provider_first(
    serve: ServerFactory, sandbox: SandboxServer
) -> None:
    faults(sandbox, timeout_rate=1.0, hang_ms=800, honor_idempotency=False)
    running = serve(
        provider("sandbox", sandbox.url, honors=False) + '[routes]\n"*" = ["sandbox"]\n'
    )
    payment = running.stub.CreatePayment(create_request("ask-first"))
    assert payment.status == pb.PAYMENT_STATUS_PROCESSING
    faults(sandbox, timeout_rate=0.0)
    time.sleep(2.1)  # the hung request is processed and the operation's lease is over
    captured = running.stub.CapturePayment(
        pb.CapturePaymentRequest(idempotency_key="cap", payment_id=payment.payment_id)
    )
    assert captured.status == pb.PAYMENT_STATUS_CAPTURED
    types = event_types(running.stub, payment.payment_id)
    assert types[:5] == [
        "Requested",
        "OperationStarted",
        "OutcomeUnknown",
        "Authorized",
        "OperationStarted",
    ]
    assert len(ledger(sandbox)) == 1


def test_the_recovery_worker_resolves_what_nobody_saw(
    serve: ServerFactory, sandbox: SandboxServer
) -> None:
    faults(sandbox, timeout_rate=1.0, hang_ms=800, honor_idempotency=False)
    running = serve(
        provider("sandbox", sandbox.url, honors=False)
        + '[routes]\n"*" = ["sandbox"]\n[recovery]\nschedule = [0.2, 0.4]\ninterval = 0.1\n',
        worker=True,
    )
    payment = running.stub.CreatePayment(create_request("recover"))
    assert payment.status == pb.PAYMENT_STATUS_PROCESSING
    deadline = time.monotonic() + 10
    while payment.status == pb.PAYMENT_STATUS_PROCESSING and time.monotonic() < deadline:
        time.sleep(0.1)
        payment = running.stub.GetPayment(pb.GetPaymentRequest(payment_id=payment.payment_id))
    assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
    assert payment.provider_reference == ledger(sandbox)[0]["payment"]
    recorded = running.stub.ListPaymentEvents(
        pb.ListPaymentEventsRequest(payment_id=payment.payment_id)
    ).events
    assert recorded[-1].type == "Authorized"
    assert json.loads(recorded[-1].data)["caused_by"] == {"kind": "recovery"}
    # The command's retry now answers with the resolved payment.
    assert (
        running.stub.CreatePayment(create_request("recover")).status == pb.PAYMENT_STATUS_AUTHORIZED
    )


def test_an_outcome_nobody_can_learn_is_flagged_for_review_never_failed(
    serve: ServerFactory, sandbox: SandboxServer
) -> None:
    faults(sandbox, timeout_rate=1.0, hang_ms=3000, honor_idempotency=False)
    running = serve(
        provider("sandbox", sandbox.url, honors=False)
        + '[routes]\n"*" = ["sandbox"]\n[recovery]\nschedule = [0.1, 0.1]\ninterval = 0.05\n',
        worker=True,
    )
    payment = running.stub.CreatePayment(create_request("lost"))
    assert payment.status == pb.PAYMENT_STATUS_PROCESSING
    deadline = time.monotonic() + 10
    while payment.status == pb.PAYMENT_STATUS_PROCESSING and time.monotonic() < deadline:
        time.sleep(0.05)
        payment = running.stub.GetPayment(pb.GetPaymentRequest(payment_id=payment.payment_id))
    # The hang outlasts every scheduled lookup: nothing is found, nothing is guessed.
    assert payment.status == pb.PAYMENT_STATUS_REQUIRES_REVIEW
    (op,) = payment.operations
    assert op.review_required
    assert op.lookups == 3
    types = event_types(running.stub, payment.payment_id)
    assert types.count("StillUnknown") == 3
    assert types[-1] == "ReviewRequired"
    assert "OperationFailed" not in types


def test_recovery_waits_out_an_open_breaker_instead_of_spending_its_schedule(
    serve: ServerFactory, sandbox: SandboxServer
) -> None:
    # The hung authorization trips the breaker (one failure opens it) for far longer than
    # the whole schedule of lookups; meanwhile the sandbox finishes the authorization.
    faults(sandbox, timeout_rate=1.0, hang_ms=1000)
    running = serve(
        provider("sandbox", sandbox.url, threshold=1, open_seconds=4.0)
        + '[routes]\n"*" = ["sandbox"]\n[recovery]\nschedule = [0.1, 0.1]\ninterval = 0.05\n',
        worker=True,
    )
    payment = running.stub.CreatePayment(create_request("breaker-open"))
    assert payment.status == pb.PAYMENT_STATUS_PROCESSING
    faults(sandbox, timeout_rate=0.0)
    route = running.app.router.route("sandbox")
    assert route.breaker is not None and route.breaker.state.value == "open"
    assert isinstance(route.provider, ResilientProvider)
    refused_before = route.provider.stats.snapshot().get("breaker_rejected", 0)
    deadline = time.monotonic() + 15
    while payment.status == pb.PAYMENT_STATUS_PROCESSING and time.monotonic() < deadline:
        time.sleep(0.05)
        payment = running.stub.GetPayment(pb.GetPaymentRequest(payment_id=payment.payment_id))
    # Resolved by the first lookup the breaker let through, never flagged for review.
    assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
    assert payment.provider_reference == ledger(sandbox)[0]["payment"]
    types = event_types(running.stub, payment.payment_id)
    assert types == ["Requested", "OperationStarted", "OutcomeUnknown", "Authorized"]
    (op,) = payment.operations
    assert (op.lookups, op.review_required) == (0, False)
    # Recovery did keep asking while the circuit was open: each refusal was not a lookup.
    refused = route.provider.stats.snapshot().get("breaker_rejected", 0)
    assert refused - refused_before > 3
