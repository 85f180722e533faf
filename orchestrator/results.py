"""The answers of completed commands, kept in memory so that a replay reads nothing.

A command whose result is definite (``Command.Completed`` without ``in_doubt``, or
``Command.OutcomeLearned``) answers every replay with the payment as of one fixed version,
for ever, in every process: that answer can be kept. A command that answered "in doubt"
shows the payment as it is now until its outcome is learnt, so it is never kept before then.

Entries are keyed by the command's id, which is derived from the caller's scope and its
idempotency key, and carry the fingerprint of what was asked: a key reused with other
parameters is still refused without a read. The cache is bounded (least recently used out).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from uuid import UUID

from orchestrator.domain.payment import Payment

DEFAULT_SIZE = 10_000  # commands; a few KB each


@dataclass(frozen=True)
class KnownResult:
    """A definite answer. ``payment`` is shared by every replay that gets it: read only."""

    name: str  # the command's name, for the refusal of a reused key
    fingerprint: str
    payment: Payment


class ResultCache:
    """A bounded, thread-safe map of command ids to their definite answers."""

    def __init__(self, maxsize: int = DEFAULT_SIZE) -> None:
        if maxsize < 0:
            raise ValueError("the result cache size cannot be negative")
        self.maxsize = maxsize
        self._entries: OrderedDict[UUID, KnownResult] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, command_id: UUID) -> KnownResult | None:
        with self._lock:
            found = self._entries.get(command_id)
            if found is not None:
                self._entries.move_to_end(command_id)
            return found

    def put(self, command_id: UUID, result: KnownResult) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._entries[command_id] = result
            self._entries.move_to_end(command_id)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
