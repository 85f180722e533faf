"""Typed errors for payorch's AIP-193 answers: each carries the gRPC code, the ``ErrorInfo``
reason and metadata, and the ``RetryInfo`` delay when the server sent one.

The class is chosen by the reason first (it is the stable contract), then by the code, so a
reason this client does not know yet still arrives as the right family of error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "payorch.payments.v1"


class PayorchError(Exception):
    """A call payorch (or gRPC on its way) refused or could not answer."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"{code.name}{f' {reason}' if reason else ''}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_after = retry_after
        self.attempts = attempts
        # The command's key (commands only): retry with it to learn the one outcome.
        self.idempotency_key: str | None = None


class InvalidArgument(PayorchError):
    """The request is malformed (INVALID_AMOUNT, CARD_DATA_NOT_ALLOWED...): nothing was written."""


class PaymentNotFound(PayorchError):
    """No such payment, or another account's: payorch answers both the same way."""


class FailedPrecondition(PayorchError):
    """The payment does not allow the command (INVALID_STATE_TRANSITION, AMOUNT_EXCEEDS_...)."""


class IdempotencyKeyReused(FailedPrecondition):
    """The key was used for another command: a new request needs a new key."""


class InProgress(PayorchError):
    """ABORTED after every retry: the command (or another on the payment) is still running."""


class Unauthenticated(PayorchError):
    """No valid certificate or token."""


class PermissionDenied(PayorchError):
    """The caller's roles do not allow the method."""


class RateLimited(PayorchError):
    """RESOURCE_EXHAUSTED: over the caller's rate, too many streams, or a message too large."""


class Unavailable(PayorchError):
    """UNAVAILABLE after every retry: the server or every provider could not be reached."""


class DeadlineExceeded(PayorchError):
    """No answer in time, after every retry. A command's outcome is then not known to this
    client: retry it later with the same idempotency key to learn it."""


_BY_REASON: dict[str, type[PayorchError]] = {
    "PAYMENT_NOT_FOUND": PaymentNotFound,
    "IDEMPOTENCY_KEY_REUSED": IdempotencyKeyReused,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "RATE_LIMITED": RateLimited,
    "TOO_MANY_STREAMS": RateLimited,
    "PROVIDER_UNAVAILABLE": Unavailable,
}
_BY_CODE: dict[grpc.StatusCode, type[PayorchError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: PaymentNotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: InProgress,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


@dataclass(frozen=True)
class Refusal:
    """What a failed call said: its code, message, ErrorInfo and RetryInfo."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    retry_after: float | None = None

    @classmethod
    def of(cls, error: grpc.RpcError) -> Refusal:
        code: grpc.StatusCode = error.code()
        message: str = error.details() or ""
        try:
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
        except ValueError:  # a status whose code or message disagrees with the call's
            status = None
        if status is None:  # gRPC's own errors (deadline, connection) carry no details
            return cls(code, message)
        reason, metadata, retry_after = "", {}, None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and not reason:
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        return cls(code, message, reason, metadata, retry_after)

    def error(self, *, attempts: int = 1) -> PayorchError:
        kind = _BY_REASON.get(self.reason) or _BY_CODE.get(self.code, PayorchError)
        return kind(
            self.code,
            self.message,
            reason=self.reason,
            metadata=self.metadata,
            retry_after=self.retry_after,
            attempts=attempts,
        )
