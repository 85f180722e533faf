"""Razorpay's wire format, kept away from the port: error bodies and how an HTTP answer is
classified, the payment and refund status mappings, amounts, notes and the refund
idempotency key.

Sources (read, not guessed): razorpay/razorpay-python (``client.py``, ``errors.py``,
``resources/payment.py``), Razorpay's API reference as published in razorpay/markdown-docs
(``errors.md``, ``api/orders/*``, ``api/payments/capture.md``, ``api/refunds/*``,
``api/payments/recurring-payments/cards/create-subsequent-payments.md``) and juspay/hyperswitch's
Razorpay connector (status enums, error body).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, NoReturn

from adapters._http import (
    Answer,
    JSONObject,
    MalformedAnswerError,
    as_object,
    get_int,
    get_list,
    get_str,
    optional_str,
    retry_after_header,
)
from orchestrator.ports import (
    OutcomeStatus,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)

# The error codes razorpay-python tells apart (``errors.py``); any other code is a server error.
BAD_REQUEST_ERROR: Final = "BAD_REQUEST_ERROR"
GATEWAY_ERROR: Final = "GATEWAY_ERROR"
SERVER_ERROR: Final = "SERVER_ERROR"

# Reasons Razorpay gives for refusing a request before any payment was attempted.
_NOT_A_DECLINE: Final = frozenset({"", "NA", "input_validation_failed"})

# Razorpay takes three-decimal currencies in their smallest unit but wants the last digit 0
# (api/orders/create.md, "Watch Out!").
_THREE_DECIMAL: Final = frozenset({"KWD", "BHD", "OMR"})

# Notes hold our ids so that lookup can find what we made: at most 15 pairs of 256 characters.
NOTE_PAYMENT_ID: Final = "payorch_payment_id"
NOTE_PROVIDER_KEY: Final = "payorch_provider_key"
NOTE_REFERENCE: Final = "payorch_reference"
NOTE_REASON: Final = "payorch_reason"
_NOTE_MAX: Final = 256

# X-Refund-Idempotency takes 10+ characters of letters, digits, '-' and '_'; our provider keys
# hold ':', so the header carries a name-based UUID of the key: the same key, the same header.
_REFUND_KEY_NAMESPACE: Final = uuid.UUID("8a0f4c1e-5b7d-4f0a-9c3e-2d6b1a7e9f40")


# --- errors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RazorpayError:
    """The ``error`` object of a Razorpay error answer (errors.md)."""

    code: str = ""
    description: str = ""
    field: str = ""
    source: str = ""
    step: str = ""
    reason: str = ""
    payment_id: str = ""  # metadata.payment_id: the payment this error is about, if any
    order_id: str = ""  # metadata.order_id

    @property
    def is_payment_decline(self) -> bool:
        # A payment Razorpay attempted and that failed names itself in ``metadata``, with the
        # failure's ``reason`` (insufficient_funds, card_declined...). Requests refused before
        # any payment existed come with empty metadata and input_validation_failed or NA.
        return (
            self.code == BAD_REQUEST_ERROR
            and bool(self.payment_id)
            and self.reason not in _NOT_A_DECLINE
        )


def parse_error(body: object) -> RazorpayError | None:
    """The error of a parsed JSON body; ``None`` when the body carries none."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if not isinstance(error, dict):
        return None
    metadata = error.get("metadata")
    meta: JSONObject = metadata if isinstance(metadata, dict) else {}
    return RazorpayError(
        code=optional_str(error, "code"),
        description=optional_str(error, "description"),
        field=optional_str(error, "field"),
        source=optional_str(error, "source"),
        step=optional_str(error, "step"),
        reason=optional_str(error, "reason"),
        payment_id=optional_str(meta, "payment_id"),
        order_id=optional_str(meta, "order_id"),
    )


def error_of(response: Answer) -> RazorpayError | None:
    try:
        body: object = response.json()
    except ValueError:
        return None
    return parse_error(body)


# --- classification -----------------------------------------------------------------------


class Verdict(enum.Enum):
    SUCCESS = "success"  # 2xx: read the answer
    DECLINED = "declined"  # final: the payment was attempted and failed
    FAILED = "failed"  # final: refused, nothing moved
    NOT_REACHED = "not_reached"  # certainly not processed: safe to send again
    UNKNOWN = "unknown"  # may have moved money: look it up before anything else


@dataclass(frozen=True)
class Classification:
    verdict: Verdict
    message: str = ""
    retry_after: float | None = None
    breaker_failure: bool = False
    lookup_first: bool = False
    decline_code: str = ""
    provider_reference: str = ""

    def settle(self) -> ProviderOutcome:
        """The final outcome this stands for, or the error it stands for, raised."""
        if self.verdict is Verdict.DECLINED:
            return ProviderOutcome(
                OutcomeStatus.DECLINED,
                provider_reference=self.provider_reference,
                decline_code=self.decline_code,
                message=self.message,
            )
        if self.verdict is Verdict.FAILED:
            return ProviderOutcome(OutcomeStatus.FAILED, message=self.message)
        if self.verdict is Verdict.NOT_REACHED:
            raise ProviderNotReached(
                self.message, retry_after=self.retry_after, breaker_failure=self.breaker_failure
            )
        if self.verdict is Verdict.UNKNOWN:
            raise ProviderOutcomeUnknown(
                self.message,
                retry_after=self.retry_after,
                breaker_failure=self.breaker_failure,
                lookup_first=self.lookup_first,
            )
        raise ValueError("a successful answer has no outcome of its own: read its body")


