"""Adyen's wire format: request bodies, amounts, answers, error bodies and standard webhooks.

Everything here is pure: JSON in, orchestrator types out. Sources (read, not guessed):
Checkout API v71 (Adyen/adyen-python-api-library ``Adyen/services/checkout/*_api.py``,
Adyen/adyen-node-api-library ``src/typings/checkout/paymentResponse.ts``/``paymentRequest.ts``),
docs.adyen.com pages "API idempotency", "Error codes", "Refusal reasons", "Currency codes",
"Make token payments", and juspay/hyperswitch ``connectors/adyen/transformers.rs``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from adapters._http import (
    Answer,
    JSONObject,
    MalformedAnswerError,
    as_object,
    get_int,
    get_list,
    get_str,
    json_object,
    optional_str,
)
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)

# --- amounts ----------------------------------------------------------------------------------

# Adyen's decimals minus ISO 4217's, for the currencies where Adyen's "Currency codes and minor
# units" page says "differs from standard" (CLP and ISK: 2 at Adyen, 0 in ISO 4217; CVE and IDR:
# 0 at Adyen, 2 in ISO 4217). Every other currency uses the ISO exponent, as our amounts do.
_ADYEN_MINUS_ISO_DECIMALS: Final = {"CLP": 2, "ISK": 2, "CVE": -2, "IDR": -2}


def to_adyen_value(amount: int, currency: str) -> int | None:
    """Our minor units as Adyen's ``amount.value``; None when Adyen cannot express the amount
    (a fraction of a currency Adyen takes without decimals, such as 1.50 IDR)."""
    shift = _ADYEN_MINUS_ISO_DECIMALS.get(currency, 0)
    scale = _scale(shift)
    if shift >= 0:
        return amount * scale
    return amount // scale if amount % scale == 0 else None


def from_adyen_value(value: int, currency: str) -> int:
    """Adyen's ``amount.value`` in our minor units."""
    shift = _ADYEN_MINUS_ISO_DECIMALS.get(currency, 0)
    return value * _scale(shift) if shift < 0 else value // _scale(shift)


def _scale(shift: int) -> int:
    scale: int = 10 ** abs(shift)
    return scale


def adyen_amount(value: int, currency: str) -> JSONObject:
    return {"value": value, "currency": currency}


# --- requests ---------------------------------------------------------------------------------

# Adyen's documented ``recurringProcessingModel`` values for payments with a stored token.
RECURRING_MODELS: Final = frozenset({"CardOnFile", "Subscription", "UnscheduledCardOnFile"})

# ``metadata`` limits from the Checkout v71 PaymentRequest: more is refused with error 177.
_METADATA_ENTRIES, _METADATA_KEY, _METADATA_VALUE = 20, 20, 80


@dataclass(frozen=True)
class StoredMethod:
    shopper_reference: str
    stored_payment_method_id: str


def stored_method(payment_method: str) -> StoredMethod | None:
    """``"<shopperReference>:<storedPaymentMethodId>"``: an Adyen token only exists together
    with the shopper it was stored for, and both are required to pay with it. Adyen's ids
    have no colon, so the last one separates them (a shopper reference may hold colons)."""
    shopper, sep, token = payment_method.rpartition(":")
    if not sep or not shopper or not token:
        return None
    return StoredMethod(shopper, token)


def payment_request(
    operation: ProviderOperation,
    *,
    value: int,
    method: StoredMethod,
    merchant_account: str,
    return_url: str,
    recurring_model: str,
) -> JSONObject:
    body: JSONObject = {
        "amount": adyen_amount(value, operation.currency),
        # our payment id: Adyen echoes it as merchantReference in answers and webhooks
        "reference": operation.payment_id,
        "merchantAccount": merchant_account,
        "paymentMethod": {
            "type": "scheme",
            "storedPaymentMethodId": method.stored_payment_method_id,
        },
        "shopperReference": method.shopper_reference,
        # Adyen: a later payment with a token is ContAuth, and so is any card payment made
        # without collecting the security code, which is always the case here.
        "shopperInteraction": "ContAuth",
        "recurringProcessingModel": recurring_model,
        # required by the v71 schema; card-on-file payments without 3D Secure never redirect
        "returnUrl": return_url,
    }
    if operation.capture:
        body["captureDelayHours"] = 0  # captured at once, whatever the account's default
    else:
        body["additionalData"] = {"manualCapture": "true"}  # held until we capture it
    metadata = _metadata(operation)
    if metadata:
        body["metadata"] = metadata
    return body


