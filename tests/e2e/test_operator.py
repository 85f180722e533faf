"""Settling what needs a person: an operator records what the provider's dashboard shows for a
payment in review (real gRPC over TLS with bearer tokens, both stores), by RPC and by
``payorch admin resolve``; the audit shows who did it; unmatched webhook deliveries are
re-matched once their payment appears, and an operator lists and re-tries them."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import grpc
import pytest

from adapters.sandbox import SandboxServer
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api.trust import hash_token
from orchestrator.application import Payments
from orchestrator.cli import main
from orchestrator.domain.payment import Cause, Payment, RecoveryCause, Status, provider_key
from orchestrator.domain.payment import Kind as OpKind
from orchestrator.domain.webhook import WebhookDelivery, delivery_id
from orchestrator.ports import WebhookKind
from orchestrator.webhooks.processor import WebhookProcessor
from tests.e2e.helpers import error_reason
from tests.e2e.test_auth import WRITER, TrustedFactory, bearer

pytestmark = pytest.mark.timeout(60)

OPERATOR_TOKEN = "tok-operator-1"
OPERATORS = f"""
[[auth.callers]]
name = "checkout"
account = "shop"
roles = ["payments.write", "payments.read"]
token_sha256 = ["{hash_token(WRITER)}"]

[[auth.callers]]
name = "ops-alice"
account = "ops"
roles = ["operator"]
token_sha256 = ["{hash_token(OPERATOR_TOKEN)}"]
"""
NOW = datetime.now(UTC)
CAUSE = Cause("default", "create-1")


@pytest.fixture
def trusted(database_url: str, tmp_path: Path, sandbox: SandboxServer) -> Iterator[TrustedFactory]:
    factory = TrustedFactory(database_url, tmp_path, sandbox)
    try:
        yield factory
    finally:
        factory.close()


def requested(payment_id: UUID | None = None, account: str = "shop") -> Payment:
    return Payment(
        id=payment_id or uuid4(),
        amount=1500,
        currency="USD",
        payment_method="pm_card_visa",
        region="US",
        capture_mode="manual",
        reference="order-7",
        metadata={},
        scope="default",
        idempotency_key="create-1",
        caused_by=CAUSE.as_data(),
        account=account,
    )


def in_review(app: Payments) -> Payment:
    """An authorization whose outcome nobody could learn, its lookups spent."""
    payment = requested()
    payment.start_authorization(provider="sandbox", deadline=NOW, cause=CAUSE)
    payment.record_unknown(1, message="timed out", caused_by=CAUSE)
    payment.require_review(1, message="unresolved after 8 lookups", caused_by=RecoveryCause())
    app.save(payment)
    return payment


def resolve_request(payment: Payment, key: str = "resolve-1", **fields: object) -> object:
    values: dict[str, object] = {
        "idempotency_key": key,
        "payment_id": str(payment.id),
        "outcome": pb.RESOLUTION_AUTHORIZED,
        "note": "dashboard shows ch_77 authorized",
        "provider_reference": "ch_77",
    }
    values.update(fields)
    return pb.ResolvePaymentRequest(**values)  # type: ignore[arg-type]


def test_an_operator_resolves_a_payment_in_review_and_its_retry_replays(
    trusted: TrustedFactory,
) -> None:
    server = trusted(client_ca=False, callers=OPERATORS)
    payment = in_review(server.app)
    stub = server.stub()
    resolved = stub.ResolvePayment(resolve_request(payment), metadata=bearer(OPERATOR_TOKEN))
    assert resolved.status == pb.PAYMENT_STATUS_AUTHORIZED
    assert resolved.provider_reference == "ch_77"
    again = stub.ResolvePayment(resolve_request(payment), metadata=bearer(OPERATOR_TOKEN))
    assert again == resolved
    stored = server.app.get_payment(payment.id)
    assert stored.status is Status.AUTHORIZED
    events = list(server.app.payment_events(str(payment.id)))
    resolutions = [e for e in events if isinstance(e, Payment.ResolvedByOperator)]
    assert len(resolutions) == 1  # the retry replayed, it recorded nothing
    assert resolutions[0].caused_by["kind"] == "operator"
    assert resolutions[0].caused_by["operator"] == "ops-alice"
    assert resolutions[0].note == "dashboard shows ch_77 authorized"


def test_a_payments_writer_may_not_resolve_and_nothing_changes(trusted: TrustedFactory) -> None:
    server = trusted(client_ca=False, callers=OPERATORS)
    payment = in_review(server.app)
    with pytest.raises(grpc.RpcError) as refused:
        server.stub().ResolvePayment(resolve_request(payment), metadata=bearer(WRITER))
    assert error_reason(refused.value) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert server.app.get_payment(payment.id).status is Status.REQUIRES_REVIEW


def test_a_definite_outcome_is_never_contradicted(trusted: TrustedFactory) -> None:
    server = trusted(client_ca=False, callers=OPERATORS)
    payment = in_review(server.app)
    stub = server.stub()
    stub.ResolvePayment(resolve_request(payment), metadata=bearer(OPERATOR_TOKEN))
    with pytest.raises(grpc.RpcError) as refused:
        stub.ResolvePayment(
            resolve_request(payment, "resolve-2", outcome=pb.RESOLUTION_NOT_FOUND, operation=1),
            metadata=bearer(OPERATOR_TOKEN),
        )
    assert error_reason(refused.value) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "OUTCOME_ALREADY_KNOWN",
    )
    assert server.app.get_payment(payment.id).status is Status.AUTHORIZED


def test_a_refund_in_review_seen_refunded_on_the_dashboard_is_recorded_as_refunded(
    trusted: TrustedFactory,
) -> None:
    """A refund known only from its webhook (Adyen's way), whose webhook never came."""
    server = trusted(client_ca=False, callers=OPERATORS)
    payment = requested()
    payment.start_authorization(provider="sandbox", deadline=NOW, cause=CAUSE)
    payment.record_success(1, provider_reference="ch_9", amount=0, caused_by=CAUSE)
    capture = payment.start_capture(None, deadline=NOW, cause=CAUSE)
    payment.record_success(
        capture.sequence, provider_reference="ch_9", amount=1500, caused_by=CAUSE
    )
    refund = payment.start_refund(600, reason="", deadline=NOW, cause=CAUSE)
    payment.record_unknown(refund.sequence, message="timed out", caused_by=CAUSE)
    payment.require_review(refund.sequence, message="no webhook", caused_by=RecoveryCause())
    server.app.save(payment)
    resolved = server.stub().ResolvePayment(
        resolve_request(payment, outcome=pb.RESOLUTION_REFUNDED, provider_reference="re_9"),
        metadata=bearer(OPERATOR_TOKEN),
    )
    assert resolved.status == pb.PAYMENT_STATUS_PARTIALLY_REFUNDED
    assert resolved.refunded_amount == 600
    assert server.app.get_payment(payment.id).refunded_amount == 600


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"outcome": pb.RESOLUTION_UNSPECIFIED}, "INVALID_OUTCOME"),
        ({"note": "  "}, "INVALID_NOTE"),
        ({"note": "card 4242424242424242"}, "CARD_DATA_NOT_ALLOWED"),
        ({"operation": -1}, "INVALID_OPERATION"),
        ({"idempotency_key": ""}, "INVALID_IDEMPOTENCY_KEY"),
    ],
)
def test_bad_input_is_refused_clearly_and_changes_nothing(
    trusted: TrustedFactory, fields: dict[str, object], reason: str
) -> None:
    server = trusted(client_ca=False, callers=OPERATORS)
    payment = in_review(server.app)
    before = server.written()
    with pytest.raises(grpc.RpcError) as refused:
        server.stub().ResolvePayment(
            resolve_request(payment, **fields), metadata=bearer(OPERATOR_TOKEN)
        )
    code, got = error_reason(refused.value)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert got == reason
    assert server.written() == before


