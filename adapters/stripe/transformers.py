"""Stripe's wire format, as pure functions: form encoding, idempotency keys, amounts, error
bodies, the classification of an HTTP answer, and PaymentIntent and Refund objects read into
port outcomes. Nothing here sends a request.

Sources: stripe-python ``_api_requestor.py`` (headers, ``specific_v1_api_error``),
``_encode.py`` (form encoding), ``_http_client.py`` (``_should_retry``); docs.stripe.com
``/api/idempotent_requests``, ``/api/errors``, ``/api/payment_intents``, ``/api/refunds``,
``/search``, ``/currencies``, ``/payments/multicapture``.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias
from urllib.parse import urlencode

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
    retry_after_header,
)
from orchestrator.ports import (
    OutcomeStatus,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)

DEFAULT_BASE_URL: Final = "https://api.stripe.com"
# Pinned so that the object shapes read below (latest_charge, amount_received) cannot change
# under us with the account's default version; overridable in the configuration.
DEFAULT_API_VERSION: Final = "2024-06-20"
MAX_KEY_LENGTH: Final = 255  # Stripe's limit for an Idempotency-Key
PAGE_SIZE: Final = 100  # the largest ``limit`` Stripe's list and search endpoints accept

# Our metadata on Stripe objects (keys at most 40 characters, values at most 500).
PAYMENT_ID: Final = "payment_id"
ORDER_REFERENCE: Final = "order_reference"
OPERATION_KEY: Final = "payorch_key"
CAPTURE_MARKER_PREFIX: Final = "payorch_capture_"

REFUND_REASONS: Final = frozenset({"duplicate", "fraudulent", "requested_by_customer"})

FormValue: TypeAlias = "str | int | bool | Mapping[str, FormValue]"


# --- requests -------------------------------------------------------------------------------


def form_encode(params: Mapping[str, FormValue]) -> str:
    """Stripe's v1 body: ``application/x-www-form-urlencoded`` with nested keys written
    ``metadata[payment_id]`` and booleans as ``true``/``false``; brackets left readable, as
    stripe-python sends them."""
    encoded = urlencode(list(_flatten(params, "")))
    return encoded.replace("%5B", "[").replace("%5D", "]")


def _flatten(params: Mapping[str, FormValue], prefix: str) -> Iterator[tuple[str, str]]:
    for name, value in params.items():
        key = f"{prefix}[{name}]" if prefix else name
        if isinstance(value, Mapping):
            yield from _flatten(value, key)
        elif isinstance(value, bool):
            yield key, "true" if value else "false"
        else:
            yield key, str(value)


def idempotency_key(provider_key: str, step: str = "") -> str:
    """The Idempotency-Key for one request of an operation (``step`` tells the requests of
    one operation apart). Deterministic, so a re-send carries the same key; a key longer than
    Stripe's 255 characters keeps its start and ends in a digest of the whole."""
    key = f"{provider_key}:{step}" if step else provider_key
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{key[: MAX_KEY_LENGTH - len(digest) - 1]}~{digest}"


def capture_marker(provider_key: str) -> str:
    """The metadata key a capture sets on its PaymentIntent (value: the amount it captured).
    Stripe keeps no per-capture object, so this is how a lookup finds one capture among
    several; a digest because metadata keys may not pass 40 characters."""
    return CAPTURE_MARKER_PREFIX + hashlib.sha256(provider_key.encode()).hexdigest()[:24]


def search_query(payment_id: str) -> str:
    """Search Query Language for the PaymentIntents made for our payment."""
    escaped = payment_id.replace("\\", "\\\\").replace("'", "\\'")
    return f"metadata['{PAYMENT_ID}']:'{escaped}'"


def create_params(
    operation: ProviderOperation, amount: int, *, multicapture: bool
) -> dict[str, FormValue]:
    metadata: dict[str, FormValue] = dict(operation.metadata)
    if operation.reference:
        metadata[ORDER_REFERENCE] = operation.reference
    metadata[PAYMENT_ID] = operation.payment_id
    metadata[OPERATION_KEY] = idempotency_key(operation.provider_key)
    params: dict[str, FormValue] = {
        "amount": amount,
        "currency": operation.currency.lower(),
        "capture_method": "automatic" if operation.capture else "manual",
        # Confirmed by the server, with no customer to send anywhere: without this Stripe
        # demands a return_url for redirect-based methods.
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
        "metadata": metadata,
    }
    if operation.payment_method:
        params["payment_method"] = operation.payment_method
    if multicapture and not operation.capture:
        params["payment_method_options"] = {"card": {"request_multicapture": "if_available"}}
    return params


