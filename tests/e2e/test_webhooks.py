"""Webhooks end to end: real signed deliveries over HTTP into payorch, stored once, applied
once by the background processor, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from adapters.sandbox import SandboxServer
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.bootstrap import build_payments, load_configuration, webhook_verifiers
from orchestrator.secrets import Secret
from orchestrator.webhooks.http import HttpServer
from orchestrator.webhooks.intake import WebhookIntake
from orchestrator.webhooks.processor import WebhookProcessor
from tests.e2e.conftest import Configured, ServerFactory, WebhookStack, free_port
from tests.e2e.helpers import create_request

pytestmark = pytest.mark.timeout(120)


def sandbox_event(
    kind: str, payment: dict[str, object], event_id: str = "evt_test_1", **data: object
) -> bytes:
    body = {
        "id": event_id,
        "type": kind,
        "created": int(time.time()),
        "data": {"payment": payment, **data},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def sandbox_payment(stack: WebhookStack, provider_reference: str) -> dict[str, object]:
    return httpx.get(f"{stack.sandbox.url}/v1/payments/{provider_reference}").json()  # type: ignore[no-any-return]


def events(stack: WebhookStack, payment_id: str) -> list[pb.PaymentEvent]:
    return list(
        stack.stub.ListPaymentEvents(pb.ListPaymentEventsRequest(payment_id=payment_id)).events
    )


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


def test_the_full_local_loop_records_the_payment_and_the_sandbox_webhook(
    webhook_stack: WebhookStack,
) -> None:
    webhook_stack.processor.start()
    payment = webhook_stack.stub.CreatePayment(create_request("loop"))
    captured = webhook_stack.stub.CapturePayment(
        pb.CapturePaymentRequest(idempotency_key="loop-capture", payment_id=payment.payment_id)
    )
    assert captured.status == pb.PAYMENT_STATUS_CAPTURED
    wait_for(
        lambda: (
            [e.type for e in events(webhook_stack, payment.payment_id)].count(
                "ProviderEventReceived"
            )
            == 2
        )
    )
    recorded = events(webhook_stack, payment.payment_id)
    types = [e.type for e in recorded]
    assert types[:3] == ["Requested", "OperationStarted", "Authorized"]
    received = [json.loads(e.data) for e in recorded if e.type == "ProviderEventReceived"]
    assert sorted(r["kind"] for r in received) == ["authorization_succeeded", "capture_succeeded"]
    assert all(r["effect"].endswith("unchanged") for r in received)


def test_a_processing_payment_is_resolved_by_its_webhook(webhook_stack: WebhookStack) -> None:
    webhook_stack.sandbox.state.update_faults({"timeout_rate": 1.0, "hang_ms": 3500})
    payment = webhook_stack.stub.CreatePayment(create_request("late"))
    assert payment.status == pb.PAYMENT_STATUS_PROCESSING
    webhook_stack.sandbox.state.update_faults({"timeout_rate": 0.0})
    webhook_stack.processor.start()  # no recovery worker runs here: only the webhook can tell
    request = pb.GetPaymentRequest(payment_id=payment.payment_id)
    wait_for(lambda: webhook_stack.stub.GetPayment(request).status == pb.PAYMENT_STATUS_AUTHORIZED)
    recorded = events(webhook_stack, payment.payment_id)
    types = [e.type for e in recorded]
    assert types[:4] == ["Requested", "OperationStarted", "OutcomeUnknown", "Authorized"]
    assert "ProviderEventReceived" in types
    # Each event names its cause: the command up to the unknown outcome, then the webhook.
    causes = [json.loads(e.data)["caused_by"] for e in recorded]
    command = {"kind": "command", "scope": "default", "idempotency_key": "late"}
    assert causes[:3] == [command] * 3
    assert causes[3]["kind"] == "provider_event"
    assert causes[3]["provider"] == "sandbox"
    assert causes[3]["event_id"].startswith("evt_")
    received = json.loads(recorded[types.index("ProviderEventReceived")].data)
    assert received["caused_by"]["event_id"] == received["event_id"]
    # The command's retry now answers with what the webhook taught us.
    assert (
        webhook_stack.stub.CreatePayment(create_request("late")).status
        == pb.PAYMENT_STATUS_AUTHORIZED
    )


def test_the_same_webhook_delivered_ten_times_at_once_is_stored_once_and_applied_once(
    webhook_stack: WebhookStack,
) -> None:
    webhook_stack.sandbox.disable_webhooks()
    payment = webhook_stack.stub.CreatePayment(create_request("dup"))
    body = sandbox_event(
        "payment.authorized", sandbox_payment(webhook_stack, payment.provider_reference), "evt_dup"
    )
    before = webhook_stack.deliveries()
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: webhook_stack.post(body, event_id="evt_dup"), range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert sum(a.json()["stored"] for a in answers) == 1
    assert webhook_stack.deliveries() == before + 1
    webhook_stack.processor.run_once()
    webhook_stack.processor.run_once()
    received = [
        e for e in events(webhook_stack, payment.payment_id) if e.type == "ProviderEventReceived"
    ]
    assert len(received) == 1


def test_a_late_webhook_never_regresses_a_payment(webhook_stack: WebhookStack) -> None:
    webhook_stack.sandbox.disable_webhooks()
    payment = webhook_stack.stub.CreatePayment(create_request("final"))
    payment = webhook_stack.stub.CapturePayment(
        pb.CapturePaymentRequest(idempotency_key="c", payment_id=payment.payment_id)
    )
    refunded = webhook_stack.stub.RefundPayment(
        pb.RefundPaymentRequest(idempotency_key="r", payment_id=payment.payment_id)
    )
    assert refunded.status == pb.PAYMENT_STATUS_REFUNDED
    stale = sandbox_payment(webhook_stack, payment.provider_reference)
    stale = {**stale, "status": "declined", "decline_code": "card_declined"}
    assert (
        webhook_stack.post(
            sandbox_event("payment.declined", stale, "evt_late"), event_id="evt_late"
        ).status_code
        == 200
    )
    webhook_stack.processor.run_once()
    after = webhook_stack.stub.GetPayment(pb.GetPaymentRequest(payment_id=payment.payment_id))
    assert after.status == pb.PAYMENT_STATUS_REFUNDED
    assert (after.captured_amount, after.refunded_amount) == (1000, 1000)
    (received,) = [
        json.loads(e.data)
        for e in events(webhook_stack, payment.payment_id)
        if e.type == "ProviderEventReceived"
    ]
    assert received["effect"] == "operation 1 already succeeded: unchanged"


def test_disputes_open_and_close_even_out_of_order(webhook_stack: WebhookStack) -> None:
    webhook_stack.sandbox.disable_webhooks()
    payment = webhook_stack.stub.CreatePayment(
        create_request("disputed", capture_mode=pb.CAPTURE_MODE_AUTOMATIC)
    )
    sbx = sandbox_payment(webhook_stack, payment.provider_reference)
    dispute = {
        "id": "sbx_dp_1",
        "amount": 1000,
        "currency": "USD",
        "reason": "fraudulent",
        "status": "lost",
    }
    closed = sandbox_event("dispute.closed", sbx, "evt_closed", dispute=dispute)
    opened = sandbox_event(
        "dispute.opened", sbx, "evt_opened", dispute={**dispute, "status": "open"}
    )
    # The closing arrives first, then the (older) opening: it must not reopen the dispute.
    assert webhook_stack.post(closed, event_id="evt_closed").status_code == 200
    assert webhook_stack.post(opened, event_id="evt_opened").status_code == 200
    webhook_stack.processor.run_once()
    after = webhook_stack.stub.GetPayment(pb.GetPaymentRequest(payment_id=payment.payment_id))
    assert after.status == pb.PAYMENT_STATUS_CHARGED_BACK
    assert after.charged_back_amount == 1000


def test_a_dispute_opened_then_won_returns_the_payment_to_captured(
    webhook_stack: WebhookStack,
) -> None:
    webhook_stack.processor.start()
    payment = webhook_stack.stub.CreatePayment(
        create_request("won", capture_mode=pb.CAPTURE_MODE_AUTOMATIC)
    )
    dispute = httpx.post(
        f"{webhook_stack.sandbox.url}/_sandbox/payments/{payment.provider_reference}/dispute",
        json={"reason": "fraudulent"},
    ).json()
    request = pb.GetPaymentRequest(payment_id=payment.payment_id)
    wait_for(lambda: webhook_stack.stub.GetPayment(request).status == pb.PAYMENT_STATUS_DISPUTED)
    httpx.post(
        f"{webhook_stack.sandbox.url}/_sandbox/disputes/{dispute['id']}/close",
        json={"outcome": "won"},
    ).raise_for_status()
    wait_for(lambda: webhook_stack.stub.GetPayment(request).status == pb.PAYMENT_STATUS_CAPTURED)


def test_a_webhook_for_a_payment_we_do_not_know_is_kept_and_reported(
    webhook_stack: WebhookStack, caplog: pytest.LogCaptureFixture
) -> None:
    webhook_stack.sandbox.disable_webhooks()
    foreign = {
        "id": "sbx_pay_foreign",
        "reference": "6f1c1f6e-0000-4000-8000-000000000001",
        "amount": 5,
        "currency": "USD",
        "idempotency_key": None,
        "status": "authorized",
    }
    assert (
        webhook_stack.post(
            sandbox_event("payment.authorized", foreign, "evt_foreign"), event_id="evt_foreign"
        ).status_code
        == 200
    )
    with caplog.at_level("WARNING", logger="payorch.webhooks"):
        webhook_stack.processor.run_once()
    assert any("unmatched webhook sandbox evt_foreign" in r.getMessage() for r in caplog.records)
    from orchestrator.domain.webhook import WebhookDelivery, delivery_id

    kept: WebhookDelivery = webhook_stack.app.repository.get(delivery_id("sandbox", "evt_foreign"))
    assert kept.outcome == "unmatched"


def test_an_acknowledged_webhook_survives_a_crash_before_processing(
    webhook_stack: WebhookStack, database_url: str
) -> None:
    webhook_stack.sandbox.state.update_faults({"timeout_rate": 1.0, "hang_ms": 3500})
    payment = webhook_stack.stub.CreatePayment(create_request("crash"))
    assert payment.status == pb.PAYMENT_STATUS_PROCESSING
    webhook_stack.sandbox.state.update_faults({"timeout_rate": 0.0})
    wait_for(lambda: webhook_stack.deliveries() >= 1)  # acknowledged and stored, never processed
    webhook_stack.app.close()  # the process dies here: no consumer ever ran

    config = load_configuration(
        None, webhook_stack.sandbox.url, sandbox_webhook_secret=Secret(webhook_stack.secret, "t")
    )
    restarted = build_payments(database_url, config.router)
    try:
        processor = WebhookProcessor(restarted)
        assert processor.position() == 0
        assert processor.run_once() >= 1
        assert restarted.get_payment(payment.payment_id).status.value == "authorized"
        assert processor.run_once() == 0  # nothing twice
    finally:
        restarted.close()


BAD = [
    ("no signature", {"drop": "webhook-signature"}, 400),
    ("a tampered body", {"tamper": True}, 401),
    ("a wrong secret", {"secret": "whsec_" + "A" * 44}, 401),
    ("a stale timestamp", {"timestamp": -301}, 400),
    ("a future timestamp", {"timestamp": 301}, 400),
]  # fmt: skip


@pytest.mark.parametrize(("change", "status"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_deliveries_are_refused_and_nothing_is_stored(
    webhook_stack: WebhookStack,
    change: dict[str, object],
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = sandbox_event("payment.authorized", {"id": "sbx_pay_x", "reference": "", "amount": 1})
    stamp = int(time.time()) + int(change.get("timestamp", 0))  # type: ignore[call-overload]
    secret = str(change.get("secret", webhook_stack.secret))
    from adapters.sandbox import sign_standard_webhook

    headers = {"webhook-id": "evt_bad", "webhook-timestamp": str(stamp),
               "webhook-signature": sign_standard_webhook(secret, "evt_bad", stamp, body)}  # fmt: skip
    headers.pop(str(change.get("drop", "")), None)
    sent = body + b" " if change.get("tamper") else body
    before = webhook_stack.deliveries()
    with caplog.at_level("DEBUG"):
        answer = httpx.post(
            f"{webhook_stack.http_url}/webhooks/sandbox", content=sent, headers=headers
        )
    assert answer.status_code == status
    assert webhook_stack.deliveries() == before
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert webhook_stack.secret not in logged and "sbx_pay_x" not in logged


def test_malformed_oversized_and_unknown_deliveries_get_clear_4xx(
    webhook_stack: WebhookStack,
) -> None:
    before = webhook_stack.deliveries()
    assert webhook_stack.post(b"{not json").status_code == 400
    big = b'{"x":"' + b"a" * (1024 * 1024) + b'"}'
    assert webhook_stack.post(big).status_code == 413
    assert httpx.post(f"{webhook_stack.http_url}/webhooks/paypal", content=b"{}").status_code == 404
    assert webhook_stack.deliveries() == before
    assert httpx.get(f"{webhook_stack.http_url}/healthz").status_code == 200
    assert httpx.get(f"{webhook_stack.http_url}/readyz").status_code == 200


def _signed_post(stack: WebhookStack, path: str, event_id: str) -> httpx.Response:
    """A genuine delivery, signed with the stack's secret, posted to ``path`` as given."""
    from adapters.sandbox import sign_standard_webhook

    payment = {"id": "sbx_pay_p", "reference": "", "amount": 1, "currency": "USD",
               "status": "authorized", "idempotency_key": "k"}  # fmt: skip
    body = sandbox_event("payment.authorized", payment, event_id=event_id)
    stamp = int(time.time())
    headers = {"webhook-id": event_id, "webhook-timestamp": str(stamp),
               "webhook-signature": sign_standard_webhook(stack.secret, event_id, stamp, body)}  # fmt: skip
    return httpx.post(f"{stack.http_url}{path}", content=body, headers=headers)


