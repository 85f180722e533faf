"""The drain gate: counts the commands in flight, and once closed refuses new ones.

On SIGTERM the server closes the gate before anything else stops: a command already past it
(its intent written, its provider call under way) runs to its end and records its outcome; a
command arriving afterwards is refused with ``ServerDraining`` (UNAVAILABLE), having read and
written nothing, so its caller retries on another replica with the same key. The server then
waits until the gate is empty, or its grace ends, before it stops gRPC and closes the store:
closing them earlier would cancel the call or pull the store from under it, and an outcome
the provider gave would be lost (the payment left PROCESSING until recovery asks again).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from orchestrator.domain.errors import ServerDraining


class DrainGate:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._changed = threading.Condition(threading.Lock())
        self._in_flight = 0
        self._closed = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Counts one command while it runs; ``ServerDraining`` if the gate is closed."""
        with self._changed:
            if self._closed:
                raise ServerDraining()
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._changed.notify_all()

    def close(self) -> None:
        """From now on every new command is refused; those in flight go on."""
        with self._changed:
            self._closed = True

    def wait_empty(self, timeout: float) -> int:
        """Waits at most ``timeout`` seconds for the commands in flight to end; returns how
        many are still running (0: all ended)."""
        deadline = self._monotonic() + timeout
        with self._changed:
            while self._in_flight and (left := deadline - self._monotonic()) > 0:
                self._changed.wait(left)
            return self._in_flight