def capture_params(
    operation: ProviderOperation, amount: int, *, multicapture: bool
) -> dict[str, FormValue]:
    params: dict[str, FormValue] = {
        "amount_to_capture": amount,
        "metadata": {capture_marker(operation.provider_key): str(operation.amount)},
    }
    if multicapture:
        # Keep the rest of the authorization for later captures (Stripe's default, true,
        # releases it); the port does not say which capture is the last.
        params["final_capture"] = False
    return params


def refund_params(operation: ProviderOperation, amount: int) -> dict[str, FormValue]:
    metadata: dict[str, FormValue] = {
        PAYMENT_ID: operation.payment_id,
        OPERATION_KEY: idempotency_key(operation.provider_key),
    }
    params: dict[str, FormValue] = {
        "payment_intent": operation.provider_reference,
        "amount": amount,
        "metadata": metadata,
    }
    if operation.reason in REFUND_REASONS:
        params["reason"] = operation.reason
    elif operation.reason:
        metadata["reason"] = operation.reason  # Stripe's reason is an enum; keep ours anyway
    return params


# --- amounts --------------------------------------------------------------------------------

# Stripe's unit is the ISO 4217 minor unit except here (docs.stripe.com/currencies): ISK is
# zero-decimal in ISO 4217 but stays two-decimal in Stripe's API (100 = 1 krona), and MGA is
# two-decimal in ISO 4217 but zero-decimal at Stripe. (multiply, divide) turns ours into Stripe's.
_SCALE: Final[Mapping[str, tuple[int, int]]] = {"ISK": (100, 1), "MGA": (1, 100)}
# Three-decimal currencies: Stripe requires the last digit to be 0.
_THREE_DECIMAL: Final = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})


class AmountError(ValueError):
    """An amount Stripe cannot take in that currency."""


def to_stripe_amount(amount: int, currency: str) -> int:
    code = currency.upper()
    multiply, divide = _SCALE.get(code, (1, 1))
    if amount % divide:
        raise AmountError(f"stripe takes {code} in whole units only: {amount} is not")
    value = amount * multiply // divide
    if code in _THREE_DECIMAL and value % 10:
        raise AmountError(f"stripe takes {code} amounts ending in 0 only: {amount} does not")
    return value


def from_stripe_amount(value: int, currency: str) -> int:
    multiply, divide = _SCALE.get(currency.upper(), (1, 1))
    return value * divide // multiply


# --- errors and their classification --------------------------------------------------------


@dataclass(frozen=True)
class StripeError:
    """The ``error`` member of a Stripe error answer."""

    type: str = ""
    code: str = ""
    decline_code: str = ""
    message: str = ""
    payment_intent: str = ""  # id of the PaymentIntent a card error concerns


def parse_error(response: Answer) -> StripeError | None:
    try:
        error = json_object(response).get("error")
    except MalformedAnswerError:
        return None
    if not isinstance(error, dict):
        return None
    intent = error.get("payment_intent")
    return StripeError(
        type=optional_str(error, "type"),
        code=optional_str(error, "code"),
        decline_code=optional_str(error, "decline_code"),
        message=optional_str(error, "message"),
        payment_intent=optional_str(intent, "id") if isinstance(intent, dict) else "",
    )


class Verdict(enum.Enum):
    SUCCESS = "success"  # 2xx: read the object
    DECLINED = "declined"  # final ProviderOutcome DECLINED
    FAILED = "failed"  # final ProviderOutcome FAILED: nothing moved, nothing will
    NOT_REACHED = "not_reached"  # ProviderNotReached: certainly not processed
    UNKNOWN = "unknown"  # ProviderOutcomeUnknown: may have moved money


@dataclass(frozen=True)
class Classification:
    verdict: Verdict
    reason: str = ""
    decline_code: str = ""
    retry_after: float | None = None
    breaker_failure: bool = False
    lookup_first: bool = False


def classify(status: int, headers: Mapping[str, str], error: StripeError | None) -> Classification:
    """What an HTTP answer from Stripe means for the operation."""
    if 200 <= status < 300:
        return Classification(Verdict.SUCCESS)
    answer = _Answer(
        status,
        error or StripeError(),
        retry_after_header(headers),
        # stripe-python's _should_retry: this header, when present, overrides the status.
        {"true": True, "false": False}.get(_header(headers, "stripe-should-retry") or ""),
    )
    if 400 <= status < 500:
        return _client_error(answer)
    if 500 <= status < 600:
        return _server_error(answer)
    # 1xx/3xx: nothing Stripe documents; it may follow a money movement, so ask first.
    return Classification(Verdict.UNKNOWN, answer.what, breaker_failure=True, lookup_first=True)