@pytest.mark.parametrize(
    "path", ["/webhooks/sandbox?source=x", "/webhooks/sandbox/", "/webhooks/sandbox/?source=x"]
)
def test_a_query_string_or_one_trailing_slash_still_reaches_the_providers_endpoint(
    webhook_stack: WebhookStack, path: str
) -> None:
    before = webhook_stack.deliveries()
    answer = _signed_post(webhook_stack, path, "evt_path_1")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"stored": 1, "duplicates": 0}
    assert webhook_stack.deliveries() == before + 1


@pytest.mark.parametrize(
    "path", ["/webhooks/sandbox/extra", "/webhooks/sandbox//", "/webhooks/?p=sandbox", "/webhooks/"]
)
def test_any_other_path_under_webhooks_is_an_unknown_endpoint(
    webhook_stack: WebhookStack, path: str
) -> None:
    before = webhook_stack.deliveries()
    answer = _signed_post(webhook_stack, path, "evt_path_2")
    assert (answer.status_code, answer.json()) == (404, {"error": "unknown webhook endpoint"})
    assert webhook_stack.deliveries() == before


def test_health_and_readiness_answer_with_a_query_string_or_a_trailing_slash(
    webhook_stack: WebhookStack,
) -> None:
    for path in ("/healthz?probe=k8s", "/healthz/", "/readyz?probe=k8s", "/readyz/"):
        assert httpx.get(f"{webhook_stack.http_url}{path}").status_code == 200, path
    assert httpx.get(f"{webhook_stack.http_url}/healthz/extra").status_code == 404


