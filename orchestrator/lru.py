"""A bounded map, least recently used out, whose reads never wait for a lock.

Built for the replay path, where every gRPC worker reads the same few entries: there, a lock
taken on every read is a lock the workers queue on. A worker that loses the GIL while holding
it (CPython switches threads every few milliseconds, anywhere) makes every other reader
block, and each blocked reader costs a sleep and a wake-up; measured on the replay benchmark,
such locks made a replay cost up to 0.1 ms more CPU than the work itself.

So a read takes no lock: a ``get`` of one key is one step of the dictionary, atomic in
CPython for keys that hash and compare without running Python code (``str``, ``int`` and
tuples of them; a ``UUID`` runs Python, so it is not accepted). Marking the entry as recently
used needs the lock: a read takes it only if it is free, and otherwise skips the mark (that
entry may then leave a little earlier than a strict LRU would let it; it is never wrong).
Writes take the lock and wait for it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K", str, int, tuple[str, str])
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """At most ``maxsize`` entries (0: none kept); thread-safe."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError("a bounded map's size cannot be negative")
        self.maxsize = maxsize
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        if found is not None and self._lock.acquire(blocking=False):
            try:
                self._entries.move_to_end(key)
            except KeyError:
                pass  # evicted since it was read: the answer read is still the answer
            finally:
                self._lock.release()
        return found

    def put(self, key: K, value: V) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
