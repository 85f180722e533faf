"""The Razorpay adapter passes the provider contract against the Razorpay emulator, in INR.

Two scenarios are replaced by what Razorpay documents instead, because Razorpay cannot do
what they ask:

- it has no void (no cancel endpoint in its API reference or SDKs; hyperswitch's connector
  leaves Void unimplemented): an uncaptured authorization is refunded by Razorpay itself when
  the capture window ends, so ``cancel`` is a FAILED outcome that sends nothing;
- it captures a payment once and in full ("Capture amount must be equal to the amount
  authorized", api/payments/capture.md), so a partial capture is refused and moves nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.razorpay import RazorpayAdapter
from orchestrator.ports import OperationKind, OutcomeStatus, PaymentProvider
from orchestrator.secrets import Secret
from tests.adapters.contract import TIMEOUT, EmulatorControl, PaymentMethods, ProviderContract
from tests.emulators.razorpay import (
    APPROVED,
    CUSTOMER,
    DECLINED,
    KEY_ID,
    KEY_SECRET,
    RazorpayEmulator,
)


class TestRazorpayContract(ProviderContract):
    currency = "INR"

    @pytest.fixture
    def emulator(self) -> Iterator[RazorpayEmulator]:
        emulator = RazorpayEmulator()
        emulator.start()
        yield emulator
        emulator.stop()

    @pytest.fixture
    def provider(self, emulator: RazorpayEmulator) -> Iterator[RazorpayAdapter]:
        adapter = RazorpayAdapter(
            Secret(KEY_ID, "test"), Secret(KEY_SECRET, "test"), base_url=emulator.url
        )
        yield adapter
        adapter.close()

    @pytest.fixture
    def methods(self) -> PaymentMethods:
        return PaymentMethods(
            f"{CUSTOMER}:{APPROVED}", f"{CUSTOMER}:{DECLINED}", "insufficient_funds"
        )

    def test_should_cancel_an_authorization(
        self, provider: PaymentProvider, emulator: EmulatorControl, methods: PaymentMethods
    ) -> None:
        """Replaced: Razorpay has no void, so cancelling is refused and nothing is sent."""
        assert isinstance(emulator, RazorpayEmulator)
        payment_id, auth = self.authorize(provider, methods)
        sent = len(emulator.requests)
        op = self.op(
            OperationKind.CANCEL, payment_id, amount=1000, reference=auth.provider_reference,
            sequence=2,
        )  # fmt: skip
        outcome = provider.cancel(op, timeout=TIMEOUT)
        assert outcome.status is OutcomeStatus.FAILED
        assert "cannot void" in outcome.message
        assert len(emulator.requests) == sent
        assert provider.lookup(op, timeout=TIMEOUT) is None
        assert [m.kind for m in emulator.movements()] == ["authorization"]

    def test_should_partially_capture_several_times(
        self, provider: PaymentProvider, emulator: EmulatorControl, methods: PaymentMethods
    ) -> None:
        """Replaced: Razorpay captures once and in full; a partial capture is refused."""
        payment_id, auth = self.authorize(provider, methods)
        partial = self.op(
            OperationKind.CAPTURE, payment_id, amount=300, reference=auth.provider_reference,
            sequence=2,
        )  # fmt: skip
        refused = provider.capture(partial, timeout=TIMEOUT)
        assert refused.status is OutcomeStatus.FAILED
        assert "equal to the amount authorized" in refused.message
        assert provider.lookup(partial, timeout=TIMEOUT) is None
        full = self.op(
            OperationKind.CAPTURE, payment_id, amount=1000, reference=auth.provider_reference,
            sequence=3,
        )  # fmt: skip
        assert provider.capture(full, timeout=TIMEOUT).captured_amount == 1000
        assert [m.amount for m in emulator.movements() if m.kind == "capture"] == [1000]
