"""On PostgreSQL a save is sent in one round trip when the recorder knows the chain's head
from its own last transaction: the links are computed before the table lock is taken, and
the server checks the guess under the lock. A wrong guess (another writer, another replica,
a head that is not what it seems) costs a transaction that writes nothing, which saw the
true head under the lock, and a second one built on it, not a read of the head under the
lock; it never forks or breaks the chain. Writers that keep racing end with the head read
under the lock. A tracking position that cannot move fails the whole transaction, as when
the head is read first."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from orchestrator.application import Payments
from orchestrator.audit.chain import GUESSES, KnownHead
from orchestrator.audit.verify import verify
from tests.integration.test_bulk_reads import replicas
from tests.integration.test_group_commit import intent

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


@pytest.fixture
def apps(postgres_url: str) -> Iterator[tuple[Payments, Payments]]:
    with replicas(postgres_url) as both:
        yield both


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


def spy(
    app: Payments,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    before: Callable[[int], None] = lambda made: None,
) -> list[int]:
    """Records each call, from now on, of ``app``'s recorder's method ``name``; each first
    runs ``before`` with the number of calls made so far."""
    recorder: Any = app.recorder
    calls: list[int] = []
    method = getattr(recorder, name)

    def spied(*args: Any) -> Any:
        before(len(calls))
        calls.append(1)
        return method(*args)

    monkeypatch.setattr(recorder, name, spied)
    return calls


def reads_under_the_lock(app: Payments, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The transactions of ``app``, from now on, that read the head under the lock."""
    return spy(app, "_read_head_and_write", monkeypatch)


def test_a_head_moved_by_another_replica_costs_one_more_round_trip_and_the_chain_stays_one(
    apps: tuple[Payments, Payments], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = apps
    first.save(intent())
    first.save(intent())
    second.save(intent())  # moves the head past what the first knows
    reads = reads_under_the_lock(first, monkeypatch)
    first.save(intent())  # misses, then is built on the head the miss saw

    assert (known_head(first).guesses, known_head(first).misses) == (3, 1)
    assert reads == []  # the lock was never held while Python computed links
    first.save(intent())  # after a first guess that missed, the next one reads the head
    first.save(intent())
    assert (known_head(first).guesses, known_head(first).misses) == (4, 1)
    assert reads == [1]
    assert links(first) == 12


def race(
    apps: tuple[Payments, Payments], monkeypatch: pytest.MonkeyPatch, *, raced: int
) -> list[int]:
    """Another replica commits before each of the first ``raced`` attempts of the first
    replica's next transactions sent in one round trip; returns those attempts, as made."""
    first, second = apps

    def commit_first(made: int) -> None:
        if made < raced:
            second.save(intent())

    return spy(first, "_write_in_one_round_trip", monkeypatch, commit_first)


def test_writers_that_keep_racing_end_with_the_head_read_under_the_lock(
    apps: tuple[Payments, Payments], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = apps
    first.save(intent())
    race(apps, monkeypatch, raced=GUESSES)
    reads = reads_under_the_lock(first, monkeypatch)
    first.save(intent())

    assert (known_head(first).guesses, known_head(first).misses) == (GUESSES, GUESSES)
    assert reads == [1]
    assert links(first) == 2 * (2 + GUESSES)


def test_a_guess_that_misses_moves_no_tracking_and_its_retry_moves_it_once(
    apps: tuple[Payments, Payments], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = apps
    first.save(intent())
    recorder: Any = first.recorder
    attempts = race(apps, monkeypatch, raced=1)
    payment = intent()
    recorder.insert_events(
        [first.mapper.to_stored_event(e) for e in payment.collect_events()],
        tracking=Tracking("consumer", 10),
    )

    assert attempts == [1, 1]
    assert (known_head(first).guesses, known_head(first).misses) == (2, 1)
    assert recorder.max_tracking_id("consumer") == 10
    assert len(recorder.select_events(payment.id)) == 2
    assert links(first) == 6


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


def test_a_known_head_is_guessed_by_a_lone_transaction_and_less_after_each_first_miss() -> None:
    head = KnownHead()
    results: list[str] = []
    head.observe = results.append
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

    # Each first miss in a row doubles the transactions that read the head before the next
    # guess; a retry's result changes nothing.
    for skipped in (1, 2, 4):
        assert head.take() == (3, b"c")
        head.missed(first=True)
        head.hit(first=False)
        head.done((3, b"c"))
        for _ in range(skipped):
            assert head.take() is None
            head.done((3, b"c"))
    # A first guess that commits starts again at one.
    assert head.take() == (3, b"c")
    head.hit()
    head.done((4, b"d"))
    assert head.take() == (4, b"d")
    head.missed()
    head.missed(first=False)
    head.done((5, b"e"))
    assert head.take() is None
    head.done((5, b"e"))
    assert head.take() == (5, b"e")
    head.done((5, b"e"))
    assert head.misses == 5
    assert results == ["miss", "hit"] * 3 + ["hit", "miss", "miss"]
