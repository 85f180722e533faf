"""A provider behind its bulkhead and breaker, with retries and timeouts: the port, made
resilient.

For each call: the bulkhead gives it a slot for the whole call or refuses at once; for each
attempt, the breaker admits it and the bulkhead's rate has a token for it, or the call is
refused at once (fail fast, nothing sent; see ``bulkhead.py`` for why there); each
attempt is bounded by the per-attempt timeout and by what remains of the call's budget; only
errors the adapter classified as retryable are retried, always with the same provider key.
After an outcome that cannot be known, a provider that would not deduplicate a re-sent request
(or that replays a stored error) is asked what happened instead, and nothing is re-sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from orchestrator.logs import working_on
from orchestrator.ports import (
    OutcomeStatus,
    PaymentProvider,
    ProviderError,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)
from orchestrator.resilience.breaker import CircuitBreaker, Permit
from orchestrator.resilience.bulkhead import Bulkhead, ProviderBusy
from orchestrator.resilience.retry import Jitter, RetryPolicy, delays, full_jitter
from orchestrator.tracing import payment_attributes, span

log = logging.getLogger("payorch.resilience")

_MIN_ATTEMPT = 0.01  # seconds: less than this left is no time for an attempt


@dataclass(frozen=True)
class CallPolicy:
    attempt_timeout: float = 3.0  # seconds: one attempt (connect and read)
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class Stats:
    """Counters of what the resilient layer did, for logs, tests and the soak report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


Call = Callable[..., ProviderOutcome]
_T = TypeVar("_T", ProviderOutcome, ProviderOutcome | None)


class CallObserver(Protocol):
    """What the resilient layer reports as it goes (metrics): each call's outcome and
    latency (retries included), each retry. (The bulkhead counts its own refusals, those
    at a command's admission included: ``Bulkhead.refused_slots`` and ``refused_rate``.)"""

    def provider_call(self, provider: str, operation: str, outcome: str, seconds: float) -> None:
        """``outcome``: succeeded, declined, failed (the provider's answers), unknown (money
        may have moved), not_reached (nothing was sent, or nothing arrived)."""

    def retry(self, provider: str) -> None: ...


class _LazyDelays:
    """The backoff sequence, made only when a first retry needs it (most calls never do)."""

    def __init__(self, policy: RetryPolicy, jitter: Jitter) -> None:
        self._policy, self._jitter = policy, jitter
        self._delays: Iterator[float] | None = None

    def next(self) -> float:
        if self._delays is None:
            self._delays = delays(self._policy, self._jitter)
        return next(self._delays)


class CircuitOpen(ProviderNotReached):
    """The breaker refused the call: nothing was sent."""


