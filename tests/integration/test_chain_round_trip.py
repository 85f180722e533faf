"""On PostgreSQL a save is sent in one round trip when the recorder knows the chain's head
from its own last transaction: the links are computed before the table lock is taken, and
the server checks the guess under the lock. A wrong guess (another writer, another replica,
a head that is not what it seems) costs a rolled-back transaction and a second one that
reads the head; it never forks or breaks the chain. A tracking position that cannot move
fails the whole transaction, as when the head is read first."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from orchestrator.application import Payments
from orchestrator.audit.chain import KnownHead
from orchestrator.audit.verify import verify
from orchestrator.bootstrap import build_payments
from orchestrator.routing import Router
from tests.integration.test_group_commit import intent

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


@pytest.fixture
def apps(postgres_url: str) -> Iterator[tuple[Payments, Payments]]:
    """Two replicas on one database."""
    first = build_payments(postgres_url, Router({}, {}))
    second = build_payments(postgres_url, Router({}, {}))
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def known_head(app: Payments) -> KnownHead:
    head: KnownHead = app.recorder.known_head  # type: ignore[attr-defined]
    return head


def links(app: Payments) -> int:
    report = verify(app.recorder, app.mapper)  # type: ignore[arg-type]
    assert report.clean, report
    return report.links


def test_a_replica_that_knows_the_head_saves_in_one_round_trip(
    apps: tuple[Payments, Payments],
) -> None:
    app, _ = apps
    for _ in range(3):
        app.save(intent())
    # The first save read the head; the two after it guessed it, rightly.
    assert (known_head(app).guesses, known_head(app).misses) == (2, 0)
    assert links(app) == 6


def test_a_head_moved_by_another_replica_is_read_and_the_chain_stays_one(
    apps: tuple[Payments, Payments],
) -> None:
    first, second = apps
    first.save(intent())
    first.save(intent())
    second.save(intent())  # moves the head past what the first knows
    first.save(intent())
    first.save(intent())  # after a miss, the next transaction reads the head

    assert (known_head(first).guesses, known_head(first).misses) == (2, 1)
    assert links(first) == 10


@pytest.mark.parametrize("wrong", ["hash", "seq"])
def test_a_known_head_that_is_not_the_head_is_never_built_on(
    apps: tuple[Payments, Payments], wrong: str
) -> None:
    app, _ = apps
    app.save(intent())
    head = known_head(app)
    seq, hash_ = head.take() or (0, b"")
    # As if the store had been restored from a backup, or the head forged.
    head.done((seq, bytes(32)) if wrong == "hash" else (seq + 5, hash_))

    app.save(intent())

    assert head.misses == 1
    assert links(app) == 4


def test_a_tracking_that_cannot_move_fails_the_transaction_and_writes_nothing(
    apps: tuple[Payments, Payments],
) -> None:
    app, _ = apps
    recorder: Any = app.recorder
    app.save(intent())
    ahead, behind = intent(), intent()
    recorder.insert_events(
        [app.mapper.to_stored_event(e) for e in ahead.collect_events()],
        tracking=Tracking("consumer", 10),
    )
    guesses = known_head(app).guesses

    with pytest.raises(IntegrityError):
        recorder.insert_events(
            [app.mapper.to_stored_event(e) for e in behind.collect_events()],
            tracking=Tracking("consumer", 5),
        )

    assert known_head(app).guesses == guesses + 1  # it was sent in one round trip
    assert recorder.max_tracking_id("consumer") == 10
    assert recorder.select_events(behind.id) == []
    assert links(app) == 4
    app.save(intent())  # the store takes writes after it
    assert links(app) == 6


def test_a_known_head_is_guessed_by_a_lone_transaction_and_less_after_each_miss() -> None:
    head = KnownHead()
    assert head.take() is None  # nothing known yet
    head.done((1, b"a"))
    assert head.take() == (1, b"a")
    # Another transaction in flight meanwhile would move the head: it reads it.
    assert head.take() is None
    head.done(None)
    head.done((2, b"b"))
    assert head.take() == (2, b"b")
    head.done(None)  # it failed: nothing is known
    assert head.take() is None
    head.done((3, b"c"))

    # Each miss in a row doubles the transactions that read the head before the next guess.
    for skipped in (1, 2, 4):
        assert head.take() == (3, b"c")
        head.missed()
        head.done((3, b"c"))
        for _ in range(skipped):
            assert head.take() is None
            head.done((3, b"c"))
    # A guess that commits starts again at one.
    assert head.take() == (3, b"c")
    head.hit()
    head.done((4, b"d"))
    assert head.take() == (4, b"d")
    head.missed()
    head.done((5, b"e"))
    assert head.take() is None
    head.done((5, b"e"))
    assert head.take() == (5, b"e")
    head.done((5, b"e"))
    assert (head.guesses, head.misses) == (8, 4)