def test_a_rotated_secret_accepts_the_old_and_the_new(database_url: str, tmp_path: object) -> None:
    from pathlib import Path

    from adapters.sandbox import new_webhook_secret, sign_standard_webhook
    from orchestrator.bootstrap import webhook_verifiers
    from orchestrator.ports import WebhookRejected
    from orchestrator.webhooks.intake import WebhookIntake

    old, new, other = new_webhook_secret(), new_webhook_secret(), new_webhook_secret()
    folder = Path(str(tmp_path))
    (folder / "new").write_text(new)
    (folder / "old").write_text(old)
    (folder / "providers.toml").write_text(
        '[providers.sandbox]\ntype = "sandbox"\nbase_url = "http://127.0.0.1:9"\n'
        f'webhook_secret_file = "{folder / "new"}"\nwebhook_secret_previous_file = "{folder / "old"}"\n'
        '[routes]\n"*" = ["sandbox"]\n'
    )
    config = load_configuration(str(folder / "providers.toml"), None)
    app = build_payments(database_url, config.router)
    try:
        intake = WebhookIntake(app, webhook_verifiers(config.router))
        body = sandbox_event(
            "payment.authorized",
            {
                "id": "sbx_pay_r",
                "reference": "",
                "amount": 1,
                "currency": "USD",
                "status": "authorized",
                "idempotency_key": "k",
            },
        )
        for i, secret in enumerate((old, new)):
            stamp = int(time.time())
            headers = {"webhook-id": f"evt_r{i}", "webhook-timestamp": str(stamp),
                       "webhook-signature": sign_standard_webhook(secret, f"evt_r{i}", stamp, body)}  # fmt: skip
            assert intake.receive("sandbox", headers, body).stored == 1
        stamp = int(time.time())
        headers = {"webhook-id": "evt_r9", "webhook-timestamp": str(stamp),
                   "webhook-signature": sign_standard_webhook(other, "evt_r9", stamp, body)}  # fmt: skip
        with pytest.raises(WebhookRejected):
            intake.receive("sandbox", headers, body)
    finally:
        app.close()