def _metadata(operation: ProviderOperation) -> dict[str, str]:
    """What of our metadata fits Adyen's limits (informational only: the full metadata stays
    in our own events), the caller's order reference first."""
    entries = [("orderReference", operation.reference)] if operation.reference else []
    entries += sorted(operation.metadata.items())
    fitting = [
        (key, value)
        for key, value in entries
        if len(key) <= _METADATA_KEY and len(value) <= _METADATA_VALUE
    ]
    return dict(fitting[:_METADATA_ENTRIES])


def modification_request(
    operation: ProviderOperation, *, merchant_account: str, value: int | None
) -> JSONObject:
    # The provider key is the modification's own reference: unique per operation (within
    # Adyen's 80 characters), so a webhook about this very capture or refund can be told
    # from one about another of the same payment.
    body: JSONObject = {"merchantAccount": merchant_account, "reference": operation.provider_key}
    if value is not None:
        body["amount"] = adyen_amount(value, operation.currency)
    return body


# --- answers ----------------------------------------------------------------------------------

# Result codes that ask for the shopper (3D Secure, redirects): a payment with a stored
# token and no shopper at hand cannot complete them, so it never authorises.
_AWAITING_SHOPPER: Final = frozenset(
    {
        "RedirectShopper",
        "IdentifyShopper",
        "ChallengeShopper",
        "PresentToShopper",
        "AuthenticationFinished",
        "AuthenticationNotRequired",
    }
)


def payment_outcome(answer: JSONObject, operation: ProviderOperation) -> ProviderOutcome:
    """A ``/payments`` answer (HTTP 200, declines included) as an outcome. Adyen's result codes:
    Authorised is final; Refused and Cancelled are the refusal categories of the "Refusal
    reasons" page; Error is final and technical; Pending and Received are not final."""
    code = get_str(answer, "resultCode")
    reason = optional_str(answer, "refusalReason")
    if code == "Authorised":
        return ProviderOutcome(
            OutcomeStatus.SUCCEEDED,
            provider_reference=get_str(answer, "pspReference"),
            # captureDelayHours 0: Adyen captures the whole authorisation at once
            captured_amount=operation.amount if operation.capture else 0,
        )
    if code in ("Refused", "Cancelled"):
        return ProviderOutcome(
            OutcomeStatus.DECLINED,
            provider_reference=optional_str(answer, "pspReference"),
            decline_code=optional_str(answer, "refusalReasonCode") or reason or code,
            message=reason or code,
        )
    if code == "Error":
        return ProviderOutcome(OutcomeStatus.FAILED, message=f"Adyen error: {reason or code}")
    if code in _AWAITING_SHOPPER:
        return ProviderOutcome(
            OutcomeStatus.FAILED,
            message=f"Adyen asks for the shopper ({code}); a stored-card payment cannot",
        )
    if code in ("Pending", "Received", "PartiallyAuthorised"):
        # A real answer from a healthy Adyen, but not a final one: re-sending the key
        # replays it, so only the AUTHORISATION webhook can settle it.
        raise ProviderOutcomeUnknown(
            f"Adyen answered {code}: the final result comes by webhook",
            breaker_failure=False,
            lookup_first=True,
        )
    raise MalformedAnswerError(f"resultCode {code!r}")


_FAILURE_EVENTS: Final = {
    OperationKind.CAPTURE: ("CAPTURE", "CAPTURE_FAILED"),
    OperationKind.CANCEL: ("CANCELLATION",),
    OperationKind.REFUND: ("REFUND", "REFUND_FAILED"),
}


