"""The sandbox adapter passes the provider contract against the real sandbox."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from adapters.sandbox import SandboxAdapter, SandboxServer, start_sandbox
from tests.adapters.contract import Movement, PaymentMethods, ProviderContract


class SandboxControl:
    def __init__(self, server: SandboxServer) -> None:
        self.server = server

    def movements(self) -> list[Movement]:
        return [
            Movement(e["kind"], e["amount"], e["currency"])
            for e in httpx.get(f"{self.server.url}/_sandbox/ledger").json()["entries"]
        ]

    def drop_next_response(self) -> None:
        httpx.put(
            f"{self.server.url}/_sandbox/faults", json={"drop_after_processing_rate": 1.0}
        ).raise_for_status()
        # The sandbox drops by rate, not by count; the contract sends no further POST after
        # this (lookups are GETs, which faults never touch).


class TestSandboxContract(ProviderContract):
    @pytest.fixture
    def server(self) -> Iterator[SandboxServer]:
        server = start_sandbox("127.0.0.1:0")
        yield server
        server.stop()

    @pytest.fixture
    def provider(self, server: SandboxServer) -> Iterator[SandboxAdapter]:
        adapter = SandboxAdapter(server.url)
        yield adapter
        adapter.close()

    @pytest.fixture
    def emulator(self, server: SandboxServer) -> SandboxControl:
        return SandboxControl(server)

    @pytest.fixture
    def methods(self) -> PaymentMethods:
        return PaymentMethods("pm_card_visa", "pm_card_declined", "card_declined")
