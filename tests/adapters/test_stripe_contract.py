"""The Stripe adapter passes the provider contract against the Stripe emulator.

The adapter runs with multicapture on: the contract captures one authorization in parts,
which Stripe only allows with multicapture (without it, a partial capture releases the rest;
``test_stripe_adapter`` covers that).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.stripe import StripeAdapter
from orchestrator.secrets import Secret
from tests.adapters.contract import PaymentMethods, ProviderContract
from tests.emulators.stripe import SECRET_KEY, StripeEmulator

# building an SSL context per client costs ~80 ms; these clients only speak plain HTTP anyway


class TestStripeContract(ProviderContract):
    @pytest.fixture
    def emulator(self) -> Iterator[StripeEmulator]:
        emulator = StripeEmulator()
        emulator.start()
        yield emulator
        emulator.stop()

    @pytest.fixture
    def provider(self, emulator: StripeEmulator) -> Iterator[StripeAdapter]:
        with StripeAdapter(
            Secret(SECRET_KEY, "test"), base_url=emulator.url, multicapture=True
        ) as adapter:
            yield adapter

    @pytest.fixture
    def methods(self) -> PaymentMethods:
        return PaymentMethods("pm_card_visa", "pm_card_chargeDeclined", "generic_decline")
