"""The bulkhead as pure functions of an injected clock, then composed around the port: calls
over the concurrency limit or the rate are refused before anything is sent, as safely as by an
open circuit, and say nothing about the provider's health."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable

import pytest

from orchestrator.ports import (
    OperationKind,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    ProviderOutcomeUnknown,
)
from orchestrator.resilience.breaker import BreakerPolicy, CircuitBreaker, State
from orchestrator.resilience.bulkhead import (
    BUSY_RETRY_AFTER,
    Bulkhead,
    BulkheadPolicy,
    ProviderBusy,
)
from orchestrator.resilience.provider import CallPolicy, ResilientProvider
from orchestrator.resilience.retry import RetryPolicy
from orchestrator.routing import Route
from tests.unit.resilience.test_resilient_provider import OK, OP, FakeTime, ScriptedProvider

SECOND = ProviderOperation(
    kind=OperationKind.AUTHORIZE, payment_id="pay2", provider_key="pay2:1:authorize:1",
    amount=100, currency="USD", payment_method="pm_x",
)  # fmt: skip


def bulkhead(fake: FakeTime, concurrent: int | None = None, rate: float | None = None) -> Bulkhead:
    return Bulkhead("scripted", BulkheadPolicy(concurrent, rate), clock=fake.clock)


# --- the bulkhead alone ---------------------------------------------------------------------


def test_calls_beyond_the_concurrency_limit_are_refused_until_a_slot_frees() -> None:
    limits = bulkhead(FakeTime(), concurrent=2)
    limits.enter()
    limits.enter()
    assert not limits.allows()
    with pytest.raises(ProviderBusy, match=r"2 calls in flight \(max_concurrent_calls = 2\)"):
        limits.enter()
    assert limits.in_flight == 2  # a refused call holds no slot
    assert limits.retry_after() == BUSY_RETRY_AFTER
    limits.leave()
    assert limits.allows()
    limits.enter()
    assert limits.in_flight == 2


def test_the_rate_allows_one_second_of_burst_then_refills_with_the_clock() -> None:
    fake = FakeTime()
    limits = bulkhead(fake, rate=4)
    for _ in range(4):
        limits.take_token()
    with pytest.raises(ProviderBusy, match=r"max_calls_per_second = 4") as refused:
        limits.take_token()
    assert refused.value.retry_after == pytest.approx(0.25)
    assert not limits.allows()
    fake.now += 0.2
    assert limits.retry_after() == pytest.approx(0.05)
    assert not limits.allows()
    fake.now += 0.05
    assert limits.allows()
    limits.take_token()
    fake.now += 100  # idle time refills the bucket, never past one second's worth
    for _ in range(4):
        limits.take_token()
    with pytest.raises(ProviderBusy):
        limits.take_token()


def test_a_rate_below_one_a_second_still_admits_one_call_at_a_time() -> None:
    fake = FakeTime()
    limits = bulkhead(fake, rate=0.5)
    limits.take_token()
    with pytest.raises(ProviderBusy) as refused:
        limits.take_token()
    assert refused.value.retry_after == pytest.approx(2.0)
    fake.now += 2.0
    limits.take_token()


def test_without_limits_everything_is_admitted() -> None:
    limits = bulkhead(FakeTime())
    for _ in range(1000):
        limits.enter()
        limits.take_token()
    assert limits.allows()
    assert limits.retry_after() == 0.0
    assert BulkheadPolicy().unlimited


def test_busy_is_not_reached_and_no_sign_of_ill_health() -> None:
    busy = ProviderBusy("x")
    assert isinstance(busy, ProviderNotReached)
    assert not busy.breaker_failure


@pytest.mark.parametrize(
    ("concurrent", "rate", "message"),
    [
        (0, None, "max_concurrent_calls must be a whole number of at least 1"),
        (2.5, None, "max_concurrent_calls must be a whole number of at least 1"),
        (True, None, "max_concurrent_calls must be a whole number of at least 1"),
        ("4", None, "max_concurrent_calls must be a whole number of at least 1"),
        (None, 0, "max_calls_per_second must be a positive number"),
        (None, -1.5, "max_calls_per_second must be a positive number"),
        (None, float("inf"), "max_calls_per_second must be a positive number"),
        (None, "10", "max_calls_per_second must be a positive number"),
    ],
)
def test_limits_that_mean_nothing_are_refused(
    concurrent: object, rate: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        BulkheadPolicy(concurrent, rate)  # type: ignore[arg-type]


# --- around the port ------------------------------------------------------------------------


class Reentrant(ScriptedProvider):
    """While it handles a call, ``during`` runs: another caller's call, overlapping it."""

    def __init__(self, *steps: object, **kwargs: object) -> None:
        super().__init__(*steps, **kwargs)  # type: ignore[arg-type]
        self.during: Callable[[], None] | None = None

    def authorize(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        if self.during is not None and operation is OP:
            self.during()
        return super().authorize(operation, timeout=timeout)

    capture = cancel = refund = authorize


def resilient(
    inner: ScriptedProvider,
    fake: FakeTime,
    limits: Bulkhead,
    *,
    attempts: int = 4,
    threshold: int = 2,
) -> ResilientProvider:
    breaker = CircuitBreaker("scripted", BreakerPolicy(threshold, 30, 1), clock=fake.clock)
    policy = CallPolicy(
        attempt_timeout=2.0,
        retry=RetryPolicy(base=0.1, maximum=1.0, max_attempts=attempts, max_time=10.0),
    )
    return ResilientProvider(
        inner, breaker, policy, sleep=fake.sleep, clock=fake.clock, jitter=lambda v: v,
        bulkhead=limits,
    )  # fmt: skip


def test_a_call_while_every_slot_is_taken_fails_fast_without_being_sent() -> None:
    fake = FakeTime()
    inner = Reentrant(OK, OK)
    provider = resilient(inner, fake, bulkhead(fake, concurrent=1))
    refused: list[ProviderBusy] = []

    def overlapping() -> None:
        with pytest.raises(ProviderBusy) as busy:
            provider.authorize(SECOND, timeout=10)
        refused.append(busy.value)

    inner.during = overlapping
    assert provider.authorize(OP, timeout=10) is OK
    assert [key for key, _ in inner.sent] == [OP.provider_key]  # the second was never sent
    assert len(refused) == 1 and fake.slept == []  # at once, without waiting
    assert provider.stats.snapshot()["bulkhead_rejected"] == 1
    assert provider.bulkhead.in_flight == 0
    assert provider.authorize(SECOND, timeout=10) is OK  # the slot is free again


def test_the_slot_is_held_across_retries_and_their_waits_and_freed_by_a_failure() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(*[ProviderNotReached("refused")] * 3)
    limits = bulkhead(fake, concurrent=1)
    provider = resilient(inner, fake, limits, attempts=3, threshold=10)
    held: list[int] = []
    provider._sleep = lambda s: (held.append(limits.in_flight), fake.sleep(s))[-1]  # type: ignore[method-assign]
    with pytest.raises(ProviderNotReached):
        provider.authorize(OP, timeout=10)
    assert held == [1, 1]  # both backoff waits held the slot
    assert limits.in_flight == 0


def test_every_attempt_sent_spends_a_token_and_a_retry_without_one_ends_the_call() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(ProviderNotReached("refused"), ProviderNotReached("refused"), OK)
    provider = resilient(inner, fake, bulkhead(fake, rate=2), threshold=10)
    with pytest.raises(ProviderBusy, match="over its rate limit"):
        provider.authorize(OP, timeout=10)  # the third attempt, at 0.3 s, finds 0.6 of a token
    assert len(inner.sent) == 2
    assert fake.slept == pytest.approx([0.1, 0.2])  # the backoff, and no wait for the token
    assert provider.stats.snapshot()["rate_limited"] == 1


def test_a_retry_refused_by_the_rate_after_an_unknown_outcome_leaves_the_call_in_doubt() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(ProviderOutcomeUnknown("read timeout"), OK)
    provider = resilient(inner, fake, bulkhead(fake, rate=1))
    with pytest.raises(ProviderOutcomeUnknown):
        provider.authorize(OP, timeout=10)
    assert len(inner.sent) == 1


def test_being_busy_never_opens_the_breaker_nor_keeps_its_trial() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(ProviderNotReached("down"), ProviderNotReached("down"), OK, OK)
    limits = bulkhead(fake, rate=1)
    provider = resilient(inner, fake, limits, attempts=1, threshold=2)
    for _ in range(2):
        with pytest.raises(ProviderNotReached):
            provider.authorize(OP, timeout=10)
        fake.now += 1.0
    assert provider.breaker.state is State.OPEN
    fake.now += 30  # half-open: one trial; the rate refuses the first call it admits
    provider.bulkhead.take_token()
    with pytest.raises(ProviderBusy):
        provider.authorize(OP, timeout=10)
    assert provider.breaker.state is State.HALF_OPEN
    fake.now += 1.0  # the trial the busy call took was handed back: the next one may try
    assert provider.authorize(OP, timeout=10) is OK
    assert provider.breaker.state is State.CLOSED
    for _ in range(5):  # and a bucket running dry counts no failure
        fake.now += 0.1
        with contextlib.suppress(ProviderBusy):
            provider.authorize(OP, timeout=10)
        inner.steps.append(OK)
    assert provider.breaker.state is State.CLOSED


def test_a_lookup_instead_of_a_re_send_takes_no_second_slot() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(ProviderOutcomeUnknown("reset"), lookups=(OK,), honors=False)
    provider = resilient(inner, fake, bulkhead(fake, concurrent=1))
    assert provider.authorize(OP, timeout=10) is OK
    assert inner.looked_up == 1


def test_lookups_are_bounded_like_any_call() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(lookups=(OK,))
    limits = bulkhead(fake, concurrent=1)
    provider = resilient(inner, fake, limits)
    limits.enter()  # another call holds the only slot
    with pytest.raises(ProviderBusy):
        provider.lookup(OP, timeout=10)
    assert inner.looked_up == 0


def test_a_route_over_its_limit_is_unavailable_like_one_whose_circuit_is_open() -> None:
    fake = FakeTime()
    limits = bulkhead(fake, concurrent=1, rate=10)
    route = Route(resilient(ScriptedProvider(), fake, limits), timeout=1.0, bulkhead=limits)
    assert route.available() and route.retry_after() == 0.0
    limits.enter()
    assert not route.available()
    assert route.retry_after() == BUSY_RETRY_AFTER


# --- admission: the slot and the first token, taken before the intent is written -----------


def test_an_admitted_call_uses_the_slot_and_the_token_its_command_took() -> None:
    fake = FakeTime()
    inner = ScriptedProvider(OK, OK)
    limits = bulkhead(fake, concurrent=1, rate=1)
    provider = resilient(inner, fake, limits)
    with limits.admitted():
        assert limits.in_flight == 1 and not limits.allows()
        assert provider.authorize(OP, timeout=10) is OK  # no second slot, no second token
    assert limits.in_flight == 0
    with pytest.raises(ProviderBusy, match="rate"):  # the token was spent all the same
        provider.authorize(OP, timeout=10)
    assert len(inner.sent) == 1


def test_an_admission_over_either_limit_takes_nothing() -> None:
    fake = FakeTime()
    limits = bulkhead(fake, concurrent=2, rate=1)

    def another_caller() -> None:  # its own context, as another thread or greenlet has
        with limits.admitted():
            pass

    with limits.admitted():
        with limits.admitted():  # nested in the same context: the outer one holds
            assert limits.in_flight == 1
        with pytest.raises(ProviderBusy, match="rate"):
            contextvars.Context().run(another_caller)
        assert limits.in_flight == 1  # the refused admission gave its slot back
    assert limits.in_flight == 0
