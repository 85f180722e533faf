"""The per-caller token bucket and the stream bound, on a clock the test moves."""

from __future__ import annotations

import pytest

from orchestrator.api.limits import Slots, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_lets_a_burst_through_then_says_when_the_next_token_comes() -> None:
    clock = Clock()
    bucket = TokenBucket(per_second=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    clock.now += 0.25
    assert bucket.take() == pytest.approx(0.25)  # half a token there: the rest in 0.25 s
    clock.now += 0.25
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)


def test_a_refused_call_takes_no_token() -> None:
    clock = Clock()
    bucket = TokenBucket(per_second=1, burst=1, clock=clock)
    assert bucket.take() == 0.0
    for _ in range(5):
        assert bucket.take() == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.take() == 0.0


def test_an_idle_bucket_refills_only_up_to_its_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(per_second=10, burst=2, clock=clock)
    clock.now += 3600
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_a_bucket_that_could_never_admit_a_call_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(per_second=0, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(per_second=1, burst=0.5)


def test_slots_admit_up_to_their_limit_and_again_after_a_release() -> None:
    slots = Slots(2)
    assert [slots.acquire(), slots.acquire(), slots.acquire()] == [True, True, False]
    slots.release()
    assert slots.acquire() is True
    assert slots.acquire() is False
