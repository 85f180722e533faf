"""A one-line progress counter for the long audit commands (export, verify, reconcile).

Shown only on a terminal: the CLI passes ``sys.stderr`` when it is one and ``None`` when it is
piped or redirected (or with ``--quiet``), so scripts and logs never see carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def terminal(quiet: bool = False) -> TextIO | None:
    """Where to draw progress: standard error if it is a terminal, else nowhere."""
    return None if quiet or not sys.stderr.isatty() else sys.stderr


class Progress:
    """``label: NN% (unit N)``, redrawn in place at most every ``interval`` seconds, as
    ``update`` reports how far through ``last`` the command is; silent without a stream."""

    def __init__(
        self,
        last: int,
        stream: TextIO | None,
        *,
        label: str = "exporting",
        unit: str = "position",
        interval: float = 0.25,
    ) -> None:
        self.last = max(last, 1)
        self.stream = stream
        self.label, self.unit = label, unit
        self.interval = interval
        self._drawn_at: float | None = None
        self._position = 0

    def update(self, position: int) -> None:
        self._position = position
        if self.stream is None:
            return
        now = time.monotonic()
        if self._drawn_at is None or now - self._drawn_at >= self.interval:
            self._draw(self.stream)
            self._drawn_at = now

    def close(self) -> None:
        if self.stream is None or self._drawn_at is None:
            return
        # The command read to the end, whose last entry need not be one it counts.
        self._draw(self.stream, done=100)
        self.stream.write("\n")  # what follows goes on a line of its own
        self.stream.flush()

    def _draw(self, stream: TextIO, done: int | None = None) -> None:
        if done is None:
            done = min(99, self._position * 100 // self.last)
        stream.write(f"\r{self.label}: {done:3d}% ({self.unit} {self._position:,})")
        stream.flush()
