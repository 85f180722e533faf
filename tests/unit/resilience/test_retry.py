"""Exact backoff sequences, with the randomness injected."""

from __future__ import annotations

import itertools
import random

import pytest

from orchestrator.resilience.retry import RetryPolicy, delays, full_jitter


def test_without_jitter_delays_double_from_the_base_up_to_the_maximum() -> None:
    policy = RetryPolicy(base=0.1, maximum=1.0)
    sequence = list(itertools.islice(delays(policy, lambda v: v), 7))
    assert sequence == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_full_jitter_draws_uniformly_below_each_step() -> None:
    policy = RetryPolicy(base=0.5, maximum=4.0)
    jittered = list(itertools.islice(delays(policy, full_jitter(random.Random(7))), 5))
    expected_rng = random.Random(7)
    expected = [expected_rng.uniform(0, v) for v in (0.5, 1.0, 2.0, 4.0, 4.0)]
    assert jittered == pytest.approx(expected)
    assert all(0 <= d <= cap for d, cap in zip(jittered, (0.5, 1.0, 2.0, 4.0, 4.0), strict=True))


def test_the_same_seed_gives_the_same_sequence() -> None:
    policy = RetryPolicy(base=0.2, maximum=3.0)
    one = list(itertools.islice(delays(policy, full_jitter(random.Random(1))), 6))
    two = list(itertools.islice(delays(policy, full_jitter(random.Random(1))), 6))
    assert one == two
