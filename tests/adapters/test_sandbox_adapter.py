"""The sandbox adapter against a real sandbox (and a canned-answer server) over loopback HTTP."""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from adapters.sandbox import SandboxAdapter, SandboxServer
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    PaymentProvider,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)

# building an SSL context per client costs ~80 ms; these clients only speak plain HTTP anyway
TLS = ssl.create_default_context()
TIMEOUT = 2.0
Unknown = ProviderOutcomeUnknown


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer() as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(verify=TLS) as client:
        yield client


@pytest.fixture
def adapter(server: SandboxServer) -> SandboxAdapter:
    return SandboxAdapter(server.url)


def authorize_op(key: str = "key-auth", **overrides: Any) -> ProviderOperation:
    fields: dict[str, Any] = {
        "kind": OperationKind.AUTHORIZE,
        "payment_id": "pay_1",
        "provider_key": key,
        "amount": 1000,
        "currency": "USD",
        "payment_method": "pm_card_visa",
        "reference": "order-1",
        "metadata": {"tenant": "t1"},
    }
    fields.update(overrides)
    return ProviderOperation(**fields)


def follow_up(
    kind: OperationKind, provider_reference: str, key: str, amount: int = 0, **overrides: Any
) -> ProviderOperation:
    return ProviderOperation(
        kind=kind,
        payment_id=overrides.pop("payment_id", "pay_1"),
        provider_key=key,
        amount=amount,
        currency="USD",
        provider_reference=provider_reference,
        **overrides,
    )


def faults(server: SandboxServer, http: httpx.Client, **settings: Any) -> None:
    http.put(f"{server.url}/_sandbox/faults", json=settings).raise_for_status()


def stored(server: SandboxServer, payment_id: str) -> dict[str, Any]:
    payment = server.state.payment(payment_id)
    assert payment is not None, f"the sandbox has no payment {payment_id}"
    return payment


def ledger_kinds(server: SandboxServer) -> list[str]:
    return [entry["kind"] for entry in server.state.ledger()]


