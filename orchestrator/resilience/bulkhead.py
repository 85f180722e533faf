"""A bulkhead per adapter: at most so many calls in flight, at most so many attempts a second.

Providers rate-limit us, and a slow provider holds every worker that waits on it. Over either
limit the call fails at once with ``ProviderBusy``, before anything is sent: exactly as safe as
an open circuit (the outcome is not in doubt, and failover may try the next provider).

Where it sits in the composition (``ResilientProvider``):

- **The concurrency slot is held for the whole call, retries and their waits included**, and
  for a lookup made instead of a re-send. What it protects is our workers: a call that backs
  off between attempts still holds a worker, so it still counts. A slot is taken without
  waiting (a wait would hold the very worker the bulkhead exists to free).
- **The rate is counted per attempt actually sent**, after the breaker admitted it: what the
  provider rate-limits is requests it receives. A retry that finds no token ends the call
  like a retry refused by an open breaker; if an earlier attempt may have moved money, the
  call stays in doubt (the retry loop never reports "not reached" after an unknown outcome).

**A command takes its slot before it records its intent** (``admitted``): the slot, and the
first attempt's token, are taken while nothing is written yet, so a provider over its limit
refuses the command with nothing written (routing tries the next provider, or the caller is
told to retry) instead of failing a payment whose intent is already on record. The call made
inside that block uses what it holds (its context, a thread or a greenlet, says so) rather
than taking a second slot.

The token bucket holds one second's worth of tokens (at least one) and refills at
``max_calls_per_second``; the clock is a parameter, so every decision is tested without sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from orchestrator.ports import ProviderNotReached

BUSY_RETRY_AFTER = 0.1  # seconds: the hint given while every slot is taken


class ProviderBusy(ProviderNotReached):
    """The bulkhead refused the call (too many in flight, or too many a second): nothing was
    sent. Like an open circuit, it says nothing about the provider's health."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after, breaker_failure=False)


@dataclass(frozen=True)
class BulkheadPolicy:
    max_concurrent_calls: int | None = None  # calls in flight at once; None: unlimited
    max_calls_per_second: float | None = None  # attempts sent a second; None: unlimited

    def __post_init__(self) -> None:
        if self.max_concurrent_calls is not None and (
            isinstance(self.max_concurrent_calls, bool)
            or not isinstance(self.max_concurrent_calls, int)
            or self.max_concurrent_calls < 1
        ):
            raise ValueError(
                f"max_concurrent_calls must be a whole number of at least 1 "
                f"(got {self.max_concurrent_calls!r}); leave it out for no limit"
            )
        rate = self.max_calls_per_second
        if rate is not None and (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not math.isfinite(rate)
            or rate <= 0
        ):
            raise ValueError(
                f"max_calls_per_second must be a positive number (got {rate!r}); "
                "leave it out for no limit"
            )

    @property
    def unlimited(self) -> bool:
        return self.max_concurrent_calls is None and self.max_calls_per_second is None

    @property
    def capacity(self) -> float:
        """The bucket's size in tokens: one second's worth, at least one (only meaningful with
        a rate). A burst is what a provider's per-second limit allows too."""
        return max(1.0, math.floor(self.max_calls_per_second or 1.0))


@dataclass
class _Admission:
    token: bool  # the first attempt's token, taken in advance and not yet spent


class Bulkhead:
    """Thread-safe; its lock is held only to count, never across a call."""

    def __init__(
        self,
        name: str,
        policy: BulkheadPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.policy = policy or BulkheadPolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self.refused = 0  # calls refused, for logs, tests and the simulator
        self.refused_slots = 0  # of which: no free slot (metrics)
        self.refused_rate = 0  # of which: no token for an attempt (metrics)
        self._tokens = self.policy.capacity
        self._refilled_at = clock()
        self._held: ContextVar[_Admission | None] = ContextVar(f"bulkhead:{name}", default=None)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    # --- a command's admission, taken before its intent is written -------------------

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Takes a slot and one token now, for the call the block will make, or raises
        ``ProviderBusy`` (before anything is written or sent). Nested: the outer one holds."""
        if self._held.get() is not None:
            yield
            return
        self.enter()
        try:
            self.take_token()
        except ProviderBusy:
            self.leave()
            raise
        reset = self._held.set(_Admission(token=True))
        try:
            yield
        finally:
            self._held.reset(reset)
            self.leave()

    def take_slot(self) -> bool:
        """A slot for one call: ``False`` when this context's admission holds one already
        (nothing to give back), ``True`` when a new one was taken (``leave`` it after the
        call); ``ProviderBusy`` when none is free."""
        if self._held.get() is not None:
            return False
        self.enter()
        return True

    # --- concurrency: one slot per call ----------------------------------------------

    def enter(self) -> None:
        """Takes a slot for one call, or raises ``ProviderBusy``. Pair with ``leave``."""
        limit = self.policy.max_concurrent_calls
        with self._lock:
            if limit is not None and self._in_flight >= limit:
                self.refused += 1
                self.refused_slots += 1
                raise ProviderBusy(
                    f"{self.name}: busy, {self._in_flight} calls in flight "
                    f"(max_concurrent_calls = {limit})",
                    retry_after=BUSY_RETRY_AFTER,
                )
            self._in_flight += 1

    def leave(self) -> None:
        with self._lock:
            if self._in_flight > 0:
                self._in_flight -= 1

    # --- rate: one token per attempt sent --------------------------------------------

    def take_token(self) -> None:
        """Spends a token for one attempt about to be sent, or raises ``ProviderBusy`` with
        the wait until the next token as ``retry_after``."""
        rate = self.policy.max_calls_per_second
        if rate is None:
            return
        held = self._held.get()
        if held is not None and held.token:
            held.token = False  # taken when the command was admitted
            return
        with self._lock:
            self._refill(rate)
            if self._tokens < 1.0:
                self.refused += 1
                self.refused_rate += 1
                raise ProviderBusy(
                    f"{self.name}: over its rate limit (max_calls_per_second = {rate:g})",
                    retry_after=(1.0 - self._tokens) / rate,
                )
            self._tokens -= 1.0

    # --- what routing asks before choosing a provider --------------------------------

    def allows(self) -> bool:
        """Whether a call would be admitted now (without admitting one)."""
        with self._lock:
            limit = self.policy.max_concurrent_calls
            if limit is not None and self._in_flight >= limit:
                return False
            rate = self.policy.max_calls_per_second
            if rate is not None:
                self._refill(rate)
                return self._tokens >= 1.0
            return True

    def retry_after(self) -> float:
        """Seconds until a call would be admitted: 0 when it would now; the wait for the next
        token; at least ``BUSY_RETRY_AFTER`` while every slot is taken (a slot frees when a
        call ends, which nobody can predict)."""
        with self._lock:
            wait = 0.0
            rate = self.policy.max_calls_per_second
            if rate is not None:
                self._refill(rate)
                wait = max(0.0, (1.0 - self._tokens) / rate)
            limit = self.policy.max_concurrent_calls
            if limit is not None and self._in_flight >= limit:
                wait = max(wait, BUSY_RETRY_AFTER)
            return wait

    def _refill(self, rate: float) -> None:  # with the lock held
        now = self._clock()
        elapsed = max(0.0, now - self._refilled_at)
        self._refilled_at = now
        self._tokens = min(self.policy.capacity, self._tokens + elapsed * rate)
