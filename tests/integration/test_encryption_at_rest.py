"""Personal data is encrypted at rest, on SQLite and PostgreSQL: a Razorpay-signed webhook
posted to the real HTTP intake and a payment created over real gRPC with metadata leave no
customer data in any stored byte; keys rotate, and old, new and clear events all read and
verify; a retired key that is still needed is a clear error."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest

from adapters.sandbox import SandboxServer
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc
from orchestrator.api.server import create_server
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_configuration, webhook_verifiers
from orchestrator.cli import main
from orchestrator.domain.webhook import WebhookDelivery, delivery_id
from orchestrator.encryption import KEYS_VARIABLE, key_id_of, missing_key, new_key
from orchestrator.store import parse_database_url
from orchestrator.webhooks.http import HttpServer
from orchestrator.webhooks.intake import WebhookIntake
from tests.e2e.helpers import create_request

pytestmark = pytest.mark.timeout(120)

RAZORPAY_SECRET = "rzp-webhook-secret-for-the-encryption-test"
EMAIL = "priya.sharma.7731@example.in"
PHONE = "+919812345678"
METADATA = {"customer_email": "li.wei.4410@example.cn", "shipping_note": "leave at door 7B"}
VECTOR = (
    Path(__file__).parents[1] / "adapters" / "data" / "razorpay_payment_authorized_webhook.json"
)


def razorpay_body(event_number: int) -> bytes:
    """razorpay-python's published payment.authorized delivery, with a customer of our own."""
    text = VECTOR.read_text().replace("a@b.com", EMAIL).replace("+919999999999", PHONE)
    return text.replace("pay_6koWN7bvxujzxM", f"pay_Enc{event_number:011d}").encode()


@dataclass
class Stack:
    app: Payments
    stub: payments_pb2_grpc.PaymentOrchestratorStub
    http_url: str

    def post_razorpay(self, body: bytes, event_id: str) -> httpx.Response:
        signature = hmac.new(RAZORPAY_SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers = {"x-razorpay-signature": signature, "x-razorpay-event-id": event_id}
        return httpx.post(f"{self.http_url}/webhooks/razorpay", content=body, headers=headers)

    def create(self, key: str) -> pb.Payment:
        return self.stub.CreatePayment(create_request(key, metadata=METADATA))


@pytest.fixture
def serve(
    database_url: str, sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[object]:
    """``serve(keys)``: payorch (gRPC and the webhook intake) on the test's store, with
    PAYORCH_ENCRYPTION_KEYS set to ``keys``; each call stops the previous one first."""
    monkeypatch.setenv("RZP_KEY_ID", "rzp_test_encryption")
    monkeypatch.setenv("RZP_KEY_SECRET", "rzp-key-secret-for-the-encryption-test")
    monkeypatch.setenv("RZP_WEBHOOK_SECRET", RAZORPAY_SECRET)
    config_path = tmp_path / "providers.toml"
    config_path.write_text(
        f'[providers.sandbox]\ntype = "sandbox"\nbase_url = "{sandbox.url}"\n'
        '[providers.razorpay-in]\ntype = "razorpay"\nbase_url = "http://127.0.0.1:9"\n'
        'key_id_env = "RZP_KEY_ID"\nkey_secret_env = "RZP_KEY_SECRET"\n'
        'webhook_secret_env = "RZP_WEBHOOK_SECRET"\n'
        '[routes]\n"*" = ["sandbox"]\n'
    )
    running: list[tuple[Payments, grpc.Server, HttpServer, grpc.Channel]] = []

    def stop() -> None:
        while running:
            app, server, http, channel = running.pop()
            channel.close()
            http.stop()
            server.stop(grace=1)
            app.close()

    def start(keys: str) -> Stack:
        stop()
        monkeypatch.setenv(KEYS_VARIABLE, keys)
        config = load_configuration(str(config_path), None)
        app = build_payments(database_url, config.router)
        server = create_server("127.0.0.1:0", app, max_workers=8)
        server.start()
        http = HttpServer("127.0.0.1:0", WebhookIntake(app, webhook_verifiers(config.router)),
                          ready=lambda: True).start()  # fmt: skip
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        running.append((app, server, http, channel))  # type: ignore[arg-type]
        stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)
        return Stack(app, stub, f"http://127.0.0.1:{http.port}")

    try:
        yield start
    finally:
        stop()


def stored_bytes(database_url: str) -> bytes:
    """Every value of every row of every table of the store, as the database holds it."""
    store = parse_database_url(database_url)
    values: list[object] = []
    if store.kind == "sqlite":
        with sqlite3.connect(store.env["SQLITE_DBNAME"]) as conn:
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    values.extend(row)
    else:
        with psycopg.connect(**store.conninfo) as conn:  # type: ignore[arg-type]
            tables = [r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )]  # fmt: skip
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    values.extend(row)
    return b"\n".join(v if isinstance(v, bytes) else str(v).encode() for v in values)


def needles(body: bytes) -> dict[str, bytes]:
    """The customer's data in every form the store could hold it: as sent, and the delivery
    body as the intake records it (base64)."""
    return {
        "email": EMAIL.encode(),
        "phone": PHONE.encode(),
        "body (base64)": base64.b64encode(body),
        **{f"metadata {k}": v.encode() for k, v in METADATA.items()},
    }