def test_the_cli_resolves_as_its_os_user_and_the_audit_shows_it_and_verifies(
    trusted: TrustedFactory, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server = trusted(client_ca=False, callers=OPERATORS)
    payment = in_review(server.app)
    args = ["admin", "resolve", str(payment.id), "--outcome", "not-found",
            "--note", "no such charge on the dashboard", "--database-url", database_url]  # fmt: skip
    assert main(args) == 0
    assert "failed" in capsys.readouterr().out
    assert main(args) == 0  # the same command again replays
    assert server.app.get_payment(payment.id).status is Status.FAILED
    resolutions = [
        e
        for e in server.app.payment_events(str(payment.id))
        if isinstance(e, Payment.ResolvedByOperator)
    ]
    assert len(resolutions) == 1
    assert resolutions[0].caused_by["operator"].startswith("cli:")
    capsys.readouterr()
    assert main(["audit", "show", str(payment.id), "--database-url", database_url]) == 0
    shown = capsys.readouterr().out
    row = next(line for line in shown.splitlines() if "ResolvedByOperator" in line)
    assert "operator:cli:" in row
    assert "not_found" in row
    assert main(["audit", "verify", "--database-url", database_url]) == 0
    assert "no findings" in capsys.readouterr().out


def test_the_cli_refuses_to_contradict_a_definite_outcome(
    trusted: TrustedFactory, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server = trusted(client_ca=False, callers=OPERATORS)
    payment = requested()
    payment.start_authorization(provider="sandbox", deadline=NOW, cause=CAUSE)
    payment.record_success(1, provider_reference="sbx_1", amount=0, caused_by=CAUSE)
    server.app.save(payment)
    code = main(["admin", "resolve", str(payment.id), "--outcome", "declined", "--note", "x",
                 "--operation", "1", "--operator", "bob", "--database-url", database_url])  # fmt: skip
    assert code == 1
    assert "OUTCOME_ALREADY_KNOWN" in capsys.readouterr().err
    assert server.app.get_payment(payment.id).status is Status.AUTHORIZED


# --- unmatched webhook deliveries ------------------------------------------------------------


def deliver_early(app: Payments, payment_id: UUID) -> UUID:
    """A verified delivery that names a payment not (yet) known, as the intake stores it."""
    event_id = f"evt_{uuid4().hex[:12]}"
    app.save(
        WebhookDelivery(
            id=delivery_id("sandbox", event_id),
            provider="sandbox",
            verified_by="sandbox",
            event_id=event_id,
            kind=WebhookKind.AUTHORIZATION_SUCCEEDED.value,
            payment_id=str(payment_id),
            provider_reference="sbx_early",
            operation_key=provider_key(payment_id, 1, OpKind.AUTHORIZE, 1),
            object_reference="",
            amount=1500,
            currency="USD",
            decline_code="",
            message="",
            body=base64.b64encode(json.dumps({"id": event_id}).encode()).decode(),
            received_at=NOW,
        )
    )
    return delivery_id("sandbox", event_id)


def authorization_in_doubt(app: Payments, payment_id: UUID) -> Payment:
    payment = requested(payment_id)
    payment.start_authorization(provider="sandbox", deadline=NOW + timedelta(1), cause=CAUSE)
    app.save(payment)
    return payment


def test_an_unmatched_delivery_is_re_matched_when_its_payment_appears(
    trusted: TrustedFactory,
) -> None:
    app = trusted(client_ca=False, callers=OPERATORS).app
    processor = WebhookProcessor(app)
    payment_id = uuid4()
    delivered = deliver_early(app, payment_id)
    processor.run_once()
    assert app.repository.get(delivered).outcome == "unmatched"
    processor.run_once()  # nothing new: it stays unmatched, nothing is recorded
    assert app.repository.get(delivered).version == 2
    authorization_in_doubt(app, payment_id)
    assert processor.run_once() == 1
    assert app.repository.get(delivered).outcome == "applied"
    payment = app.get_payment(payment_id)
    assert payment.status is Status.AUTHORIZED
    assert payment.provider_reference == "sbx_early"


def test_another_consumer_re_matches_what_one_left_unmatched(trusted: TrustedFactory) -> None:
    app = trusted(client_ca=False, callers=OPERATORS).app
    payment_id = uuid4()
    delivered = deliver_early(app, payment_id)
    WebhookProcessor(app).run_once()
    authorization_in_doubt(app, payment_id)
    assert WebhookProcessor(app).run_once() == 1  # a restarted or second consumer
    assert app.get_payment(payment_id).status is Status.AUTHORIZED
    assert app.repository.get(delivered).outcome == "applied"


def test_an_operator_lists_unmatched_deliveries_and_re_tries_one(
    trusted: TrustedFactory, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = trusted(client_ca=False, callers=OPERATORS).app
    payment_id = uuid4()
    delivered = deliver_early(app, payment_id)
    WebhookProcessor(app).run_once()
    capsys.readouterr()
    assert main(["admin", "unmatched", "--database-url", database_url]) == 0
    listed = capsys.readouterr()
    assert str(delivered) in listed.out
    assert "1 unmatched delivery" in listed.err
    retry = ["admin", "retry-unmatched", str(delivered), "--database-url", database_url]
    assert main(retry) == 1  # its payment is still unknown
    assert "unmatched" in capsys.readouterr().out
    authorization_in_doubt(app, payment_id)
    assert main(retry) == 0
    assert "re-matched" in capsys.readouterr().out
    assert app.get_payment(payment_id).status is Status.AUTHORIZED
    assert main(retry) == 0  # again: already applied, nothing twice
    assert "already applied" in capsys.readouterr().out
    assert main(["admin", "unmatched", "--database-url", database_url]) == 0
    assert str(delivered) not in capsys.readouterr().out
