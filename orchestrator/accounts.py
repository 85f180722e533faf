"""Which account a payment belongs to, known without reading the payment.

A payment's account is fixed by its first event and never changes, so an answer, once
known, stays true: a bounded cache of payment id -> account lets the event stream filter
thousands of events per second by account without reading each payment."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from uuid import UUID

# The account that owns payments stored before payments named their account, unless the
# configuration names another (``[auth] default_account``); the same as
# the account of every call without auth (``orchestrator.api.identity.ANONYMOUS``).
DEFAULT_ACCOUNT = "default"
DEFAULT_INDEX_SIZE = 65536  # ~10 MB at worst: a uuid key and a short, shared account name


class AccountIndex:
    """Payment id -> account; bounded, least recently used out. ``load`` reads an account
    from the store on a miss. Thread-safe: every stream and command shares one."""

    def __init__(self, load: Callable[[UUID], str], maxsize: int = DEFAULT_INDEX_SIZE) -> None:
        self._load = load
        self.maxsize = maxsize
        self._entries: OrderedDict[UUID, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, payment_id: UUID) -> str:
        with self._lock:
            account = self._entries.get(payment_id)
            if account is not None:
                self._entries.move_to_end(payment_id)
                return account
        account = self._load(payment_id)  # outside the lock: a store read
        self.put(payment_id, account)
        return account

    def put(self, payment_id: UUID, account: str) -> None:
        if not self.maxsize:
            return
        with self._lock:
            self._entries[payment_id] = account
            self._entries.move_to_end(payment_id)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
