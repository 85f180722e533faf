"""The scenario suite every provider adapter passes, against an emulator of its provider.

Like Hyperswitch's connector tests: one list of scenarios, named for what a payment platform
needs (``test_should_authorize_and_capture``...), run by every adapter. A provider's test
module subclasses ``ProviderContract`` and supplies three fixtures:

- ``provider``: the adapter under test, pointed at the emulator;
- ``emulator``: an ``EmulatorControl`` for that emulator;
- ``methods``: a ``PaymentMethods`` naming the provider's test tokens.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

import pytest

from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    PaymentProvider,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)

TIMEOUT = 5.0


@dataclass(frozen=True)
class Movement:
    """One money movement as the emulator records it."""

    kind: str  # "authorization", "capture", "void" or "refund"
    amount: int
    currency: str


@dataclass(frozen=True)
class PaymentMethods:
    approved: str
    declined: str
    decline_code: str  # the decline code ``declined`` produces, as the adapter reports it


class EmulatorControl(Protocol):
    def movements(self) -> list[Movement]:
        """Every money movement the emulator performed, in order."""
        ...

    def drop_next_response(self) -> None:
        """Process the next request, then cut the connection without answering."""
        ...


class ProviderContract:
    currency = "USD"

    def op(
        self,
        kind: OperationKind,
        payment_id: str,
        *,
        amount: int,
        method: str = "",
        capture: bool = False,
        reference: str = "",
        sequence: int = 1,
    ) -> ProviderOperation:
        return ProviderOperation(
            kind=kind,
            payment_id=payment_id,
            provider_key=f"{payment_id}:{sequence}:{kind.value}:1",
            amount=amount,
            currency=self.currency,
            payment_method=method,
            capture=capture,
            provider_reference=reference,
            reference="order-1",
            reason="requested_by_customer" if kind is OperationKind.REFUND else "",
        )

    def authorize(
        self, provider: PaymentProvider, methods: PaymentMethods, *, amount: int = 1000,
        capture: bool = False,
    ) -> tuple[str, ProviderOutcome]:  # fmt: skip
        payment_id = str(uuid.uuid4())
        op = self.op(
            OperationKind.AUTHORIZE, payment_id, amount=amount, method=methods.approved,
            capture=capture,
        )  # fmt: skip
        return payment_id, provider.authorize(op, timeout=TIMEOUT)

    def test_should_authorize_only(
        self, provider: PaymentProvider, emulator: EmulatorControl, methods: PaymentMethods
    ) -> None:
        _, outcome = self.authorize(provider, methods)
        assert outcome.status is OutcomeStatus.SUCCEEDED
        assert outcome.provider_reference
        assert outcome.captured_amount == 0
        assert emulator.movements() == [Movement("authorization", 1000, self.currency)]

    def test_should_authorize_and_capture(
        self, provider: PaymentProvider, emulator: EmulatorControl, methods: PaymentMethods
    ) -> None:
        _, outcome = self.authorize(provider, methods, capture=True)
        assert outcome.status is OutcomeStatus.SUCCEEDED
        assert outcome.captured_amount == 1000
        assert emulator.movements() == [
            Movement("authorization", 1000, self.currency),
            Movement("capture", 1000, self.currency),
        ]

    def test_should_partially_capture_several_times(
        self, provider: PaymentProvider, emulator: EmulatorControl, methods: PaymentMethods
    ) -> None:
        payment_id, auth = self.authorize(provider, methods)
        for sequence, amount in ((2, 300), (3, 700)):
            op = self.op(
                OperationKind.CAPTURE, payment_id, amount=amount,
                reference=auth.provider_reference, sequence=sequence,
            )  # fmt: skip
            outcome = provider.capture(op, timeout=TIMEOUT)
            assert outcome.status is OutcomeStatus.SUCCEEDED, outcome
        captures = [m.amount for m in emulator.movements() if m.kind == "capture"]
        assert captures == [300, 700]

    def test_should_refuse_to_capture_more_than_authorized(
        self, provider: PaymentProvider, emulator: EmulatorControl, methods: PaymentMethods
    ) -> None:
        payment_id, auth = self.authorize(provider, methods)
        op = self.op(
            OperationKind.CAPTURE, payment_id, amount=1001, reference=auth.provider_reference,
            sequence=2,
        )  # fmt: skip
        outcome = provider.capture(op, timeout=TIMEOUT)
        assert outcome.status in (OutcomeStatus.FAILED, OutcomeStatus.DECLINED)
        assert [m.kind for m in emulator.movements()] == ["authorization"]

    def test_should_cancel_an_authorization(
        self, provider: PaymentProvider, emulator: EmulatorControl, methods: PaymentMethods
    ) -> None:
        payment_id, auth = self.authorize(provider, methods)
        op = self.op(
            OperationKind.CANCEL, payment_id, amount=1000, reference=auth.provider_reference,
            sequence=2,
        )  # fmt: skip
        assert provider.cancel(op, timeout=TIMEOUT).status is OutcomeStatus.SUCCEEDED
        assert [m.kind for m in emulator.movements()] == ["authorization", "void"]

    def _captured(self, provider: PaymentProvider, methods: PaymentMethods) -> tuple[str, str]:
        payment_id, auth = self.authorize(provider, methods)
        op = self.op(
            OperationKind.CAPTURE, payment_id, amount=1000, reference=auth.provider_reference,
            sequence=2,
        )  # fmt: skip
        assert provider.capture(op, timeout=TIMEOUT).status is OutcomeStatus.SUCCEEDED
        return payment_id, auth.provider_reference

    def test_should_refund_a_captured_payment(
        self, provider: PaymentProvider, emulator: EmulatorControl, methods: PaymentMethods
    ) -> None:
        payment_id, reference = self._captured(provider, methods)
        op = self.op(OperationKind.REFUND, payment_id, amount=1000, reference=reference, sequence=3)
        outcome = provider.refund(op, timeout=TIMEOUT)
        assert outcome.status is OutcomeStatus.SUCCEEDED
        assert outcome.provider_reference
        assert [m.amount for m in emulator.movements() if m.kind == "refund"] == [1000]

    def test_should_partially_refund_several_times(
        self, provider: PaymentProvider, emulator: EmulatorControl, methods: PaymentMethods
    ) -> None:
        payment_id, reference = self._captured(provider, methods)
        for sequence, amount in ((3, 250), (4, 750)):
            op = self.op(
                OperationKind.REFUND, payment_id, amount=amount, reference=reference,
                sequence=sequence,
            )  # fmt: skip
            assert provider.refund(op, timeout=TIMEOUT).status is OutcomeStatus.SUCCEEDED
        assert [m.amount for m in emulator.movements() if m.kind == "refund"] == [250, 750]

    def test_should_report_a_decline_as_an_outcome(
        self, provider: PaymentProvider, emulator: EmulatorControl, methods: PaymentMethods
    ) -> None:
        op = self.op(
            OperationKind.AUTHORIZE, str(uuid.uuid4()), amount=1000, method=methods.declined
        )
        outcome = provider.authorize(op, timeout=TIMEOUT)
        assert outcome.status is OutcomeStatus.DECLINED
        assert outcome.decline_code == methods.decline_code
        assert emulator.movements() == []

    def test_should_find_an_authorization_whose_answer_was_lost(
        self, provider: PaymentProvider, emulator: EmulatorControl, methods: PaymentMethods
    ) -> None:
        payment_id = str(uuid.uuid4())
        op = self.op(OperationKind.AUTHORIZE, payment_id, amount=1000, method=methods.approved)
        emulator.drop_next_response()
        with pytest.raises(ProviderOutcomeUnknown):
            provider.authorize(op, timeout=TIMEOUT)
        found = provider.lookup(op, timeout=TIMEOUT)
        assert found is not None
        assert found.status is OutcomeStatus.SUCCEEDED
        assert found.provider_reference
        assert [m.kind for m in emulator.movements()] == ["authorization"]

    def test_should_find_a_refund_whose_answer_was_lost(
        self, provider: PaymentProvider, emulator: EmulatorControl, methods: PaymentMethods
    ) -> None:
        payment_id, reference = self._captured(provider, methods)
        op = self.op(OperationKind.REFUND, payment_id, amount=400, reference=reference, sequence=3)
        emulator.drop_next_response()
        with pytest.raises(ProviderOutcomeUnknown):
            provider.refund(op, timeout=TIMEOUT)
        found = provider.lookup(op, timeout=TIMEOUT)
        assert found is not None and found.status is OutcomeStatus.SUCCEEDED
        assert [m.amount for m in emulator.movements() if m.kind == "refund"] == [400]

    def test_should_know_nothing_of_an_operation_never_sent(
        self, provider: PaymentProvider, emulator: EmulatorControl, methods: PaymentMethods
    ) -> None:
        op = self.op(
            OperationKind.AUTHORIZE, str(uuid.uuid4()), amount=1000, method=methods.approved
        )
        assert provider.lookup(op, timeout=TIMEOUT) is None