def stored_states(app: Payments, aggregate_id: object) -> list[bytes]:
    return [e.state for e in app.recorder.select_events(aggregate_id)]  # type: ignore[arg-type]


def test_no_personal_data_is_stored_in_clear(
    serve: object, database_url: str, sandbox: SandboxServer
) -> None:
    stack = serve(new_key("k1"))  # type: ignore[operator]
    payment = stack.create("encrypted-create")
    body = razorpay_body(1)
    answer = stack.post_razorpay(body, "evt_Enc1")
    assert (answer.status_code, answer.json()) == (200, {"stored": 1, "duplicates": 0})
    # Read through the cipher, everything is there...
    assert dict(stack.stub.GetPayment(pb.GetPaymentRequest(payment_id=payment.payment_id))
                .metadata) == METADATA  # fmt: skip
    (received,) = stack.app.events.get(delivery_id("razorpay", "evt_Enc1"))
    assert isinstance(received, WebhookDelivery.Received)
    assert base64.b64decode(received.body) == body
    # ...and as stored, every state is sealed under k1 and none of it is readable.
    for aggregate in (received.originator_id, payment.payment_id):
        states = stored_states(stack.app, parse_id(aggregate))
        assert states and {key_id_of(s) for s in states} == {"k1"}
    raw = stored_bytes(database_url)
    found = [name for name, needle in needles(body).items() if needle in raw]
    assert found == []


def test_the_scan_finds_the_same_data_when_no_key_is_configured(
    serve: object, database_url: str
) -> None:
    # The control of the test above: without keys the very same scan finds every needle.
    stack = serve("")  # type: ignore[operator]
    stack.create("clear-create")
    body = razorpay_body(2)
    assert stack.post_razorpay(body, "evt_Clear2").status_code == 200
    raw = stored_bytes(database_url)
    assert [name for name, needle in needles(body).items() if needle not in raw] == [
        "email",  # inside the base64 body, never in clear
        "phone",
    ]


def test_after_rotations_clear_old_and_new_events_read_and_verify(
    serve: object, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("PAYORCH_AUDIT_CHAIN_KEY", "chain-key-for-the-encryption-test")
    k1, k2 = new_key("k1"), new_key("k2")
    written = {}
    for era, keys in (("clear", ""), ("k1", k1), ("k2", f"{k2},{k1}")):
        stack = serve(keys)  # type: ignore[operator]
        payment = stack.create(f"create-{era}")
        stack.stub.CapturePayment(pb.CapturePaymentRequest(
            idempotency_key=f"capture-{era}", payment_id=payment.payment_id))  # fmt: skip
        assert stack.post_razorpay(razorpay_body(len(written)), f"evt_{era}").status_code == 200
        written[era] = payment.payment_id
    # The last server holds k2 (current) and k1: every era reads, each as it was stored.
    for era, payment_id in written.items():
        states = stored_states(stack.app, parse_id(payment_id))
        assert {key_id_of(s) for s in states} == {None if era == "clear" else era}
        events = stack.stub.ListPaymentEvents(pb.ListPaymentEventsRequest(payment_id=payment_id))
        assert "Captured" in [e.type for e in events.events]
        assert json.loads(events.events[0].data)["metadata"] == METADATA
    stack.app.close()
    # The audit tools read through the cipher; verify checks the chain over the stored bytes.
    capsys.readouterr()
    assert main(["audit", "verify", "--database-url", database_url]) == 0
    assert "no findings" in capsys.readouterr().out
    assert main(["audit", "show", written["k1"], "--database-url", database_url]) == 0
    assert "Captured" in capsys.readouterr().out
    out = tmp_path / "export.jsonl"
    assert main(["audit", "export", "--database-url", database_url, "--format", "jsonl",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    requested = [r["data"]["metadata"] for r in exported if r["type"] == "Requested"]
    assert requested == [METADATA] * 3


def test_a_stored_key_id_without_its_key_is_a_clear_error(
    serve: object, database_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    k1, k2 = new_key("k1"), new_key("k2")
    serve(k1).create("under-k1")  # type: ignore[operator]
    stack = serve(f"{k2},{k1}")  # type: ignore[operator]
    payment = stack.create("under-k2")
    stack.app.close()
    # k1 retired too soon: reading the k1 event names the key id that is missing.
    monkeypatch.setenv(KEYS_VARIABLE, k2)
    capsys.readouterr()
    code = main(["audit", "verify", "--database-url", database_url])
    output = capsys.readouterr()
    assert code == 2, output
    error = output.err
    assert "payorch audit verify:" in error
    assert "key id 'k1'" in error and KEYS_VARIABLE in error
    assert k1.split(":")[1] not in error and k2.split(":")[1] not in error
    app = build_payments(database_url, stack.app.router)
    try:
        assert app.get_payment(payment.payment_id).id  # k2's events still read
        with pytest.raises(Exception) as caught:
            list(app.event_pages())
        assert "key id 'k1'" in str(missing_key(caught.value))
    finally:
        app.close()


def parse_id(value: object) -> object:
    from uuid import UUID

    return value if isinstance(value, UUID) else UUID(str(value))
