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


# What an operator may record: the values of ``orchestrator.domain.payment.Resolution``.
RESOLUTIONS = ("authorized", "captured", "declined", "not_found", "canceled", "refunded")


@dataclass(frozen=True)
class ResolvePayment:
    """An operator's record of what the provider's dashboard shows for an operation in review
    (``operation`` 0: the payment's operation in doubt)."""

    idempotency_key: str
    payment_id: str
    outcome: str
    note: str
    operation: int = 0
    provider_reference: str = ""

    name = "ResolvePayment"

    def validated(self) -> ResolvePayment:
        key = validation.idempotency_key(self.idempotency_key)
        outcome = self.outcome.replace("-", "_").lower()
        if outcome not in RESOLUTIONS:
            raise InvalidArgument(
                "outcome", f"outcome must be one of {', '.join(RESOLUTIONS)}",
                reason="INVALID_OUTCOME",
            )  # fmt: skip
        note = validation.free_text(self.note, field="note").strip()
        if not note:
            raise InvalidArgument("note", "a note is required", reason="INVALID_NOTE")
        if not isinstance(self.operation, int) or self.operation < 0:
            raise InvalidArgument(
                "operation", "operation must be a sequence number", reason="INVALID_OPERATION"
            )
        reference = validation.free_text(
            self.provider_reference, field="provider_reference", max_length=255
        )
        return replace(
            self,
            idempotency_key=key,
            payment_id=str(parse_payment_id(self.payment_id)),
            outcome=outcome,
            note=note,
            provider_reference=reference,
        )

    def parameters(self) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "outcome": self.outcome,
            "note": self.note,
            "operation": self.operation,
            "provider_reference": self.provider_reference,
        }


Command = CreatePayment | CapturePayment | CancelPayment | RefundPayment | ResolvePayment
