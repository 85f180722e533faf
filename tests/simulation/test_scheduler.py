"""The scheduler's own rules, each in a world of a few actors."""

from __future__ import annotations

import random

from tests.simulation.scheduler import EPOCH, Host, Scheduler


def test_an_actor_spawned_for_an_incarnation_that_crashed_never_runs_on_the_next() -> None:
    """Seed 1734 found it: a recovery worker spawned for an incarnation that crashed before
    its first pass ran, when its time came, on the restarted replica with the old replica's
    objects (its bulkhead), as no real process's thread can."""
    sched = Scheduler(random.Random(0))
    host = Host("replica0")
    ran: list[int] = []
    sched.spawn("old worker", lambda: ran.append(host.incarnation), host=host, at=EPOCH + 1)

    def crash_and_restart() -> None:
        sched.crash(host, "before sleep")
        host.alive, host.incarnation = True, host.incarnation + 1
        sched.spawn("new worker", lambda: ran.append(host.incarnation), host=host, at=EPOCH + 1)

    sched.spawn("killer", crash_and_restart, at=EPOCH + 0.5)
    sched.run(until=EPOCH + 2)

    assert ran == [1]  # only the worker of the incarnation that is running
    assert sched.never_started == [("replica0", EPOCH + 1)]
