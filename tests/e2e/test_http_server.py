"""The HTTP side against slow, stalled and greedy clients, over real sockets.

Each test starts payorch's HTTP server (uvicorn) with short limits, on a real SQLite store and
a real intake, and plays the client byte by byte: a client that stalls in its headers or in
its body is cut off within the limit, while other clients are served meanwhile.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from adapters.sandbox import new_webhook_secret, sign_standard_webhook
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_configuration, webhook_verifiers
from orchestrator.secrets import Secret
from orchestrator.webhooks.http import HttpLimits, HttpServer
from orchestrator.webhooks.intake import WebhookIntake
from tests.e2e.test_webhooks import sandbox_event

LIMITS = HttpLimits(header_timeout=1.0, body_timeout=1.0, keep_alive=1.0, max_connections=50)


@dataclass
class Side:
    app: Payments
    http: HttpServer
    secret: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.http.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def delivery(self, event_id: str) -> tuple[dict[str, str], bytes]:
        payment = {"id": "sbx_pay_h", "reference": "", "amount": 1, "currency": "USD",
                   "status": "authorized", "idempotency_key": "k"}  # fmt: skip
        body = sandbox_event("payment.authorized", payment, event_id=event_id)
        stamp = int(time.time())
        signature = sign_standard_webhook(self.secret, event_id, stamp, body)
        headers = {"webhook-id": event_id, "webhook-timestamp": str(stamp),
                   "webhook-signature": signature, "content-type": "application/json"}  # fmt: skip
        return headers, body

    def post(self, event_id: str) -> httpx.Response:
        headers, body = self.delivery(event_id)
        return httpx.post(f"{self.url}/webhooks/sandbox", content=body, headers=headers, timeout=5)


def _side(tmp_path: Path, limits: HttpLimits) -> Iterator[Side]:
    secret = new_webhook_secret()
    config = load_configuration(
        None, "http://127.0.0.1:9", sandbox_webhook_secret=Secret(secret, "test")
    )
    app = build_payments(f"sqlite:///{tmp_path / 'payorch.db'}", config.router)
    intake = WebhookIntake(app, webhook_verifiers(config.router))
    http = HttpServer("127.0.0.1:0", intake, ready=lambda: True, limits=limits).start()
    try:
        yield Side(app, http, secret)
    finally:
        http.stop()
        app.close()


@pytest.fixture
def side(tmp_path: Path) -> Iterator[Side]:
    yield from _side(tmp_path, LIMITS)


def closed_by_server(sock: socket.socket, within: float) -> tuple[bool, bytes]:
    """Whether the server closes ``sock`` within ``within`` seconds, and what it sent first."""
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        pass
    return True, received


def test_a_client_stalling_in_its_headers_is_cut_off_while_others_are_served(
    side: Side,
) -> None:
    stalled = side.connect()
    stalled.sendall(b"POST /webhooks/sandbox HTTP/1.1\r\nHost: x\r\nContent-Le")
    started = time.monotonic()
    assert side.post("evt_h1").status_code == 200  # served while the other one stalls
    closed, _ = closed_by_server(stalled, within=5)
    assert closed and time.monotonic() - started < LIMITS.header_timeout + 1.5


def test_a_client_trickling_its_headers_is_cut_off_at_the_header_deadline(side: Side) -> None:
    trickler = side.connect()
    trickler.settimeout(5)
    started = time.monotonic()
    with pytest.raises(OSError):  # cut off while still sending
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            trickler.send(bytes([byte]))
            time.sleep(0.1)
            assert time.monotonic() - started < LIMITS.header_timeout + 2, "never cut off"
    assert time.monotonic() - started < LIMITS.header_timeout + 1.5


def test_a_connection_that_never_sends_anything_is_closed(side: Side) -> None:
    silent = side.connect()
    closed, received = closed_by_server(silent, within=5)
    assert closed and received == b""


def test_a_client_stalling_mid_body_gets_408_and_the_connection_is_closed(side: Side) -> None:
    before = side.app.recorder.max_notification_id() or 0
    stalled = side.connect()
    stalled.sendall(
        b"POST /webhooks/sandbox HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
    )
    started = time.monotonic()
    assert side.post("evt_b1").status_code == 200  # served while the other one stalls
    closed, received = closed_by_server(stalled, within=5)
    assert closed and time.monotonic() - started < LIMITS.body_timeout + 1.5
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in received.lower()
    assert (side.app.recorder.max_notification_id() or 0) == before + 1  # only evt_b1 stored


def test_a_client_trickling_its_body_is_cut_off_at_the_body_deadline(side: Side) -> None:
    headers, body = side.delivery("evt_b2")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    trickler = side.connect()
    trickler.sendall(
        f"POST /webhooks/sandbox HTTP/1.1\r\nHost: x\r\n{head}"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    started = time.monotonic()
    received = b""
    trickler.settimeout(0.1)
    for byte in body:  # one byte every 0.1 s: never idle, never done in time
        try:
            trickler.send(bytes([byte]))
            received += trickler.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if received:
            break
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert time.monotonic() - started < LIMITS.body_timeout + 1.5


def test_many_idle_connections_do_not_stop_new_clients(side: Side) -> None:
    idle = [side.connect() for _ in range(40)]
    half_sent = [side.connect() for _ in range(5)]
    for sock in half_sent:
        sock.sendall(b"POST /webhooks/sandbox HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
    try:
        started = time.monotonic()
        for i in range(5):
            assert side.post(f"evt_i{i}").status_code == 200
        assert httpx.get(f"{side.url}/healthz").status_code == 200
        assert time.monotonic() - started < 1.0  # nobody waited for the idle ones
    finally:
        for sock in idle + half_sent:
            sock.close()


def test_connections_over_the_limit_are_refused_and_served_again_once_idle_ones_go(
    side: Side,
) -> None:
    idle = [side.connect() for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.2)  # let the server accept them all
        over = side.connect()
        closed, received = closed_by_server(over, within=0.5)
        assert closed and received.startswith(b"HTTP/1.1 503 "), received
        time.sleep(LIMITS.header_timeout + 0.5)  # the idle ones are cut off
        assert side.post("evt_l1").status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_body_over_the_limit_is_refused_413_before_it_is_read(side: Side) -> None:
    sock = side.connect()
    sock.sendall(
        b"POST /webhooks/sandbox HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n"
    )  # and no body: the answer must not wait for it
    closed, received = closed_by_server(sock, within=0.5)
    assert closed and received.startswith(b"HTTP/1.1 413 "), received


def test_a_chunked_body_over_the_limit_is_refused_413(side: Side) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"a" * 32768  # 1.25 MiB in all, over the 1 MiB limit

    answer = httpx.post(f"{side.url}/webhooks/sandbox", content=chunks(), timeout=5)
    assert answer.status_code == 413


def test_keep_alive_serves_several_requests_on_one_connection_then_closes_when_idle(
    side: Side,
) -> None:
    sock = side.connect()
    sock.settimeout(5)
    for _ in range(3):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status": "alive"}'):
            answer += sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in answer.lower()
    started = time.monotonic()
    closed, _ = closed_by_server(sock, within=5)
    assert closed and time.monotonic() - started < LIMITS.keep_alive + 1.5


def test_stop_returns_promptly_with_a_stalled_client_connected(tmp_path: Path) -> None:
    sides = _side(tmp_path, HttpLimits(header_timeout=30, body_timeout=30))
    side = next(sides)
    stalled = side.connect()
    stalled.sendall(b"POST /webhooks/sandbox HTTP/1.1\r\nContent-Length: 100\r\n\r\n01234")
    time.sleep(0.2)
    started = time.monotonic()
    with pytest.raises(StopIteration):
        next(sides)  # stops the server
    assert time.monotonic() - started < 3
    stalled.close()


def test_a_delivery_waiting_for_the_store_holds_no_other_client(side: Side, tmp_path: Path) -> None:
    """The intake's store write runs off the event loop: while it waits for SQLite's write
    lock (held here by another connection), health checks and refusals are still answered."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    blocker = sqlite3.connect(tmp_path / "payorch.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock, as another writer would hold it
    try:
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(side.post, "evt_w1")
            time.sleep(0.3)
            assert not waiting.done()
            started = time.monotonic()
            assert httpx.get(f"{side.url}/healthz", timeout=5).status_code == 200
            assert httpx.post(f"{side.url}/webhooks/paypal", content=b"{}").status_code == 404
            assert time.monotonic() - started < 0.5
            blocker.execute("ROLLBACK")
            assert waiting.result(timeout=10).status_code == 200  # acknowledged once stored
    finally:
        blocker.close()