def classify(
    status: int, headers: Mapping[str, str], error: RazorpayError | None
) -> Classification:
    """What an HTTP answer from Razorpay means for the money.

    Razorpay's payments API deduplicates nothing, so every "may have moved money" asks for a
    lookup first: sending again could charge or refund twice.
    """
    if 200 <= status < 300:
        return Classification(Verdict.SUCCESS)
    message = _describe(status, error)
    if status in (409, 429):
        return _busy(status, headers, message)
    code = error.code if error is not None else ""
    if status >= 500 or code in (GATEWAY_ERROR, SERVER_ERROR) or not 400 <= status < 500:
        # GATEWAY_ERROR (502) and SERVER_ERROR (500) may follow a payment the bank processed;
        # 1xx and 3xx are no answers Razorpay documents. Assume the worst.
        return Classification(Verdict.UNKNOWN, message, breaker_failure=True, lookup_first=True)
    if error is not None and error.is_payment_decline:
        return Classification(
            Verdict.DECLINED,
            message,
            decline_code=error.reason,
            provider_reference=error.payment_id,
        )
    # BAD_REQUEST_ERROR, including 401 for bad credentials: refused, nothing moved.
    return Classification(Verdict.FAILED, message)


def _busy(status: int, headers: Mapping[str, str], message: str) -> Classification:
    wait = retry_after_header(headers)
    if status == 429:
        # Razorpay's rate limiter refuses before processing (api/pagination: "watch for 429").
        return Classification(Verdict.NOT_REACHED, message, retry_after=wait)
    # 409 on X-Refund-Idempotency: the key is in use by a request still running, or by another
    # request already processed. Either way something may have happened under it.
    return Classification(Verdict.UNKNOWN, message, retry_after=wait, lookup_first=True)


def _describe(status: int, error: RazorpayError | None) -> str:
    if error is None or not (error.code or error.description):
        return f"razorpay answered HTTP {status}"
    detail = f"{error.code}: {error.description}" if error.description else error.code
    if error.reason and error.reason != "NA":
        detail += f" ({error.reason})"
    return f"razorpay answered HTTP {status} {detail}"


def malformed(what: str, exc: MalformedAnswerError) -> NoReturn:
    """A 2xx answer we cannot read: the request may well have moved money."""
    raise ProviderOutcomeUnknown(
        f"razorpay {what} answer malformed: {exc}", lookup_first=True
    ) from exc


# --- amounts, payment methods, notes, keys ------------------------------------------------


def razorpay_amount(amount: int, currency: str) -> int:
    """Our minor units in Razorpay's unit: the smallest sub-unit of the currency, which is the
    same number (api/orders/create.md: paise for INR, 295 for JPY 295, 295990 for KWD
    295.990). Raises ``ValueError`` for what Razorpay would refuse."""
    if amount <= 0:
        raise ValueError(f"amount {amount} is not positive")
    if currency.upper() in _THREE_DECIMAL and amount % 10:
        raise ValueError(
            f"Razorpay takes {currency} amounts with a last decimal of 0; {amount} is not"
        )
    return amount


def parse_payment_method(payment_method: str) -> tuple[str, str]:
    """``"<customer_id>:<token_id>"`` -> (customer_id, token_id).

    Razorpay charges a saved card, UPI or e-mandate through its token and the customer it
    belongs to (create/recurring requires both), so our payment method names the pair.
    """
    customer, sep, token = payment_method.partition(":")
    if not sep or not customer.startswith("cust_") or not token.startswith("token_"):
        raise ValueError(
            "a Razorpay payment method is '<customer_id>:<token_id>', such as "
            "'cust_Hwq7Ba6TDXl1ga:token_1Aa00000000001'"
        )
    return customer, token


def notes_of(entity: JSONObject) -> dict[str, str]:
    """An entity's notes. Razorpay renders empty notes as ``[]``, not ``{}``."""
    notes = entity.get("notes")
    if not isinstance(notes, dict):
        return {}
    return {k: v for k, v in notes.items() if isinstance(v, str)}


def our_notes(operation: ProviderOperation, **extra: str) -> dict[str, str]:
    notes = {NOTE_PAYMENT_ID: operation.payment_id, NOTE_PROVIDER_KEY: operation.provider_key}
    notes.update({name: value for name, value in extra.items() if value})
    return {name: value[:_NOTE_MAX] for name, value in notes.items()}


def refund_idempotency_key(provider_key: str) -> str:
    """The X-Refund-Idempotency value for a provider key: deterministic and 36 characters."""
    return str(uuid.uuid5(_REFUND_KEY_NAMESPACE, provider_key))