def test_adyen_notifications_are_verified_per_item_and_answered_accepted(
    database_url: str, tmp_path: object
) -> None:
    from pathlib import Path

    from adapters.adyen.transformers import hmac_signature
    from orchestrator.bootstrap import webhook_verifiers
    from orchestrator.webhooks.http import HttpServer
    from orchestrator.webhooks.intake import WebhookIntake

    key = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
    folder = Path(str(tmp_path))
    (folder / "hmac").write_text(key)
    (folder / "api").write_text("test-api-key")
    (folder / "providers.toml").write_text(
        '[providers.adyen-eu]\ntype = "adyen"\nbase_url = "http://127.0.0.1:9"\n'
        f'api_key_file = "{folder / "api"}"\nmerchant_account = "TestMerchant"\n'
        'return_url = "https://example.com/r"\n'
        f'webhook_secret_file = "{folder / "hmac"}"\n[routes]\n"*" = ["adyen-eu"]\n'
    )
    config = load_configuration(str(folder / "providers.toml"), None)
    app = build_payments(database_url, config.router)
    http = HttpServer(
        "127.0.0.1:0", WebhookIntake(app, webhook_verifiers(config.router)), ready=lambda: True
    ).start()
    try:
        item = {
            "pspReference": "7914073381342284", "merchantReference": "TestPayment-1407325143704",
            "merchantAccountCode": "TestMerchant", "amount": {"currency": "EUR", "value": 1130},
            "eventCode": "AUTHORISATION", "success": "true", "additionalData": {},
        }  # fmt: skip
        item["additionalData"] = {"hmacSignature": hmac_signature(item, key)}
        body = json.dumps(
            {"live": "false", "notificationItems": [{"NotificationRequestItem": item}]}
        )
        url = f"http://127.0.0.1:{http.port}/webhooks/adyen"
        answer = httpx.post(
            url, content=body.encode(), headers={"content-type": "application/json"}
        )
        assert (answer.status_code, answer.text) == (200, "[accepted]")
        tampered = body.replace("1130", "1131").encode()
        assert httpx.post(url, content=tampered).status_code == 401
        processed = WebhookProcessor(app).run_once()
        assert processed == 1  # stored once; our store knows no such payment: kept, unmatched
    finally:
        http.stop()
        app.close()


