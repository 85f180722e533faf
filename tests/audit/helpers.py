"""Payments made through the application and the sandbox, for the audit commands to read."""

from __future__ import annotations

from orchestrator.application import Payments
from orchestrator.commands import CapturePayment, CreatePayment, RefundPayment
from orchestrator.domain.payment import Payment


def create(
    app: Payments,
    key: str,
    amount: int = 1000,
    *,
    method: str = "pm_card_visa",
    capture_mode: str = "automatic",
    reference: str = "",
) -> Payment:
    request = CreatePayment(key, amount, "USD", method, "US", capture_mode, reference)
    return app.create_payment(request, scope="default")


def capture(app: Payments, key: str, payment: Payment, amount: int) -> Payment:
    return app.capture_payment(CapturePayment(key, str(payment.id), amount), scope="default")


def refund(app: Payments, key: str, payment: Payment, amount: int, reason: str = "") -> Payment:
    request = RefundPayment(key, str(payment.id), amount, reason)
    return app.refund_payment(request, scope="default")


def a_few_payments(app: Payments) -> list[Payment]:
    """Captures, a partial refund and a decline: every common kind of event."""
    manual = create(app, "manual", capture_mode="manual", reference="order-1")
    capture(app, "capture-1", manual, 600)
    refund(app, "refund-1", manual, 200, "customer asked")
    automatic = create(app, "automatic", 2500)
    declined = create(app, "declined", method="pm_card_declined")
    return [manual, automatic, declined]
