"""The bounded map keeps the most recently used entries, up to its size, and a read never
waits for its lock."""

from __future__ import annotations

import threading

import pytest

from orchestrator.lru import BoundedMap


def test_the_least_recently_read_entry_leaves_first() -> None:
    entries: BoundedMap[str, int] = BoundedMap(2)
    entries.put("a", 1)
    entries.put("b", 2)
    assert entries.get("a") == 1  # a is now more recent than b
    entries.put("c", 3)
    assert entries.get("b") is None
    assert (entries.get("a"), entries.get("c")) == (1, 3)
    assert len(entries) == 2


def test_a_map_of_size_zero_keeps_nothing() -> None:
    entries: BoundedMap[str, int] = BoundedMap(0)
    entries.put("a", 1)
    assert entries.get("a") is None
    assert len(entries) == 0


def test_a_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        BoundedMap(-1)


def test_a_read_while_a_writer_holds_the_lock_answers_at_once_without_the_mark() -> None:
    entries: BoundedMap[str, int] = BoundedMap(2)
    entries.put("a", 1)
    entries.put("b", 2)
    answers: list[int | None] = []
    with entries._lock:  # a writer in the middle of a put
        reader = threading.Thread(target=lambda: answers.append(entries.get("a")))
        reader.start()
        reader.join(2)
        assert answers == [1]  # answered while the lock was still held
    entries.put("c", 3)  # a was not marked as read: it is still the oldest
    assert entries.get("a") is None
    assert entries.get("b") == 2
