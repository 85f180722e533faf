"""The Razorpay adapter: the ``PaymentProvider`` port over Razorpay's REST API (v1).

An authorization is an Order (``POST /v1/orders``: our payment id as ``receipt``, our ids in
``notes``, ``payment_capture`` per capture mode) charged server-side with the customer's saved
token (``POST /v1/payments/create/recurring``, the documented S2S call for saved cards, UPI
and e-mandates), then read back (``GET /v1/payments/{id}``), because that call answers with
the payment id only and a payment may stay ``created`` while the bank works.

Razorpay's payments API honours no idempotency key: a re-sent request is a second payment.
So ``honors_idempotency_keys`` is False, every "outcome unknown" asks for a lookup first, and
everything is findable by our ids: the Order by ``receipt``, the payment and the refund by
the provider key in their ``notes``. Refunds also carry the documented
``X-Refund-Idempotency`` header. Razorpay has no void: ``cancel`` says so (FAILED), and an
uncaptured authorization is refunded by Razorpay itself when its capture window ends.

Wire format, status mapping and error parsing live in ``transformers``; only
``orchestrator.ports`` types leave this package.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

from adapters._http import HttpAdapter, JSONObject, MalformedAnswerError, ProviderHttp, json_object
from adapters._webhooks import webhook_secrets
from adapters.razorpay.transformers import (
    NOTE_REASON,
    NOTE_REFERENCE,
    Classification,
    Verdict,
    authorization_outcome,
    capture_outcome,
    classify,
    collection_items,
    error_of,
    found_capture,
    found_refund,
    malformed,
    our_notes,
    parse_payment_method,
    payment_with_key,
    razorpay_amount,
    refund_idempotency_key,
    refund_outcome,
)
from adapters.razorpay.webhooks import RazorpayWebhooks
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderError,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)
from orchestrator.secrets import Secret, secret_from

__all__ = ["DEFAULT_BASE_URL", "RazorpayAdapter", "RazorpayWebhooks", "classify", "from_config"]

# One host for test and live mode: the key decides (api/authentication.md).
DEFAULT_BASE_URL: Final = "https://api.razorpay.com"

NO_VOID: Final = (
    "Razorpay cannot void an authorized payment: it has no cancel API. An uncaptured "
    "authorization is refunded to the customer by Razorpay when the capture window ends; "
    "to return the money sooner, capture it and refund it"
)


class _Settled(Exception):
    """A final answer met on the way: it ends the operation with this outcome."""

    def __init__(self, outcome: ProviderOutcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


class _Budget:
    """The whole ``timeout`` of a port call, shared by the requests it takes."""

    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            # raised before sending: the next request certainly did not happen
            raise ProviderNotReached("razorpay: time budget spent", breaker_failure=False)
        return left


class RazorpayAdapter(HttpAdapter):
    """``PaymentProvider`` for Razorpay, and ``WebhookVerifier`` for its webhooks when
    ``webhook_secrets`` (the secret set on the webhook, not the API key secret) are given.
    Thread-safe."""

    def __init__(
        self,
        key_id: Secret,
        key_secret: Secret,
        *,
        base_url: str = DEFAULT_BASE_URL,
        name: str = "razorpay",
        connect_timeout: float = 1.0,
        webhook_secrets: Sequence[Secret] = (),
    ) -> None:
        self.name = name
        self.honors_idempotency_keys = False
        self._webhooks = RazorpayWebhooks(webhook_secrets) if webhook_secrets else None
        self._key_id = key_id
        self._key_secret = key_secret
        self._http = ProviderHttp(
            name,
            base_url,
            connect_timeout=connect_timeout,
            honors_idempotency_keys=False,
        )

    def __repr__(self) -> str:
        return f"RazorpayAdapter(name={self.name!r}, base_url={self._http.base_url!r})"

    # --- the port ---------------------------------------------------------------------------

    def authorize(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        try:
            customer, token = parse_payment_method(operation.payment_method)
            amount = razorpay_amount(operation.amount, operation.currency)
        except ValueError as exc:
            return ProviderOutcome(OutcomeStatus.FAILED, message=str(exc))
        budget = _Budget(timeout)
        try:
            order_id, earlier = self._prepare(operation, amount, budget)
            if earlier is not None:
                # an earlier send under this very key got through: never charge twice
                return self._outcome_of(earlier, operation)
            payment_id = self._charge(
                operation, budget, order_id=order_id, customer=customer, token=token, amount=amount
            )
            return self._read_back(operation, payment_id, budget)
        except _Settled as settled:
            return settled.outcome

    def capture(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        if not operation.provider_reference:
            return ProviderOutcome(OutcomeStatus.FAILED, message="no provider reference")
        body: JSONObject = {"amount": operation.amount, "currency": operation.currency}
        try:
            payment = self._call(
                "POST", f"{_payment_path(operation)}/capture", _Budget(timeout), "capture",
                operation, body=body,
            )  # fmt: skip
        except _Settled as settled:
            return settled.outcome
        try:
            return capture_outcome(payment)
        except MalformedAnswerError as exc:
            malformed("capture", exc)

    def cancel(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return ProviderOutcome(OutcomeStatus.FAILED, message=NO_VOID)

    def refund(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        if not operation.provider_reference:
            return ProviderOutcome(OutcomeStatus.FAILED, message="no provider reference")
        try:
            amount = razorpay_amount(operation.amount, operation.currency)
        except ValueError as exc:
            return ProviderOutcome(OutcomeStatus.FAILED, message=str(exc))
        body: JSONObject = {
            "amount": amount,
            "notes": _notes(operation, **{NOTE_REASON: operation.reason}),
        }
        headers = {"X-Refund-Idempotency": refund_idempotency_key(operation.provider_key)}
        try:
            refund = self._call(
                "POST", f"{_payment_path(operation)}/refund", _Budget(timeout), "refund",
                operation, body=body, headers=headers,
            )  # fmt: skip
        except _Settled as settled:
            return settled.outcome
        try:
            return refund_outcome(refund)
        except MalformedAnswerError as exc:
            malformed("refund", exc)

    def lookup(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome | None:
        budget = _Budget(timeout)
        try:
            if operation.kind is OperationKind.AUTHORIZE:
                return self._find_authorization(operation, budget)
            if operation.kind is OperationKind.CAPTURE:
                return self._find_capture(operation, budget)
            if operation.kind is OperationKind.REFUND:
                return self._find_refund(operation, budget)
            return None  # cancel never sends anything Razorpay could have a record of
        except _Settled as settled:
            # a 4xx to a GET tells nothing about the operation itself
            raise ProviderOutcomeUnknown(
                f"razorpay lookup refused: {settled.outcome.message}", breaker_failure=False
            ) from None
        except MalformedAnswerError as exc:
            raise ProviderOutcomeUnknown(f"razorpay lookup answer malformed: {exc}") from exc

    # --- authorization ----------------------------------------------------------------------

    def _prepare(
        self, operation: ProviderOperation, amount: int, budget: _Budget
    ) -> tuple[str, JSONObject | None]:
        """The Order to charge and any payment already made on it under this key. Nothing
        here moves money, and a new attempt finds the Order again by its receipt, so an
        unclear answer on the way means "not reached" for the authorization."""
        try:
            return self._order_for(operation, amount, budget)
        except ProviderOutcomeUnknown as exc:
            raise ProviderNotReached(
                f"{exc.message} (before any payment was attempted)",
                retry_after=exc.retry_after,
                breaker_failure=exc.breaker_failure,
            ) from exc
        except MalformedAnswerError as exc:
            raise ProviderNotReached(
                f"razorpay answer malformed before any payment was attempted: {exc}"
            ) from exc

    def _order_for(
        self, operation: ProviderOperation, amount: int, budget: _Budget
    ) -> tuple[str, JSONObject | None]:
        # Reuse an Order made by an earlier attempt at this payment (receipts are meant to
        # be unique), unless it is paid or was made for other money.
        for order in self._orders(operation, budget, "authorize:find-order"):
            if order.get("status") == "paid":
                continue
            if order.get("amount") != amount or order.get("currency") != operation.currency:
                continue
            order_id = _id_of(order, "order")
            payments = self._order_payments(order_id, budget, "authorize:find-payment")
            return order_id, payment_with_key(payments, operation.provider_key)
        body: JSONObject = {
            "amount": amount,
            "currency": operation.currency,
            "receipt": operation.payment_id,
            "notes": _notes(operation, **{NOTE_REFERENCE: operation.reference}),
            "payment_capture": operation.capture,
        }
        order = self._call("POST", "/v1/orders", budget, "authorize:order", operation, body=body)
        return _id_of(order, "order"), None

    @staticmethod
    def _outcome_of(payment: JSONObject, operation: ProviderOperation) -> ProviderOutcome:
        try:
            return authorization_outcome(payment, capture=operation.capture)
        except MalformedAnswerError as exc:
            malformed("payment", exc)

    def _charge(
        self,
        operation: ProviderOperation,
        budget: _Budget,
        *,
        order_id: str,
        customer: str,
        token: str,
        amount: int,
    ) -> str:
        body: JSONObject = {
            "amount": amount,
            "currency": operation.currency,
            "order_id": order_id,
            "customer_id": customer,
            "token": token,
            "recurring": True,
            "notes": _notes(operation, **{NOTE_REFERENCE: operation.reference}),
        }
        # the payer's contact details, where the caller keeps them with the payment
        for name in ("email", "contact"):
            if operation.metadata.get(name):
                body[name] = operation.metadata[name]
        answer = self._call(
            "POST", "/v1/payments/create/recurring", budget, "authorize:payment", operation,
            body=body,
        )  # fmt: skip
        return _id_of(answer, "payment", "razorpay_payment_id")

    def _read_back(
        self, operation: ProviderOperation, payment_id: str, budget: _Budget
    ) -> ProviderOutcome:
        """The created payment's state. It exists now, so whatever stops us reading it leaves
        the outcome unknown, never "not reached"."""
        path = f"/v1/payments/{quote(payment_id, safe='')}"
        try:
            payment = self._call("GET", path, budget, "authorize:read", operation)
            return self._outcome_of(payment, operation)
        except ProviderOutcomeUnknown:
            raise
        except (ProviderError, _Settled) as exc:
            breaker = isinstance(exc, ProviderError) and exc.breaker_failure
            raise ProviderOutcomeUnknown(
                f"razorpay created payment {payment_id} but could not tell its state: {exc}",
                breaker_failure=breaker,
                lookup_first=True,
            ) from exc

    # --- lookup -----------------------------------------------------------------------------

    def _find_authorization(
        self, operation: ProviderOperation, budget: _Budget
    ) -> ProviderOutcome | None:
        for order in self._orders(operation, budget, "lookup:authorize:orders"):
            order_id = _id_of(order, "order")
            payments = self._order_payments(order_id, budget, "lookup:authorize:payments")
            payment = payment_with_key(payments, operation.provider_key)
            if payment is not None:
                return authorization_outcome(payment, capture=operation.capture)
        return None  # no Order, or an Order never charged under this key: nothing moved

    def _find_capture(
        self, operation: ProviderOperation, budget: _Budget
    ) -> ProviderOutcome | None:
        if not operation.provider_reference:
            return None
        payment = self._call("GET", _payment_path(operation), budget, "lookup:capture", operation)
        return found_capture(payment, operation)

    def _find_refund(self, operation: ProviderOperation, budget: _Budget) -> ProviderOutcome | None:
        if not operation.provider_reference:
            return None
        answer = self._call(
            "GET", f"{_payment_path(operation)}/refunds", budget, "lookup:refund", operation,
            params={"count": "100"},
        )  # fmt: skip
        return found_refund(collection_items(answer), operation.provider_key)

    def _orders(self, operation: ProviderOperation, budget: _Budget, what: str) -> list[JSONObject]:
        answer = self._call(
            "GET", "/v1/orders", budget, what, operation,
            params={"receipt": operation.payment_id, "count": "100"},
        )  # fmt: skip
        # a receipt filter that matched more loosely than we asked is no match of ours
        return [o for o in collection_items(answer) if o.get("receipt") == operation.payment_id]

    def _order_payments(self, order_id: str, budget: _Budget, what: str) -> list[JSONObject]:
        path = f"/v1/orders/{quote(order_id, safe='')}/payments"
        return collection_items(self._call("GET", path, budget, what))

    # --- HTTP -------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        budget: _Budget,
        what: str,
        operation: ProviderOperation | None = None,
        *,
        body: JSONObject | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> JSONObject:
        """One request: its JSON body on success; ``_Settled`` for a final refusal or
        decline; ``ProviderNotReached``/``ProviderOutcomeUnknown`` otherwise."""
        response = self._http.send(
            method,
            path,
            timeout=budget.remaining(),
            what=what,
            key=operation.provider_key if operation is not None else "",
            json=body,
            params=params,
            headers={"Authorization": self._authorization(), **(headers or {})},
        )
        verdict: Classification = classify(
            response.status_code, response.headers, error_of(response)
        )
        if verdict.verdict is Verdict.SUCCESS:
            try:
                return json_object(response)
            except MalformedAnswerError as exc:
                malformed(what, exc)
        raise _Settled(verdict.settle())

    def _authorization(self) -> str:
        # built per request so that the secret lives in one place only
        pair = f"{self._key_id.reveal()}:{self._key_secret.reveal()}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


def from_config(name: str, spec: Mapping[str, Any]) -> RazorpayAdapter:
    """A Razorpay adapter from its configuration table::

    [providers.razorpay-in]
    type = "razorpay"
    key_id_env = "RAZORPAY_KEY_ID"          # or key_id_file
    key_secret_file = "/run/secrets/rzp"    # or key_secret_env
    base_url = "https://api.razorpay.com"   # optional
    connect_timeout = 1.0                   # optional, seconds
    webhook_secret_env = "RAZORPAY_WEBHOOK_SECRET"   # optional (or _file): no webhooks without
    webhook_secret_previous_file = "/run/secrets/rzp-webhook-old"   # optional, while rotating
    """
    return RazorpayAdapter(
        secret_from(spec, "key_id", owner=name),
        secret_from(spec, "key_secret", owner=name),
        base_url=str(spec.get("base_url", DEFAULT_BASE_URL)),
        name=name,
        connect_timeout=float(spec.get("connect_timeout", 1.0)),
        webhook_secrets=webhook_secrets(spec, owner=name),
    )


def _payment_path(operation: ProviderOperation) -> str:
    return f"/v1/payments/{quote(operation.provider_reference, safe='')}"


def _notes(operation: ProviderOperation, **extra: str) -> JSONObject:
    return dict(our_notes(operation, **extra))


def _id_of(entity: JSONObject, what: str, name: str = "id") -> str:
    value = entity.get(name)
    if not isinstance(value, str) or not value:
        malformed(what, MalformedAnswerError(f"{name} is not a non-empty string"))
    return value
