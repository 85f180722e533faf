"""The sandbox sends signed webhooks (Standard Webhooks) for what it does: real HTTP on loopback,
from the sandbox's background sender to a tiny recording receiver.

Signatures are checked with an HMAC computed here, independently of the sandbox's signer, and
pinned by the official Standard Webhooks test vector.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import random
import re
import signal
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from adapters.sandbox import SandboxServer
from adapters.sandbox import server as sandbox_module
from adapters.sandbox.server import WebhookSettings, run_sandbox
from tests.adapters.sandbox_process import sandbox_process, stderr_until

TLS = ssl.create_default_context()
# the key of the official Standard Webhooks test vector (24 bytes)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
EVENT_ID = re.compile(r"evt_[0-9a-f]{24}")
DISPUTE_ID = re.compile(r"sbx_dp_[0-9a-f]{24}")
FAST = {"initial_delay_ms": 20, "max_delay_ms": 200, "timeout_ms": 500}
NO_STATS = {"sent": 0, "delivered": 0, "failed_attempts": 0, "pending": 0, "gave_up": 0}


def standard_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """Standard Webhooks v1, written out here so that the test does not trust the sender."""
    key = base64.b64decode(secret[len("whsec_") :])
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def test_the_test_signature_matches_the_official_vector() -> None:
    signature = standard_signature(
        SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", b'{"test": 2432232314}'
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# --- the receiver -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.monotonic() on arrival
    status: int  # what the receiver answered

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event

    def verify(self, secret: str = SECRET) -> dict[str, Any]:
        """The event, after checking headers and signature exactly as a receiver would."""
        assert self.headers["content-type"] == "application/json"
        msg_id = self.headers["webhook-id"]
        timestamp = self.headers["webhook-timestamp"]
        assert timestamp.isdigit()
        expected = standard_signature(secret, msg_id, timestamp, self.body)
        assert hmac.compare_digest(self.headers["webhook-signature"], expected)
        event = self.event
        assert event["id"] == msg_id
        assert EVENT_ID.fullmatch(msg_id)
        # compact JSON, and the bytes signed are the bytes sent
        assert self.body == json.dumps(event, separators=(",", ":")).encode()
        return event


class _ReceiverHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # no getfqdn(), which can stall offline
        self.server_name, self.server_port = "127.0.0.1", int(self.server_address[1])


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: _ReceiverHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        receiver = self.server.receiver
        status, hang = receiver.answer_for(headers, body)
        if hang:
            receiver.released.wait(5)
        with contextlib.suppress(OSError):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()


class Receiver:
    """A webhook endpoint on 127.0.0.1: records every delivery; answers 500 to the first
    ``fail_first`` and, when told, hangs (until closed) on the first ``hang_first``."""

    def __init__(self, *, fail_first: int = 0, hang_first: int = 0, ok_status: int = 200) -> None:
        self.fail_first = fail_first
        self.hang_first = hang_first
        self.ok_status = ok_status
        self.released = threading.Event()
        self._received: list[Received] = []
        self._changed = threading.Condition()
        self._httpd = _ReceiverHTTPServer(("127.0.0.1", 0), _ReceiverHandler)
        self._httpd.receiver = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/webhooks/sandbox"

    def answer_for(self, headers: dict[str, str], body: bytes) -> tuple[int, bool]:
        with self._changed:
            number = len(self._received)
            hang = number < self.hang_first
            status = 500 if number < self.fail_first else self.ok_status
            self._received.append(Received(headers, body, time.monotonic(), status))
            self._changed.notify_all()
        return status, hang

    @property
    def received(self) -> list[Received]:
        with self._changed:
            return list(self._received)

    def wait(self, count: int, within: float = 1.0) -> list[Received]:
        """The first ``count`` deliveries (attempts, failed ones included)."""
        with self._changed:
            ok = self._changed.wait_for(lambda: len(self._received) >= count, within)
            assert ok, f"expected {count} deliveries, got {len(self._received)}"
            return list(self._received[:count])

    def delivered(self, count: int, within: float = 1.0) -> list[dict[str, Any]]:
        """The verified events of the first ``count`` successful deliveries, in arrival order."""
        deadline = time.monotonic() + within
        with self._changed:
            while True:
                ok = [r for r in self._received if 200 <= r.status < 300]
                if len(ok) >= count:
                    return [r.verify() for r in ok[:count]]
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"expected {count} delivered events, got {len(ok)}"
                self._changed.wait(remaining)

    def close(self) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def sandbox(receiver: Receiver) -> Iterator[SandboxServer]:
    with SandboxServer() as server:
        server.configure_webhooks(receiver.url, SECRET, **FAST)
        yield server


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=2.0, verify=TLS) as http:
        yield http


def post(client: httpx.Client, path: str, body: Any = None, key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    response = client.post(path, json=body if body is not None else {}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def create(client: httpx.Client, key: str | None = None, **overrides: Any) -> dict[str, Any]:
    body = {
        "amount": 1000,
        "currency": "USD",
        "payment_method": "pm_card_visa",
        "reference": "pay_1",
        "metadata": {"order_reference": "order-1"},
        **overrides,
    }
    payment: dict[str, Any] = post(client, "/v1/payments", body, key)
    return payment


def fetch(client: httpx.Client, payment_id: str) -> dict[str, Any]:
    payment: dict[str, Any] = client.get(f"/v1/payments/{payment_id}").json()
    return payment


def ledger_kinds(client: httpx.Client) -> list[tuple[str, int]]:
    entries = client.get("/_sandbox/ledger").json()["entries"]
    return [(entry["kind"], entry["amount"]) for entry in entries]


def wait_for(condition: Callable[[], bool], within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def settled(sandbox: SandboxServer) -> Callable[[], bool]:
    return lambda: sandbox.state.webhook_stats()["pending"] == 0


def assert_quiet(receiver: Receiver, count: int, for_s: float = 0.1) -> None:
    time.sleep(for_s)
    assert len(receiver.received) == count


# --- each event type --------------------------------------------------------------------------


def test_authorization_sends_payment_authorized(client: httpx.Client, receiver: Receiver) -> None:
    payment = create(client, key="k-auth")
    [event] = receiver.delivered(1)
    assert event["type"] == "payment.authorized"
    assert event["data"] == {"payment": fetch(client, payment["id"])}
    assert event["data"]["payment"]["status"] == "authorized"
    assert abs(event["created"] - time.time()) < 5
    [delivery] = receiver.received
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 5
    assert delivery.headers["webhook-signature"].startswith("v1,")


def test_automatic_capture_sends_authorized_then_captured(
    client: httpx.Client, receiver: Receiver
) -> None:
    payment = create(client, key="k-auto", capture=True)
    authorized, captured = receiver.delivered(2)
    assert (authorized["type"], captured["type"]) == ("payment.authorized", "payment.captured")
    assert authorized["id"] != captured["id"]
    # each tells the payment as it was right after its own step
    assert authorized["data"]["payment"]["status"] == "authorized"
    assert authorized["data"]["payment"]["captures"] == []
    assert captured["data"]["payment"] == fetch(client, payment["id"]) == payment
    assert captured["data"]["capture"] == payment["captures"][0]
    assert captured["data"]["capture"]["idempotency_key"] == "k-auto"


def test_decline_sends_payment_declined(client: httpx.Client, receiver: Receiver) -> None:
    response = client.post(
        "/v1/payments",
        json={"amount": 500, "currency": "EUR", "payment_method": "pm_card_declined"},
    )
    assert response.status_code == 402
    payment_id = response.json()["error"]["payment"]["id"]
    [event] = receiver.delivered(1)
    assert event["type"] == "payment.declined"
    assert event["data"] == {"payment": fetch(client, payment_id)}
    assert event["data"]["payment"]["decline_code"] == "card_declined"


def test_capture_sends_payment_captured_with_the_capture_made(
    client: httpx.Client, receiver: Receiver
) -> None:
    payment = create(client)
    post(client, f"/v1/payments/{payment['id']}/capture", {"amount": 300}, "k-cap-1")
    after = post(client, f"/v1/payments/{payment['id']}/capture", {"amount": 200}, "k-cap-2")
    _, first, second = receiver.delivered(3)
    assert [first["type"], second["type"]] == ["payment.captured", "payment.captured"]
    assert first["data"]["capture"] == after["captures"][0]
    assert first["data"]["payment"]["amount_captured"] == 300
    assert second["data"] == {"payment": after, "capture": after["captures"][1]}
    assert second["data"]["capture"]["idempotency_key"] == "k-cap-2"


def test_void_sends_payment_voided(client: httpx.Client, receiver: Receiver) -> None:
    payment = create(client)
    voided = post(client, f"/v1/payments/{payment['id']}/void", {}, "k-void")
    _, event = receiver.delivered(2)
    assert event["type"] == "payment.voided"
    assert event["data"] == {"payment": voided}
    assert event["data"]["payment"]["void"]["idempotency_key"] == "k-void"


def test_refund_sends_refund_succeeded(client: httpx.Client, receiver: Receiver) -> None:
    payment = create(client, capture=True)
    refund = post(client, f"/v1/payments/{payment['id']}/refunds", {"amount": 400}, "k-re")
    *_, event = receiver.delivered(3)
    assert event["type"] == "refund.succeeded"
    assert event["data"] == {"payment": fetch(client, payment["id"]), "refund": refund}
    assert event["data"]["payment"]["amount_refunded"] == 400


# --- disputes ---------------------------------------------------------------------------------


def test_dispute_opened_then_lost(client: httpx.Client, receiver: Receiver) -> None:
    payment = create(client, capture=True, amount=2500)
    dispute = post(client, f"/_sandbox/payments/{payment['id']}/dispute", {"reason": "fraudulent"})
    assert DISPUTE_ID.fullmatch(dispute["id"])
    assert {k: v for k, v in dispute.items() if k not in ("id", "created")} == {
        "object": "dispute",
        "payment": payment["id"],
        "amount": 2500,  # all captured, by default
        "currency": "USD",
        "reason": "fraudulent",
        "status": "open",
    }
    assert ledger_kinds(client) == [("authorization", 2500), ("capture", 2500), ("dispute", 2500)]
    *_, opened = receiver.delivered(3)
    assert opened["type"] == "dispute.opened"
    assert opened["data"] == {"payment": fetch(client, payment["id"]), "dispute": dispute}

    closed = post(client, f"/_sandbox/disputes/{dispute['id']}/close", {"outcome": "lost"})
    assert closed == {**dispute, "status": "lost"}
    *_, event = receiver.delivered(4)
    assert event["type"] == "dispute.closed"
    assert event["data"] == {"payment": fetch(client, payment["id"]), "dispute": closed}
    assert ledger_kinds(client)[-1] == ("dispute", 2500)  # lost: the money stays gone


def test_dispute_won_reverses_it_in_the_ledger(
    sandbox: SandboxServer, client: httpx.Client, receiver: Receiver
) -> None:
    payment = create(client, capture=True, amount=2500)
    dispute = post(client, f"/_sandbox/payments/{payment['id']}/dispute", {"amount": 1000})
    assert (dispute["amount"], dispute["reason"]) == (1000, "general")
    closed = post(client, f"/_sandbox/disputes/{dispute['id']}/close", {"outcome": "won"})
    assert closed["status"] == "won"
    assert ledger_kinds(client)[-2:] == [("dispute", 1000), ("dispute_reversal", 1000)]
    *_, event = receiver.delivered(4)
    assert (event["type"], event["data"]["dispute"]) == ("dispute.closed", closed)
    assert sandbox.state.disputes() == [closed]


def test_dispute_refusals(client: httpx.Client, receiver: Receiver) -> None:
    authorized = create(client)
    captured = create(client, capture=True, amount=1000)
    cases: list[tuple[str, Any, int]] = [
        (f"/_sandbox/payments/{authorized['id']}/dispute", {}, 400),  # nothing captured
        ("/_sandbox/payments/sbx_pay_nope/dispute", {}, 404),
        (f"/_sandbox/payments/{captured['id']}/dispute", {"amount": 1001}, 400),
        (f"/_sandbox/payments/{captured['id']}/dispute", {"amount": -1}, 400),
        (f"/_sandbox/payments/{captured['id']}/dispute", {"reason": 7}, 400),
        (f"/_sandbox/payments/{captured['id']}/dispute", {"outcome": "won"}, 400),
        ("/_sandbox/disputes/sbx_dp_nope/close", {"outcome": "won"}, 404),
    ]
    for path, body, status in cases:
        assert client.post(path, json=body).status_code == status, (path, body)
    dispute = post(client, f"/_sandbox/payments/{captured['id']}/dispute", {"amount": 600})
    # only what is not already disputed can be disputed again
    rest = post(client, f"/_sandbox/payments/{captured['id']}/dispute", {})
    assert rest["amount"] == 400
    close = f"/_sandbox/disputes/{dispute['id']}/close"
    for body in ({}, {"outcome": "maybe"}, {"outcome": "won", "extra": 1}):
        assert client.post(close, json=body).status_code == 400, body
    post(client, close, {"outcome": "lost"})
    assert client.post(close, json={"outcome": "won"}).status_code == 400  # already closed
    types = [event["type"] for event in receiver.delivered(6)]
    assert types.count("dispute.opened") == 2
    assert types.count("dispute.closed") == 1


# --- delivery ---------------------------------------------------------------------------------


def test_retries_keep_the_id_and_recompute_timestamp_and_signature(
    monkeypatch: pytest.MonkeyPatch, client: httpx.Client, receiver: Receiver
) -> None:
    clock = itertools.count(1_700_000_000, 7)
    monkeypatch.setattr(sandbox_module, "_wall_clock", lambda: float(next(clock)))
    receiver.fail_first = 2
    create(client)
    attempts = receiver.wait(3)
    assert [a.status for a in attempts] == [500, 500, 200]
    assert len({a.headers["webhook-id"] for a in attempts}) == 1
    assert len({a.body for a in attempts}) == 1
    assert [a.headers["webhook-timestamp"] for a in attempts] == [
        "1700000000",
        "1700000007",
        "1700000014",
    ]
    assert len({a.headers["webhook-signature"] for a in attempts}) == 3
    for attempt in attempts:
        attempt.verify()


def test_a_receiver_failing_three_times_gets_the_fourth_after_backoff(
    sandbox: SandboxServer, client: httpx.Client, receiver: Receiver
) -> None:
    receiver.fail_first = 3
    create(client)
    attempts = receiver.wait(4)
    assert [a.status for a in attempts] == [500, 500, 500, 200]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]
    # 20 ms doubling, each jittered to between half and all of it
    for gap, base in zip(gaps, (0.020, 0.040, 0.080), strict=True):
        assert base / 2 - 0.002 <= gap <= base + 0.1, gaps
    wait_for(settled(sandbox))
    assert sandbox.state.webhook_stats() == {
        "sent": 1,
        "delivered": 1,
        "failed_attempts": 3,
        "pending": 0,
        "gave_up": 0,
    }


def test_gives_up_after_max_attempts(sandbox: SandboxServer, client: httpx.Client) -> None:
    failing = Receiver(fail_first=1000)
    try:
        sandbox.configure_webhooks(failing.url, SECRET, max_attempts=3, **FAST)
        create(client)
        attempts = failing.wait(3)
        assert len({a.headers["webhook-id"] for a in attempts}) == 1
        wait_for(lambda: sandbox.state.webhook_stats()["gave_up"] == 1)
        assert_quiet(failing, 3)
        assert sandbox.state.webhook_stats() == {
            "sent": 1,
            "delivered": 0,
            "failed_attempts": 3,
            "pending": 0,
            "gave_up": 1,
        }
    finally:
        failing.close()


def test_timeouts_and_refused_connections_are_retried(
    sandbox: SandboxServer, client: httpx.Client
) -> None:
    slow = Receiver(hang_first=1, ok_status=204)
    try:
        sandbox.configure_webhooks(slow.url, SECRET, initial_delay_ms=20, timeout_ms=100)
        create(client)
        first, second = slow.wait(2)
        assert second.at - first.at >= 0.1  # the first attempt timed out
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        wait_for(lambda: sandbox.state.webhook_stats()["delivered"] == 1)  # 204 is a 2xx
    finally:
        slow.close()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    sandbox.configure_webhooks(
        f"http://127.0.0.1:{closed_port}/hooks", SECRET, max_attempts=2, **FAST
    )
    create(client)
    wait_for(lambda: sandbox.state.webhook_stats()["gave_up"] == 1)
    assert sandbox.state.webhook_stats()["failed_attempts"] == 3


def test_a_failed_delivery_does_not_hold_back_later_events(
    client: httpx.Client, receiver: Receiver
) -> None:
    receiver.fail_first = 1
    create(client, capture=True)
    receiver.wait(3)
    # the authorization waits out its backoff while the capture goes ahead: reordered
    assert [r.event["type"] for r in receiver.received if r.status == 200] == [
        "payment.captured",
        "payment.authorized",
    ]


def test_a_dropped_response_still_sends_the_webhook(
    client: httpx.Client, receiver: Receiver
) -> None:
    client.put("/_sandbox/faults", json={"drop_after_processing_rate": 1})
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(
            "/v1/payments",
            json={"amount": 700, "currency": "USD", "payment_method": "pm_card_visa"},
            headers={"Idempotency-Key": "k-drop"},
        )
    [event] = receiver.delivered(1)
    assert event["type"] == "payment.authorized"
    assert event["data"]["payment"]["idempotency_key"] == "k-drop"
    assert event["data"]["payment"]["amount"] == 700


def test_replays_refusals_and_injected_errors_send_nothing(
    sandbox: SandboxServer, client: httpx.Client, receiver: Receiver
) -> None:
    payment = create(client, key="k-once")
    receiver.delivered(1)
    replay = client.post(
        "/v1/payments",
        json={
            "amount": 1000,
            "currency": "USD",
            "payment_method": "pm_card_visa",
            "reference": "pay_1",
            "metadata": {"order_reference": "order-1"},
        },
        headers={"Idempotency-Key": "k-once"},
    )
    assert replay.headers["idempotent-replayed"] == "true"
    refused = client.post(f"/v1/payments/{payment['id']}/refunds", json={})
    assert refused.status_code == 400
    client.put("/_sandbox/faults", json={"error_rate": 1})
    assert client.post(f"/v1/payments/{payment['id']}/void", json={}).status_code == 500
    assert_quiet(receiver, 1)
    assert sandbox.state.webhook_stats()["sent"] == 1


def test_stop_is_prompt_while_a_delivery_hangs() -> None:
    hanging = Receiver(hang_first=1000)
    try:
        server = SandboxServer().start()
        server.configure_webhooks(hanging.url, SECRET, timeout_ms=5000)
        with httpx.Client(base_url=server.url, verify=TLS) as http:
            create(http)
            create(http, capture=True)
        hanging.wait(1)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 0.5
        assert not [t for t in threading.enumerate() if "sandbox-webhooks" in t.name]
    finally:
        hanging.close()


# --- configuration over HTTP ------------------------------------------------------------------


def test_get_shows_the_settings_with_the_secret_masked(
    client: httpx.Client, receiver: Receiver
) -> None:
    response = client.get("/_sandbox/webhooks")
    assert response.status_code == 200
    assert SECRET not in response.text
    assert SECRET.removeprefix("whsec_") not in response.text
    assert response.json() == {
        "enabled": True,
        "url": receiver.url,
        "secret": "whsec_********",
        "max_attempts": 8,
        "initial_delay_ms": 20,
        "max_delay_ms": 200,
        "timeout_ms": 500,
        "stats": NO_STATS,
    }
    create(client)
    receiver.delivered(1)
    wait_for(lambda: client.get("/_sandbox/webhooks").json()["stats"]["delivered"] == 1)
    assert client.get("/_sandbox/webhooks").json()["stats"] == {
        **NO_STATS,
        "sent": 1,
        "delivered": 1,
    }


def test_put_replaces_the_settings_with_defaults_and_delete_disables(
    client: httpx.Client, receiver: Receiver
) -> None:
    response = client.put("/_sandbox/webhooks", json={"url": receiver.url, "secret": OTHER_SECRET})
    assert response.status_code == 200
    assert OTHER_SECRET not in response.text
    shown = response.json()
    assert {k: shown[k] for k in ("max_attempts", "initial_delay_ms", "max_delay_ms")} == {
        "max_attempts": 8,
        "initial_delay_ms": 200,
        "max_delay_ms": 30000,
    }
    assert shown["timeout_ms"] == 5000
    create(client)
    [delivery] = receiver.wait(1)
    delivery.verify(OTHER_SECRET)
    wait_for(lambda: client.get("/_sandbox/webhooks").json()["stats"]["delivered"] == 1)

    deleted = client.delete("/_sandbox/webhooks")
    assert deleted.status_code == 200
    assert deleted.json() == {
        "enabled": False,
        "url": None,
        "secret": None,
        "max_attempts": None,
        "initial_delay_ms": None,
        "max_delay_ms": None,
        "timeout_ms": None,
        "stats": {**NO_STATS, "sent": 1, "delivered": 1},
    }
    create(client)
    assert_quiet(receiver, 1)
    assert client.get("/_sandbox/webhooks").json()["enabled"] is False


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"secret": SECRET},
        {"url": "http://127.0.0.1:1/x"},
        {"url": "ftp://127.0.0.1/x", "secret": SECRET},
        {"url": "/webhooks", "secret": SECRET},
        {"url": "http://", "secret": SECRET},
        {"url": "http://127.0.0.1:99999/x", "secret": SECRET},
        {"url": "http://u:p@127.0.0.1/x", "secret": SECRET},
        {"url": "http://127.0.0.1/a b", "secret": SECRET},
        {"url": 5, "secret": SECRET},
        {"url": "http://127.0.0.1/x", "secret": "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
        {"url": "http://127.0.0.1/x", "secret": "whsec_not base64!"},
        {"url": "http://127.0.0.1/x", "secret": "whsec_c2hvcnQ="},  # 5 bytes
        {"url": "http://127.0.0.1/x", "secret": SECRET, "max_attempts": 0},
        {"url": "http://127.0.0.1/x", "secret": SECRET, "max_attempts": True},
        {"url": "http://127.0.0.1/x", "secret": SECRET, "max_attempts": 2.5},
        {"url": "http://127.0.0.1/x", "secret": SECRET, "initial_delay_ms": -1},
        {"url": "http://127.0.0.1/x", "secret": SECRET, "timeout_ms": 0},
        {"url": "http://127.0.0.1/x", "secret": SECRET, "timeout_ms": "5000"},
        {
            "url": "http://127.0.0.1/x",
            "secret": SECRET,
            "initial_delay_ms": 500,
            "max_delay_ms": 100,
        },
        {"url": "http://127.0.0.1/x", "secret": SECRET, "retries": 3},
    ],
)
def test_invalid_settings_are_refused_and_change_nothing(
    client: httpx.Client, receiver: Receiver, body: Any
) -> None:
    before = client.get("/_sandbox/webhooks").json()
    response = client.put("/_sandbox/webhooks", json=body)
    assert response.status_code == 400, body
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if isinstance(body, dict) and isinstance(body.get("secret"), str):
        assert body["secret"].removeprefix("whsec_") not in error["message"]  # never echoed
    assert client.get("/_sandbox/webhooks").json() == before


def test_non_json_settings_are_refused(client: httpx.Client) -> None:
    response = client.put("/_sandbox/webhooks", content=b"{nope")
    assert response.status_code == 400


def test_reset_keeps_the_configuration_and_zeroes_the_counts(
    sandbox: SandboxServer, client: httpx.Client, receiver: Receiver
) -> None:
    create(client)
    receiver.delivered(1)
    wait_for(settled(sandbox))
    client.post("/_sandbox/reset")
    assert sandbox.state.webhook_stats() == NO_STATS
    assert sandbox.state.disputes() == []
    create(client)
    receiver.delivered(2)


# --- Python API -------------------------------------------------------------------------------


def test_python_api(receiver: Receiver) -> None:
    with SandboxServer() as server:
        assert server.state.webhook_settings() is None
        assert server.state.webhook_stats() == NO_STATS
        settings = server.configure_webhooks(receiver.url, SECRET, max_attempts=2)
        assert settings == WebhookSettings(receiver.url, SECRET, max_attempts=2)
        assert server.state.webhook_settings() == settings
        assert SECRET not in repr(settings)
        with pytest.raises(ValueError, match="max_attempts"):
            server.configure_webhooks(receiver.url, SECRET, max_attempts=0)
        with pytest.raises(ValueError, match="secret") as refused:
            server.configure_webhooks(receiver.url, "whsec_tooshort")
        assert "tooshort" not in str(refused.value)
        assert server.state.webhook_settings() == settings
        with httpx.Client(base_url=server.url, verify=TLS) as http:
            create(http)
        receiver.delivered(1)
        wait_for(settled(server))
        assert server.state.webhook_stats() == {**NO_STATS, "sent": 1, "delivered": 1}
        server.disable_webhooks()
        assert server.state.webhook_settings() is None


def test_retry_delays_double_up_to_the_cap_with_jitter() -> None:
    settings = WebhookSettings(
        "http://127.0.0.1/x", SECRET, initial_delay_ms=200, max_delay_ms=1000
    )
    rng = random.Random(1)
    for failed, base in [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (5, 1.0), (60, 1.0)]:
        delays = [settings.retry_delay_s(failed, rng) for _ in range(50)]
        assert all(base / 2 <= d <= base for d in delays), (failed, delays)
        assert len(set(delays)) > 1  # jittered


def test_run_sandbox_needs_both_url_and_secret() -> None:
    with pytest.raises(ValueError, match="both"):
        run_sandbox("127.0.0.1:0", webhook_url="http://127.0.0.1:1/x")
    with pytest.raises(ValueError, match="both"):
        run_sandbox("127.0.0.1:0", webhook_secret=SECRET)
    with pytest.raises(ValueError, match="secret"):
        run_sandbox("127.0.0.1:0", webhook_url="http://127.0.0.1:1/x", webhook_secret="x")


def test_run_sandbox_sends_webhooks(receiver: Receiver) -> None:
    with sandbox_process(webhook_url=receiver.url, webhook_secret=SECRET) as (process, port):
        seen = stderr_until(process, "sending webhooks to")
        assert any(receiver.url in line for line in seen), seen
        assert not any(SECRET.removeprefix("whsec_") in line for line in seen)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", verify=TLS) as http:
            create(http)
        [event] = receiver.delivered(1)
        assert event["type"] == "payment.authorized"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