def authorized(adapter: SandboxAdapter, key: str = "key-auth", **overrides: Any) -> str:
    outcome = adapter.authorize(authorize_op(key, **overrides), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.SUCCEEDED
    return outcome.provider_reference


def wait_for(condition: Callable[[], bool], within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# --- a server that answers whatever a test tells it to ------------------------------------


class _CannedServer(ThreadingHTTPServer):
    daemon_threads = True
    answer: tuple[int, dict[str, str], bytes] = (200, {}, b"{}")


class _CannedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _CannedServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._answer()

    def do_GET(self) -> None:
        self._answer()

    def _answer(self) -> None:
        status, headers, body = self.server.answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


Canned = Callable[..., SandboxAdapter]


@pytest.fixture
def canned() -> Iterator[Canned]:
    """``canned(status, body, headers)`` -> an adapter whose provider always says that."""
    httpd = _CannedServer(("127.0.0.1", 0), _CannedHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()

    def answering(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
        httpd.answer = (status, {"Content-Type": "application/json", **(headers or {})}, body)
        return SandboxAdapter(f"http://127.0.0.1:{httpd.server_address[1]}")

    yield answering
    httpd.shutdown()
    thread.join()
    httpd.server_close()


# --- the port -----------------------------------------------------------------------------


def test_adapter_is_a_payment_provider(server: SandboxServer) -> None:
    provider: PaymentProvider = SandboxAdapter(server.url, name="sandbox-eu")
    assert provider.name == "sandbox-eu"
    assert SandboxAdapter(server.url).name == "sandbox"


def test_authorize(adapter: SandboxAdapter, server: SandboxServer) -> None:
    outcome = adapter.authorize(authorize_op("key-a"), timeout=TIMEOUT)
    [payment] = server.state.payments()
    assert outcome == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=payment["id"], captured_amount=0
    )
    assert payment["reference"] == "pay_1"
    assert payment["metadata"] == {"tenant": "t1", "order_reference": "order-1"}
    assert payment["idempotency_key"] == "key-a"
    assert (payment["status"], payment["amount"], payment["currency"]) == (
        "authorized",
        1000,
        "USD",
    )


def test_authorize_with_capture(adapter: SandboxAdapter, server: SandboxServer) -> None:
    outcome = adapter.authorize(authorize_op(capture=True, amount=2500), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.SUCCEEDED
    assert outcome.captured_amount == 2500
    assert ledger_kinds(server) == ["authorization", "capture"]


def test_authorize_without_order_reference(adapter: SandboxAdapter, server: SandboxServer) -> None:
    adapter.authorize(authorize_op(reference="", metadata={}), timeout=TIMEOUT)
    assert server.state.payments()[0]["metadata"] == {}


@pytest.mark.parametrize(
    ("token", "code"),
    [("pm_card_declined", "card_declined"), ("pm_insufficient_funds", "insufficient_funds")],
)
def test_decline_is_an_outcome(
    adapter: SandboxAdapter, server: SandboxServer, token: str, code: str
) -> None:
    outcome = adapter.authorize(authorize_op(payment_method=token), timeout=TIMEOUT)
    [payment] = server.state.payments()
    assert outcome.status is OutcomeStatus.DECLINED
    assert outcome.decline_code == code
    assert outcome.provider_reference == payment["id"]
    assert code in outcome.message
    assert server.state.ledger() == []


def test_invalid_request_is_failed(adapter: SandboxAdapter, server: SandboxServer) -> None:
    outcome = adapter.authorize(authorize_op(payment_method="tok_visa"), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "payment_method" in outcome.message
    assert server.state.payments() == []


def test_partial_captures(adapter: SandboxAdapter, server: SandboxServer) -> None:
    reference = authorized(adapter)
    first = adapter.capture(follow_up(OperationKind.CAPTURE, reference, "key-c1", 400), timeout=2)
    second = adapter.capture(follow_up(OperationKind.CAPTURE, reference, "key-c2", 600), timeout=2)
    assert first == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=400
    )
    assert second.captured_amount == 600
    assert stored(server, reference)["amount_captured"] == 1000


def test_over_capture_is_failed(adapter: SandboxAdapter, server: SandboxServer) -> None:
    reference = authorized(adapter)
    outcome = adapter.capture(follow_up(OperationKind.CAPTURE, reference, "key-c", 1001), timeout=2)
    assert outcome.status is OutcomeStatus.FAILED
    assert "exceeds" in outcome.message
    assert ledger_kinds(server) == ["authorization"]


def test_capture_of_unknown_payment_is_failed(adapter: SandboxAdapter) -> None:
    op = follow_up(OperationKind.CAPTURE, "sbx_pay_" + "0" * 24, "key-c", 10)
    outcome = adapter.capture(op, timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert "no such payment" in outcome.message


def test_follow_up_without_provider_reference_is_failed(
    adapter: SandboxAdapter, server: SandboxServer
) -> None:
    outcome = adapter.cancel(follow_up(OperationKind.CANCEL, "", "key-v"), timeout=TIMEOUT)
    assert outcome.status is OutcomeStatus.FAILED
    assert server.state.ledger() == []


def test_cancel(adapter: SandboxAdapter, server: SandboxServer) -> None:
    reference = authorized(adapter)
    outcome = adapter.cancel(follow_up(OperationKind.CANCEL, reference, "key-v"), timeout=2)
    assert outcome == ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference=reference)
    assert stored(server, reference)["status"] == "voided"


def test_cancel_after_capture_is_failed(adapter: SandboxAdapter) -> None:
    reference = authorized(adapter, capture=True)
    outcome = adapter.cancel(follow_up(OperationKind.CANCEL, reference, "key-v"), timeout=2)
    assert outcome.status is OutcomeStatus.FAILED
    assert "uncaptured" in outcome.message


def test_refund(adapter: SandboxAdapter, server: SandboxServer) -> None:
    reference = authorized(adapter, capture=True)
    op = follow_up(OperationKind.REFUND, reference, "key-r", 300, reason="requested_by_customer")
    outcome = adapter.refund(op, timeout=TIMEOUT)
    [refund] = stored(server, reference)["refunds"]
    assert outcome == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=refund["id"], captured_amount=300
    )
    assert refund["id"].startswith("sbx_re_")
    assert (refund["reason"], refund["idempotency_key"]) == ("requested_by_customer", "key-r")


def test_over_refund_is_failed(adapter: SandboxAdapter) -> None:
    reference = authorized(adapter, capture=True)
    op = follow_up(OperationKind.REFUND, reference, "key-r", 1001)
    assert adapter.refund(op, timeout=TIMEOUT).status is OutcomeStatus.FAILED


def test_retry_with_the_same_key_gives_the_same_outcome(
    adapter: SandboxAdapter, server: SandboxServer
) -> None:
    first = adapter.authorize(authorize_op("key-same", capture=True), timeout=TIMEOUT)
    second = adapter.authorize(authorize_op("key-same", capture=True), timeout=TIMEOUT)
    assert first == second
    assert ledger_kinds(server) == ["authorization", "capture"]


# --- errors: what may have moved money ----------------------------------------------------


def test_injected_500_is_documented_as_not_processed(
    adapter: SandboxAdapter, server: SandboxServer, http: httpx.Client
) -> None:
    faults(server, http, error_rate=1)
    with pytest.raises(ProviderNotReached, match="api_error"):
        adapter.authorize(authorize_op("key-500"), timeout=TIMEOUT)
    faults(server, http, error_rate=0)
    assert adapter.authorize(authorize_op("key-500"), timeout=TIMEOUT).status is (
        OutcomeStatus.SUCCEEDED
    )
    assert ledger_kinds(server) == ["authorization"]


def test_timeout_is_outcome_unknown(
    adapter: SandboxAdapter, server: SandboxServer, http: httpx.Client
) -> None:
    faults(server, http, timeout_rate=1, hang_ms=300)
    # the server answers after 0.3 s, so raising at all shows the timeout argument is applied
    with pytest.raises(ProviderOutcomeUnknown, match="ReadTimeout"):
        adapter.authorize(authorize_op("key-slow"), timeout=0.2)
    wait_for(lambda: ledger_kinds(server) == ["authorization"])
    found = adapter.lookup(authorize_op("key-slow"), timeout=TIMEOUT)
    assert found is not None
    assert found.status is OutcomeStatus.SUCCEEDED


def test_request_in_progress_is_outcome_unknown(
    adapter: SandboxAdapter, server: SandboxServer, http: httpx.Client
) -> None:
    faults(server, http, timeout_rate=1, hang_ms=400)
    with pytest.raises(ProviderOutcomeUnknown):
        adapter.authorize(authorize_op("key-busy"), timeout=0.2)
    with pytest.raises(ProviderOutcomeUnknown, match="still processing"):
        adapter.authorize(authorize_op("key-busy"), timeout=0.2)
    wait_for(lambda: ledger_kinds(server) == ["authorization"])
    outcome = adapter.authorize(authorize_op("key-busy"), timeout=TIMEOUT)
    assert outcome.provider_reference == server.state.payments()[0]["id"]


def test_dropped_response_is_outcome_unknown(
    adapter: SandboxAdapter, server: SandboxServer, http: httpx.Client
) -> None:
    faults(server, http, drop_after_processing_rate=1)
    with pytest.raises(ProviderOutcomeUnknown, match="RemoteProtocolError"):
        adapter.authorize(authorize_op("key-drop", capture=True), timeout=TIMEOUT)
    [payment] = server.state.payments()
    found = adapter.lookup(authorize_op("key-drop", capture=True), timeout=TIMEOUT)
    assert found == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=payment["id"], captured_amount=1000
    )
    faults(server, http, drop_after_processing_rate=0)
    retried = adapter.authorize(authorize_op("key-drop", capture=True), timeout=TIMEOUT)
    assert retried == found
    assert ledger_kinds(server) == ["authorization", "capture"]


def test_key_reused_for_another_request_is_outcome_unknown(adapter: SandboxAdapter) -> None:
    reference = authorized(adapter, "key-shared")
    with pytest.raises(ProviderOutcomeUnknown, match="refused the provider key"):
        adapter.capture(follow_up(OperationKind.CAPTURE, reference, "key-shared", 5), timeout=2)


def test_closed_port_is_not_reached() -> None:
    adapter = SandboxAdapter(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ProviderNotReached, match="ConnectError") as raised:
        adapter.authorize(authorize_op(), timeout=TIMEOUT)
    assert raised.value.retry_after is None
    with pytest.raises(ProviderNotReached):
        adapter.lookup(authorize_op(), timeout=TIMEOUT)


def test_rate_limit_with_http_date(canned: Canned) -> None:
    adapter = canned(429, b"", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    with pytest.raises(ProviderNotReached) as raised:
        adapter.capture(follow_up(OperationKind.CAPTURE, "sbx_pay_x", "k", 1), timeout=TIMEOUT)
    assert raised.value.retry_after == 0.0  # a date in the past: retry now


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"<html>not json</html>"),
        (200, b"[]"),
        (200, b'{"object": "payment"}'),
        (200, b'{"id": "sbx_pay_1", "status": "declined", "amount_captured": 0}'),
        (503, b'{"error": {"type": "api_error"}}'),
        (502, b"bad gateway"),
        (302, b""),
    ],
)
def test_unusable_answers_are_outcome_unknown(canned: Canned, status: int, body: bytes) -> None:
    with pytest.raises(ProviderOutcomeUnknown):
        canned(status, body).authorize(authorize_op(), timeout=TIMEOUT)


