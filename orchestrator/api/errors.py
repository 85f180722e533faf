"""One table from domain errors to gRPC status codes, sent as AIP-193 rich errors: a
google.rpc.Status holding exactly one ErrorInfo, plus RetryInfo when a retry may succeed."""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from orchestrator.domain import errors

ERROR_DOMAIN = "payorch.payments.v1"

_CODES: list[tuple[type[errors.DomainError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.PaymentNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.IdempotencyKeyReused, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.TransitionNotAllowed, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.RequestInProgress, grpc.StatusCode.ABORTED),
    (errors.OperationInProgress, grpc.StatusCode.ABORTED),
    (errors.ConcurrentModification, grpc.StatusCode.ABORTED),
    (errors.NoProviderAvailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ServerDraining, grpc.StatusCode.UNAVAILABLE),
]


def status_code_for(error: errors.DomainError) -> grpc.StatusCode:
    for error_class, code in _CODES:
        if isinstance(error, error_class):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


def to_status(error: errors.DomainError) -> grpc.Status:
    return refusal(
        status_code_for(error),
        error.reason,
        error.message,
        metadata=error.metadata,
        retry_after=getattr(error, "retry_after", None),
    )


def refusal(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    *,
    metadata: Mapping[str, str] | None = None,
    retry_after: float | None = None,
) -> grpc.Status:
    """A status with one ErrorInfo, and a RetryInfo when ``retry_after`` (seconds) is given:
    for domain errors and for the refusals that come before the domain (auth, limits)."""
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
    )
    details = [info]
    if retry_after is not None:
        seconds = max(float(retry_after), 0.0)
        delay = duration_pb2.Duration(
            seconds=int(seconds), nanos=int((seconds - int(seconds)) * 1e9)
        )
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    return rpc_status.to_status(status)
