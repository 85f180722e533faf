"""The result cache keeps the most recently used answers, up to its size."""

from __future__ import annotations

from typing import cast
from uuid import uuid4

from orchestrator.domain.payment import Payment
from orchestrator.results import KnownResult, ResultCache


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