def test_malformed_refund_answer_is_outcome_unknown(canned: Canned) -> None:
    adapter = canned(200, b'{"id": "sbx_re_1", "amount": "300"}')
    with pytest.raises(ProviderOutcomeUnknown, match="amount"):
        adapter.refund(follow_up(OperationKind.REFUND, "sbx_pay_1", "k", 300), timeout=TIMEOUT)


def test_client_error_without_json_is_failed(canned: Canned) -> None:
    outcome = canned(403, b"forbidden").authorize(authorize_op(), timeout=TIMEOUT)
    assert outcome == ProviderOutcome(OutcomeStatus.FAILED, message="sandbox answered HTTP 403")


# --- lookup -------------------------------------------------------------------------------


def test_lookup_authorization(adapter: SandboxAdapter) -> None:
    reference = authorized(adapter, "key-a")
    adapter.capture(follow_up(OperationKind.CAPTURE, reference, "key-c", 100), timeout=TIMEOUT)
    found = adapter.lookup(authorize_op("key-a"), timeout=TIMEOUT)
    # the later manual capture is another operation, not part of the authorization
    assert found == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=0
    )


def test_lookup_voided_authorization_still_succeeded(adapter: SandboxAdapter) -> None:
    reference = authorized(adapter, "key-a")
    adapter.cancel(follow_up(OperationKind.CANCEL, reference, "key-v"), timeout=TIMEOUT)
    found = adapter.lookup(authorize_op("key-a"), timeout=TIMEOUT)
    assert found is not None
    assert (found.status, found.provider_reference) == (OutcomeStatus.SUCCEEDED, reference)


