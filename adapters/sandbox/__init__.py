"""The sandbox adapter: the ``PaymentProvider`` port spoken over HTTP to the sandbox provider.

Everything sandbox-specific (paths, JSON shapes, status codes, error types) stays in this
module; the orchestrator only ever sees ``ProviderOutcome`` and ``ProviderError``. The mapping
errs towards "outcome unknown" whenever money may have moved: a wrong "not reached" could
charge twice, a wrong "unknown" only costs a lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

from adapters._http import (
    Answer,
    HttpAdapter,
    JSONObject,
    MalformedAnswerError,
    ProviderHttp,
    as_object,
    get_int,
    get_list,
    get_str,
    json_object,
    optional_str,
    retry_after,
)
from adapters._webhooks import DEFAULT_TOLERANCE, webhook_secrets
from adapters.sandbox.server import SandboxServer, start_sandbox
from adapters.sandbox.webhooks import SandboxWebhooks, new_webhook_secret, sign_standard_webhook
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)
from orchestrator.secrets import Secret

__all__ = [
    "SandboxAdapter",
    "SandboxServer",
    "SandboxWebhooks",
    "from_config",
    "new_webhook_secret",
    "sign_standard_webhook",
    "start_sandbox",
]

_LIVE_STATUSES: Final = frozenset({"authorized", "captured", "voided"})

SuccessReader = Callable[[JSONObject, ProviderOperation], ProviderOutcome]


class SandboxAdapter(HttpAdapter):
    """``PaymentProvider`` and ``WebhookVerifier`` for the sandbox provider at ``base_url``.
    ``webhook_secrets`` are the Standard Webhooks secrets its webhooks are signed with (none:
    it takes no webhooks); ``payorch serve`` passes one it generated, in memory. Thread-safe."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str = "sandbox",
        connect_timeout: float = 1.0,
        honors_idempotency_keys: bool = True,
        webhook_secrets: Sequence[Secret] = (),
        webhook_tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        self.name = name
        self._webhooks = (
            SandboxWebhooks(webhook_secrets, tolerance=webhook_tolerance)
            if webhook_secrets
            else None
        )
        # The sandbox documents that it deduplicates Idempotency-Key (unless its
        # honor_idempotency fault is off: then configure this False, and the core looks
        # operations up instead of re-sending them).
        self.honors_idempotency_keys = honors_idempotency_keys
        self._http = ProviderHttp(
            name,
            base_url,
            connect_timeout=connect_timeout,
            honors_idempotency_keys=honors_idempotency_keys,
        )

    # --- the port ---------------------------------------------------------------------------

    def authorize(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        metadata = dict(operation.metadata)
        if operation.reference:
            metadata["order_reference"] = operation.reference
        body: JSONObject = {
            "amount": operation.amount,
            "currency": operation.currency,
            "payment_method": operation.payment_method,
            "capture": operation.capture,
            # our payment id, so that lookup can list everything made for this payment
            "reference": operation.payment_id,
            "metadata": metadata,
        }
        return self._post(operation, "/v1/payments", body, timeout, _authorized)

    def capture(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        body: JSONObject = {"amount": operation.amount}
        return self._follow_up(operation, "capture", body, timeout, _captured)

    def cancel(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return self._follow_up(operation, "void", {}, timeout, _voided)

    def refund(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        body: JSONObject = {"amount": operation.amount, "reason": operation.reason}
        return self._follow_up(operation, "refunds", body, timeout, _refunded)

    def lookup(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome | None:
        response = self._send(
            operation,
            "GET",
            "/v1/payments",
            timeout=timeout,
            params={"reference": operation.payment_id},
        )
        code = response.status_code
        if code == 429:
            raise ProviderNotReached(
                "sandbox lookup rate limited", retry_after=retry_after(response)
            )
        if code != 200:
            raise ProviderOutcomeUnknown(f"sandbox lookup answered HTTP {code}")
        try:
            payments = [as_object(p) for p in get_list(json_object(response), "data")]
            return _find(operation, payments)
        except MalformedAnswerError as exc:
            raise ProviderOutcomeUnknown(f"sandbox lookup answer malformed: {exc}") from exc

    # --- HTTP -------------------------------------------------------------------------------

    def _follow_up(
        self,
        operation: ProviderOperation,
        action: str,
        body: JSONObject,
        timeout: float,
        read_success: SuccessReader,
    ) -> ProviderOutcome:
        if not operation.provider_reference:
            # nothing can be sent without the provider's id, so nothing can have moved
            return ProviderOutcome(OutcomeStatus.FAILED, message="no provider reference")
        path = f"/v1/payments/{quote(operation.provider_reference, safe='')}/{action}"
        return self._post(operation, path, body, timeout, read_success)

    def _post(
        self,
        operation: ProviderOperation,
        path: str,
        body: JSONObject,
        timeout: float,
        read_success: SuccessReader,
    ) -> ProviderOutcome:
        response = self._send(operation, "POST", path, timeout=timeout, body=body)
        return _interpret(response, operation, read_success)

    def _send(
        self,
        operation: ProviderOperation,
        method: str,
        path: str,
        *,
        timeout: float,
        body: JSONObject | None = None,
        params: dict[str, str] | None = None,
    ) -> Answer:
        what = operation.kind.value if method == "POST" else f"lookup:{operation.kind.value}"
        headers = {"Idempotency-Key": operation.provider_key} if method == "POST" else {}
        return self._http.send(
            method,
            path,
            timeout=timeout,
            what=what,
            key=operation.provider_key,
            json=body,
            params=params,
            headers=headers,
        )


# --- answers ------------------------------------------------------------------------------


def _interpret(
    response: Answer, operation: ProviderOperation, read_success: SuccessReader
) -> ProviderOutcome:
    code = response.status_code
    if code == 429:
        raise ProviderNotReached(
            "sandbox rate limited", retry_after=retry_after(response), breaker_failure=False
        )
    if code == 409:
        raise ProviderOutcomeUnknown(
            "sandbox is still processing this provider key",
            retry_after=retry_after(response),
            breaker_failure=False,
        )
    if 200 <= code < 300:
        try:
            return read_success(json_object(response), operation)
        except MalformedAnswerError as exc:
            raise ProviderOutcomeUnknown(f"sandbox answer malformed: {exc}") from exc
    if 400 <= code < 500:
        return _client_error(code, response)
    if code == 500 and _error_object(response).get("type") == "api_error":
        # The sandbox documents its api_error as raised before processing: nothing moved.
        raise ProviderNotReached("sandbox api_error (documented as not processed)")
    # Any other 5xx, and anything else we do not understand, may follow a money movement.
    raise ProviderOutcomeUnknown(f"sandbox answered HTTP {code}")


def _client_error(code: int, response: Answer) -> ProviderOutcome:
    error = _error_object(response)
    kind = error.get("type")
    message = optional_str(error, "message") or f"sandbox answered HTTP {code}"
    if code == 400 and kind == "idempotency_error":
        # an earlier request under this key may have moved money; never guess
        raise ProviderOutcomeUnknown(f"sandbox refused the provider key: {message}")
    if code == 402 and kind == "card_error":
        payment = error.get("payment")
        reference = optional_str(payment, "id") if isinstance(payment, dict) else ""
        return ProviderOutcome(
            OutcomeStatus.DECLINED,
            provider_reference=reference,
            decline_code=optional_str(error, "decline_code") or optional_str(error, "code"),
            message=message,
        )
    return ProviderOutcome(OutcomeStatus.FAILED, message=message)


def _error_object(response: Answer) -> JSONObject:
    """The ``error`` member of an error answer; empty when there is none."""
    try:
        error = json_object(response).get("error")
    except MalformedAnswerError:
        return {}
    return error if isinstance(error, dict) else {}


def _authorized(payment: JSONObject, operation: ProviderOperation) -> ProviderOutcome:
    if get_str(payment, "status") not in ("authorized", "captured"):
        raise MalformedAnswerError(f"authorization answered with status {payment['status']!r}")
    return ProviderOutcome(
        OutcomeStatus.SUCCEEDED,
        provider_reference=get_str(payment, "id"),
        captured_amount=get_int(payment, "amount_captured"),
    )


def _captured(payment: JSONObject, operation: ProviderOperation) -> ProviderOutcome:
    captures = [as_object(c) for c in get_list(payment, "captures")]
    if not captures:
        raise MalformedAnswerError("capture answered without captures")
    ours = [c for c in captures if c.get("idempotency_key") == operation.provider_key]
    # the answer is the payment as this capture left it, so the last capture is ours
    capture = ours[-1] if ours else captures[-1]
    return ProviderOutcome(
        OutcomeStatus.SUCCEEDED,
        provider_reference=get_str(payment, "id"),
        captured_amount=get_int(capture, "amount"),
    )


def _voided(payment: JSONObject, operation: ProviderOperation) -> ProviderOutcome:
    return ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference=get_str(payment, "id"))


def _refunded(refund: JSONObject, operation: ProviderOperation) -> ProviderOutcome:
    return ProviderOutcome(
        OutcomeStatus.SUCCEEDED,
        provider_reference=get_str(refund, "id"),
        captured_amount=get_int(refund, "amount"),
    )


# --- lookup -------------------------------------------------------------------------------


def _find(operation: ProviderOperation, payments: list[JSONObject]) -> ProviderOutcome | None:
    finders: dict[OperationKind, Callable[[str, JSONObject], ProviderOutcome | None]] = {
        OperationKind.AUTHORIZE: _find_authorization,
        OperationKind.CAPTURE: _find_capture,
        OperationKind.CANCEL: _find_void,
        OperationKind.REFUND: _find_refund,
    }
    finder = finders[operation.kind]
    for payment in payments:
        outcome = finder(operation.provider_key, payment)
        if outcome is not None:
            return outcome
    return None


def _find_authorization(key: str, payment: JSONObject) -> ProviderOutcome | None:
    if payment.get("idempotency_key") != key:
        return None
    status = get_str(payment, "status")
    if status == "declined":
        return ProviderOutcome(
            OutcomeStatus.DECLINED,
            provider_reference=get_str(payment, "id"),
            decline_code=optional_str(payment, "decline_code"),
        )
    if status not in _LIVE_STATUSES:
        raise MalformedAnswerError(f"payment status {status!r}")
    # only what this very call captured: later manual captures are other operations
    captured = sum(
        get_int(capture, "amount")
        for capture in (as_object(c) for c in get_list(payment, "captures"))
        if capture.get("idempotency_key") == key
    )
    return ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=get_str(payment, "id"), captured_amount=captured
    )


def _find_capture(key: str, payment: JSONObject) -> ProviderOutcome | None:
    for capture in (as_object(c) for c in get_list(payment, "captures")):
        if capture.get("idempotency_key") == key:
            return ProviderOutcome(
                OutcomeStatus.SUCCEEDED,
                provider_reference=get_str(payment, "id"),
                captured_amount=get_int(capture, "amount"),
            )
    return None


def _find_void(key: str, payment: JSONObject) -> ProviderOutcome | None:
    void = payment.get("void")
    if isinstance(void, dict) and void.get("idempotency_key") == key:
        return ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference=get_str(payment, "id"))
    return None


def _find_refund(key: str, payment: JSONObject) -> ProviderOutcome | None:
    for refund in (as_object(r) for r in get_list(payment, "refunds")):
        if refund.get("idempotency_key") == key:
            return ProviderOutcome(
                OutcomeStatus.SUCCEEDED,
                provider_reference=get_str(refund, "id"),
                captured_amount=get_int(refund, "amount"),
            )
    return None


def from_config(
    name: str, spec: Mapping[str, Any], *, default_webhook_secret: Secret | None = None
) -> SandboxAdapter:
    """The adapter from its configuration table. The sandbox needs no API credentials; its
    webhooks are verified with ``webhook_secret_env``/``_file`` (a Standard Webhooks
    ``whsec_...`` secret) and, while it is rotated, ``webhook_secret_previous_env``/``_file``.
    A table without them takes ``default_webhook_secret`` (``payorch serve`` passes
    PAYORCH_SANDBOX_WEBHOOK_SECRET's); without any, the provider takes no webhooks."""
    base_url = spec.get("base_url")
    if not base_url:
        raise ValueError(f"provider {name!r}: base_url is required")
    secrets = webhook_secrets(spec, owner=f"provider {name!r}")
    if not secrets and default_webhook_secret is not None:
        secrets = [default_webhook_secret]
    return SandboxAdapter(
        str(base_url),
        name=name,
        connect_timeout=float(spec.get("connect_timeout", 1.0)),
        honors_idempotency_keys=bool(spec.get("honors_idempotency_keys", True)),
        webhook_secrets=secrets,
    )
