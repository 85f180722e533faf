"""The Adyen adapter passes the provider contract against the Adyen emulator.

The emulator delivers its standard webhooks to a receiver that verifies their HMAC signature
and records them for the adapter: that is how the adapter finds operations whose answer was
lost, since Adyen has no API to read a payment back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.adyen import AdyenAdapter
from orchestrator.secrets import Secret
from tests.adapters.contract import PaymentMethods, ProviderContract
from tests.emulators import adyen
from tests.emulators.adyen import AdyenEmulator, Running


class TestAdyenContract(ProviderContract):
    @pytest.fixture
    def running(self) -> Iterator[Running]:
        yield from adyen.running()

    @pytest.fixture
    def provider(self, running: Running) -> Iterator[AdyenAdapter]:
        with AdyenAdapter(
            f"{running.emulator.url}/v71",
            api_key=Secret(adyen.API_KEY, "test"),
            merchant_account=adyen.MERCHANT_ACCOUNT,
            return_url="https://shop.example/return",
            notifications=running.notifications,
        ) as adapter:
            yield adapter

    @pytest.fixture
    def emulator(self, running: Running) -> AdyenEmulator:
        return running.emulator

    @pytest.fixture
    def methods(self) -> PaymentMethods:
        return PaymentMethods(adyen.APPROVED, adyen.REFUSED, "2")