# --- a provider's event changes only its own attempts -------------------------------------

STRIPE_WEBHOOK_SECRET = "whsec_payorch_e2e_0123456789abcdef"


@dataclass
class SandboxAndStripe:
    """payorch configured with a sandbox and a Stripe provider, Stripe's webhooks verified
    at ``POST /webhooks/stripe``; the test runs the processor."""

    running: Configured
    sandbox: SandboxServer
    http_url: str
    processor: WebhookProcessor

    def post_stripe(self, event_id: str, kind: str, intent: dict[str, object]) -> httpx.Response:
        stamp = int(time.time())
        body = json.dumps(
            {"id": event_id, "object": "event", "type": kind, "api_version": "2024-06-20",
             "data": {"object": intent}, "livemode": False, "created": stamp}
        ).encode()  # fmt: skip
        # Stripe's v1 scheme, written out independently of the adapter under test.
        v1 = hmac.new(
            STRIPE_WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256
        ).hexdigest()
        headers = {"stripe-signature": f"t={stamp},v1={v1}", "content-type": "application/json"}
        return httpx.post(f"{self.http_url}/webhooks/stripe", content=body, headers=headers)

    def payment(self, payment_id: str) -> pb.Payment:
        found: pb.Payment = self.running.stub.GetPayment(
            pb.GetPaymentRequest(payment_id=payment_id)
        )
        return found

    def recorded(self, payment_id: str) -> list[pb.PaymentEvent]:
        request = pb.ListPaymentEventsRequest(payment_id=payment_id)
        return list(self.running.stub.ListPaymentEvents(request).events)

    def authorizations_held_by_the_sandbox(self) -> list[dict[str, object]]:
        entries = httpx.get(f"{self.sandbox.url}/_sandbox/ledger").json()["entries"]
        return [e for e in entries if e["kind"] == "authorization"]


