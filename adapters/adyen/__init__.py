"""The Adyen adapter: the ``PaymentProvider`` port over Adyen's Checkout API v71.

Authorize is ``POST /payments`` with a stored card (``"<shopperReference>:<storedPaymentMethodId>"``
as the payment method); capture, cancel and refund are ``POST /payments/{pspReference}/captures``,
``/cancels`` and ``/refunds``. Every POST carries ``X-API-Key`` and ``Idempotency-Key`` (the
operation's provider key); Adyen replays its first answer for a key it has processed.

Adyen has no API that reads a payment back, by pspReference or by merchant reference: its
documented way to learn the outcome of a request whose answer was lost is the webhook. So
``lookup`` sends nothing: it reads the standard webhooks recorded in ``AdyenNotifications``
(verified with the HMAC key by whoever receives them) and answers None when none is about the
operation, which for Adyen means "no evidence yet", never "certainly not processed".
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from adapters._http import (
    Answer,
    HttpAdapter,
    JSONObject,
    MalformedAnswerError,
    ProviderHttp,
    json_object,
    retry_after_header,
)
from adapters._webhooks import webhook_secrets
from adapters.adyen.transformers import (
    RECURRING_MODELS,
    AdyenError,
    has_valid_signature,
    modification_outcome,
    modification_request,
    notification_items,
    outcome_from_notifications,
    parse_error,
    payment_outcome,
    payment_request,
    stored_method,
    to_adyen_value,
)
from adapters.adyen.webhooks import AdyenWebhooks
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)
from orchestrator.secrets import Secret, secret_from

__all__ = [
    "TEST_BASE_URL",
    "AdyenAdapter",
    "AdyenNotifications",
    "AdyenWebhooks",
    "Classification",
    "Verdict",
    "classify",
    "from_config",
]

TEST_BASE_URL: Final = "https://checkout-test.adyen.com/v71"
LIVE_BASE_URL: Final = "https://{prefix}-checkout-live.adyenpayments.com/checkout/v71"
MAX_IDEMPOTENCY_KEY: Final = 64  # Adyen's documented limit


# --- classification -----------------------------------------------------------------------------


class Verdict(enum.Enum):
    ANSWER = "answer"  # 2xx: the body says what happened
    FAILED = "failed"  # final, and nothing moved
    NOT_REACHED = "not_reached"  # certainly not processed
    UNKNOWN = "unknown"  # may have moved money


@dataclass(frozen=True)
class Classification:
    verdict: Verdict
    reason: str
    retry_after: float | None = None
    breaker_failure: bool = False
    lookup_first: bool = False

    def settle(self) -> ProviderOutcome:
        """The outcome of a final answer; raises the error every other verdict stands for."""
        if self.verdict is Verdict.FAILED:
            return ProviderOutcome(OutcomeStatus.FAILED, message=self.reason)
        if self.verdict is Verdict.NOT_REACHED:
            raise ProviderNotReached(
                self.reason, retry_after=self.retry_after, breaker_failure=self.breaker_failure
            )
        if self.verdict is Verdict.UNKNOWN:
            raise ProviderOutcomeUnknown(
                self.reason,
                retry_after=self.retry_after,
                breaker_failure=self.breaker_failure,
                lookup_first=self.lookup_first,
            )
        raise ValueError("a 2xx answer is read, not settled")


@dataclass(frozen=True)
class _Row:
    """One row of the table: when it applies, and what it means."""

    applies: Callable[[int, str, bool], bool]  # (HTTP status, Adyen errorCode, transient?)
    verdict: Verdict
    label: str
    breaker_failure: bool = False
    lookup_first: bool = False


# First match wins. Declines are 200s, read from the body; transport failures never get here
# (ProviderHttp.send classifies them before any answer exists).
_ROWS: Final = (
    _Row(lambda status, code, transient: 200 <= status < 300, Verdict.ANSWER, "answered"),
    _Row(lambda status, code, transient: status == 429, Verdict.NOT_REACHED, "rate limited"),
    # 704 "request already processed or in progress": the first request under this key is
    # still running and its answer will be replayed. Busy, not unhealthy.
    _Row(
        lambda status, code, transient: status in (409, 422) and code == "704",
        Verdict.UNKNOWN,
        "still processing this key",
    ),
    _Row(lambda status, code, transient: status == 409, Verdict.UNKNOWN, "conflict"),
    # Adyen: a transient error is not stored for the key; the next request with it is
    # processed as if it were the first. So re-send, with the same key.
    _Row(
        lambda status, code, transient: transient,
        Verdict.UNKNOWN,
        "transient error",
        breaker_failure=True,
    ),
    # A non-transient error is stored as the key's final result and replayed to any re-send,
    # yet the request may have reached the issuer: ask what happened, do not re-send.
    _Row(
        lambda status, code, transient: status >= 500,
        Verdict.UNKNOWN,
        "error",
        breaker_failure=True,
        lookup_first=True,
    ),
    _Row(
        lambda status, code, transient: status in (401, 403),
        Verdict.FAILED,
        "refused our credentials",
    ),
    _Row(
        lambda status, code, transient: 400 <= status < 500,
        Verdict.FAILED,
        "refused the request",
    ),
)
_UNEXPECTED: Final = _Row(
    lambda status, code, transient: True,
    Verdict.UNKNOWN,
    "answered unexpectedly",
    breaker_failure=True,
    lookup_first=True,
)


def classify(status: int, headers: Mapping[str, str], error: AdyenError | None) -> Classification:
    """What an HTTP answer from Adyen means for money: the first row of ``_ROWS`` that applies."""
    hints = {name.lower(): value for name, value in headers.items()}
    transient = hints.get("transient-error", "").strip().lower() == "true"
    code = error.error_code if error else ""
    row = next((r for r in _ROWS if r.applies(status, code, transient)), _UNEXPECTED)
    return Classification(
        row.verdict,
        f"Adyen {row.label}: {_said(status, error)}",
        retry_after=retry_after_header(hints),
        breaker_failure=row.breaker_failure,
        lookup_first=row.lookup_first,
    )


def _said(status: int, error: AdyenError | None) -> str:
    if error is None or not (error.error_code or error.message):
        return f"HTTP {status}"
    return f"HTTP {status} {error.error_type or 'error'} {error.error_code}: {error.message}"


# --- webhooks -----------------------------------------------------------------------------------


class AdyenNotifications:
    """Adyen's standard webhook items, once verified: what the adapter knows of Adyen's results
    without asking (Adyen has nothing to ask). Fed by whatever receives Adyen's webhooks;
    thread-safe; keeps the newest ``keep`` items."""

    def __init__(self, *, keep: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._items: deque[JSONObject] = deque(maxlen=keep)
        self._seen: set[tuple[object, object, object]] = set()

    def accept(self, body: bytes, hmac_key_hex: str) -> int:
        """Records the items of a webhook body if every one carries a valid HMAC signature
        (raises ValueError otherwise, recording none). Returns how many were new."""
        items = notification_items(body)
        if not all(has_valid_signature(item, hmac_key_hex) for item in items):
            raise ValueError("Adyen webhook with a missing or wrong HMAC signature")
        return sum(self.record(item) for item in items)

    def record(self, item: Mapping[str, object]) -> bool:
        """Records one item that the caller has verified; False if it was known (Adyen
        delivers at least once and retries)."""
        identity = (item.get("pspReference"), item.get("eventCode"), item.get("success"))
        with self._lock:
            if identity in self._seen:
                return False
            if len(self._items) == self._items.maxlen:
                oldest = self._items[0]
                self._seen.discard(
                    (oldest.get("pspReference"), oldest.get("eventCode"), oldest.get("success"))
                )
            self._seen.add(identity)
            self._items.append(dict(item))
            return True

    def items(self) -> list[JSONObject]:
        with self._lock:
            return list(self._items)


# --- the adapter --------------------------------------------------------------------------------

Reader = Callable[[JSONObject], ProviderOutcome]


class AdyenAdapter(HttpAdapter):
    """``PaymentProvider`` for Adyen's Checkout API at ``base_url``, and ``WebhookVerifier`` for
    its standard webhooks when ``webhook_secrets`` (the endpoint's hex HMAC keys) are given;
    every verified item also goes to ``notifications``, where lookups find it. Thread-safe."""

    # Adyen deduplicates POSTs by Idempotency-Key (company-account scope, kept >= 31 days).
    honors_idempotency_keys = True

    def __init__(
        self,
        base_url: str = TEST_BASE_URL,
        *,
        api_key: Secret,
        merchant_account: str,
        return_url: str,
        name: str = "adyen",
        recurring_model: str = "CardOnFile",
        connect_timeout: float = 1.0,
        notifications: AdyenNotifications | None = None,
        webhook_secrets: Sequence[Secret] = (),
    ) -> None:
        if recurring_model not in RECURRING_MODELS:
            allowed = ", ".join(sorted(RECURRING_MODELS))
            raise ValueError(f"{name}: recurring_processing_model must be one of {allowed}")
        self.name = name
        self.merchant_account = merchant_account
        self.return_url = return_url
        self.recurring_model = recurring_model
        self.notifications = notifications or AdyenNotifications()
        self._webhooks = (
            AdyenWebhooks(webhook_secrets, record=self.notifications.record)
            if webhook_secrets
            else None
        )
        self._api_key = api_key
        self._http = ProviderHttp(
            name,
            base_url,
            connect_timeout=connect_timeout,
            honors_idempotency_keys=self.honors_idempotency_keys,
        )

    # --- the port -------------------------------------------------------------------------------

    def authorize(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        method = stored_method(operation.payment_method)
        if method is None:
            return _not_sent("payment_method must be '<shopperReference>:<storedPaymentMethodId>'")
        value = to_adyen_value(operation.amount, operation.currency)
        if value is None:
            return _not_sent(f"Adyen takes {operation.currency} without the fraction given")
        body = payment_request(
            operation,
            value=value,
            method=method,
            merchant_account=self.merchant_account,
            return_url=self.return_url,
            recurring_model=self.recurring_model,
        )
        read = _reader(payment_outcome, operation)
        return self._post(operation, "/payments", body, timeout, read)

    def capture(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return self._modify(operation, "captures", timeout)

    def cancel(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return self._modify(operation, "cancels", timeout)

    def refund(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return self._modify(operation, "refunds", timeout)

    def lookup(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome | None:
        """What Adyen's webhooks say about ``operation``. Sends nothing: the only request that
        could "look up" is a re-send with the same key, and that would make the payment if it
        was never made. None means no webhook about it has arrived (yet)."""
        return outcome_from_notifications(operation, self.notifications.items())

    # --- HTTP -----------------------------------------------------------------------------------

    def _modify(self, operation: ProviderOperation, action: str, timeout: float) -> ProviderOutcome:
        if not operation.provider_reference:
            return _not_sent("no provider reference")
        value = None
        if operation.kind is not OperationKind.CANCEL:
            value = to_adyen_value(operation.amount, operation.currency)
            if value is None:
                return _not_sent(f"Adyen takes {operation.currency} without the fraction given")
        body = modification_request(operation, merchant_account=self.merchant_account, value=value)
        path = f"/payments/{quote(operation.provider_reference, safe='')}/{action}"

        def read(answer: JSONObject) -> ProviderOutcome:
            return modification_outcome(answer, operation, self.notifications.items())

        return self._post(operation, path, body, timeout, read)

    def _post(
        self,
        operation: ProviderOperation,
        path: str,
        body: JSONObject,
        timeout: float,
        read: Reader,
    ) -> ProviderOutcome:
        if len(operation.provider_key) > MAX_IDEMPOTENCY_KEY:
            return _not_sent(f"provider key longer than Adyen's {MAX_IDEMPOTENCY_KEY} characters")
        response = self._http.send(
            "POST",
            path,
            timeout=timeout,
            what=operation.kind.value,
            key=operation.provider_key,
            json=body,
            headers={
                "X-API-Key": self._api_key.reveal(),
                "Idempotency-Key": operation.provider_key,
            },
        )
        return _interpret(response, read)


def _reader(
    outcome: Callable[[JSONObject, ProviderOperation], ProviderOutcome],
    operation: ProviderOperation,
) -> Reader:
    return lambda answer: outcome(answer, operation)


def _interpret(response: Answer, read: Reader) -> ProviderOutcome:
    status = response.status_code
    error = None if 200 <= status < 300 else parse_error(response)
    verdict = classify(status, response.headers, error)
    if verdict.verdict is not Verdict.ANSWER:
        return verdict.settle()
    try:
        return read(json_object(response))
    except MalformedAnswerError as exc:
        # Re-sending would replay the same answer: only a webhook can tell.
        raise ProviderOutcomeUnknown(f"Adyen answer malformed: {exc}", lookup_first=True) from exc


def _not_sent(reason: str) -> ProviderOutcome:
    """Refused before anything was sent: nothing can have moved."""
    return ProviderOutcome(OutcomeStatus.FAILED, message=reason)


# --- configuration ------------------------------------------------------------------------------


def from_config(name: str, spec: Mapping[str, Any]) -> AdyenAdapter:
    """An adapter from a ``[providers.<name>]`` table::

    type = "adyen"
    merchant_account = "YourMerchantAccount"
    return_url = "https://shop.example/checkout/return"
    api_key_env = "ADYEN_API_KEY"          # or api_key_file = "/run/secrets/adyen"
    # live_endpoint_prefix = "1797a841fbb37ca7-AdyenDemo"   (live; default: test)
    # base_url = "..."                     (overrides both)
    # recurring_processing_model = "CardOnFile" | "Subscription" | "UnscheduledCardOnFile"
    # connect_timeout = 1.0
    # webhook_secret_env = "ADYEN_HMAC_KEY"  (or _file: the webhook's hex HMAC key; no webhooks
    #                                         without it)
    # webhook_secret_previous_env = "ADYEN_HMAC_KEY_OLD"   (or _file: while a key is rotated)
    """
    api_key = secret_from(spec, "api_key", owner=name)
    base_url = str(spec.get("base_url") or "")
    if not base_url:
        prefix = str(spec.get("live_endpoint_prefix") or "")
        base_url = LIVE_BASE_URL.format(prefix=prefix) if prefix else TEST_BASE_URL
    return AdyenAdapter(
        base_url,
        api_key=api_key,
        merchant_account=_required(spec, "merchant_account", name),
        return_url=_required(spec, "return_url", name),
        name=name,
        recurring_model=str(spec.get("recurring_processing_model", "CardOnFile")),
        connect_timeout=float(spec.get("connect_timeout", 1.0)),
        webhook_secrets=webhook_secrets(spec, owner=name),
    )


def _required(spec: Mapping[str, Any], key: str, owner: str) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{owner}: {key} is required")
    return value
