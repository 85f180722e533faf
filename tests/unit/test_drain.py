"""The drain gate: commands counted while they run, refused once it is closed."""

from __future__ import annotations

import threading
import time

import pytest

from orchestrator.domain.errors import ServerDraining
from orchestrator.drain import DrainGate


def command_in_flight(gate: DrainGate) -> tuple[threading.Thread, threading.Event]:
    """A command admitted by ``gate`` and running in its thread until the event is set."""
    entered, release = threading.Event(), threading.Event()

    def command() -> None:
        with gate.admitted():
            entered.set()
            release.wait(5)

    runner = threading.Thread(target=command)
    runner.start()
    entered.wait(5)
    return runner, release


def test_a_command_arriving_after_the_gate_closes_is_refused_and_not_counted() -> None:
    gate = DrainGate()
    gate.close()
    with pytest.raises(ServerDraining), gate.admitted():
        pytest.fail("a refused command must not run")
    assert gate.in_flight == 0


def test_commands_already_admitted_go_on_and_the_wait_ends_when_the_last_one_does() -> None:
    gate = DrainGate()
    runner, release = command_in_flight(gate)
    gate.close()
    assert gate.wait_empty(0.05) == 1  # the grace ran out with it still in flight
    release.set()
    assert gate.wait_empty(5) == 0
    runner.join(5)


def test_a_command_that_fails_leaves_the_gate_all_the_same() -> None:
    gate = DrainGate()
    with pytest.raises(ZeroDivisionError), gate.admitted():
        _ = 1 / 0
    assert gate.in_flight == 0
    assert gate.wait_empty(0) == 0


def test_a_waiting_drain_wakes_as_soon_as_the_last_command_leaves() -> None:
    gate = DrainGate()
    runner, release = command_in_flight(gate)
    gate.close()
    waited: list[float] = []

    def drain() -> None:
        started = time.monotonic()
        assert gate.wait_empty(30) == 0
        waited.append(time.monotonic() - started)

    drainer = threading.Thread(target=drain)
    drainer.start()
    time.sleep(0.1)  # the drain is waiting now
    release.set()
    drainer.join(10)
    runner.join(5)
    assert waited and waited[0] < 5  # woken by the command leaving, not by its timeout


def test_each_command_in_flight_is_counted_until_it_leaves() -> None:
    gate = DrainGate()
    with gate.admitted():
        with gate.admitted():
            assert gate.in_flight == 2
        assert gate.wait_empty(0.01) == 1
    assert gate.in_flight == 0
    assert gate.wait_empty(0) == 0