def collection_items(body: JSONObject) -> list[JSONObject]:
    """The ``items`` of a Razorpay collection (``{"entity": "collection", ...}``)."""
    return [as_object(item) for item in get_list(body, "items")]


# --- payments -----------------------------------------------------------------------------


class PaymentStatus(enum.StrEnum):
    """The payment states Razorpay documents (api/orders/fetch-payments.md)."""

    CREATED = "created"  # accepted, not processed yet (file-based banks take a while)
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    REFUNDED = "refunded"  # captured, then refunded in full
    FAILED = "failed"


def payment_status(payment: JSONObject) -> PaymentStatus:
    value = get_str(payment, "status")
    try:
        return PaymentStatus(value)
    except ValueError:
        raise MalformedAnswerError(f"payment status {value!r}") from None


def authorization_outcome(payment: JSONObject, *, capture: bool) -> ProviderOutcome:
    """What a payment created for an authorization says about it."""
    reference = get_str(payment, "id")
    match payment_status(payment):
        case PaymentStatus.CREATED:
            # Razorpay has not heard from the bank yet: not an outage, and nothing to resend.
            raise ProviderOutcomeUnknown(
                f"razorpay payment {reference} is still being processed",
                breaker_failure=False,
                lookup_first=True,
            )
        case PaymentStatus.AUTHORIZED:
            return ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference=reference)
        case PaymentStatus.CAPTURED | PaymentStatus.REFUNDED:
            # only what this call captured: a later capture of ours is another operation
            captured = get_int(payment, "amount") if capture else 0
            return ProviderOutcome(
                OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=captured
            )
        case PaymentStatus.FAILED:
            return ProviderOutcome(
                OutcomeStatus.DECLINED,
                provider_reference=reference,
                decline_code=optional_str(payment, "error_reason")
                or optional_str(payment, "error_code"),
                message=optional_str(payment, "error_description"),
            )


def capture_outcome(payment: JSONObject) -> ProviderOutcome:
    """The answer to a capture: the payment, now captured in full."""
    status = payment_status(payment)
    if status is not PaymentStatus.CAPTURED:
        raise MalformedAnswerError(f"capture answered with payment status {status.value!r}")
    return ProviderOutcome(
        OutcomeStatus.SUCCEEDED,
        provider_reference=get_str(payment, "id"),
        captured_amount=get_int(payment, "amount"),
    )


def found_capture(payment: JSONObject, operation: ProviderOperation) -> ProviderOutcome | None:
    """A capture looked up through its payment. Razorpay captures a payment once and in full,
    so a captured payment of the amount we asked for is our capture."""
    match payment_status(payment):
        case PaymentStatus.CAPTURED | PaymentStatus.REFUNDED:
            amount = get_int(payment, "amount")
            if amount != operation.amount:
                return None  # Razorpay refuses any other capture amount: ours did not happen
            return ProviderOutcome(
                OutcomeStatus.SUCCEEDED,
                provider_reference=get_str(payment, "id"),
                captured_amount=amount,
            )
        case PaymentStatus.CREATED | PaymentStatus.AUTHORIZED | PaymentStatus.FAILED:
            return None


def payment_with_key(payments: list[JSONObject], key: str) -> JSONObject | None:
    """The payment created under our provider key, found by the notes we gave it."""
    for payment in payments:
        if notes_of(payment).get(NOTE_PROVIDER_KEY) == key:
            return payment
    return None


# --- refunds ------------------------------------------------------------------------------


class RefundStatus(enum.StrEnum):
    """Refund states (api/refunds/*; ``created`` as in hyperswitch's Razorpay connector)."""

    CREATED = "created"
    PENDING = "pending"  # Razorpay is processing it and will not let it go
    PROCESSED = "processed"
    FAILED = "failed"


def refund_outcome(refund: JSONObject) -> ProviderOutcome:
    value = get_str(refund, "status")
    try:
        status = RefundStatus(value)
    except ValueError:
        raise MalformedAnswerError(f"refund status {value!r}") from None
    reference = get_str(refund, "id")
    match status:
        case RefundStatus.CREATED | RefundStatus.PENDING | RefundStatus.PROCESSED:
            # accepted: Razorpay owns the refund from here (a rare later failure comes as a
            # refund.failed webhook, not as the answer to this call)
            return ProviderOutcome(
                OutcomeStatus.SUCCEEDED,
                provider_reference=reference,
                captured_amount=get_int(refund, "amount"),
                message="" if status is RefundStatus.PROCESSED else f"refund {status.value}",
            )
        case RefundStatus.FAILED:
            return ProviderOutcome(
                OutcomeStatus.FAILED, provider_reference=reference, message="refund failed"
            )


def found_refund(refunds: list[JSONObject], key: str) -> ProviderOutcome | None:
    for refund in refunds:
        if notes_of(refund).get(NOTE_PROVIDER_KEY) == key:
            return refund_outcome(refund)
    return None
