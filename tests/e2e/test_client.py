"""payorch-client against a real payorch: real gRPC over loopback (and real TLS for tokens),
real SQLite and PostgreSQL, the sandbox provider over HTTP."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from eventsourcing.utils import get_topic
from payorch_client import (
    FailedPrecondition,
    IdempotencyKeyReused,
    InvalidArgument,
    PaymentNotFound,
    PaymentsClient,
    PermissionDenied,
    Refusal,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    pb,
)

from adapters.sandbox import SandboxServer
from orchestrator.api.trust import hash_token
from orchestrator.domain.payment import Payment
from tests.e2e.conftest import Running
from tests.e2e.test_auth import READER, WRITER, TrustedFactory

pytestmark = pytest.mark.timeout(90)


class Retries:
    """What the client retried, as its ``on_retry`` hook saw it."""

    def __init__(self) -> None:
        self.seen: list[tuple[grpc.StatusCode, str, float]] = []

    def __call__(self, attempt: int, refusal: Refusal, wait: float) -> None:
        self.seen.append((refusal.code, refusal.reason, wait))


def client_of(running: Running, **options: object) -> PaymentsClient:
    return PaymentsClient(f"127.0.0.1:{running.server.port}", **options)  # type: ignore[arg-type]


def requested(running: Running) -> int:
    """Payments stored: each has exactly one Requested event."""
    topic = get_topic(Payment.Requested)
    return len(running.app.recorder.select_notifications(0, 10_000, topics=[topic]))


def test_a_payment_is_created_captured_refunded_and_read_through_the_client(
    running: Running,
) -> None:
    with client_of(running) as client:
        created = client.create_payment(
            amount=1000, currency="USD", payment_method="pm_card_visa", region="US",
            capture_mode="manual", reference="order-1", metadata={"cart": "c-1"},
        )  # fmt: skip
        assert created.status == pb.PAYMENT_STATUS_AUTHORIZED
        captured = client.capture(created.payment_id, amount=600)
        assert (captured.status, captured.captured_amount) == (pb.PAYMENT_STATUS_CAPTURED, 600)
        refunded = client.refund(created.payment_id, reason="damaged")
        assert (refunded.status, refunded.refunded_amount) == (pb.PAYMENT_STATUS_REFUNDED, 600)
        assert client.get(created.payment_id) == refunded
        types = [e.type for e in client.events(created.payment_id)]
        streamed = list(client.stream_events())
    assert [(s.payment_id, s.event.type) for s in streamed] == [
        (created.payment_id, t) for t in types
    ]
    assert types[0] == "Requested"
    assert types.count("OperationStarted") == 3
    assert [e["kind"] for e in running.ledger()] == ["authorization", "capture", "refund"]


def test_a_canceled_authorization_and_a_decline(running: Running) -> None:
    with client_of(running) as client:
        created = client.create_payment(
            amount=500, currency="EUR", payment_method="pm_card_visa", region="EU",
            capture_mode="manual",
        )  # fmt: skip
        assert client.cancel(created.payment_id).status == pb.PAYMENT_STATUS_CANCELED
        declined = client.create_payment(
            amount=500, currency="EUR", payment_method="pm_card_declined", region="EU"
        )
    assert declined.status == pb.PAYMENT_STATUS_DECLINED  # an outcome, not an error


def test_a_retry_that_lands_on_a_command_in_progress_gets_its_one_result(
    running: Running,
) -> None:
    running.faults(latency_ms=1500)
    key = f"slow-{uuid.uuid4()}"
    results: list[pb.Payment] = []

    def first() -> None:
        with client_of(running, timeout=10) as client:
            results.append(client.create_payment(
                amount=1000, currency="USD", payment_method="pm_card_visa", region="US",
                idempotency_key=key,
            ))  # fmt: skip

    started = threading.Thread(target=first)
    started.start()
    time.sleep(0.3)
    retries = Retries()
    # Each attempt gives up after 0.6 s; the server answers a waiting duplicate before that.
    with client_of(running, timeout=0.6, on_retry=retries) as client:
        second = client.create_payment(
            amount=1000, currency="USD", payment_method="pm_card_visa", region="US",
            idempotency_key=key,
        )  # fmt: skip
    started.join(10)
    assert results == [second]
    assert second.status == pb.PAYMENT_STATUS_CAPTURED  # automatic capture, the default
    assert retries.seen, "the duplicate was answered without waiting: nothing was in progress"
    code, reason, wait = retries.seen[0]
    assert (code, reason) == (grpc.StatusCode.ABORTED, "IDEMPOTENCY_REQUEST_IN_PROGRESS")
    assert wait > 0
    assert len(running.ledger("authorization")) == 1
    assert requested(running) == 1


def test_a_deadline_that_expires_is_retried_with_the_key_the_client_chose(
    running: Running,
) -> None:
    """The first attempt's deadline passes while the provider is still answering; the client
    tries again with the uuid4 it chose before the first attempt, and gets the payment that
    attempt made (in doubt, or authorized): one payment, one provider call."""
    running.faults(latency_ms=1500)
    retries = Retries()
    with client_of(running, timeout=0.5, on_retry=retries) as client:
        payment = client.create_payment(
            amount=1000, currency="USD", payment_method="pm_card_visa", region="US"
        )
        events = client.events(payment.payment_id)
    assert retries.seen, f"no retry: answered {pb.PaymentStatus.Name(payment.status)} in time"
    assert retries.seen[0][0] is grpc.StatusCode.DEADLINE_EXCEEDED, retries.seen
    assert payment.status in (pb.PAYMENT_STATUS_PROCESSING, pb.PAYMENT_STATUS_AUTHORIZED)
    assert requested(running) == 1
    assert len([e for e in events if e.type == "OperationStarted"]) == 1
    time.sleep(1.5)  # the sandbox's late answer, if any, lands in its ledger
    assert len(running.ledger("authorization")) <= 1


def test_refusals_arrive_as_typed_errors_with_their_reasons(running: Running) -> None:
    retries = Retries()
    with client_of(running, on_retry=retries) as client:
        with pytest.raises(InvalidArgument) as invalid:
            client.create_payment(amount=0, currency="USD", payment_method="pm_card_visa",
                                  region="US")  # fmt: skip
        assert invalid.value.reason == "INVALID_AMOUNT"
        with pytest.raises(PaymentNotFound) as missing:
            client.get(str(uuid.uuid4()))
        assert missing.value.reason == "PAYMENT_NOT_FOUND"
        created = client.create_payment(
            amount=1000, currency="USD", payment_method="pm_card_visa", region="US",
            idempotency_key="once",
        )  # fmt: skip
        with pytest.raises(IdempotencyKeyReused) as reused:
            client.create_payment(amount=2000, currency="USD", payment_method="pm_card_visa",
                                  region="US", idempotency_key="once")  # fmt: skip
        assert reused.value.idempotency_key == "once"
        with pytest.raises(FailedPrecondition) as too_much:
            client.refund(created.payment_id, amount=5000)
        assert too_much.value.reason == "AMOUNT_EXCEEDS_REFUNDABLE"
    assert retries.seen == []  # none of these is retried
    assert requested(running) == 1
    assert len(running.ledger()) == 2  # the authorization and capture of "once"


# --- tokens over TLS ---------------------------------------------------------------------------


@pytest.fixture
def trusted(sqlite_url: str, tmp_path: Path, sandbox: SandboxServer) -> Iterator[TrustedFactory]:
    factory = TrustedFactory(sqlite_url, tmp_path, sandbox)
    try:
        yield factory
    finally:
        factory.close()


TOKEN_CALLERS = f"""
[[auth.callers]]
name = "checkout"
account = "shop"
roles = ["payments.write", "payments.read"]
token_sha256 = ["{hash_token(WRITER)}"]

