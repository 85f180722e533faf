"""A real payorch gRPC server on a loopback port, wired to a real sandbox over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest

from adapters.sandbox import SandboxServer
from orchestrator.api._generated import payments_pb2_grpc
from orchestrator.api.server import PaymentServer, create_server
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_router


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