class ResilientProvider:
    def __init__(
        self,
        inner: PaymentProvider,
        breaker: CircuitBreaker,
        policy: CallPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Jitter | None = None,
        stats: Stats | None = None,
        bulkhead: Bulkhead | None = None,
        observer: CallObserver | None = None,
    ) -> None:
        self.inner = inner
        self.observer = observer
        self.name = inner.name
        self.honors_idempotency_keys = inner.honors_idempotency_keys
        self.breaker = breaker
        self.policy = policy or CallPolicy()
        self._sleep, self._clock = sleep, clock
        self._jitter = jitter or full_jitter()
        self.stats = stats or Stats()
        self.bulkhead = bulkhead or Bulkhead(inner.name, clock=clock)

    def authorize(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        with self._slot(operation, operation.kind.value):
            return self._observed(operation, self._call, self.inner.authorize, timeout)

    def capture(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        with self._slot(operation, operation.kind.value):
            return self._observed(operation, self._call, self.inner.capture, timeout)

    def cancel(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        with self._slot(operation, operation.kind.value):
            return self._observed(operation, self._call, self.inner.cancel, timeout)

    def refund(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        with self._slot(operation, operation.kind.value):
            return self._observed(operation, self._call, self.inner.refund, timeout)

    def lookup(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome | None:
        """A lookup is a read: retried like any call, and it never moves money."""
        with self._slot(operation, "lookup"):
            return self._observed(operation, lambda _call, op, t: self._lookup(op, t),
                                  self.inner.lookup, timeout)  # fmt: skip

    @contextmanager
    def _slot(self, operation: ProviderOperation, what: str) -> Iterator[None]:
        """The bulkhead's slot, held for the whole call: retries, their waits, and a lookup
        made instead of a re-send (which takes no second slot). Log lines inside name the
        payment and the operation; the call's span (``provider.<what>``) holds one HTTP span
        per attempt."""
        try:
            taken = self.bulkhead.take_slot()
        except ProviderBusy:
            self.stats.add("bulkhead_rejected")
            if self.observer is not None:
                self.observer.provider_call(self.name, operation.kind.value, "not_reached", 0.0)
            raise
        try:
            attributes = payment_attributes(operation.payment_id, self.name, what)
            with (
                working_on(operation.payment_id, operation.kind.value),
                span(f"provider.{what}", attributes),
            ):
                yield
        finally:
            if taken:
                self.bulkhead.leave()

    def _observed(
        self,
        operation: ProviderOperation,
        run: Callable[[Callable[..., _T], ProviderOperation, float], _T],
        call: Callable[..., _T],
        timeout: float,
    ) -> _T:
        """``run(call, operation, timeout)``, its outcome and latency reported."""
        if self.observer is None:
            return run(call, operation, timeout)
        started = time.perf_counter()
        outcome = "failed"
        try:
            result = run(call, operation, timeout)
            if result is None:  # a lookup that found nothing: the provider answered
                outcome = "succeeded"
            else:
                outcome = {
                    OutcomeStatus.SUCCEEDED: "succeeded",
                    OutcomeStatus.DECLINED: "declined",
                    OutcomeStatus.FAILED: "failed",
                }[result.status]
            return result
        except ProviderOutcomeUnknown:
            outcome = "unknown"
            raise
        except ProviderNotReached:
            outcome = "not_reached"
            raise
        finally:
            kind = "lookup" if call == self.inner.lookup else operation.kind.value
            self.observer.provider_call(self.name, kind, outcome, time.perf_counter() - started)

    def _lookup(self, operation: ProviderOperation, timeout: float) -> ProviderOutcome | None:
        started = self._clock()
        budget = min(timeout, self.policy.retry.max_time)
        waits = _LazyDelays(self.policy.retry, self._jitter)
        attempt = 0
        while True:
            attempt += 1
            self.stats.add("lookups")
            try:
                return self._attempt(self.inner.lookup, operation, budget - self._elapsed(started))
            except ProviderError as e:
                if not self._wait_before_retry(
                    e,
                    attempt=attempt,
                    started=started,
                    budget=budget,
                    waits=waits,
                    operation=operation,
                ):
                    raise

    # --- the loop ------------------------------------------------------------------------

    def _call(self, call: Call, operation: ProviderOperation, timeout: float) -> ProviderOutcome:
        started = self._clock()
        budget = min(timeout, self.policy.retry.max_time)
        waits = _LazyDelays(self.policy.retry, self._jitter)
        in_doubt: ProviderOutcomeUnknown | None = None
        attempt = 0
        while True:
            attempt += 1
            self.stats.add("attempts")
            try:
                outcome = self._attempt(call, operation, budget - self._elapsed(started))
                assert outcome is not None
                return outcome
            except ProviderOutcomeUnknown as e:
                in_doubt = e
                self.stats.add("unknown")
                if e.lookup_first or not self.honors_idempotency_keys:
                    return self._look_instead_of_resending(operation, e, started, budget)
                error: ProviderError = e
            except ProviderNotReached as e:
                self.stats.add("not_reached")
                error = e
            if not self._wait_before_retry(
                error,
                attempt=attempt,
                started=started,
                budget=budget,
                waits=waits,
                operation=operation,
            ):
                # Once an attempt may have moved money, the call as a whole is in doubt,
                # whatever later attempts said: never report it as "not reached".
                raise in_doubt or error

    def _attempt(
        self, call: Callable[..., ProviderOutcome | None], operation: ProviderOperation,
        remaining: float,
    ) -> ProviderOutcome | None:  # fmt: skip
        if remaining < _MIN_ATTEMPT:
            raise ProviderNotReached(f"{self.name}: no time left for an attempt")
        permit = self.breaker.acquire()
        if permit is None:
            self.stats.add("breaker_rejected")
            raise CircuitOpen(
                f"{self.name}: circuit open",
                retry_after=self.breaker.retry_after(),
                breaker_failure=False,
            )
        try:
            self.bulkhead.take_token()
        except ProviderBusy:
            self.breaker.record_neutral(permit)  # admitted, never sent
            self.stats.add("rate_limited")
            raise
        started = self._clock()
        try:
            outcome = call(operation, timeout=min(self.policy.attempt_timeout, remaining))
        except ProviderError as e:
            self._record(permit, e)
            log.info(
                "%s %s key=%s failed after %.1f ms: %s",
                self.name, operation.kind.value, operation.provider_key,
                self._elapsed(started) * 1000, e.message,
            )  # fmt: skip
            raise
        # Any definite answer, a decline included, says the provider is up.
        self.breaker.record_success(permit)
        return outcome

    def _record(self, permit: Permit, error: ProviderError) -> None:
        if error.breaker_failure:
            self.breaker.record_failure(permit)
        else:
            self.breaker.record_neutral(permit)

    def _look_instead_of_resending(
        self,
        operation: ProviderOperation,
        error: ProviderOutcomeUnknown,
        started: float,
        budget: float,
    ) -> ProviderOutcome:
        remaining = budget - self._elapsed(started)
        try:
            found = self._lookup(operation, remaining) if remaining > _MIN_ATTEMPT else None
        except ProviderError:
            found = None
        if found is None:
            raise error  # still in doubt: the recovery worker asks again later
        self.stats.add("resolved_by_lookup")
        return found

    def _wait_before_retry(
        self,
        error: ProviderError,
        *,
        attempt: int,
        started: float,
        budget: float,
        waits: _LazyDelays,
        operation: ProviderOperation,
    ) -> bool:
        if attempt >= self.policy.retry.max_attempts:
            return False
        if isinstance(error, CircuitOpen | ProviderBusy):
            return False  # fail fast: refused here, nothing sent; waiting would hold a worker
        delay = waits.next()
        if error.retry_after is not None:
            delay = max(delay, error.retry_after)
        if self._elapsed(started) + delay + _MIN_ATTEMPT >= budget:
            return False
        self.stats.add("retries")
        if self.observer is not None:
            self.observer.retry(self.name)
        log.info(
            "%s %s key=%s: retry %d in %.3f s (%s)",
            self.name, operation.kind.value, operation.provider_key, attempt, delay,
            error.message,
        )  # fmt: skip
        self._sleep(delay)
        return True

    def _elapsed(self, started: float) -> float:
        return self._clock() - started
