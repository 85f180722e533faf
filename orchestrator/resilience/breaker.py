"""A circuit breaker per adapter.

Written here rather than taken from a library because the ones measured on this machine each
miss something the issue requires (shared/research/grpc-and-resilience.md §3): pybreaker holds
its lock across the guarded call (8 threads ran serially) and has no half-open limit;
purgatory and aiobreaker admit every concurrent call while half-open. This one keeps its lock
only around state changes, lets ``half_open_trials`` calls through while half-open, and takes
its clock as a parameter so every transition is tested without sleeping.

Only what says the provider is unhealthy counts as a failure (connection failures, timeouts,
5xx). Declines, other 4xx and rate limits are recorded as neutral: they free a trial slot but
never open the circuit.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("payorch.breaker")


class State(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5  # consecutive failures that open the circuit
    open_seconds: float = 30.0  # how long it stays open before trial calls
    half_open_trials: int = 1  # calls let through at once while half-open


@dataclass(frozen=True)
class Permit:
    """Proof that a call was admitted; hand it back with the call's result."""

    trial: bool


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, State, State], None] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials_in_flight = 0

    @property
    def state(self) -> State:
        with self._lock:
            self._advance()
            return self._state

    def retry_after(self) -> float:
        """Seconds until the circuit lets a trial call through (0 when it would now)."""
        with self._lock:
            self._advance()
            if self._state is not State.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.policy.open_seconds - self._clock())

    def allows(self) -> bool:
        """Whether a call would be admitted now (without admitting one)."""
        with self._lock:
            self._advance()
            if self._state is State.OPEN:
                return False
            return not (
                self._state is State.HALF_OPEN
                and self._trials_in_flight >= self.policy.half_open_trials
            )

    def acquire(self) -> Permit | None:
        """Admits a call, or ``None`` when the circuit refuses it (fail fast)."""
        with self._lock:
            self._advance()
            if self._state is State.CLOSED:
                return Permit(trial=False)
            if (
                self._state is State.HALF_OPEN
                and self._trials_in_flight < self.policy.half_open_trials
            ):
                self._trials_in_flight += 1
                return Permit(trial=True)
            return None

    def record_success(self, permit: Permit) -> None:
        with self._lock:
            self._release(permit)
            if self._state is State.HALF_OPEN and not permit.trial:
                return  # admitted before the circuit opened: only trial calls decide now
            self._failures = 0
            if self._state is State.HALF_OPEN:
                self._move(State.CLOSED)

    def record_failure(self, permit: Permit) -> None:
        with self._lock:
            self._release(permit)
            if self._state is State.HALF_OPEN:
                if permit.trial:
                    self._open()
                return
            self._failures += 1
            if self._state is State.CLOSED and self._failures >= self.policy.failure_threshold:
                self._open()

    def record_neutral(self, permit: Permit) -> None:
        """The call ended in a way that says nothing about the provider's health."""
        with self._lock:
            self._release(permit)

    # --- internals: called with the lock held ------------------------------------------

    def _advance(self) -> None:
        if (
            self._state is State.OPEN
            and self._clock() >= self._opened_at + self.policy.open_seconds
        ):
            self._trials_in_flight = 0
            self._move(State.HALF_OPEN)

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._trials_in_flight = 0
        self._move(State.OPEN)

    def _release(self, permit: Permit) -> None:
        if permit.trial and self._trials_in_flight > 0:
            self._trials_in_flight -= 1

    def _move(self, new: State) -> None:
        old, self._state = self._state, new
        if old is new:
            return
        log.warning("breaker %s: %s -> %s", self.name, old.value, new.value)
        if self._on_change is not None:
            self._on_change(self.name, old, new)
