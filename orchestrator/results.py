"""The answers of completed commands, kept in memory so that a replay reads nothing.

A command whose result is definite (``Command.Completed`` without ``in_doubt``, or
``Command.OutcomeLearned``) answers every replay with the payment as of one fixed version,
for ever, in every process: that answer can be kept. A command that answered "in doubt"
shows the payment as it is now until its outcome is learnt, so it is never kept before then.

Entries are keyed by the command's id, which is derived from the caller's scope and its
idempotency key, and carry the fingerprint of what was asked: a key reused with other
parameters is still refused without a read. The cache is bounded (least recently used out).

A hot key's replays skip even validation and the fingerprint: once a replay has matched an
entry, the validated command it carried is kept beside the answer, under the caller's scope
and key, and a later request equal to it field for field (values and their types) is the same
request. Validation is a pure function that maps its own output to itself, so such a request
validates to that very command: same command id, same fingerprint, same answer. Anything
else (other parameters, a value that validation would normalise) takes the full path. That
lookup takes no lock (``orchestrator/lru.py``): every worker replaying a hot key reads it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from orchestrator.domain.payment import Payment
from orchestrator.lru import BoundedMap

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
        # (scope, idempotency key) -> (the validated command a replay carried, its answer)
        self._asked: BoundedMap[tuple[str, str], tuple[Any, KnownResult]] = BoundedMap(maxsize)
        self._lock = threading.Lock()

    def answer(self, scope: str, request: Any) -> Payment | None:
        """The answer to ``request`` (a command as received, not yet validated) if a replay
        of the very same command was answered from this cache before; else None."""
        if type(request.idempotency_key) is not str:
            return None  # validation says what is wrong with it
        found = self._asked.get((scope, request.idempotency_key))
        if found is None:
            return None
        command, known = found
        return known.payment if _identical(request, command) else None

    def note(self, scope: str, command: Any, known: KnownResult) -> None:
        """Records that ``command`` (validated) was answered ``known`` from this cache."""
        self._asked.put((scope, command.idempotency_key), (command, known))

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


def _identical(request: Any, command: Any) -> bool:
    """The same class and equal fields of the same types (``1000.0 == 1000`` is not enough:
    validation refuses the float). Both are instances of one dataclass, so their fields are in
    the same order."""
    if type(request) is not type(command):
        return False
    ours, theirs = vars(request), vars(command)
    return ours == theirs and [*map(type, ours.values())] == [*map(type, theirs.values())]
