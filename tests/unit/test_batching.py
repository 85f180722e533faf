"""Group commit's leader and followers, with a fake store: who writes what, in which
transaction, and what each caller is told."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from orchestrator.batching import GroupCommit, Ids, Save, split


def event(version: int = 1) -> StoredEvent:
    return StoredEvent(originator_id=uuid4(), originator_version=version, topic="t", state=b"")


class FakeStore:
    """Notification ids from a counter; ``gate`` holds a transaction open until set; a save
    whose event is in ``conflicts`` fails, alone or with its batch."""

    def __init__(self) -> None:
        self.next_id = 1
        self.transactions: list[list[Save]] = []  # committed, in order
        self.alone: list[Save] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.conflicts: set[int] = set()
        self.interrupt = False

    def _write(self, saves: Sequence[Save]) -> list[int]:
        self.entered.set()
        self.gate.wait(10)
        if any(id(s.events[0]) in self.conflicts for s in saves):
            raise IntegrityError("duplicate")
        ids = list(range(self.next_id, self.next_id + sum(len(s.events) for s in saves)))
        self.next_id += len(ids)
        self.transactions.append(list(saves))
        return ids

    def together(self, saves: Sequence[Save]) -> list[Ids]:
        if self.interrupt:
            raise KeyboardInterrupt
        return split(self._write(saves), saves)

    def alone_(self, save: Save) -> Ids:
        self.alone.append(save)
        return self._write([save])


def start(
    group: GroupCommit, saves: list[Save]
) -> tuple[list[threading.Thread], dict[int, object]]:
    outcomes: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            outcomes[i] = group.save(saves[i])
        except BaseException as e:  # the caller's outcome, whatever it is
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(saves))]
    for t in threads:
        t.start()
    return threads, outcomes


def wait_until(condition: object, timeout: float = 5) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.005)):
        if condition():  # type: ignore[operator]
            return
        done.wait(0.005)
    raise AssertionError("timed out")


def test_a_lone_save_is_written_at_once_on_the_unbatched_path() -> None:
    store = FakeStore()
    group = GroupCommit(store.together, store.alone_)
    save = Save([event(), event(2)], None)
    assert group.save(save) == [1, 2]
    assert store.alone == [save]
    assert group.stats.transactions == 1
    assert group.stats.batched_saves == 0


def test_saves_that_arrive_during_a_transaction_share_the_next_one() -> None:
    store = FakeStore()
    store.gate.clear()
    group = GroupCommit(store.together, store.alone_)
    first = Save([event()], None)
    leader, first_outcome = start(group, [first])
    store.entered.wait(5)
    saves = [Save([event(), event(2)], None) for _ in range(10)]
    threads, outcomes = start(group, saves)
    wait_until(lambda: group.queued() == 10)
    store.gate.set()
    for t in leader + threads:
        t.join(5)
    assert first_outcome == {0: [1]}
    assert [len(batch) for batch in store.transactions] == [1, 10]
    # Each caller gets the ids of its own events, in the order they were written.
    written = store.transactions[1]
    for i, save in enumerate(saves):
        position = written.index(save)
        assert outcomes[i] == [2 + 2 * position, 3 + 2 * position]
    assert group.stats.batched_saves == 10


def test_a_failed_batch_retries_each_member_alone_so_only_the_conflict_is_refused() -> None:
    store = FakeStore()
    store.gate.clear()
    group = GroupCommit(store.together, store.alone_)
    leader, _ = start(group, [Save([event()], None)])
    store.entered.wait(5)
    saves = [Save([event()], None) for _ in range(6)]
    store.conflicts.add(id(saves[3].events[0]))
    threads, outcomes = start(group, saves)
    wait_until(lambda: group.queued() == 6)
    store.gate.set()
    for t in leader + threads:
        t.join(5)
    assert isinstance(outcomes[3], IntegrityError)
    committed_after_the_first = {s for batch in store.transactions[1:] for s in batch}
    assert committed_after_the_first == set(saves) - {saves[3]}
    assert all(isinstance(outcomes[i], list) for i in range(6) if i != 3)
    assert set(store.alone) >= set(saves)  # every member went alone after the batch failed
    assert group.stats.failed_batches == 1


def test_an_interrupted_leader_leaves_no_member_waiting() -> None:
    store = FakeStore()
    store.gate.clear()
    group = GroupCommit(store.together, store.alone_)
    leader, _ = start(group, [Save([event()], None)])
    store.entered.wait(5)
    saves = [Save([event()], None) for _ in range(3)]
    threads, outcomes = start(group, saves)
    wait_until(lambda: group.queued() == 3)
    store.interrupt = True  # the next leader's batch raises a BaseException
    store.gate.set()
    for t in leader + threads:
        t.join(5)
        assert not t.is_alive()
    # The interrupted leader is told; the other members were written alone.
    interrupted = [o for o in outcomes.values() if isinstance(o, KeyboardInterrupt)]
    assert len(interrupted) == 1
    assert sum(isinstance(o, list) for o in outcomes.values()) == 2


def test_split_refuses_ids_that_do_not_match_the_events() -> None:
    saves = [Save([event()], None), Save([event(), event(2)], None)]
    assert split([7, 8, 9], saves) == [[7], [8, 9]]
    assert split(None, saves) == [None, None]
    with pytest.raises(AssertionError):
        split([7, 8], saves)
