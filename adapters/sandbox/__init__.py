"""The sandbox adapter: the ``PaymentProvider`` port spoken over HTTP to the sandbox provider.

Everything sandbox-specific (paths, JSON shapes, status codes, error types) stays in this
module; the orchestrator only ever sees ``ProviderOutcome`` and ``ProviderError``. The mapping
errs towards "outcome unknown" whenever money may have moved: a wrong "not reached" could
charge twice, a wrong "unknown" only costs a lookup.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Final
from urllib.parse import quote

import httpx

from adapters.sandbox.server import SandboxServer, start_sandbox
from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)

__all__ = ["SandboxAdapter", "SandboxServer", "start_sandbox"]

logger = logging.getLogger("payorch.adapters.sandbox")

# raised before a single byte of the request left: the provider cannot have acted on it
_NOT_SENT: Final = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)
_LIVE_STATUSES: Final = frozenset({"authorized", "captured", "voided"})

JSONObject = dict[str, object]
SuccessReader = Callable[[JSONObject, ProviderOperation], ProviderOutcome]


class _MalformedAnswerError(Exception):
    """The provider's answer does not have the shape we rely on."""


class SandboxAdapter:
    """``PaymentProvider`` for the sandbox provider at ``base_url``. Thread-safe."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str = "sandbox",
        connect_timeout: float = 1.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.name = name
        self._base_url = base_url.rstrip("/")
        self._connect_timeout = connect_timeout
        self._owns_client = client is None
        self._client = client or httpx.Client(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100)
        )

    def close(self) -> None:
        """Close the HTTP client, unless the caller passed in their own."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> SandboxAdapter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

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
                "sandbox lookup rate limited", retry_after=_retry_after(response)
            )
        if code != 200:
            raise ProviderOutcomeUnknown(f"sandbox lookup answered HTTP {code}")
        try:
            payments = [_as_object(p) for p in _list(_json_object(response), "data")]
            return _find(operation, payments)
        except _MalformedAnswerError as exc:
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
    ) -> httpx.Response:
        what = operation.kind.value if method == "POST" else f"lookup:{operation.kind.value}"
        headers = {"Idempotency-Key": operation.provider_key} if method == "POST" else {}
        started = time.monotonic()
        try:
            response = self._client.request(
                method,
                self._base_url + path,
                json=body,
                params=params,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=min(self._connect_timeout, timeout)),
            )
        except _NOT_SENT as exc:
            _log_transport(what, operation, exc, started)
            raise ProviderNotReached(f"sandbox not reached: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            _log_transport(what, operation, exc, started)
            raise ProviderOutcomeUnknown(
                f"sandbox outcome unknown: {type(exc).__name__} after sending"
            ) from exc
        logger.debug(
            "sandbox %s key=%s status=%d latency_ms=%.1f",
            what,
            operation.provider_key,
            response.status_code,
            _elapsed_ms(started),
        )
        return response


def _elapsed_ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _log_transport(
    what: str, operation: ProviderOperation, exc: httpx.TransportError, started: float
) -> None:
    logger.info(
        "sandbox %s key=%s transport_error=%s latency_ms=%.1f",
        what,
        operation.provider_key,
        type(exc).__name__,
        _elapsed_ms(started),
    )


# --- answers ------------------------------------------------------------------------------


def _interpret(
    response: httpx.Response, operation: ProviderOperation, read_success: SuccessReader
) -> ProviderOutcome:
    code = response.status_code
    if code == 429:
        raise ProviderNotReached("sandbox rate limited", retry_after=_retry_after(response))
    if code == 409:
        raise ProviderOutcomeUnknown("sandbox is still processing this provider key")
    if 200 <= code < 300:
        try:
            return read_success(_json_object(response), operation)
        except _MalformedAnswerError as exc:
            raise ProviderOutcomeUnknown(f"sandbox answer malformed: {exc}") from exc
    if 400 <= code < 500:
        return _client_error(code, response)
    # 5xx, and anything else we do not understand, may have followed a money movement
    raise ProviderOutcomeUnknown(f"sandbox answered HTTP {code}")


def _client_error(code: int, response: httpx.Response) -> ProviderOutcome:
    error = _error_object(response)
    kind = error.get("type")
    message = _optional_str(error, "message") or f"sandbox answered HTTP {code}"
    if code == 400 and kind == "idempotency_error":
        # an earlier request under this key may have moved money; never guess
        raise ProviderOutcomeUnknown(f"sandbox refused the provider key: {message}")
    if code == 402 and kind == "card_error":
        payment = error.get("payment")
        reference = _optional_str(payment, "id") if isinstance(payment, dict) else ""
        return ProviderOutcome(
            OutcomeStatus.DECLINED,
            provider_reference=reference,
            decline_code=_optional_str(error, "decline_code") or _optional_str(error, "code"),
            message=message,
        )
    return ProviderOutcome(OutcomeStatus.FAILED, message=message)


def _error_object(response: httpx.Response) -> JSONObject:
    """The ``error`` member of an error answer; empty when there is none."""
    try:
        error = _json_object(response).get("error")
    except _MalformedAnswerError:
        return {}
    return error if isinstance(error, dict) else {}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _authorized(payment: JSONObject, operation: ProviderOperation) -> ProviderOutcome:
    if _str(payment, "status") not in ("authorized", "captured"):
        raise _MalformedAnswerError(f"authorization answered with status {payment['status']!r}")
    return ProviderOutcome(
        OutcomeStatus.SUCCEEDED,
        provider_reference=_str(payment, "id"),
        captured_amount=_int(payment, "amount_captured"),
    )


def _captured(payment: JSONObject, operation: ProviderOperation) -> ProviderOutcome:
    captures = [_as_object(c) for c in _list(payment, "captures")]
    if not captures:
        raise _MalformedAnswerError("capture answered without captures")
    ours = [c for c in captures if c.get("idempotency_key") == operation.provider_key]
    # the answer is the payment as this capture left it, so the last capture is ours
    capture = ours[-1] if ours else captures[-1]
    return ProviderOutcome(
        OutcomeStatus.SUCCEEDED,
        provider_reference=_str(payment, "id"),
        captured_amount=_int(capture, "amount"),
    )


def _voided(payment: JSONObject, operation: ProviderOperation) -> ProviderOutcome:
    return ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference=_str(payment, "id"))


