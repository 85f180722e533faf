"""A real payorch gRPC server on a loopback port, wired to a real sandbox over HTTP."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from eventsourcing.utils import get_topic

from adapters.sandbox import SandboxServer, new_webhook_secret, sign_standard_webhook
from orchestrator.api._generated import payments_pb2_grpc
from orchestrator.api.server import PaymentServer, create_server
from orchestrator.application import Payments
from orchestrator.bootstrap import (
    build_payments,
    load_configuration,
    load_router,
    webhook_verifiers,
)
from orchestrator.domain.webhook import WebhookDelivery
from orchestrator.recovery import RecoveryWorker
from orchestrator.secrets import Secret
from orchestrator.webhooks.http import HttpServer
from orchestrator.webhooks.intake import WebhookIntake
from orchestrator.webhooks.processor import WebhookProcessor


@dataclass
class Running:
    app: Payments
    server: PaymentServer
    channel: grpc.Channel
    stub: payments_pb2_grpc.PaymentOrchestratorStub
    sandbox: SandboxServer

    def ledger(self, kind: str | None = None) -> list[dict[str, object]]:
        entries = httpx.get(f"{self.sandbox.url}/_sandbox/ledger").json()["entries"]
        return [e for e in entries if kind is None or e["kind"] == kind]

    def faults(self, **settings: object) -> None:
        httpx.put(f"{self.sandbox.url}/_sandbox/faults", json=settings).raise_for_status()


@pytest.fixture
def running(database_url: str, sandbox: SandboxServer) -> Iterator[Running]:
    app = build_payments(database_url, load_router(None, sandbox.url))
    server = create_server("127.0.0.1:0", app, max_workers=80)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Running(
            app, server, channel, payments_pb2_grpc.PaymentOrchestratorStub(channel), sandbox
        )
    finally:
        channel.close()
        server.stop(grace=1)
        app.close()


@dataclass
class Configured:
    app: Payments
    server: PaymentServer
    stub: payments_pb2_grpc.PaymentOrchestratorStub
    worker: RecoveryWorker | None


class ServerFactory:
    """Builds servers from a TOML provider configuration, on the test's event store."""

    def __init__(self, database_url: str, tmp_path: Path) -> None:
        self.database_url = database_url
        self.tmp_path = tmp_path
        self._running: list[tuple[Configured, grpc.Channel]] = []

    def __call__(self, toml: str, *, worker: bool = False) -> Configured:
        path = self.tmp_path / f"providers-{len(self._running)}.toml"
        path.write_text(toml)
        config = load_configuration(str(path), None)
        app = build_payments(
            self.database_url, config.router, recovery_schedule=config.recovery.schedule
        )
        server = create_server("127.0.0.1:0", app, max_workers=80)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        recovery = (
            RecoveryWorker(app, interval=config.recovery.interval).start() if worker else None
        )
        running = Configured(
            app, server, payments_pb2_grpc.PaymentOrchestratorStub(channel), recovery
        )
        self._running.append((running, channel))
        return running

    def close(self) -> None:
        for running, channel in self._running:
            if running.worker is not None:
                running.worker.stop()
            channel.close()
            running.server.stop(grace=1)
            running.app.close()


@pytest.fixture
def serve(database_url: str, tmp_path: Path) -> Iterator[ServerFactory]:
    factory = ServerFactory(database_url, tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@contextlib.contextmanager
def opened_stores(url: str, sandbox_url: str) -> Iterator[Callable[[], Payments]]:
    """Opens the server's store from the test, as a fresh application each time (so what it
    reads is what was committed, not what an earlier read cached); closes them all after."""
    opened: list[Payments] = []

    def open_store() -> Payments:
        opened.append(build_payments(url, load_router(None, sandbox_url)))
        return opened[-1]

    try:
        yield open_store
    finally:
        for app in opened:
            app.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WebhookStack:
    app: Payments
    stub: payments_pb2_grpc.PaymentOrchestratorStub
    sandbox: SandboxServer
    http_url: str
    secret: str
    processor: WebhookProcessor

    def post(self, body: bytes, *, secret: str | None = None, timestamp: int | None = None,
             event_id: str = "evt_test_1", provider: str = "sandbox") -> httpx.Response:  # fmt: skip
        stamp = int(time.time()) if timestamp is None else timestamp
        signature = sign_standard_webhook(secret or self.secret, event_id, stamp, body)
        headers = {
            "webhook-id": event_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signature,
        }
        return httpx.post(f"{self.http_url}/webhooks/{provider}", content=body, headers=headers)

    def deliveries(self) -> int:
        return len(
            self.app.recorder.select_notifications(
                0, 10_000, topics=[get_topic(WebhookDelivery.Received)]
            )
        )


@pytest.fixture
def webhook_stack(database_url: str, sandbox: SandboxServer) -> Iterator[WebhookStack]:
    """payorch with its HTTP intake, the sandbox sending it signed webhooks; the processor
    is run by the test (``stack.processor.run_once()``) unless started."""
    secret = new_webhook_secret()
    config = load_configuration(None, sandbox.url, sandbox_webhook_secret=Secret(secret, "test"))
    app = build_payments(database_url, config.router)
    server = create_server("127.0.0.1:0", app, max_workers=80)
    server.start()
    intake = WebhookIntake(app, webhook_verifiers(config.router))
    http = HttpServer("127.0.0.1:0", intake, ready=lambda: True).start()
    http_url = f"http://127.0.0.1:{http.port}"
    sandbox.configure_webhooks(f"{http_url}/webhooks/sandbox", secret, initial_delay_ms=50)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    processor = WebhookProcessor(app, interval=0.05)
    try:
        yield WebhookStack(
            app,
            payments_pb2_grpc.PaymentOrchestratorStub(channel),
            sandbox,
            http_url,
            secret,
            processor,
        )
    finally:
        processor.stop()
        sandbox.disable_webhooks()
        channel.close()
        http.stop()
        server.stop(grace=1)
        app.close()
