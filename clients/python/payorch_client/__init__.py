"""payorch's Python client: the generated gRPC code (``pb``, ``pb_grpc``) and
``PaymentsClient``, which retries with the same idempotency key and raises typed errors."""

from __future__ import annotations

from payorch_client._generated import payments_pb2 as pb
from payorch_client._generated import payments_pb2_grpc as pb_grpc
from payorch_client.client import PaymentsClient, new_idempotency_key
from payorch_client.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    IdempotencyKeyReused,
    InProgress,
    InvalidArgument,
    PaymentNotFound,
    PayorchError,
    PermissionDenied,
    RateLimited,
    Refusal,
    Unauthenticated,
    Unavailable,
)
from payorch_client.retry import NO_RETRIES, RetryPolicy, full_jitter

__all__ = [
    "NO_RETRIES",
    "DeadlineExceeded",
    "FailedPrecondition",
    "IdempotencyKeyReused",
    "InProgress",
    "InvalidArgument",
    "PaymentNotFound",
    "PaymentsClient",
    "PayorchError",
    "PermissionDenied",
    "RateLimited",
    "Refusal",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "full_jitter",
    "new_idempotency_key",
    "pb",
    "pb_grpc",
]
