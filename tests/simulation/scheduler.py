"""Simulated time and a seeded scheduler: many actors, one thread, one order per seed.

Every actor (a caller, a replica's recovery worker or webhook consumer, a provider delivering
webhooks) runs in its own greenlet. The real code runs unchanged inside them; it gives up
control only where it waits in the world outside: a store read or write, a provider call, a
sleep. Those are the simulator's wait points (``Scheduler.wait``). Whenever the running actor
waits, the scheduler picks the next actor among those ready, with the run's seeded random
source, and moves the clock only when every actor is asleep. Same seed, same choices, same run.

A replica can crash at any wait point: every actor working on it gets ``Crashed`` (a
``BaseException``, so the real code's ``except Exception`` cannot swallow it) where it waits,
and nothing it had not yet handed to the store survives.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from greenlet import greenlet

EPOCH = 1_800_000_000.0  # the simulated clock's start, in Unix seconds (January 2027)


class Crashed(BaseException):
    """The replica this actor was working on is gone: unwind without touching the world."""


@dataclass(eq=False)
class Host:
    """What can crash: one replica. Actors bound to it die with it; a caller is bound to the
    replica it called only for the length of the call."""

    name: str
    alive: bool = True
    incarnation: int = 0


@dataclass(eq=False)
class Actor:
    name: str
    run: Callable[[], Any]
    host: Host | None  # the replica it runs on now (None: outside every replica)
    wake: float
    order: int
    glet: greenlet | None = None
    done: bool = False
    error: BaseException | None = None
    crash_points: bool = True  # whether its waits may crash its host
    tags: dict[str, Any] = field(default_factory=dict)
    incarnation: int = 0  # of its host when it was spawned on it, or bound to it

    def gone(self) -> bool:
        """Its replica crashed: down now, or restarted since as another incarnation."""
        return self.host is not None and (
            not self.host.alive or self.host.incarnation != self.incarnation
        )


class Scheduler:
    def __init__(self, rng: random.Random, *, crash_rate: float = 0.0) -> None:
        self.rng = rng
        self.now = EPOCH
        self.crash_rate = crash_rate
        self.on_crash: Callable[[Host, str], None] | None = None
        self._actors: list[Actor] = []
        self._order = 0
        self._current: Actor | None = None
        self._main: greenlet | None = None
        self.steps = 0
        self.failures: list[tuple[str, BaseException]] = []
        # (replica, when, when its wait would have ended): actors that crashed their replica
        self.died_before_waits: list[tuple[str, float, float]] = []
        # (replica, when): actors spawned for an incarnation that crashed before they started,
        # and that its next incarnation would have run
        self.never_started: list[tuple[str, float]] = []

    # --- time -------------------------------------------------------------------------

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)

    def sleep(self, seconds: float) -> None:
        self.wait("sleep", max(seconds, 0.0))

    # --- actors -----------------------------------------------------------------------

    def spawn(
        self,
        name: str,
        run: Callable[[], Any],
        *,
        host: Host | None = None,
        at: float | None = None,
        crash_points: bool = True,
    ) -> Actor:
        self._order += 1
        actor = Actor(
            name, run, host, self.now if at is None else at, self._order, crash_points=crash_points
        )
        if host is not None:
            actor.incarnation = host.incarnation
        self._actors.append(actor)
        return actor

    @property
    def in_actor(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> Actor:
        assert self._current is not None, "not inside an actor"
        return self._current

    def wait(self, point: str, delay: float = 0.0) -> None:
        """Called by the running actor where the real code waits on the world: the place
        where other actors may run, time may pass, and the actor's replica may crash."""
        actor = self.current
        self._check_alive(actor)
        self._maybe_crash(actor, f"before {point}")
        # An actor that crashed its own replica dies here, not after its wait: by then the
        # replica may have restarted, and it would run on as a ghost of the old incarnation
        # (seed 1182 found one: an old recovery worker, with its old bulkhead).
        if actor.gone():
            assert actor.host is not None
            self.died_before_waits.append((actor.host.name, self.now, self.now + delay))
            raise Crashed(actor.host.name)
        actor.wake = self.now + delay
        assert self._main is not None
        self._main.switch()
        self._check_alive(actor)

    def maybe_crash_after(self, point: str) -> None:
        """A crash after the world acted (a commit done, a provider's answer on its way)."""
        actor = self.current
        self._maybe_crash(actor, f"after {point}")
        self._check_alive(actor)

    def _maybe_crash(self, actor: Actor, where: str) -> None:
        """Crashes the actor's replica with the run's crash rate, at a place that may."""
        if (
            actor.host is not None
            and actor.crash_points
            and self.crash_rate
            and self.rng.random() < self.crash_rate
        ):
            self.crash(actor.host, where)

    def crash(self, host: Host, where: str) -> None:
        if not host.alive:
            return
        host.alive = False
        for actor in self._actors:
            if actor.host is host and actor.glet is not None and actor is not self._current:
                # It dies where it waits: resumed once more, it finds its host gone.
                actor.wake = self.now
        if self.on_crash is not None:
            self.on_crash(host, where)

    @staticmethod
    def _check_alive(actor: Actor) -> None:
        if actor.gone():
            assert actor.host is not None
            raise Crashed(actor.host.name)

    def bind(self, host: Host | None) -> Host | None:
        """Makes the running actor work on ``host`` (a caller calling a replica); returns
        what it worked on before."""
        actor = self.current
        before, actor.host = actor.host, host
        if host is not None:
            actor.incarnation = host.incarnation
        return before

    # --- the loop ---------------------------------------------------------------------

    def run(self, until: float) -> None:
        """Runs actors until every one is done or asleep past ``until``."""
        self._main = greenlet.getcurrent()
        while True:
            live = [a for a in self._actors if not a.done]
            self._actors = live
            if not live:
                return
            earliest = min(a.wake for a in live)
            if earliest > until:
                self.now = max(self.now, until)
                return
            if earliest > self.now:
                self.now = earliest
            ready = [a for a in live if a.wake <= self.now]
            actor = ready[self.rng.randrange(len(ready))]
            self._step(actor)

    def _step(self, actor: Actor) -> None:
        self.steps += 1
        self._current = actor
        try:
            if actor.glet is None:
                actor.glet = greenlet(self._body(actor))
            if actor.gone() and actor.glet.gr_frame is None:
                # Never started on a replica that is gone: spawned for an incarnation that
                # crashed before the actor's time came, it must not run on the next one
                # (seed 1734 found one: an old recovery worker, with its old bulkhead).
                if actor.host is not None and actor.host.alive:
                    self.never_started.append((actor.host.name, self.now))
                actor.done = True
                return
            actor.glet.switch()
        finally:
            self._current = None
        if actor.glet is not None and actor.glet.dead:
            actor.done = True

    def _body(self, actor: Actor) -> Callable[[], None]:
        def body() -> None:
            try:
                actor.run()
            except Crashed:
                pass
            except BaseException as e:  # reported by the run, not lost here
                actor.error = e
                self.failures.append((actor.name, e))
            finally:
                actor.done = True

        return body

    def errors(self) -> list[tuple[str, BaseException]]:
        """What actors raised besides ``Crashed``: a defect of the code or of the simulator."""
        return list(self.failures)
