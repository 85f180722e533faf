"""When to retry a call and how long to wait, as small pure functions: the client's loop asks
them, and tests check the exact sequence with the randomness and the clock injected.

Delays come from the ``backoff`` package's exponential generator and full jitter; the loop is
ours, so the time budget is checked before every wait and bounds every attempt.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import backoff
import grpc

from payorch_client.errors import Refusal

# Safe to send again with the same idempotency key: payorch answers the one stored result.
RETRYABLE = frozenset(
    {grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)

Jitter = Callable[[float], float]


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 0.1  # seconds: the first delay before jitter
    maximum: float = 5.0  # no backoff delay grows beyond this (a RetryInfo may ask for more)
    max_attempts: int = 6  # attempts in all, the first included
    max_time: float = 30.0  # seconds: the whole call, attempts and waits

    def __post_init__(self) -> None:
        usable = self.max_attempts >= 1 and 0 < self.base <= self.maximum and self.max_time > 0
        if not usable:
            raise ValueError(f"not a usable retry policy: {self}")


NO_RETRIES = RetryPolicy(max_attempts=1)


def full_jitter(rng: random.Random | None = None) -> Jitter:
    """backoff's full jitter (uniform over [0, value]), from a random source one can seed."""
    if rng is None:
        return backoff.full_jitter
    return lambda value: rng.uniform(0, value)


def delays(policy: RetryPolicy, jitter: Jitter) -> Iterator[float]:
    """The backoff before each retry: base, 2*base, 4*base... capped at ``maximum``, jittered."""
    exponential = backoff.expo(base=2, factor=policy.base, max_value=policy.maximum)
    next(exponential)  # backoff's generators are primed with one empty step
    for value in exponential:
        yield jitter(value)


def retryable(refusal: Refusal) -> bool:
    """ABORTED, UNAVAILABLE and DEADLINE_EXCEEDED; RESOURCE_EXHAUSTED only when the server said
    when to come back (a rate limit), not for a message too large or too many streams."""
    if refusal.code in RETRYABLE:
        return True
    return refusal.code is grpc.StatusCode.RESOURCE_EXHAUSTED and refusal.retry_after is not None


def wait_before_retry(refusal: Refusal, backoff_delay: float) -> float:
    """Never sooner than the server's RetryInfo asks; the jittered backoff when it is longer,
    so callers told the same delay do not all come back at once."""
    if refusal.retry_after is None:
        return backoff_delay
    return max(refusal.retry_after, backoff_delay)
