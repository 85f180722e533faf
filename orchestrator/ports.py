"""The provider port: what the orchestrator needs from any payment provider.

Adapters in ``adapters/`` implement it. Only orchestrator types cross this boundary: no
provider wire format, status string or HTTP detail leaks into the core. Retries, breakers and
routing live in the core around the port, never inside an adapter.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class OperationKind(enum.StrEnum):
    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    CANCEL = "cancel"
    REFUND = "refund"


class OutcomeStatus(enum.StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"  # a business outcome: the issuer or provider said no
    FAILED = "failed"  # the provider certainly did not move money and will not


@dataclass(frozen=True)
class ProviderOperation:
    """One provider call, fully described before it is made (and recorded as intent).

    ``provider_key`` is the idempotency key sent to the provider. It is derived from the
    payment, the operation and the attempt, and every retry of this attempt reuses it.
    """

    kind: OperationKind
    payment_id: str
    provider_key: str
    amount: int
    currency: str
    payment_method: str = ""
    capture: bool = False  # authorize only: capture in the same call
    provider_reference: str = ""  # the provider's id of the payment, for follow-ups
    reference: str = ""  # the caller's order reference, passed on for the provider's records
    reason: str = ""  # refund only
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderOutcome:
    """What the provider definitely said about an operation."""

    status: OutcomeStatus
    provider_reference: str = ""  # the provider's id for the payment (or refund)
    captured_amount: int = 0  # authorize with capture: what the provider captured
    decline_code: str = ""
    message: str = ""


class ProviderError(Exception):
    """A call that did not produce a definite outcome. Subclasses say whether money may
    have moved; never guess across that line.

    ``breaker_failure``: the failure says the provider is unhealthy (connection failures,
    timeouts, 5xx) and counts towards opening its circuit breaker; rate limiting (429) and
    "request in progress" (409) do not. ``retry_after``: the provider's own hint, in seconds.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, breaker_failure: bool = True
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.breaker_failure = breaker_failure


class ProviderNotReached(ProviderError):
    """The request certainly did not take effect (connection refused, rate limited, an error
    the provider documents as not processed, breaker open). Safe to retry, even elsewhere."""


class ProviderOutcomeUnknown(ProviderError):
    """The request may have taken effect (timeout or reset after sending, 5xx). Only a
    retry with the same provider key, or a lookup, may follow.

    ``lookup_first``: re-sending is unsafe or useless (the provider honours no idempotency
    key, or replays a stored error for the key), so ask what happened before anything else.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        breaker_failure: bool = True,
        lookup_first: bool = False,
    ) -> None:
        super().__init__(message, retry_after=retry_after, breaker_failure=breaker_failure)
        self.lookup_first = lookup_first


class PaymentProvider(Protocol):
    """A payment provider as the orchestrator sees it.

    Every method either returns a definite ``ProviderOutcome`` or raises a
    ``ProviderError`` subclass; ``timeout`` is the whole budget for the call in seconds.
    """

    name: str
    # Whether a re-sent request with the same provider key is deduplicated by the provider.
    # Where it is not, the core never re-sends after an unknown outcome: it looks up instead.
    honors_idempotency_keys: bool

    def authorize(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        """Authorize ``operation.amount`` on ``operation.payment_method``, capturing it in the
        same call when ``operation.capture`` is set. A decline is an outcome, not an error."""
        ...

    def capture(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        """Capture ``operation.amount`` of the authorization ``provider_reference``."""
        ...

    def cancel(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        """Void the uncaptured authorization ``provider_reference``."""
        ...

    def refund(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        """Refund ``operation.amount`` of what was captured on ``provider_reference``."""
        ...

    def lookup(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome | None:
        """Ask what became of ``operation`` (found by its provider key or our payment id);
        ``None`` when the provider has no record of it. Used to resolve in-doubt outcomes."""
        ...


class WebhookKind(enum.StrEnum):
    """What a provider's webhook reports, in the orchestrator's words."""

    AUTHORIZATION_SUCCEEDED = "authorization_succeeded"
    AUTHORIZATION_FAILED = "authorization_failed"  # declined or failed: no money moved
    CAPTURE_SUCCEEDED = "capture_succeeded"
    CAPTURE_FAILED = "capture_failed"
    CANCEL_SUCCEEDED = "cancel_succeeded"
    REFUND_SUCCEEDED = "refund_succeeded"
    REFUND_FAILED = "refund_failed"
    DISPUTE_OPENED = "dispute_opened"
    DISPUTE_WON = "dispute_won"  # closed in the merchant's favour
    DISPUTE_LOST = "dispute_lost"  # closed for the cardholder: the money is gone
    OTHER = "other"  # verified, stored, nothing to apply


@dataclass(frozen=True)
class WebhookEvent:
    """One verified provider event, parsed out of its wire format.

    ``event_id`` identifies the event at its provider (the dedupe key with the provider's
    name). The payment is found by ``payment_id`` (ours, when the provider echoes it) or by
    ``provider_reference``; the operation it reports on by ``operation_key`` (the provider
    idempotency key we sent) when the provider echoes it."""

    event_id: str
    kind: WebhookKind
    payment_id: str = ""
    provider_reference: str = ""
    operation_key: str = ""
    object_reference: str = ""  # the provider's id of the capture, refund or dispute
    amount: int = 0  # minor units, converted to ISO 4217 units by the adapter
    currency: str = ""
    decline_code: str = ""
    message: str = ""


class WebhookRejected(Exception):
    """A delivery that must not be stored: bad or missing signature (401), a stale or future
    timestamp, malformed content (400). ``reason`` is safe to log: no secret, no body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@runtime_checkable
class WebhookVerifier(Protocol):
    """Verifies a provider's webhook over the raw bytes, then parses it.

    Verification comes first, over the exact bytes received, with constant-time comparison,
    against every active secret (two during a rotation). Only then is the body parsed."""

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> list[WebhookEvent]:
        """The events of a genuine delivery; ``WebhookRejected`` otherwise. ``headers``
        have lower-case names; ``now`` is Unix seconds."""
        ...