def _provider_table(name: str, kind: str, url: str, extra: str = "") -> str:
    return (
        f'[providers.{name}]\ntype = "{kind}"\nbase_url = "{url}"\ntimeout = 1.0\n'
        f"attempt_timeout = 0.4\n{extra}"
        f"[providers.{name}.retry]\nbase = 0.02\nmax = 0.1\nmax_attempts = 3\n"
    )


@pytest.fixture
def sandbox_and_stripe(
    serve: ServerFactory, sandbox: SandboxServer, tmp_path: Path
) -> Iterator[Callable[[list[str]], SandboxAndStripe]]:
    """Builds the stack with US payments routed to ``route`` (provider names, in order).
    The Stripe provider's API is a closed port: it is never reached."""
    (tmp_path / "stripe-key").write_text("sk_test_payorch_e2e")
    (tmp_path / "stripe-whsec").write_text(STRIPE_WEBHOOK_SECRET)
    servers: list[HttpServer] = []

    def build(route: list[str]) -> SandboxAndStripe:
        stripe = _provider_table(
            "stripe-us",
            "stripe",
            f"http://127.0.0.1:{free_port()}",
            f'secret_key_file = "{tmp_path / "stripe-key"}"\n'
            f'webhook_secret_file = "{tmp_path / "stripe-whsec"}"\n',
        )
        routes = "[routes]\nUS = [" + ", ".join(f'"{name}"' for name in route) + "]\n"
        running = serve(_provider_table("sandbox", "sandbox", sandbox.url) + stripe + routes)
        intake = WebhookIntake(running.app, webhook_verifiers(running.app.router))
        http = HttpServer("127.0.0.1:0", intake, ready=lambda: True).start()
        servers.append(http)
        return SandboxAndStripe(
            running, sandbox, f"http://127.0.0.1:{http.port}", WebhookProcessor(running.app)
        )

    try:
        yield build
    finally:
        for http in servers:
            http.stop()


def _failed_intent(metadata: dict[str, str]) -> dict[str, object]:
    return {
        "id": "pi_3LateFailure", "object": "payment_intent", "amount": 1000, "currency": "usd",
        "capture_method": "manual", "status": "requires_payment_method", "metadata": metadata,
        "last_payment_error": {"type": "card_error", "code": "card_declined",
                               "decline_code": "generic_decline",
                               "message": "Your card was declined."},
    }  # fmt: skip


