"""The commands the service accepts, validated into canonical form.

``validated()`` raises ``InvalidArgument`` before anything is read or written, and returns the
command with normalised values; ``parameters()`` is what the idempotency fingerprint covers
(everything but the key itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

from orchestrator.domain import validation
from orchestrator.domain.errors import InvalidArgument, PaymentNotFound
from orchestrator.domain.money import Money


def parse_payment_id(value: str) -> UUID:
    """Payment ids are opaque to callers: anything that is not one of ours is not found."""
    if not value:
        raise InvalidArgument("payment_id", "payment_id is required", reason="INVALID_PAYMENT_ID")
    try:
        return UUID(value)
    except ValueError:
        raise PaymentNotFound(value[:64]) from None


@dataclass(frozen=True)
class CreatePayment:
    idempotency_key: str
    amount: int
    currency: str
    payment_method: str
    region: str
    capture_mode: str = "automatic"
    reference: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    name = "CreatePayment"

    def validated(self) -> CreatePayment:
        money = Money.of(self.amount, self.currency)
        return replace(
            self,
            idempotency_key=validation.idempotency_key(self.idempotency_key),
            amount=money.amount,
            currency=money.currency,
            payment_method=validation.payment_method(self.payment_method),
            region=validation.region(self.region),
            capture_mode=validation.capture_mode(self.capture_mode),
            reference=validation.reference(self.reference),
            metadata=validation.metadata(self.metadata),
        )

    def parameters(self) -> dict[str, Any]:
        return {
            "amount": self.amount,
            "currency": self.currency,
            "payment_method": self.payment_method,
            "region": self.region,
            "capture_mode": self.capture_mode,
            "reference": self.reference,
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class CapturePayment:
    idempotency_key: str
    payment_id: str
    amount: int = 0  # 0: all that remains capturable

    name = "CapturePayment"

    def validated(self) -> CapturePayment:
        key = validation.idempotency_key(self.idempotency_key)
        return replace(self, idempotency_key=key, payment_id=str(parse_payment_id(self.payment_id)))

    def parameters(self) -> dict[str, Any]:
        return {"payment_id": self.payment_id, "amount": self.amount}


@dataclass(frozen=True)
class CancelPayment:
    idempotency_key: str
    payment_id: str

    name = "CancelPayment"

    def validated(self) -> CancelPayment:
        key = validation.idempotency_key(self.idempotency_key)
        return replace(self, idempotency_key=key, payment_id=str(parse_payment_id(self.payment_id)))

    def parameters(self) -> dict[str, Any]:
        return {"payment_id": self.payment_id}


@dataclass(frozen=True)
class RefundPayment:
    idempotency_key: str
    payment_id: str
    amount: int = 0  # 0: all that remains refundable
    reason: str = ""

    name = "RefundPayment"

    def validated(self) -> RefundPayment:
        key = validation.idempotency_key(self.idempotency_key)
        return replace(
            self,
            idempotency_key=key,
            payment_id=str(parse_payment_id(self.payment_id)),
            reason=validation.free_text(self.reason, field="reason"),
        )

    def parameters(self) -> dict[str, Any]:
        return {"payment_id": self.payment_id, "amount": self.amount, "reason": self.reason}


Command = CreatePayment | CapturePayment | CancelPayment | RefundPayment