def modification_outcome(
    answer: JSONObject, operation: ProviderOperation, notifications: Iterable[JSONObject]
) -> ProviderOutcome:
    """A capture, cancel or refund answer: Adyen only says ``received`` (HTTP 201) and reports
    the result later in a webhook. Received counts as success, as Adyen's accounting rules
    refuse what cannot succeed (over-captures, over-refunds) in that webhook; if the webhook
    for this very modification has already arrived and says it failed, that wins."""
    status = get_str(answer, "status")
    if status != "received":
        raise MalformedAnswerError(f"modification status {status!r}")
    psp = get_str(answer, "pspReference")
    for item in notifications:
        if (
            item.get("pspReference") == psp
            and item.get("eventCode") in _FAILURE_EVENTS[operation.kind]
            and (item.get("success") == "false" or str(item.get("eventCode")).endswith("_FAILED"))
        ):
            return ProviderOutcome(
                OutcomeStatus.FAILED, message=f"Adyen: {optional_str(item, 'reason') or 'failed'}"
            )
    return _modification_succeeded(
        operation,
        modification_psp=psp,
        payment_psp=get_str(answer, "paymentPspReference"),
        amount=answer.get("amount"),
    )


def _modification_succeeded(
    operation: ProviderOperation, *, modification_psp: str, payment_psp: str, amount: object
) -> ProviderOutcome:
    # Like every adapter: a refund is known by its own id, a capture or void by the payment's.
    reference = modification_psp if operation.kind is OperationKind.REFUND else payment_psp
    moved = 0
    if operation.kind is not OperationKind.CANCEL:
        money = as_object(amount)
        moved = from_adyen_value(get_int(money, "value"), get_str(money, "currency"))
    return ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=moved
    )


# --- errors -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdyenError:
    """Adyen's error body: ``{"status", "errorCode", "message", "errorType", "pspReference"}``."""

    status: int
    error_code: str
    message: str
    error_type: str = ""
    psp_reference: str = ""


def parse_error(response: Answer) -> AdyenError | None:
    """The error body of a non-2xx answer; None when it has none (a proxy's HTML page...)."""
    try:
        body = json_object(response)
    except MalformedAnswerError:
        return None
    status = body.get("status")
    return AdyenError(
        status=status if isinstance(status, int) else response.status_code,
        error_code=optional_str(body, "errorCode"),
        message=optional_str(body, "message"),
        error_type=optional_str(body, "errorType"),
        psp_reference=optional_str(body, "pspReference"),
    )


# --- standard webhooks ------------------------------------------------------------------------


def notification_items(body: bytes) -> list[JSONObject]:
    """The ``NotificationRequestItem`` objects of a standard webhook body."""
    try:
        document = as_object(json.loads(body))
    except ValueError as exc:
        raise MalformedAnswerError("webhook body is not JSON") from exc
    return [
        as_object(as_object(wrapper).get("NotificationRequestItem"))
        for wrapper in get_list(document, "notificationItems")
    ]


def signing_string(item: Mapping[str, object]) -> str:
    """``pspReference:originalReference:merchantAccountCode:merchantReference:value:currency:
    eventCode:success``, missing fields empty, nothing escaped (Adyen/adyen-python-api-library
    ``Adyen/util.py``)."""
    amount = item.get("amount")
    money = amount if isinstance(amount, dict) else {}
    fields = [
        item.get("pspReference"),
        item.get("originalReference"),
        item.get("merchantAccountCode"),
        item.get("merchantReference"),
        money.get("value"),
        money.get("currency"),
        item.get("eventCode"),
        item.get("success"),
    ]
    return ":".join("" if value is None else str(value) for value in fields)


