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
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc
from google.protobuf.message import Message

from payorch_client._generated import payments_pb2 as pb
from payorch_client._generated import payments_pb2_grpc as pb_grpc
from payorch_client.errors import PayorchError, Refusal
from payorch_client.retry import Jitter, RetryPolicy, delays, full_jitter, retryable
from payorch_client.retry import wait_before_retry as _wait

R = TypeVar("R", bound=Message)
CaptureMode = Literal["automatic", "manual"]
OnRetry = Callable[[int, Refusal, float], None]

_CAPTURE_MODES: dict[str, int] = {
    "automatic": pb.CAPTURE_MODE_AUTOMATIC,
    "manual": pb.CAPTURE_MODE_MANUAL,
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


def _loopback(target: str) -> bool:
    host = target.removeprefix("dns:///").removeprefix("dns:")
    return host.startswith(_LOOPBACK)
