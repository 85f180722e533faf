"""payorch-client against a real payorch: real gRPC over loopback (and real TLS for tokens),
real SQLite and PostgreSQL, the sandbox provider over HTTP."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
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
from orchestrator.domain.payment import Cause, Payment, RecoveryCause
from orchestrator.listing import ListingProjector
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


# --- operators and finding payments ---------------------------------------------------------


def in_review(running: Running) -> str:
    """An authorization of the anonymous caller's account whose outcome no lookup learnt."""
    cause = Cause("default", f"create-{uuid.uuid4()}")
    payment = Payment(
        id=uuid.uuid4(), amount=1500, currency="USD", payment_method="pm_card_visa",
        region="US", capture_mode="manual", reference="order-7", metadata={},
        scope=cause.scope, idempotency_key=cause.idempotency_key, caused_by=cause.as_data(),
        account="default",
    )  # fmt: skip
    payment.start_authorization(provider="sandbox", deadline=datetime.now(UTC), cause=cause)
    payment.record_unknown(1, message="timed out", caused_by=cause)
    payment.require_review(1, message="unresolved after 8 lookups", caused_by=RecoveryCause())
    running.app.save(payment)
    return str(payment.id)


def test_an_operator_resolves_a_payment_in_review_and_the_same_key_replays(
    running: Running,
) -> None:
    payment_id = in_review(running)
    with client_of(running) as client:
        with pytest.raises(ValueError, match="outcome is one of"):
            client.resolve_payment(payment_id, outcome="maybe", note="?")  # type: ignore[arg-type]
        resolved = client.resolve_payment(
            payment_id, outcome="authorized", note="dashboard: ch_77 authorized",
            provider_reference="ch_77", idempotency_key="resolve-1",
        )  # fmt: skip
        again = client.resolve_payment(
            payment_id, outcome="authorized", note="dashboard: ch_77 authorized",
            provider_reference="ch_77", idempotency_key="resolve-1",
        )  # fmt: skip
        with pytest.raises(FailedPrecondition) as overrule:
            client.resolve_payment(payment_id, outcome="not-found", note="second look", operation=1)
    assert resolved.status == pb.PAYMENT_STATUS_AUTHORIZED
    assert resolved.provider_reference == "ch_77"
    assert again == resolved
    assert overrule.value.reason == "OUTCOME_ALREADY_KNOWN"
    assert overrule.value.idempotency_key  # the key the client chose, to retry it later
    events = list(running.app.payment_events(payment_id))
    resolutions = [e for e in events if isinstance(e, Payment.ResolvedByOperator)]
    assert len(resolutions) == 1  # the replay recorded nothing
    assert resolutions[0].outcome == "authorized"
    assert running.ledger() == []  # an operator's record moves no money


def catch_up(running: Running) -> None:
    ListingProjector(running.app).catch_up(running.app.recorder.max_notification_id() or 0)


def test_payments_are_listed_by_filter_and_every_page_is_reached(running: Running) -> None:
    with client_of(running) as client:
        made = [
            client.create_payment(
                amount=100 + i, currency="EUR", region="EU" if i % 2 else "US",
                payment_method="pm_card_declined" if i % 3 == 0 else "pm_card_visa",
                reference=f"order-{i % 2}",
            )
            for i in range(7)
        ]  # fmt: skip
        catch_up(running)
        newest_first = sorted(
            made, key=lambda p: (p.created_at.ToDatetime(tzinfo=UTC), p.payment_id), reverse=True
        )
        first = client.list_payments(page_size=3)
        every = list(client.iter_payments(page_size=3))
        one_page = client.list_payments()
        declined = list(client.iter_payments(status=pb.PAYMENT_STATUS_DECLINED, page_size=1))
        order_1_eu = list(client.iter_payments(reference="order-1", region="EU"))
        since = newest_first[2].created_at.ToDatetime(tzinfo=UTC)
        recent = list(client.iter_payments(created_after=since, page_size=2))
        before = list(client.iter_payments(created_before=since))
        with pytest.raises(ValueError, match="timezone-aware"):
            client.list_payments(created_after=datetime(2026, 12, 1))  # naive
        with pytest.raises(InvalidArgument) as edited:
            client.list_payments(page_token=first.next_page_token[:-2] + "xx")
        with pytest.raises(InvalidArgument) as other_filter:
            client.list_payments(page_token=first.next_page_token, region="EU")

    def ids(payments: object) -> list[str]:
        return [p.payment_id for p in payments]  # type: ignore[attr-defined]

    assert ids(first.payments) == ids(newest_first[:3]) and first.next_page_token
    assert ids(every) == ids(newest_first) == ids(one_page.payments)
    assert one_page.next_page_token == ""
    assert ids(declined) == ids(p for p in newest_first if p.status == pb.PAYMENT_STATUS_DECLINED)
    assert len(declined) == 3
    assert ids(order_1_eu) == ids(p for p in newest_first if p.reference == "order-1")
    assert ids(recent) == ids(newest_first[:3])  # created_after is inclusive
    assert ids(before) == ids(newest_first[3:])  # created_before is exclusive
    assert edited.value.reason == other_filter.value.reason == "INVALID_PAGE_TOKEN"


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