@dataclass(frozen=True)
class _Answer:
    status: int
    error: StripeError
    retry_after: float | None
    should_retry: bool | None  # Stripe-Should-Retry, when Stripe sent it

    @property
    def what(self) -> str:
        if self.status == 401:
            # Stripe's message quotes (part of) the key it refused: never repeat it.
            return "stripe refused the secret key (HTTP 401)"
        message = self.error.message or f"stripe answered HTTP {self.status}"
        return f"{message} [{self.error.code}]" if self.error.code else message


def _client_error(answer: _Answer) -> Classification:
    """4xx. The order is the policy: a decline is final whatever else is said; then what
    Stripe documents as not processed; then the idempotency layer; then the header."""
    error, what, wait = answer.error, answer.what, answer.retry_after
    if answer.status == 402:
        # stripe-python raises CardError for every 402; a decline is a business outcome.
        code = error.decline_code or error.code
        return Classification(Verdict.DECLINED, error.message or what, decline_code=code)
    if answer.status == 429 or (answer.status == 400 and error.code == "rate_limit"):
        # Rejected before any processing (and never stored under the key): back off.
        return Classification(Verdict.NOT_REACHED, what, retry_after=wait)
    if answer.status in (400, 404) and error.type == "idempotency_error":
        # The key was first used for another request, which may have moved money; every
        # re-send gets the same refusal, so only a lookup can tell.
        return Classification(Verdict.UNKNOWN, what, lookup_first=True)
    if answer.status == 409:
        # Another request with this key is still running: busy, not broken.
        return Classification(
            Verdict.UNKNOWN, what, retry_after=wait, lookup_first=answer.should_retry is False
        )
    if answer.should_retry is True:
        # Stripe says a re-send can succeed (a lock timeout, say): same key, no guess.
        return Classification(Verdict.UNKNOWN, what, retry_after=wait)
    return Classification(Verdict.FAILED, what)


def _server_error(answer: _Answer) -> Classification:
    # Stripe stores a 500 under the key once execution began and replays it to every
    # re-send (Stripe-Should-Retry: true says this one was not stored); 502/503/504 come
    # from in front of the API and are worth re-sending, unless Stripe says otherwise.
    stored = answer.status == 500 and answer.should_retry is not True
    return Classification(
        Verdict.UNKNOWN,
        answer.what,
        retry_after=answer.retry_after,
        breaker_failure=True,
        lookup_first=stored or answer.should_retry is False,
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


# --- PaymentIntents and Refunds -------------------------------------------------------------

_AUTOMATIC_CAPTURE: Final = frozenset({"automatic", "automatic_async"})


def authorization_outcome(intent: JSONObject, currency: str) -> ProviderOutcome:
    """What an authorization came to, from its PaymentIntent: confirm's answer, or what a
    lookup found later (statuses: docs.stripe.com/payments/paymentintents/lifecycle)."""
    reference = get_str(intent, "id")
    status = get_str(intent, "status")
    if status in ("requires_capture", "succeeded"):
        return ProviderOutcome(
            OutcomeStatus.SUCCEEDED,
            provider_reference=reference,
            captured_amount=_captured_by_authorization(intent, currency),
        )
    if status == "canceled":
        return _canceled_authorization(intent, reference)
    if status == "processing":
        # Accepted, result pending: a re-send only replays this, so ask again later.
        raise ProviderOutcomeUnknown(
            "stripe is still processing the payment", breaker_failure=False, lookup_first=True
        )
    if status == "requires_action":
        return ProviderOutcome(
            OutcomeStatus.FAILED,
            provider_reference=reference,
            message="the card asks for customer authentication (requires_action), "
            "which a server-side payment cannot give",
        )
    if status in ("requires_payment_method", "requires_confirmation"):
        return _not_authorized(intent, reference)
    raise MalformedAnswerError(f"PaymentIntent status {status!r}")


def _captured_by_authorization(intent: JSONObject, currency: str) -> int:
    # Only an automatic capture is part of the authorization; manual captures that came
    # later are operations of their own.
    if get_str(intent, "capture_method") not in _AUTOMATIC_CAPTURE:
        return 0
    return from_stripe_amount(get_int(intent, "amount_received"), currency)


def _canceled_authorization(intent: JSONObject, reference: str) -> ProviderOutcome:
    # Voided after authorizing is still an authorization that happened (the void is an
    # operation of its own); canceled before any successful charge never authorized.
    if intent.get("latest_charge") and intent.get("last_payment_error") is None:
        return ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference=reference)
    return ProviderOutcome(
        OutcomeStatus.FAILED, provider_reference=reference, message="canceled before authorizing"
    )