def test_lookup_declined_authorization(adapter: SandboxAdapter, server: SandboxServer) -> None:
    op = authorize_op("key-d", payment_method="pm_insufficient_funds")
    adapter.authorize(op, timeout=TIMEOUT)
    found = adapter.lookup(op, timeout=TIMEOUT)
    assert found == ProviderOutcome(
        OutcomeStatus.DECLINED,
        provider_reference=server.state.payments()[0]["id"],
        decline_code="insufficient_funds",
    )


def test_lookup_capture(adapter: SandboxAdapter) -> None:
    reference = authorized(adapter)
    for key, amount in (("key-c1", 300), ("key-c2", 200)):
        adapter.capture(follow_up(OperationKind.CAPTURE, reference, key, amount), timeout=2)
    found = adapter.lookup(follow_up(OperationKind.CAPTURE, reference, "key-c2", 200), timeout=2)
    assert found == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=200
    )


def test_lookup_cancel(adapter: SandboxAdapter) -> None:
    reference = authorized(adapter)
    op = follow_up(OperationKind.CANCEL, reference, "key-v")
    assert adapter.lookup(op, timeout=TIMEOUT) is None
    adapter.cancel(op, timeout=TIMEOUT)
    assert adapter.lookup(op, timeout=TIMEOUT) == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference
    )


