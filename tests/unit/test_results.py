"""The result cache keeps the most recently used answers, up to its size, and answers a hot
key's replays without validating them again only when nothing could differ."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast
from uuid import uuid4

import pytest

from orchestrator.commands import CancelPayment, CapturePayment, CreatePayment, RefundPayment
from orchestrator.domain.payment import Payment
from orchestrator.results import KnownResult, ResultCache, _identical


def result(name: str) -> KnownResult:
    return KnownResult(name, f"fingerprint-{name}", cast(Payment, object()))


def test_the_least_recently_used_answer_is_evicted_first() -> None:
    cache = ResultCache(maxsize=2)
    a, b, c = uuid4(), uuid4(), uuid4()
    cache.put(a, result("a"))
    cache.put(b, result("b"))
    assert cache.get(a) is not None  # a is now more recent than b
    cache.put(c, result("c"))
    assert cache.get(b) is None
    assert cache.get(a) is not None
    assert cache.get(c) is not None
    assert len(cache) == 2


def test_a_cache_of_size_zero_keeps_nothing() -> None:
    cache = ResultCache(maxsize=0)
    key = uuid4()
    cache.put(key, result("a"))
    assert cache.get(key) is None
    assert len(cache) == 0


# --- a hot key's replays skip validation: only a request identical to one already matched -----

ASKED = CreatePayment(
    idempotency_key="order-1",
    amount=1000,
    currency="USD",
    payment_method="pm_card_visa",
    region="us",
    metadata={"b": "2", "a": "1"},
)


def noted_cache() -> tuple[ResultCache, KnownResult]:
    cache = ResultCache()
    known = result("CreatePayment")
    cache.note("team-a", ASKED.validated(), known)
    return cache, known


def test_a_request_identical_to_a_matched_command_is_answered_without_validation() -> None:
    cache, known = noted_cache()
    again = replace(ASKED.validated(), metadata={"a": "1", "b": "2"})
    assert cache.answer("team-a", again) is known.payment


@pytest.mark.parametrize(
    "other",
    [
        replace(ASKED, region="US", amount=2000),  # other parameters
        replace(ASKED, region="US", amount=1000.0),  # equal, but a float
        replace(ASKED, region="US", metadata={"a": "1"}),
        ASKED,  # as received: validation would normalise it, so it takes the full path
        CapturePayment("order-1", "a-payment"),  # another command under the same key
    ],
)
def test_anything_else_takes_the_full_path(other: object) -> None:
    cache, _ = noted_cache()
    assert cache.answer("team-a", other) is None


def test_another_callers_scope_takes_the_full_path() -> None:
    cache, _ = noted_cache()
    assert cache.answer("team-b", ASKED.validated()) is None


def test_a_key_that_is_not_a_string_takes_the_full_path() -> None:
    cache, _ = noted_cache()
    assert cache.answer("team-a", replace(ASKED, idempotency_key=["order-1"])) is None


@pytest.mark.parametrize(
    "command",
    [
        ASKED,
        CreatePayment(
            "k", 5, "JPY", "pm_card_visa", "eu-west", "manual", "ref", {"z": "", "y": "x"}
        ),
        CapturePayment("k", "00000000-0000-4000-8000-000000000001", 0),
        CancelPayment("k", "00000000-0000-4000-8000-000000000001"),
        RefundPayment("k", "00000000-0000-4000-8000-000000000001", 10, "customer asked"),
    ],
)
def test_validation_maps_its_own_output_to_itself(command: Any) -> None:
    # What the shortcut rests on: a request equal to a validated command validates to it.
    once = command.validated()
    assert once.validated() == once
    assert _identical(once.validated(), once)
