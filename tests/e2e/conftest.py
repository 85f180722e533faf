"""A real payorch gRPC server on a loopback port, wired to a real sandbox over HTTP."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from adapters.sandbox import SandboxServer
from orchestrator.api._generated import payments_pb2_grpc
from orchestrator.api.server import PaymentServer, create_server
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_configuration, load_router
from orchestrator.recovery import RecoveryWorker


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