def _refunded(refund: JSONObject, operation: ProviderOperation) -> ProviderOutcome:
    return ProviderOutcome(
        OutcomeStatus.SUCCEEDED,
        provider_reference=_str(refund, "id"),
        captured_amount=_int(refund, "amount"),
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
    status = _str(payment, "status")
    if status == "declined":
        return ProviderOutcome(
            OutcomeStatus.DECLINED,
            provider_reference=_str(payment, "id"),
            decline_code=_optional_str(payment, "decline_code"),
        )
    if status not in _LIVE_STATUSES:
        raise _MalformedAnswerError(f"payment status {status!r}")
    # only what this very call captured: later manual captures are other operations
    captured = sum(
        _int(capture, "amount")
        for capture in (_as_object(c) for c in _list(payment, "captures"))
        if capture.get("idempotency_key") == key
    )
    return ProviderOutcome(
        OutcomeStatus.SUCCEEDED, provider_reference=_str(payment, "id"), captured_amount=captured
    )


def _find_capture(key: str, payment: JSONObject) -> ProviderOutcome | None:
    for capture in (_as_object(c) for c in _list(payment, "captures")):
        if capture.get("idempotency_key") == key:
            return ProviderOutcome(
                OutcomeStatus.SUCCEEDED,
                provider_reference=_str(payment, "id"),
                captured_amount=_int(capture, "amount"),
            )
    return None


def _find_void(key: str, payment: JSONObject) -> ProviderOutcome | None:
    void = payment.get("void")
    if isinstance(void, dict) and void.get("idempotency_key") == key:
        return ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference=_str(payment, "id"))
    return None


def _find_refund(key: str, payment: JSONObject) -> ProviderOutcome | None:
    for refund in (_as_object(r) for r in _list(payment, "refunds")):
        if refund.get("idempotency_key") == key:
            return ProviderOutcome(
                OutcomeStatus.SUCCEEDED,
                provider_reference=_str(refund, "id"),
                captured_amount=_int(refund, "amount"),
            )
    return None


# --- JSON shape checks --------------------------------------------------------------------


def _json_object(response: httpx.Response) -> JSONObject:
    try:
        value: object = response.json()
    except ValueError as exc:
        raise _MalformedAnswerError("body is not JSON") from exc
    return _as_object(value)


def _as_object(value: object) -> JSONObject:
    if not isinstance(value, dict):
        raise _MalformedAnswerError("expected a JSON object")
    return value


def _list(obj: JSONObject, name: str) -> list[object]:
    value = obj.get(name)
    if not isinstance(value, list):
        raise _MalformedAnswerError(f"{name} is not a list")
    return value


def _str(obj: JSONObject, name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise _MalformedAnswerError(f"{name} is not a non-empty string")
    return value


def _int(obj: JSONObject, name: str) -> int:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _MalformedAnswerError(f"{name} is not an integer")
    return value


def _optional_str(obj: JSONObject, name: str) -> str:
    value = obj.get(name)
    return value if isinstance(value, str) else ""