def _in_doubt_at_the_sandbox(stack: SandboxAndStripe, key: str) -> pb.Payment:
    """A payment whose sandbox authorization timed out: the sandbox, hung, charges later."""
    stack.sandbox.state.update_faults({"timeout_rate": 1.0, "hang_ms": 1500})
    payment: pb.Payment = stack.running.stub.CreatePayment(create_request(key))
    stack.sandbox.state.update_faults({"timeout_rate": 0.0})
    assert payment.status == pb.PAYMENT_STATUS_PROCESSING
    assert payment.provider == "sandbox"
    return payment


def _resolved_by_asking_the_sandbox(stack: SandboxAndStripe, payment_id: str) -> pb.Payment:
    app = stack.running.app
    wait_for(lambda: app.lookup_due(app.get_payment(payment_id)))  # the lease is over
    app.resolve(app.get_payment(payment_id).id)
    return stack.payment(payment_id)


def test_a_stripe_event_naming_a_sandbox_payment_changes_nothing(
    sandbox_and_stripe: Callable[[list[str]], SandboxAndStripe],
) -> None:
    stack = sandbox_and_stripe(["sandbox"])
    payment = _in_doubt_at_the_sandbox(stack, "foreign-event")
    answer = stack.post_stripe(
        "evt_foreign_failure",
        "payment_intent.payment_failed",
        _failed_intent({"payment_id": payment.payment_id}),
    )
    assert answer.status_code == 200  # genuine, so stored and acknowledged
    assert stack.processor.run_once() == 1
    after = stack.payment(payment.payment_id)
    assert after.status == pb.PAYMENT_STATUS_PROCESSING
    recorded = stack.recorded(payment.payment_id)
    assert "OperationDeclined" not in [e.type for e in recorded]
    (received,) = [json.loads(e.data) for e in recorded if e.type == "ProviderEventReceived"]
    assert received["provider"] == "stripe-us"
    assert received["effect"] == "operation 1 is at sandbox, not stripe-us: unchanged"
    # The sandbox does hold the authorization: asking it settles the payment.
    resolved = _resolved_by_asking_the_sandbox(stack, payment.payment_id)
    assert resolved.status == pb.PAYMENT_STATUS_AUTHORIZED
    (held,) = stack.authorizations_held_by_the_sandbox()
    assert held["payment"] == resolved.provider_reference


def test_the_first_providers_late_failure_never_declines_what_the_fallback_authorized(
    sandbox_and_stripe: Callable[[list[str]], SandboxAndStripe],
) -> None:
    stack = sandbox_and_stripe(["stripe-us", "sandbox"])
    payment = _in_doubt_at_the_sandbox(stack, "failed-over")
    (op,) = payment.operations
    assert (op.attempt, op.provider) == (2, "sandbox")
    first_attempt = f"{payment.payment_id}:1:authorize:1"
    assert "FailedOver" in [e.type for e in stack.recorded(payment.payment_id)]
    answer = stack.post_stripe(
        "evt_first_attempt_failed",
        "payment_intent.payment_failed",
        _failed_intent({"payment_id": payment.payment_id, "payorch_key": first_attempt}),
    )
    assert answer.status_code == 200
    assert stack.processor.run_once() == 1
    assert stack.payment(payment.payment_id).status == pb.PAYMENT_STATUS_PROCESSING
    recorded = stack.recorded(payment.payment_id)
    assert "OperationDeclined" not in [e.type for e in recorded]
    (received,) = [json.loads(e.data) for e in recorded if e.type == "ProviderEventReceived"]
    assert received["effect"] == (
        "attempt 1 of operation 1 was superseded by attempt 2 at sandbox: unchanged"
    )
    resolved = _resolved_by_asking_the_sandbox(stack, payment.payment_id)
    assert (resolved.status, resolved.provider) == (pb.PAYMENT_STATUS_AUTHORIZED, "sandbox")
    (held,) = stack.authorizations_held_by_the_sandbox()
    assert held["payment"] == resolved.provider_reference
