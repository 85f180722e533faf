"""The gRPC API end to end: real gRPC over loopback, a real event store (SQLite and
PostgreSQL), the real sandbox provider over HTTP."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestrator.api._generated import payments_pb2 as pb
from tests.e2e.conftest import Running
from tests.e2e.helpers import create_request, error_reason, retry_delay

CONCURRENT = 50


def authorized(running: Running, key: str = "create-1", amount: int = 1000) -> pb.Payment:
    payment = running.stub.CreatePayment(create_request(key, amount))
    assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
    return payment


def captured(running: Running, amount: int = 1000) -> pb.Payment:
    payment = authorized(running, amount=amount)
    return running.stub.CapturePayment(
        pb.CapturePaymentRequest(idempotency_key="capture-1", payment_id=payment.payment_id)
    )


def stored_event_count(running: Running) -> int:
    return int(running.app.recorder.max_notification_id() or 0)


def test_create_authorizes_through_the_sandbox_and_records_intent_then_outcome(
    running: Running,
) -> None:
    payment = authorized(running)
    assert payment.amount == 1000
    assert payment.currency == "USD"
    assert payment.provider == "sandbox"
    assert payment.provider_reference.startswith("sbx_pay_")
    assert payment.version == 3
    assert [op.provider_key for op in payment.operations] == [f"{payment.payment_id}:1:authorize:1"]
    events = running.stub.ListPaymentEvents(
        pb.ListPaymentEventsRequest(payment_id=payment.payment_id)
    ).events
    assert [(e.version, e.type) for e in events] == [
        (1, "Requested"),
        (2, "OperationStarted"),
        (3, "Authorized"),
    ]
    started = json.loads(events[1].data)
    assert started["provider_key"] == payment.operations[0].provider_key
    assert started["idempotency_key"] == "create-1"
    assert started["scope"] == "default"
    (authorization,) = running.ledger("authorization")
    assert authorization["idempotency_key"] == payment.operations[0].provider_key
    assert authorization["reference"] == payment.payment_id


def test_automatic_capture_mode_captures_at_once(running: Running) -> None:
    payment = running.stub.CreatePayment(
        create_request("auto", capture_mode=pb.CAPTURE_MODE_AUTOMATIC)
    )
    assert payment.status == pb.PAYMENT_STATUS_CAPTURED
    assert payment.captured_amount == 1000
    assert [e["kind"] for e in running.ledger()] == ["authorization", "capture"]


def test_a_decline_is_a_payment_in_declined_status_not_an_error(running: Running) -> None:
    payment = running.stub.CreatePayment(
        create_request("declined", payment_method="pm_insufficient_funds")
    )
    assert payment.status == pb.PAYMENT_STATUS_DECLINED
    assert payment.decline_code == "insufficient_funds"
    assert running.ledger() == []


def test_a_retry_with_the_same_key_replays_the_first_response_without_a_provider_call(
    running: Running,
) -> None:
    first = running.stub.CreatePayment(create_request("same"))
    capture = running.stub.CapturePayment(
        pb.CapturePaymentRequest(idempotency_key="cap", payment_id=first.payment_id, amount=100)
    )
    again = running.stub.CreatePayment(create_request("same"))
    assert again.SerializeToString() == first.SerializeToString()
    assert again.version == 3 < capture.version
    assert len(running.ledger("authorization")) == 1


def test_a_key_reused_with_another_amount_is_refused_and_changes_nothing(
    running: Running,
) -> None:
    authorized(running, key="reused")
    before_events, before_ledger = stored_event_count(running), running.ledger()
    with pytest.raises(grpc.RpcError) as refused:
        running.stub.CreatePayment(create_request("reused", amount=999))
    assert error_reason(refused.value) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert stored_event_count(running) == before_events
    assert running.ledger() == before_ledger


def test_a_capture_key_reused_for_a_refund_is_refused(running: Running) -> None:
    payment = captured(running)
    with pytest.raises(grpc.RpcError) as refused:
        running.stub.RefundPayment(
            pb.RefundPaymentRequest(idempotency_key="capture-1", payment_id=payment.payment_id)
        )
    assert error_reason(refused.value)[1] == "IDEMPOTENCY_KEY_REUSED"


def _concurrently(calls: int, call: object) -> list[object]:
    barrier = threading.Barrier(calls)

    def one(_: int) -> object:
        barrier.wait()
        return call()  # type: ignore[operator]

    with ThreadPoolExecutor(max_workers=calls) as pool:
        return list(pool.map(one, range(calls)))


def test_fifty_concurrent_creates_with_one_key_authorize_once(running: Running) -> None:
    running.faults(latency_ms=50)
    answers = _concurrently(CONCURRENT, lambda: running.stub.CreatePayment(create_request("dup")))
    assert len({a.SerializeToString() for a in answers}) == 1  # type: ignore[attr-defined]
    assert answers[0].status == pb.PAYMENT_STATUS_AUTHORIZED  # type: ignore[attr-defined]
    assert len(running.ledger("authorization")) == 1


def test_fifty_concurrent_captures_with_one_key_capture_once(running: Running) -> None:
    payment = authorized(running)
    running.faults(latency_ms=50)
    request = pb.CapturePaymentRequest(
        idempotency_key="cap-dup", payment_id=payment.payment_id, amount=400
    )
    answers = _concurrently(CONCURRENT, lambda: running.stub.CapturePayment(request))
    assert len({a.SerializeToString() for a in answers}) == 1  # type: ignore[attr-defined]
    assert answers[0].captured_amount == 400  # type: ignore[attr-defined]
    assert len(running.ledger("capture")) == 1


def test_fifty_concurrent_refunds_with_one_key_refund_once(running: Running) -> None:
    payment = captured(running)
    running.faults(latency_ms=50)
    request = pb.RefundPaymentRequest(
        idempotency_key="refund-dup", payment_id=payment.payment_id, amount=300, reason="dup"
    )
    answers = _concurrently(CONCURRENT, lambda: running.stub.RefundPayment(request))
    assert len({a.SerializeToString() for a in answers}) == 1  # type: ignore[attr-defined]
    assert answers[0].refunded_amount == 300  # type: ignore[attr-defined]
    assert len(running.ledger("refund")) == 1


def test_concurrent_refunds_with_different_keys_never_exceed_what_was_captured(
    running: Running,
) -> None:
    payment = captured(running, amount=1000)
    running.faults(latency_ms=20)

    def refund(i: int) -> str:
        try:
            running.stub.RefundPayment(
                pb.RefundPaymentRequest(
                    idempotency_key=f"r-{i}", payment_id=payment.payment_id, amount=400
                )
            )
        except grpc.RpcError as e:
            return error_reason(e)[1]
        return "OK"

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(refund, range(10)))
    final = running.stub.GetPayment(pb.GetPaymentRequest(payment_id=payment.payment_id))
    refunds = running.ledger("refund")
    assert final.refunded_amount == sum(int(r["amount"]) for r in refunds)  # type: ignore[call-overload]
    assert final.refunded_amount <= 1000
    assert results.count("OK") == len(refunds) <= 2
    assert set(results) - {"OK"} <= {
        "PAYMENT_OPERATION_IN_PROGRESS",
        "AMOUNT_EXCEEDS_REFUNDABLE",
        "CONCURRENT_MODIFICATION",
    }


def test_partial_captures_then_partial_refunds_follow_the_amounts(running: Running) -> None:
    payment = authorized(running, amount=1000)
    pid = payment.payment_id
    stub = running.stub
    p = stub.CapturePayment(
        pb.CapturePaymentRequest(idempotency_key="c1", payment_id=pid, amount=300)
    )
    assert (p.status, p.captured_amount) == (pb.PAYMENT_STATUS_CAPTURED, 300)
    p = stub.CapturePayment(pb.CapturePaymentRequest(idempotency_key="c2", payment_id=pid))
    assert p.captured_amount == 1000
    p = stub.RefundPayment(
        pb.RefundPaymentRequest(idempotency_key="r1", payment_id=pid, amount=250)
    )
    assert (p.status, p.refunded_amount) == (pb.PAYMENT_STATUS_PARTIALLY_REFUNDED, 250)
    p = stub.RefundPayment(pb.RefundPaymentRequest(idempotency_key="r2", payment_id=pid))
    assert (p.status, p.refunded_amount) == (pb.PAYMENT_STATUS_REFUNDED, 1000)
    assert [e["kind"] for e in running.ledger()] == [
        "authorization", "capture", "capture", "refund", "refund",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("prepare", "attempt", "reason"),
    [
        ("authorized", "capture_too_much", "AMOUNT_EXCEEDS_CAPTURABLE"),
        ("captured", "refund_too_much", "AMOUNT_EXCEEDS_REFUNDABLE"),
        ("canceled", "capture", "INVALID_STATE_TRANSITION"),
        ("captured", "cancel", "INVALID_STATE_TRANSITION"),
        ("authorized", "refund", "INVALID_STATE_TRANSITION"),
        ("declined", "capture", "INVALID_STATE_TRANSITION"),
        ("declined", "cancel", "INVALID_STATE_TRANSITION"),
        ("refunded", "refund", "INVALID_STATE_TRANSITION"),
        ("refunded", "capture", "INVALID_STATE_TRANSITION"),
        ("canceled", "cancel", "INVALID_STATE_TRANSITION"),
    ],
)
def test_transitions_the_payment_does_not_allow_are_refused(
    running: Running, prepare: str, attempt: str, reason: str
) -> None:
    stub = running.stub
    if prepare == "declined":
        pid = stub.CreatePayment(create_request("k", payment_method="pm_card_declined")).payment_id
    else:
        pid = authorized(running, key="k").payment_id
    if prepare in ("captured", "refunded"):
        stub.CapturePayment(pb.CapturePaymentRequest(idempotency_key="c", payment_id=pid))
    if prepare == "refunded":
        stub.RefundPayment(pb.RefundPaymentRequest(idempotency_key="r", payment_id=pid))
    if prepare == "canceled":
        stub.CancelPayment(pb.CancelPaymentRequest(idempotency_key="v", payment_id=pid))
    before = stub.GetPayment(pb.GetPaymentRequest(payment_id=pid))
    ledger = running.ledger()
    calls = {
        "capture_too_much": lambda: stub.CapturePayment(
            pb.CapturePaymentRequest(idempotency_key="x", payment_id=pid, amount=1001)
        ),
        "capture": lambda: stub.CapturePayment(
            pb.CapturePaymentRequest(idempotency_key="x", payment_id=pid)
        ),
        "refund_too_much": lambda: stub.RefundPayment(
            pb.RefundPaymentRequest(idempotency_key="x", payment_id=pid, amount=1001)
        ),
        "refund": lambda: stub.RefundPayment(
            pb.RefundPaymentRequest(idempotency_key="x", payment_id=pid)
        ),
        "cancel": lambda: stub.CancelPayment(
            pb.CancelPaymentRequest(idempotency_key="x", payment_id=pid)
        ),
    }
    with pytest.raises(grpc.RpcError) as refused:
        calls[attempt]()
    assert error_reason(refused.value) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
    after = stub.GetPayment(pb.GetPaymentRequest(payment_id=pid))
    assert after.SerializeToString() == before.SerializeToString()
    assert running.ledger() == ledger


def test_cancel_voids_the_authorization_at_the_provider(running: Running) -> None:
    payment = authorized(running)
    canceled = running.stub.CancelPayment(
        pb.CancelPaymentRequest(idempotency_key="void", payment_id=payment.payment_id)
    )
    assert canceled.status == pb.PAYMENT_STATUS_CANCELED
    assert [e["kind"] for e in running.ledger()] == ["authorization", "void"]


CARD = "4242424242424242"
BAD_CREATES = [
    ("zero amount", {"amount": 0}, "INVALID_AMOUNT"),
    ("negative amount", {"amount": -5}, "INVALID_AMOUNT"),
    ("huge amount", {"amount": 2**63 - 1}, "INVALID_AMOUNT"),
    ("unknown currency", {"currency": "XYZ"}, "INVALID_CURRENCY"),
    ("lower-case currency", {"currency": "usd"}, "INVALID_CURRENCY"),
    ("empty key", {"idempotency_key": ""}, "INVALID_IDEMPOTENCY_KEY"),
    ("10 kB key", {"idempotency_key": "k" * 10_000}, "INVALID_IDEMPOTENCY_KEY"),
    ("non-ASCII key", {"idempotency_key": "clé"}, "INVALID_IDEMPOTENCY_KEY"),
    ("card in payment_method", {"payment_method": CARD}, "CARD_DATA_NOT_ALLOWED"),
    ("spaced card in payment_method", {"payment_method": "4242 4242 4242 4242"}, "CARD_DATA_NOT_ALLOWED"),
    ("card in metadata", {"metadata": {"note": f"card {CARD}"}}, "CARD_DATA_NOT_ALLOWED"),
    ("51 metadata entries", {"metadata": {f"k{i}": "v" for i in range(51)}}, "INVALID_METADATA"),
    ("41-char metadata key", {"metadata": {"k" * 41: "v"}}, "INVALID_METADATA"),
    ("501-char metadata value", {"metadata": {"k": "v" * 501}}, "INVALID_METADATA"),
    ("empty payment_method", {"payment_method": ""}, "INVALID_PAYMENT_METHOD"),
    ("empty region", {"region": ""}, "INVALID_REGION"),
    ("256-char reference", {"reference": "r" * 256}, "INVALID_REFERENCE"),
    ("unknown capture mode", {"capture_mode": 7}, "INVALID_CAPTURE_MODE"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "reason"), [c[1:] for c in BAD_CREATES], ids=[c[0] for c in BAD_CREATES]
)
def test_bad_create_input_is_invalid_argument_and_writes_nothing(
    running: Running, fields: dict[str, object], reason: str
) -> None:
    before = stored_event_count(running)
    request = create_request("bad-input")
    for name, value in fields.items():
        if name == "metadata":
            request.metadata.update(value)  # type: ignore[arg-type]
        else:
            setattr(request, name, value)
    with pytest.raises(grpc.RpcError) as refused:
        running.stub.CreatePayment(request)
    assert error_reason(refused.value) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert CARD not in (refused.value.details() or "")  # type: ignore[attr-defined]
    assert stored_event_count(running) == before
    assert running.ledger() == []
    health = health_pb2_grpc.HealthStub(running.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest()).status
        == health_pb2.HealthCheckResponse.SERVING
    )


def test_bad_follow_up_input_is_refused_with_a_reason(running: Running) -> None:
    payment = captured(running)
    pid = payment.payment_id
    before = stored_event_count(running)
    cases = [
        (lambda: running.stub.CapturePayment(pb.CapturePaymentRequest(idempotency_key="a", payment_id=pid, amount=-1)),
         (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AMOUNT")),
        (lambda: running.stub.RefundPayment(pb.RefundPaymentRequest(idempotency_key="b", payment_id=pid, reason=f"card {CARD}")),
         (grpc.StatusCode.INVALID_ARGUMENT, "CARD_DATA_NOT_ALLOWED")),
        (lambda: running.stub.RefundPayment(pb.RefundPaymentRequest(idempotency_key="", payment_id=pid)),
         (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_IDEMPOTENCY_KEY")),
        (lambda: running.stub.CapturePayment(pb.CapturePaymentRequest(idempotency_key="c", payment_id="")),
         (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAYMENT_ID")),
        (lambda: running.stub.CapturePayment(pb.CapturePaymentRequest(idempotency_key="d", payment_id="pay_nope")),
         (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")),
        (lambda: running.stub.CancelPayment(pb.CancelPaymentRequest(idempotency_key="e", payment_id="6f1c1f6e-0000-4000-8000-000000000000")),
         (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")),
        (lambda: running.stub.GetPayment(pb.GetPaymentRequest(payment_id="6f1c1f6e-0000-4000-8000-000000000000")),
         (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")),
        (lambda: running.stub.ListPaymentEvents(pb.ListPaymentEventsRequest(payment_id="nope")),
         (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")),
    ]  # fmt: skip
    for call, expected in cases:
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert error_reason(refused.value) == expected
    assert stored_event_count(running) == before


def test_a_command_id_is_not_a_payment_id(running: Running) -> None:
    from orchestrator.domain.command import command_id

    authorized(running, key="k1")
    with pytest.raises(grpc.RpcError) as refused:
        running.stub.GetPayment(pb.GetPaymentRequest(payment_id=str(command_id("default", "k1"))))
    assert error_reason(refused.value) == (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")


def test_a_timeout_after_sending_leaves_the_payment_processing_and_a_retry_never_charges_again(
    running: Running,
) -> None:
    running.faults(timeout_rate=1.0, hang_ms=3500)
    first = running.stub.CreatePayment(create_request("in-doubt"))
    assert first.status == pb.PAYMENT_STATUS_PROCESSING
    assert first.operations[0].status == pb.OPERATION_STATUS_UNKNOWN
    running.faults(timeout_rate=0.0)
    again = running.stub.CreatePayment(create_request("in-doubt"))
    assert again.status == pb.PAYMENT_STATUS_PROCESSING
    assert again.operations[0].provider_key == first.operations[0].provider_key
    types = [e.type for e in running.stub.ListPaymentEvents(
        pb.ListPaymentEventsRequest(payment_id=first.payment_id)).events]  # fmt: skip
    assert types == ["Requested", "OperationStarted", "OutcomeUnknown"]
    deadline = time.monotonic() + 5
    while not running.ledger("authorization") and time.monotonic() < deadline:
        time.sleep(0.1)  # the hung request is processed by the sandbox once its hang ends
    assert len(running.ledger("authorization")) == 1


def test_a_lost_answer_is_retried_with_the_same_key_and_charges_once(running: Running) -> None:
    running.faults(drop_after_processing_rate=1.0)  # every first answer is lost
    payment = running.stub.CreatePayment(create_request("dropped"))
    assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
    (authorization,) = running.ledger("authorization")
    assert authorization["idempotency_key"] == payment.operations[0].provider_key
    assert running.app.router.route("sandbox").provider.stats.snapshot()["retries"] >= 1  # type: ignore[attr-defined]


def test_a_duplicate_past_its_deadline_gets_a_retryable_error_while_the_first_runs(
    running: Running,
) -> None:
    running.faults(latency_ms=1500)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(running.stub.CreatePayment, create_request("slow"))
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as waiting:
            running.stub.CreatePayment(create_request("slow"), timeout=0.6)
        assert error_reason(waiting.value) == (
            grpc.StatusCode.ABORTED,
            "IDEMPOTENCY_REQUEST_IN_PROGRESS",
        )
        assert (retry_delay(waiting.value) or 0) > 0
        assert first.result().status == pb.PAYMENT_STATUS_AUTHORIZED
    assert len(running.ledger("authorization")) == 1


def test_health_and_reflection_are_served(running: Running) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(running.channel)
    request = health_pb2.HealthCheckRequest(service="payments.v1.PaymentOrchestrator")
    assert health.Check(request).status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    answers = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert {"payments.v1.PaymentOrchestrator", "grpc.health.v1.Health"} <= names


def test_a_region_no_provider_serves_is_unavailable_and_writes_nothing(
    database_url: str, sandbox: object, tmp_path: object
) -> None:
    from pathlib import Path

    from orchestrator.api._generated import payments_pb2_grpc
    from orchestrator.api.server import create_server
    from orchestrator.bootstrap import build_payments, load_router

    config = Path(str(tmp_path)) / "providers.toml"
    config.write_text(
        f'[providers.sandbox]\ntype = "sandbox"\nbase_url = "{sandbox.url}"\n'  # type: ignore[attr-defined]
        '[routes]\nUS = ["sandbox"]\n'
    )
    app = build_payments(database_url, load_router(str(config), None))
    server = create_server("127.0.0.1:0", app)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreatePayment(create_request("eu-1", region="EU"))
            assert error_reason(refused.value) == (
                grpc.StatusCode.UNAVAILABLE,
                "PROVIDER_UNAVAILABLE",
            )
            assert retry_delay(refused.value) is not None
            assert (app.recorder.max_notification_id() or 0) == 0
            assert stub.CreatePayment(create_request("us-1")).status == pb.PAYMENT_STATUS_AUTHORIZED
    finally:
        server.stop(grace=1)
        app.close()
