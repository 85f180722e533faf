"""Breaker transitions, driven by an injected clock: no sleeping."""

from __future__ import annotations

import threading

from orchestrator.resilience.breaker import BreakerPolicy, CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(
    clock: Clock, threshold: int = 3, open_seconds: float = 30, trials: int = 1
) -> CircuitBreaker:
    return CircuitBreaker("p", BreakerPolicy(threshold, open_seconds, trials), clock=clock)


def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        permit = b.acquire()
        assert permit is not None
        b.record_failure(permit)


def test_it_opens_after_the_threshold_of_consecutive_failures() -> None:
    b = breaker(Clock())
    fail(b, 2)
    assert b.state is State.CLOSED
    fail(b, 1)
    assert b.state is State.OPEN
    assert b.acquire() is None
    assert not b.allows()


def test_a_success_resets_the_count_of_failures() -> None:
    b = breaker(Clock())
    fail(b, 2)
    permit = b.acquire()
    assert permit is not None
    b.record_success(permit)
    fail(b, 2)
    assert b.state is State.CLOSED


def test_neutral_outcomes_never_open_it() -> None:
    b = breaker(Clock())
    for _ in range(10):
        permit = b.acquire()
        assert permit is not None
        b.record_neutral(permit)  # declines, 4xx, 429
    assert b.state is State.CLOSED


def test_it_stays_open_for_its_open_time_and_says_how_long_remains() -> None:
    clock = Clock()
    b = breaker(clock, open_seconds=30)
    fail(b, 3)
    clock.now += 29.5
    assert b.state is State.OPEN
    assert b.retry_after() == 0.5
    clock.now += 0.5
    assert b.state is State.HALF_OPEN
    assert b.retry_after() == 0.0


def test_half_open_lets_only_the_allowed_number_of_trial_calls_through() -> None:
    clock = Clock()
    b = breaker(clock, trials=2)
    fail(b, 3)
    clock.now += 30
    first, second = b.acquire(), b.acquire()
    assert first is not None and first.trial
    assert second is not None and second.trial
    assert b.acquire() is None  # a third concurrent trial is refused
    b.record_neutral(first)
    assert b.acquire() is not None  # a freed slot admits one more


def test_a_successful_trial_closes_it() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 30
    trial = b.acquire()
    assert trial is not None
    b.record_success(trial)
    assert b.state is State.CLOSED
    assert b.acquire() is not None


def test_a_failed_trial_opens_it_again_for_a_full_open_time() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 30
    trial = b.acquire()
    assert trial is not None
    b.record_failure(trial)
    assert b.state is State.OPEN
    clock.now += 29
    assert b.state is State.OPEN
    clock.now += 1
    assert b.state is State.HALF_OPEN


def test_a_late_answer_from_before_it_opened_does_not_decide_a_half_open_circuit() -> None:
    clock = Clock()
    b = breaker(clock)
    early = b.acquire()
    assert early is not None
    fail(b, 3)
    clock.now += 30
    assert b.state is State.HALF_OPEN
    b.record_success(early)
    assert b.state is State.HALF_OPEN


def test_transitions_are_reported() -> None:
    clock = Clock()
    seen: list[tuple[str, State, State]] = []
    b = CircuitBreaker(
        "stripe", BreakerPolicy(1, 5, 1), clock=clock, on_change=lambda *t: seen.append(t)
    )
    fail(b, 1)
    clock.now += 5
    trial = b.acquire()
    assert trial is not None
    b.record_success(trial)
    assert seen == [
        ("stripe", State.CLOSED, State.OPEN),
        ("stripe", State.OPEN, State.HALF_OPEN),
        ("stripe", State.HALF_OPEN, State.CLOSED),
    ]


def test_calls_through_one_breaker_run_in_parallel() -> None:
    # pybreaker holds its lock across the guarded call; this breaker must not.
    b = breaker(Clock())
    inside = threading.Barrier(8, timeout=5)

    def call() -> None:
        permit = b.acquire()
        assert permit is not None
        inside.wait()  # all 8 are inside the guarded section at once
        b.record_success(permit)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert not inside.broken
