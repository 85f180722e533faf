"""Domain errors. Each carries a stable UPPER_SNAKE reason; the API layer maps the class to a
gRPC status code in one table, so the domain never knows about gRPC."""

from __future__ import annotations


class DomainError(Exception):
    """Base class: a refusal the caller can understand and act on."""

    reason = "DOMAIN_ERROR"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})


class InvalidArgument(DomainError):
    """The request itself is malformed: nothing was, or will be, changed."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason, metadata={"field": field})
        self.field = field


class PaymentNotFound(DomainError):
    reason = "PAYMENT_NOT_FOUND"

    def __init__(self, payment_id: str) -> None:
        super().__init__(f"no payment with id {payment_id!r}", metadata={"paymentId": payment_id})


class IdempotencyKeyReused(DomainError):
    """The key names an earlier command whose parameters differ from these."""

    reason = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self, idempotency_key: str, original_command: str) -> None:
        super().__init__(
            "this idempotency key was already used for a request with other parameters; "
            "use a new key for a new request",
            metadata={"idempotencyKey": idempotency_key, "originalCommand": original_command},
        )


class TransitionNotAllowed(DomainError):
    """The payment's state does not allow this command (or this amount)."""

    reason = "INVALID_STATE_TRANSITION"


class RequestInProgress(DomainError):
    """A command with this key is still executing elsewhere; retry with the same key."""

    reason = "IDEMPOTENCY_REQUEST_IN_PROGRESS"

    def __init__(self, idempotency_key: str, retry_after: float) -> None:
        super().__init__(
            "a request with this idempotency key is still in progress; retry with the same key",
            metadata={"idempotencyKey": idempotency_key},
        )
        self.retry_after = retry_after


class OperationInProgress(DomainError):
    """Another provider operation on this payment has no known outcome yet."""

    reason = "PAYMENT_OPERATION_IN_PROGRESS"

    def __init__(self, payment_id: str, retry_after: float) -> None:
        super().__init__(
            "another operation on this payment is still in progress or its outcome is not "
            "known yet; retry later",
            metadata={"paymentId": payment_id},
        )
        self.retry_after = retry_after


class ConcurrentModification(DomainError):
    """Optimistic concurrency kept losing; the caller may retry with the same key."""

    reason = "CONCURRENT_MODIFICATION"


class NoProviderAvailable(DomainError):
    """No provider could be tried at all: nothing was recorded, retry later."""

    reason = "PROVIDER_UNAVAILABLE"

    def __init__(self, message: str, *, region: str, retry_after: float = 1.0) -> None:
        super().__init__(message, metadata={"region": region})
        self.retry_after = retry_after


class ServerDraining(DomainError):
    """This server is shutting down and takes no new command: nothing was read or written.
    Another replica can take the same request, with the same key, at once: no RetryInfo, the
    caller's own backoff decides when."""

    reason = "SERVER_DRAINING"

    def __init__(self) -> None:
        super().__init__(
            "this server is shutting down and takes no new commands; retry with the same key "
            "(another replica will answer)"
        )
