"""A background loop: one daemon thread running ``run_once`` every ``interval`` seconds until
stopped. A pass that fails is logged and the loop goes on: a bad record must not end the
recovery worker or the webhook consumer of a replica."""

from __future__ import annotations

import logging
import threading
from typing import Self


class BackgroundLoop:
    name = "worker"

    def __init__(self, *, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One pass; returns how much it did."""
        raise NotImplementedError

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """The pass under way ends after the item it is on; no other pass starts."""
        self._stop.set()

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                logging.getLogger(f"payorch.{self.name}").exception("%s pass failed", self.name)
            self._stop.wait(self.interval)
