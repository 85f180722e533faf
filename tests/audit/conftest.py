"""The audit commands read a real event store, filled through the application itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.sandbox import SandboxServer
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_router


@pytest.fixture
def app(database_url: str, sandbox: SandboxServer) -> Iterator[Payments]:
    payments = build_payments(database_url, load_router(None, sandbox.url))
    try:
        yield payments
    finally:
        payments.close()