def hmac_signature(item: Mapping[str, object], hmac_key_hex: str) -> str:
    """Base64 HMAC-SHA256 of the signing string under the hex-decoded key."""
    key = binascii.a2b_hex(hmac_key_hex)
    digest = hmac.new(key, signing_string(item).encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def has_valid_signature(item: Mapping[str, object], hmac_key_hex: str) -> bool:
    extra = item.get("additionalData")
    given = extra.get("hmacSignature") if isinstance(extra, dict) else None
    if not isinstance(given, str):
        return False
    expected = hmac_signature(item, hmac_key_hex)
    return hmac.compare_digest(given.encode(), expected.encode())


# --- lookup: what the webhooks say ------------------------------------------------------------

# refusalReason -> refusalReasonCode, from Adyen's "Refusal reasons" page: webhooks carry the
# reason only, and a decline found there should read like one answered directly.
_REFUSAL_CODES: Final = {
    "Refused": "2",
    "Referral": "3",
    "Acquirer Error": "4",
    "Blocked Card": "5",
    "Expired Card": "6",
    "Invalid Amount": "7",
    "Invalid Card Number": "8",
    "Issuer Unavailable": "9",
    "Not supported": "10",
    "3D Not Authenticated": "11",
    "Not enough balance": "12",
    "Acquirer Fraud": "14",
    "Cancelled": "15",
    "Shopper Cancelled": "16",
    "Invalid Pin": "17",
    "Pin tries exceeded": "18",
    "Pin validation not possible": "19",
    "FRAUD": "20",
    "Not Submitted": "21",
    "FRAUD-CANCELLED": "22",
}

_EVENTS: Final = {
    OperationKind.AUTHORIZE: "AUTHORISATION",
    OperationKind.CAPTURE: "CAPTURE",
    OperationKind.CANCEL: "CANCELLATION",
    OperationKind.REFUND: "REFUND",
}


def outcome_from_notifications(
    operation: ProviderOperation, items: list[JSONObject]
) -> ProviderOutcome | None:
    """What Adyen's webhooks say became of ``operation``; None when none is about it."""
    if operation.kind is OperationKind.AUTHORIZE:
        return _authorisation(operation, items)
    return _modification(operation, items)


def _authorisation(operation: ProviderOperation, items: list[JSONObject]) -> ProviderOutcome | None:
    value = to_adyen_value(operation.amount, operation.currency)
    if value is None:
        return None  # never sendable, so never sent
    found = [
        item
        for item in items
        if item.get("eventCode") == "AUTHORISATION"
        and item.get("merchantReference") == operation.payment_id
        and item.get("amount") == adyen_amount(value, operation.currency)
    ]
    if not found:
        return None
    item = found[-1]
    psp = get_str(item, "pspReference")
    if item.get("success") == "true":
        captured = operation.amount if operation.capture else 0
        return ProviderOutcome(
            OutcomeStatus.SUCCEEDED, provider_reference=psp, captured_amount=captured
        )
    reason = optional_str(item, "reason") or "Refused"
    return ProviderOutcome(
        OutcomeStatus.DECLINED,
        provider_reference=psp,
        decline_code=_REFUSAL_CODES.get(reason, reason),
        message=reason,
    )


def _modification(operation: ProviderOperation, items: list[JSONObject]) -> ProviderOutcome | None:
    found = [
        item
        for item in items
        if item.get("eventCode") == _EVENTS[operation.kind]
        and item.get("merchantReference") == operation.provider_key
        and item.get("originalReference") == operation.provider_reference
    ]
    if not found:
        return None
    item = found[-1]
    psp = get_str(item, "pspReference")
    later_failure = any(
        other.get("pspReference") == psp and str(other.get("eventCode")).endswith("_FAILED")
        for other in items
    )
    if item.get("success") != "true" or later_failure:
        reason = optional_str(item, "reason") or "failed"
        return ProviderOutcome(OutcomeStatus.FAILED, message=f"Adyen: {reason}")
    return _modification_succeeded(
        operation,
        modification_psp=psp,
        payment_psp=operation.provider_reference,
        amount=item.get("amount"),
    )