def _not_authorized(intent: JSONObject, reference: str) -> ProviderOutcome:
    error = intent.get("last_payment_error")
    if isinstance(error, dict):
        message = optional_str(error, "message")
        if error.get("type") == "card_error":
            code = optional_str(error, "decline_code") or optional_str(error, "code")
            return ProviderOutcome(
                OutcomeStatus.DECLINED, provider_reference=reference, decline_code=code,
                message=message,
            )  # fmt: skip
        return ProviderOutcome(OutcomeStatus.FAILED, provider_reference=reference, message=message)
    # Created, never confirmed: nothing was authorized, and only our key could confirm it.
    return ProviderOutcome(
        OutcomeStatus.FAILED,
        provider_reference=reference,
        message="the PaymentIntent was created but never confirmed: nothing was authorized",
    )


def capture_outcome(intent: JSONObject, operation: ProviderOperation) -> ProviderOutcome:
    # requires_capture: a multicapture that keeps the rest of the authorization open
    if get_str(intent, "status") not in ("succeeded", "requires_capture"):
        raise MalformedAnswerError(f"capture answered with status {intent['status']!r}")
    captured = found_capture(intent, operation.provider_key)
    if captured is None:
        raise MalformedAnswerError("capture answered without this capture's metadata")
    return ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=get_str(intent, "id"), captured_amount=captured
    )


def found_capture(intent: JSONObject, provider_key: str) -> int | None:
    """The amount the capture with this key took, from the marker it set; None when it
    did not happen. Stripe applies a capture's metadata with the capture itself."""
    value = metadata_of(intent).get(capture_marker(provider_key))
    if value is None:
        return None
    if not isinstance(value, str) or not value.isdigit():
        raise MalformedAnswerError("capture marker is not an amount")
    return int(value)


def cancel_outcome(intent: JSONObject) -> ProviderOutcome:
    if get_str(intent, "status") != "canceled":
        raise MalformedAnswerError(f"cancel answered with status {intent['status']!r}")
    return ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference=get_str(intent, "id"))


def found_cancel(intent: JSONObject) -> ProviderOutcome | None:
    """A PaymentIntent is canceled at most once, so a canceled one answers for the cancel
    (Stripe's own cancel of an authorization left 7 days also released the money)."""
    return cancel_outcome(intent) if get_str(intent, "status") == "canceled" else None


def refund_outcome(refund: JSONObject, currency: str) -> ProviderOutcome:
    """Refund statuses: pending, requires_action, succeeded, failed, canceled. Stripe has
    accepted a pending refund (and one waiting for the customer's details); it may still
    fail later, which Stripe reports by webhook."""
    status = get_str(refund, "status")
    reference = get_str(refund, "id")
    amount = from_stripe_amount(get_int(refund, "amount"), currency)
    if status in ("succeeded", "pending", "requires_action"):
        message = "" if status == "succeeded" else f"refund {status} at stripe"
        return ProviderOutcome(
            OutcomeStatus.SUCCEEDED, provider_reference=reference, captured_amount=amount,
            message=message,
        )  # fmt: skip
    if status in ("failed", "canceled"):
        reason = optional_str(refund, "failure_reason")
        return ProviderOutcome(
            OutcomeStatus.FAILED, provider_reference=reference,
            message=f"refund {status}" + (f": {reason}" if reason else ""),
        )  # fmt: skip
    raise MalformedAnswerError(f"refund status {status!r}")


def made_by(obj: JSONObject, provider_key: str) -> bool:
    """Whether this PaymentIntent or Refund was created by the operation with this key."""
    return metadata_of(obj).get(OPERATION_KEY) == idempotency_key(provider_key)


def metadata_of(obj: JSONObject) -> JSONObject:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        raise MalformedAnswerError("metadata is not an object")
    return metadata


def listed(page: JSONObject) -> list[JSONObject]:
    """The objects of a list or search_result answer."""
    return [as_object(item) for item in get_list(page, "data")]
