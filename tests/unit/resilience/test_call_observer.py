"""What the resilient layer reports to its observer (the metrics' hooks): one call per
operation with its outcome (retries inside it), each retry, each bulkhead refusal."""

from __future__ import annotations

import contextlib

import pytest

from orchestrator.ports import ProviderError, ProviderNotReached, ProviderOutcomeUnknown
from orchestrator.resilience.breaker import BreakerPolicy, CircuitBreaker
from orchestrator.resilience.bulkhead import Bulkhead, BulkheadPolicy, ProviderBusy
from orchestrator.resilience.provider import CallPolicy, ResilientProvider
from orchestrator.resilience.retry import RetryPolicy
from tests.unit.resilience.test_resilient_provider import (
    DECLINED,
    OK,
    OP,
    FakeTime,
    ScriptedProvider,
    Step,
)


class Recorded:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.retries: list[str] = []

    def provider_call(self, provider: str, operation: str, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append((provider, operation, outcome))

    def retry(self, provider: str) -> None:
        self.retries.append(provider)


def observed(
    *steps: Step, lookups: tuple[Step, ...] = (), bulkhead: Bulkhead | None = None
) -> tuple[ResilientProvider, Recorded]:
    fake = FakeTime()
    recorded = Recorded()
    provider = ResilientProvider(
        ScriptedProvider(*steps, lookups=lookups),
        CircuitBreaker("scripted", BreakerPolicy(5, 30, 1), clock=fake.clock),
        CallPolicy(2.0, RetryPolicy(base=0.1, maximum=1.0, max_attempts=3, max_time=10)),
        sleep=fake.sleep, clock=fake.clock, jitter=lambda v: v, observer=recorded,
        bulkhead=bulkhead,
    )  # fmt: skip
    return provider, recorded


@pytest.mark.parametrize(
    ("steps", "outcome"),
    [
        ((OK,), "succeeded"),
        ((DECLINED,), "declined"),
        ((ProviderNotReached("refused"), OK), "succeeded"),
        (
            (ProviderNotReached("a"), ProviderNotReached("b"), ProviderNotReached("c")),
            "not_reached",
        ),
        ((ProviderOutcomeUnknown("timeout"),) * 3, "unknown"),
    ],
)
def test_each_call_is_reported_once_with_its_outcome(steps: tuple[Step, ...], outcome: str) -> None:
    provider, recorded = observed(*steps)
    with contextlib.suppress(ProviderError):
        provider.authorize(OP, timeout=10)
    assert recorded.calls == [("scripted", "authorize", outcome)]
    assert recorded.retries == ["scripted"] * (len(steps) - 1)


def test_a_lookup_is_reported_as_a_lookup() -> None:
    provider, recorded = observed(lookups=(OK,))
    provider.lookup(OP, timeout=10)
    assert recorded.calls == [("scripted", "lookup", "succeeded")]


def test_a_call_refused_by_the_bulkhead_is_counted_by_it_and_not_reached() -> None:
    bulkhead = Bulkhead("scripted", BulkheadPolicy(max_concurrent_calls=1))
    bulkhead.take_slot()  # another call holds the only slot
    provider, recorded = observed(OK, bulkhead=bulkhead)
    with pytest.raises(ProviderBusy):
        provider.authorize(OP, timeout=10)
    assert (bulkhead.refused_slots, bulkhead.refused_rate) == (1, 0)
    assert recorded.calls == [("scripted", "authorize", "not_reached")]