def test_lookup_refund(adapter: SandboxAdapter, server: SandboxServer) -> None:
    reference = authorized(adapter, capture=True)
    for key in ("key-r1", "key-r2"):
        adapter.refund(follow_up(OperationKind.REFUND, reference, key, 100), timeout=TIMEOUT)
    found = adapter.lookup(follow_up(OperationKind.REFUND, reference, "key-r2", 100), timeout=2)
    second_refund = stored(server, reference)["refunds"][1]
    assert found == ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=second_refund["id"], captured_amount=100
    )


@pytest.mark.parametrize("kind", list(OperationKind))
def test_lookup_of_unknown_key_is_none(adapter: SandboxAdapter, kind: OperationKind) -> None:
    reference = authorized(adapter, "key-a", capture=True)
    adapter.refund(follow_up(OperationKind.REFUND, reference, "key-r", 10), timeout=TIMEOUT)
    assert adapter.lookup(follow_up(kind, reference, "key-unknown"), timeout=TIMEOUT) is None


def test_lookup_only_searches_our_payment(adapter: SandboxAdapter) -> None:
    authorized(adapter, "key-a", payment_id="pay_other")
    assert adapter.lookup(authorize_op("key-a", payment_id="pay_1"), timeout=TIMEOUT) is None


def test_lookup_failed_capture_is_none(adapter: SandboxAdapter) -> None:
    reference = authorized(adapter)
    op = follow_up(OperationKind.CAPTURE, reference, "key-c", 5000)
    assert adapter.capture(op, timeout=TIMEOUT).status is OutcomeStatus.FAILED
    assert adapter.lookup(op, timeout=TIMEOUT) is None


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (500, b"{}", Unknown),
        (404, b"{}", Unknown),
        (200, b"not json", Unknown),
        (200, b'{"data": {}}', Unknown),
        (200, b'{"data": [{"idempotency_key": "k", "status": "weird", "id": "x"}]}', Unknown),
        (429, b"", ProviderNotReached),
    ],
)
def test_lookup_errors(canned: Canned, status: int, body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        canned(status, body).lookup(authorize_op("k"), timeout=TIMEOUT)


# --- housekeeping -------------------------------------------------------------------------


def test_logs_name_the_call_but_not_the_card(
    adapter: SandboxAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="payorch.adapters.sandbox"):
        adapter.authorize(authorize_op("key-log", payment_method="pm_card_secret"), timeout=2)
    [record] = [r for r in caplog.records if r.name == "payorch.adapters.sandbox"]
    message = record.getMessage()
    assert "authorize" in message
    assert "key-log" in message
    assert "-> 200" in message
    assert re.search(r" in \d+\.\d ms$", message)
    assert "pm_card_secret" not in caplog.text
    assert "order-1" not in caplog.text


def test_close_closes_the_connections_and_refuses_later_calls(server: SandboxServer) -> None:
    with SandboxAdapter(server.url) as owned:
        assert owned.authorize(authorize_op(), timeout=TIMEOUT).status is OutcomeStatus.SUCCEEDED
        connection = owned._http._connection()
        assert connection.conn is not None  # kept alive after the answer
    assert connection.conn is None
    with pytest.raises(RuntimeError, match="closed"):
        owned.authorize(authorize_op(), timeout=TIMEOUT)


def test_each_thread_calls_the_provider_on_a_connection_of_its_own(server: SandboxServer) -> None:
    # No gRPC worker waits for another's connection (bench/README.md); close() closes them all.
    adapter = SandboxAdapter(server.url)
    connections: dict[str, list[Any]] = {}

    def call(name: str) -> None:
        for n in range(2):
            adapter.authorize(authorize_op(f"key-{name}-{n}"), timeout=TIMEOUT)
            connection = adapter._http._connection()
            assert connection.conn is not None
            connections.setdefault(name, []).append((connection, connection.conn.sock))

    threads = [threading.Thread(target=call, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (a1, a2), (b1, b2) = connections["a"], connections["b"]
    assert a1 == a2 and b1 == b2  # the same connection and socket, kept alive within a thread
    assert a1[1] is not b1[1]
    adapter.close()
    assert a1[0].conn is None and b1[0].conn is None
    assert a1[1].fileno() == -1 and b1[1].fileno() == -1
