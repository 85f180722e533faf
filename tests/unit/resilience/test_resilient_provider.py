"""The retry loop around the port, against a scripted provider, with clock, sleep and
jitter injected: which errors are retried, with which key, after which delay."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderError,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)
from orchestrator.resilience.breaker import BreakerPolicy, CircuitBreaker, State
from orchestrator.resilience.provider import CallPolicy, CircuitOpen, ResilientProvider
from orchestrator.resilience.retry import RetryPolicy

OK = ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference="p_1")
DECLINED = ProviderOutcome(OutcomeStatus.DECLINED, decline_code="card_declined")
OP = ProviderOperation(
    kind=OperationKind.AUTHORIZE, payment_id="pay", provider_key="pay:1:authorize:1",
    amount=100, currency="USD", payment_method="pm_x",
)  # fmt: skip

Step = ProviderOutcome | ProviderError | None


class ScriptedProvider:
    """Answers each call with the next scripted step; records what it was sent."""

    name = "scripted"

    def __init__(self, *steps: Step, lookups: tuple[Step, ...] = (), honors: bool = True) -> None:
        self.steps = list(steps)
        self.lookups = list(lookups)
        self.honors_idempotency_keys = honors
        self.sent: list[tuple[str, float]] = []
        self.looked_up = 0

    def _next(self, steps: list[Step]) -> ProviderOutcome | None:
        step = steps.pop(0)
        if isinstance(step, ProviderError):
            raise step
        return step

    def authorize(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        self.sent.append((operation.provider_key, timeout))
        outcome = self._next(self.steps)
        assert outcome is not None
        return outcome

    capture = cancel = refund = authorize

    def lookup(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome | None:
        self.looked_up += 1
        return self._next(self.lookups)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def resilient(
    inner: ScriptedProvider,
    fake: FakeTime,
    *,
    attempts: int = 4,
    max_time: float = 10.0,
    threshold: int = 5,
    jitter: Callable[[float], float] = lambda v: v,
) -> ResilientProvider:
    breaker = CircuitBreaker("scripted", BreakerPolicy(threshold, 30, 1), clock=fake.clock)
    policy = CallPolicy(
        attempt_timeout=2.0,
        retry=RetryPolicy(base=0.1, maximum=1.0, max_attempts=attempts, max_time=max_time),
    )
    return ResilientProvider(
        inner, breaker, policy, sleep=fake.sleep, clock=fake.clock, jitter=jitter
    )


def test_a_connection_failure_is_retried_with_the_same_key_after_exact_delays() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(ProviderNotReached("refused"), ProviderNotReached("refused"), OK)
    assert resilient(inner, fake).authorize(OP, timeout=10) is OK
    assert [key for key, _ in inner.sent] == [OP.provider_key] * 3
    assert fake.slept == pytest.approx([0.1, 0.2])


def test_jitter_is_applied_to_every_delay() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(ProviderNotReached("x"), ProviderNotReached("x"), OK)
    resilient(inner, fake, jitter=lambda v: v / 2).authorize(OP, timeout=10)
    assert fake.slept == pytest.approx([0.05, 0.1])


def test_an_unknown_outcome_is_re_sent_with_the_same_key_where_keys_are_honoured() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(ProviderOutcomeUnknown("read timeout"), OK)
    assert resilient(inner, fake).authorize(OP, timeout=10) is OK
    assert [key for key, _ in inner.sent] == [OP.provider_key] * 2
    assert inner.looked_up == 0


def test_an_unknown_outcome_is_looked_up_not_re_sent_where_keys_are_not_honoured() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(ProviderOutcomeUnknown("reset"), OK, lookups=(OK,), honors=False)
    assert resilient(inner, fake).authorize(OP, timeout=10) is OK
    assert len(inner.sent) == 1
    assert inner.looked_up == 1


def test_a_lookup_that_finds_nothing_leaves_the_outcome_in_doubt_and_sends_nothing_more() -> None:
    fake = FakeTime()
    unknown = ProviderOutcomeUnknown("reset")
    inner = ScriptedProvider(unknown, OK, lookups=(None,), honors=False)
    with pytest.raises(ProviderOutcomeUnknown):
        resilient(inner, fake).authorize(OP, timeout=10)
    assert len(inner.sent) == 1


def test_a_provider_that_replays_stored_errors_is_asked_first() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(
        ProviderOutcomeUnknown("500", lookup_first=True), OK, lookups=(DECLINED,)
    )
    assert resilient(inner, fake).authorize(OP, timeout=10) is DECLINED
    assert len(inner.sent) == 1


def test_retry_after_is_honoured_when_longer_than_the_backoff() -> None:
    fake = FakeTime()
    limited = ProviderNotReached("429", retry_after=1.5, breaker_failure=False)
    inner = ScriptedProvider(limited, OK)
    resilient(inner, fake).authorize(OP, timeout=10)
    assert fake.slept == [1.5]


def test_no_retry_sleeps_past_the_call_budget() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(*[ProviderNotReached("refused")] * 10)
    with pytest.raises(ProviderNotReached):
        resilient(inner, fake, attempts=10, max_time=0.5).authorize(OP, timeout=10)
    assert sum(fake.slept) < 0.5
    assert fake.slept == pytest.approx([0.1, 0.2])  # a third wait (0.4) would pass 0.5


def test_each_attempt_gets_at_most_what_remains_of_the_budget() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(ProviderNotReached("x"), OK)
    resilient(inner, fake).authorize(OP, timeout=1.0)
    assert inner.sent[0][1] == pytest.approx(1.0)
    assert inner.sent[1][1] == pytest.approx(0.9)


def test_attempts_stop_at_the_maximum() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(*[ProviderNotReached("refused")] * 5)
    with pytest.raises(ProviderNotReached):
        resilient(inner, fake, attempts=3).authorize(OP, timeout=10)
    assert len(inner.sent) == 3


def test_once_in_doubt_the_call_stays_in_doubt_whatever_later_attempts_say() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(ProviderOutcomeUnknown("timeout"), ProviderNotReached("refused"))
    with pytest.raises(ProviderOutcomeUnknown):
        resilient(inner, fake, attempts=2).authorize(OP, timeout=10)


def test_declines_and_final_errors_are_answers_not_failures() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(*[DECLINED] * 10)
    provider = resilient(inner, fake, threshold=3)
    for _ in range(10):
        assert provider.authorize(OP, timeout=10) is DECLINED
    assert provider.breaker.state is State.CLOSED
    assert len(inner.sent) == 10  # a decline is final: never retried


def test_the_breaker_opens_after_its_threshold_and_then_fails_fast_without_calling() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(*[ProviderNotReached("refused")] * 3)
    provider = resilient(inner, fake, attempts=1, threshold=3)
    for _ in range(3):
        with pytest.raises(ProviderNotReached):
            provider.authorize(OP, timeout=10)
    assert provider.breaker.state is State.OPEN
    started = time.perf_counter()
    with pytest.raises(CircuitOpen) as refused:
        provider.authorize(OP, timeout=10)
    elapsed = time.perf_counter() - started
    assert len(inner.sent) == 3
    assert refused.value.retry_after == pytest.approx(30.0)
    assert elapsed < 0.005


def test_rate_limiting_never_opens_the_breaker() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(*[ProviderNotReached("429", breaker_failure=False)] * 6)
    provider = resilient(inner, fake, attempts=1, threshold=2)
    for _ in range(6):
        with pytest.raises(ProviderNotReached):
            provider.authorize(OP, timeout=10)
    assert provider.breaker.state is State.CLOSED


def test_lookups_are_retried_like_any_read() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(lookups=(ProviderNotReached("refused"), OK))
    assert resilient(inner, fake).lookup(OP, timeout=10) is OK
    assert inner.looked_up == 2