[[auth.callers]]
name = "ledger"
account = "shop"
roles = ["payments.read"]
token_sha256 = ["{hash_token(READER)}"]
"""


def test_a_bearer_token_over_tls_names_the_caller(trusted: TrustedFactory) -> None:
    server = trusted(client_ca=False, callers=TOKEN_CALLERS)
    tls = grpc.ssl_channel_credentials(server.ca.pem)
    target = f"localhost:{server.server.port}"
    with PaymentsClient(target, tls=tls, token=WRITER) as writer:
        payment = writer.create_payment(
            amount=1000, currency="USD", payment_method="pm_card_visa", region="US"
        )
    assert payment.status == pb.PAYMENT_STATUS_CAPTURED
    with PaymentsClient(target, tls=tls, token=READER) as reader:
        assert reader.get(payment.payment_id) == payment
        with pytest.raises(PermissionDenied) as denied:
            reader.cancel(payment.payment_id)
        assert denied.value.reason == "PERMISSION_DENIED"
    with PaymentsClient(target, tls=tls, token="not-a-token") as stranger:
        with pytest.raises(Unauthenticated) as refused:
            stranger.get(payment.payment_id)
        assert refused.value.reason == "UNAUTHENTICATED"
    assert server.authorizations() == 1


def test_a_client_that_cannot_reach_the_server_gives_up_in_bounded_time() -> None:
    policy = RetryPolicy(base=0.05, maximum=0.2, max_attempts=3, max_time=5)
    started = time.monotonic()
    client = PaymentsClient("127.0.0.1:9", timeout=1, retry=policy)
    with client, pytest.raises(Unavailable) as down:
        client.get(str(uuid.uuid4()))
    assert down.value.attempts == 3
    assert time.monotonic() - started < 5
