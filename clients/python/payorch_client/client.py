"""``PaymentsClient``: payorch's commands and queries as typed methods.

Every command carries an idempotency key, chosen once before the first attempt (a uuid4 when
the caller passes none) and sent unchanged on every retry: payorch executes a key once, so a
retry after a lost answer, a deadline or a duplicate still in progress gets the one stored
result, never a second charge. Only answers that say "try again" are retried (see
``retry.retryable``); everything else raises a typed ``PayorchError`` at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from payorch_client._generated import payments_pb2 as pb
from payorch_client._generated import payments_pb2_grpc as pb_grpc
from payorch_client.errors import PayorchError, Refusal
from payorch_client.retry import Jitter, RetryPolicy, delays, full_jitter, retryable
from payorch_client.retry import wait_before_retry as _wait

R = TypeVar("R", bound=Message)
CaptureMode = Literal["automatic", "manual"]
# What an operator saw on the provider's dashboard; the names ``payorch admin resolve`` takes.
Outcome = Literal["authorized", "captured", "declined", "not-found", "canceled", "refunded"]
OnRetry = Callable[[int, Refusal, float], None]

_CAPTURE_MODES: dict[str, int] = {
    "automatic": pb.CAPTURE_MODE_AUTOMATIC,
    "manual": pb.CAPTURE_MODE_MANUAL,
}
_OUTCOMES: dict[str, int] = {
    "authorized": pb.RESOLUTION_AUTHORIZED,
    "captured": pb.RESOLUTION_CAPTURED,
    "declined": pb.RESOLUTION_DECLINED,
    "not-found": pb.RESOLUTION_NOT_FOUND,
    "canceled": pb.RESOLUTION_CANCELED,
    "refunded": pb.RESOLUTION_REFUNDED,
}
_LOOPBACK = ("localhost", "127.", "[::1]", "::1", "unix:", "ipv4:127.", "ipv6:[::1]")


def new_idempotency_key() -> str:
    """A fresh key (a uuid4). Keep it with the request if you may need to retry it later."""
    return str(uuid.uuid4())


class PaymentsClient:
    """payorch over gRPC. ``tls``: channel credentials (``grpc.ssl_channel_credentials``, with
    a client certificate for mutual TLS); ``token``: sent as ``authorization: Bearer``, only
    over TLS or to loopback. ``timeout`` bounds each attempt, ``retry`` the attempts and the
    whole call. ``jitter``, ``sleep`` and ``clock`` are injectable for tests."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: grpc.ChannelCredentials | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        options: Sequence[tuple[str, Any]] = (),
        channel: grpc.Channel | None = None,
        jitter: Jitter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        idempotency_keys: Callable[[], str] = new_idempotency_key,
        on_retry: OnRetry | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if token is not None and tls is None and channel is None and not _loopback(target):
            raise ValueError(f"a token is sent only over TLS or to loopback, not to {target!r}")
        if channel is None:
            channel = (
                grpc.insecure_channel(target, options=list(options))
                if tls is None
                else grpc.secure_channel(target, tls, options=list(options))
            )
            self._owns_channel = True
        else:
            self._owns_channel = False
        self.channel = channel
        self.stub = pb_grpc.PaymentOrchestratorStub(channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token is not None else ()
        )
        self._jitter = jitter or full_jitter()
        self._sleep = sleep
        self._clock = clock
        self._keys = idempotency_keys
        self._on_retry = on_retry

    # --- commands: each with its idempotency key ------------------------------------------

    def create_payment(
        self,
        *,
        amount: int,
        currency: str,
        payment_method: str,
        region: str,
        capture_mode: CaptureMode = "automatic",
        reference: str = "",
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> pb.Payment:
        """Authorizes (and with ``capture_mode="automatic"`` captures). A decline is a
        ``Payment`` in ``PAYMENT_STATUS_DECLINED``, not an error."""
        request = pb.CreatePaymentRequest(
            idempotency_key=idempotency_key or self._keys(),
            amount=_minor_units(amount),
            currency=currency,
            payment_method=payment_method,
            region=region,
            capture_mode=_capture_mode(capture_mode),  # type: ignore[arg-type]
            reference=reference,
            metadata=dict(metadata or {}),
        )
        return self._call(self.stub.CreatePayment, request, pb.Payment, timeout)

    def capture(
        self,
        payment_id: str,
        *,
        amount: int | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> pb.Payment:
        """Captures ``amount`` minor units, or all that remains capturable when ``None``."""
        request = pb.CapturePaymentRequest(
            idempotency_key=idempotency_key or self._keys(),
            payment_id=payment_id,
            amount=0 if amount is None else _minor_units(amount),
        )
        return self._call(self.stub.CapturePayment, request, pb.Payment, timeout)

    def cancel(
        self, payment_id: str, *, idempotency_key: str | None = None, timeout: float | None = None
    ) -> pb.Payment:
        """Voids an authorization of which nothing was captured."""
        request = pb.CancelPaymentRequest(
            idempotency_key=idempotency_key or self._keys(), payment_id=payment_id
        )
        return self._call(self.stub.CancelPayment, request, pb.Payment, timeout)

    def refund(
        self,
        payment_id: str,
        *,
        amount: int | None = None,
        reason: str = "",
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> pb.Payment:
        """Refunds ``amount`` minor units, or all that remains refundable when ``None``."""
        request = pb.RefundPaymentRequest(
            idempotency_key=idempotency_key or self._keys(),
            payment_id=payment_id,
            amount=0 if amount is None else _minor_units(amount),
            reason=reason,
        )
        return self._call(self.stub.RefundPayment, request, pb.Payment, timeout)

    def resolve_payment(
        self,
        payment_id: str,
        *,
        outcome: Outcome,
        note: str,
        operation: int = 0,
        provider_reference: str = "",
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> pb.Payment:
        """Records what the provider's dashboard shows for an operation in review (role
        ``operator``): ``operation`` 0 is the payment's operation in doubt. Idempotent by its
        key like every command, so it is retried like them; a definite outcome is never
        overruled (``FailedPrecondition``, reason ``OUTCOME_ALREADY_KNOWN``)."""
        request = pb.ResolvePaymentRequest(
            idempotency_key=idempotency_key or self._keys(),
            payment_id=payment_id,
            outcome=_outcome(outcome),  # type: ignore[arg-type]
            note=note,
            operation=operation,
            provider_reference=provider_reference,
        )
        return self._call(self.stub.ResolvePayment, request, pb.Payment, timeout)

    # --- queries ----------------------------------------------------------------------------

    def get(self, payment_id: str, *, timeout: float | None = None) -> pb.Payment:
        request = pb.GetPaymentRequest(payment_id=payment_id)
        return self._call(self.stub.GetPayment, request, pb.Payment, timeout)

    def events(self, payment_id: str, *, timeout: float | None = None) -> list[pb.PaymentEvent]:
        """Every stored event of the payment, in order: its audit trail."""
        request = pb.ListPaymentEventsRequest(payment_id=payment_id)
        answer = self._call(
            self.stub.ListPaymentEvents, request, pb.ListPaymentEventsResponse, timeout
        )
        return list(answer.events)

    def list_payments(
        self,
        *,
        reference: str = "",
        status: pb.PaymentStatus | None = None,
        provider: str = "",
        region: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> pb.ListPaymentsResponse:
        """One page of the caller's payments that match every filter given, newest first
        (AIP-158). Pass ``next_page_token`` back as ``page_token`` with the same filter; it is
        empty on the last page. ``page_size`` 0 is the server's default (50). Read from the
        listing, which trails the log by about half a second: ``get`` is always current."""
        request = pb.ListPaymentsRequest(
            page_size=page_size,
            page_token=page_token,
            reference=reference,
            status=status or pb.PAYMENT_STATUS_UNSPECIFIED,
            provider=provider,
            region=region,
        )
        if created_after is not None:
            request.created_after.CopyFrom(_timestamp(created_after, "created_after"))
        if created_before is not None:
            request.created_before.CopyFrom(_timestamp(created_before, "created_before"))
        return self._call(self.stub.ListPayments, request, pb.ListPaymentsResponse, timeout)

    def iter_payments(
        self,
        *,
        reference: str = "",
        status: pb.PaymentStatus | None = None,
        provider: str = "",
        region: str = "",
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[pb.PaymentSummary]:
        """Every matching payment, newest first, fetched a page at a time as the iteration
        needs them (each page retried on its own). Keyset pages: payments created meanwhile
        never shift what is still to come."""
        token = ""
        while True:
            page = self.list_payments(
                reference=reference,
                status=status,
                provider=provider,
                region=region,
                created_after=created_after,
                created_before=created_before,
                page_size=page_size,
                page_token=token,
                timeout=timeout,
            )
            yield from page.payments
            token = page.next_page_token
            if not token:
                return

    def stream_events(
        self, *, after_position: int = 0, follow: bool = False
    ) -> Iterator[pb.StreamedEvent]:
        """Payment events in commit order after ``after_position``. Not retried: to resume,
        call again after the last ``position`` seen."""
        request = pb.StreamEventsRequest(after_position=after_position, follow=follow)
        try:
            yield from self.stub.StreamEvents(request, metadata=self._metadata)
        except grpc.RpcError as e:
            raise Refusal.of(e).error() from None

    # --- the retry loop ---------------------------------------------------------------------

    def _call(
        self,
        rpc: Callable[..., Any],
        request: Message,
        answer_type: type[R],
        timeout: float | None,
    ) -> R:
        policy = self.retry
        per_attempt = self.timeout if timeout is None else timeout
        started = self._clock()
        backoffs = delays(policy, self._jitter)
        attempt = 0
        while True:
            attempt += 1
            left = policy.max_time - (self._clock() - started)
            try:
                answer = rpc(request, timeout=min(per_attempt, left), metadata=self._metadata)
            except grpc.RpcError as e:
                refusal = Refusal.of(e)
            else:
                if not isinstance(answer, answer_type):  # pragma: no cover - a stub mismatch
                    raise TypeError(f"expected {answer_type.__name__}, got {type(answer)}")
                return answer
            wait = _wait(refusal, next(backoffs))
            out_of_time = (self._clock() - started) + wait >= policy.max_time
            if not retryable(refusal) or attempt >= policy.max_attempts or out_of_time:
                raise _with_key(refusal.error(attempts=attempt), request) from None
            if self._on_retry is not None:
                self._on_retry(attempt, refusal, wait)
            self._sleep(wait)

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()

    def __enter__(self) -> PaymentsClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def _with_key(error: PayorchError, request: Message) -> PayorchError:
    """The error names the command's key, so a caller whose key was generated can retry later
    (after a deadline, say) and learn the one outcome."""
    key = getattr(request, "idempotency_key", None)
    error.idempotency_key = key if isinstance(key, str) and key else None
    return error


def _minor_units(amount: int) -> int:
    # bool is an int, a float is a guess at a rounding: neither is an amount of money.
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"amounts are integer minor units, not {type(amount).__name__}")
    return amount


def _capture_mode(mode: str) -> int:
    try:
        return _CAPTURE_MODES[mode]
    except KeyError:
        raise ValueError(f"capture_mode is 'automatic' or 'manual', not {mode!r}") from None


def _outcome(outcome: str) -> int:
    try:
        return _OUTCOMES[outcome]
    except KeyError:
        choices = ", ".join(repr(name) for name in _OUTCOMES)
        raise ValueError(f"outcome is one of {choices}, not {outcome!r}") from None


def _timestamp(moment: datetime, name: str) -> Timestamp:
    # A naive datetime is a guess at a time zone: the listing's range would silently shift.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (e.g. datetime.now(UTC))")
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def _loopback(target: str) -> bool:
    host = target.removeprefix("dns:///").removeprefix("dns:")
    return host.startswith(_LOOPBACK)
